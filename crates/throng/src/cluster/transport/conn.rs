//! Connections after the handshake: one link per peer (dial or accept, reconnect with
//! backoff), the writer that seals records in place and the reader that opens them and delivers
//! frames.

use super::*;

pub(super) enum Ended {
    Lost(String),
    Replaced(Box<Conn>),
    Stopped,
}

pub(super) async fn link_task(
    shared: Weak<Transport>,
    peer: Arc<Peer>,
    inbound_rx: mpsc::Receiver<Conn>,
) {
    link_loop(shared, peer.clone(), inbound_rx).await;
    // The link is over (the peer was removed or the node stopped): senders waiting for room in
    // its queues learn it now.
    peer.out.close();
}

pub(super) async fn link_loop(
    shared: Weak<Transport>,
    peer: Arc<Peer>,
    mut inbound_rx: mpsc::Receiver<Conn>,
) {
    let mut connections = 0u64;
    let mut last_incarnation: Option<u64> = None;
    let Some(me) = shared.upgrade().map(|s| s.id.clone()) else {
        return;
    };
    let dialer = me < peer.id;
    let (first, max) = shared
        .upgrade()
        .map(|s| s.opts.backoff)
        .unwrap_or((Duration::from_millis(50), Duration::from_secs(2)));
    let mut backoff = first;
    let mut next: Option<Conn> = None;
    // The last refusal logged at warn, so a peer that keeps refusing us is logged once per cause.
    let mut refused: Option<String> = None;
    loop {
        let conn = match next.take() {
            Some(c) => c,
            None if dialer => {
                let addr = *lock(&peer.addr);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let attempt = async {
                    match addr {
                        Some(addr) => tokio::time::timeout(
                            shared.opts.handshake_timeout,
                            dial(&shared, &peer.id, addr),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(WireError::Malformed("handshake timed out".into()))
                        }),
                        None => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                    }
                };
                tokio::select! {
                    _ = peer.stop.cancelled() => return,
                    c = inbound_rx.recv() => match c { Some(c) => c, None => return },
                    r = attempt, if addr.is_some() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            let why = e.to_string();
                            if !is_refusal(&e) {
                                tracing::debug!(peer = %peer.id, error = %why, "connect failed; retrying");
                            } else if refused.as_deref() != Some(why.as_str()) {
                                tracing::warn!(peer = %peer.id, error = %why, "handshake refused; retrying");
                                refused = Some(why);
                            }
                            drop(shared);
                            tokio::select! {
                                _ = peer.stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(max);
                            continue;
                        }
                    },
                    _ = tokio::time::sleep(first), if addr.is_none() => continue,
                }
            }
            None => tokio::select! {
                _ = peer.stop.cancelled() => return,
                c = inbound_rx.recv() => match c { Some(c) => c, None => return },
            },
        };
        // A run that membership declared down talks to this node again only once it rejoined
        // (the acceptor checks too; this covers the connections this node dials).
        let admitted = shared
            .upgrade()
            .is_some_and(|s| s.view.admits(&peer.id, Incarnation(conn.incarnation)));
        if !admitted {
            tracing::debug!(peer = %peer.id, incarnation = conn.incarnation, "not connecting to a run declared down");
            drop(conn);
            tokio::select! {
                _ = peer.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
            continue;
        }
        backoff = first;
        refused = None;
        tracing::info!(peer = %peer.id, incarnation = conn.incarnation, "connected");
        peer.connected.store(true, Ordering::SeqCst);
        connections += 1;
        let same_run = last_incarnation.replace(conn.incarnation) == Some(conn.incarnation);
        let dropped = peer.dropped.swap(false, Ordering::SeqCst);
        if (connections > 1 && same_run) || dropped {
            // Frames in flight on the lost connection, or dropped while it was down, may be
            // gone: directories re-send. (A new incarnation is a new node: membership reports the
            // old one down first.)
            if let Some(sink) = shared.upgrade().and_then(|s| s.sink()) {
                sink.reconnected(&peer.id).await;
            }
        }
        let ended = run_conn(&shared, &peer, conn, &mut inbound_rx).await;
        peer.connected.store(false, Ordering::Release);
        if let Some(s) = shared.upgrade() {
            s.peer_lost(&peer.id);
            // After the close: no frame of this connection reaches a directory any more.
            if let Some(sink) = s.sink() {
                sink.disconnected(&peer.id).await;
            }
        }
        match ended {
            Ended::Stopped => return,
            Ended::Replaced(c) => {
                tracing::info!(peer = %peer.id, "connection replaced by a new one from the peer");
                next = Some(*c);
            }
            Ended::Lost(why) => tracing::warn!(peer = %peer.id, %why, "connection lost"),
        }
    }
}

/// Records are closed at about this size, so that the receiver starts on a batch before all of
/// it has arrived and one record's seal never covers megabytes.
pub(super) const RECORD_TARGET: usize = 64 * 1024;

/// Sealed records are written out once this many bytes are ready.
pub(super) const WRITE_TARGET: usize = 256 * 1024;

/// The frames (each with its length prefix) of a lane's buffer, in order.
pub(super) fn lane_frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        // The outbox writes whole frames with their lengths, so the split does not fail.
        let len = u32::from_le_bytes(rest.get(..wire::FRAME_PREFIX)?.try_into().ok()?) as usize;
        let (frame, tail) = rest.split_at_checked(wire::FRAME_PREFIX + len)?;
        rest = tail;
        Some(frame)
    })
}

/// Writes one connection's records: sealed, length-prefixed (the framing of
/// [`LengthDelimitedCodec`]: a 4-byte big-endian length, then the record), built at the end of one
/// output buffer and written in few large writes.
pub(super) struct Writer {
    stream: WriteHalf,
    sealer: Sealer,
    out: Vec<u8>,
    /// Where the open record's length prefix is in `out`, if a record is open.
    open: Option<usize>,
    /// Largest record content (before the seal).
    max_record: usize,
    /// Size of the pieces a frame too large for one record is sent in.
    piece: usize,
}

impl Writer {
    /// Append one frame (its prefix and encoding) to the open record, first closing that record
    /// if the frame would take it over its size.
    pub(super) fn push(&mut self, frame: &[u8]) -> Result<(), String> {
        if let Some(start) = self.open {
            let len = self.out.len() - start - 4;
            if len + frame.len() > self.max_record || len >= RECORD_TARGET {
                self.close()?;
            }
        }
        if self.open.is_none() {
            self.open = Some(self.out.len());
            self.out.extend_from_slice(&[0; 4]);
        }
        self.out.extend_from_slice(frame);
        Ok(())
    }

    /// Seal the open record, if any, and write its length.
    pub(super) fn close(&mut self) -> Result<(), String> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        self.sealer
            .seal_from(&mut self.out, start + 4)
            .map_err(|e| e.to_string())?;
        let len = (self.out.len() - start - 4) as u32;
        self.out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Close the open record and write out everything built.
    pub(super) async fn flush(&mut self) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        self.close()?;
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            self.out.clear();
            if self.out.capacity() > 2 * WRITE_TARGET {
                self.out.shrink_to(RECORD_TARGET);
            }
        }
        self.stream.flush().await.map_err(|e| format!("write: {e}"))
    }

    /// Seal and write one batch taken from the outbox: control frames first, then data.
    pub(super) async fn batch(
        &mut self,
        control: &[u8],
        data: &[u8],
        outbox: &Outbox,
    ) -> Result<(), String> {
        let control = lane_frames(control).map(|f| (f, None));
        let data = lane_frames(data).map(|f| (f, Some(outbox)));
        for (frame, between) in control.chain(data) {
            if frame.len() > self.max_record {
                // Control frames queued meanwhile go between the pieces of a data frame, never
                // ahead of control frames of this batch (which are all written before it).
                self.chunked(&frame[wire::FRAME_PREFIX..], between).await?;
                continue;
            }
            self.push(frame)?;
            if self.out.len() >= WRITE_TARGET {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    /// Send one frame's encoding as [`Frame::Chunk`] pieces, flushing after each; with `between`,
    /// each piece follows the control frames queued there since the last one, so that replies and
    /// monitors overtake a long transfer.
    pub(super) async fn chunked(
        &mut self,
        encoded: &[u8],
        between: Option<&Outbox>,
    ) -> Result<(), String> {
        self.close()?;
        let mut control = Vec::new();
        let mut chunk = Vec::new();
        let mut pieces = encoded.chunks(self.piece).peekable();
        while let Some(piece) = pieces.next() {
            if let Some(outbox) = between {
                outbox.take_control(&mut control);
            }
            for frame in lane_frames(&control) {
                self.push(frame)?;
            }
            self.close()?;
            control.clear();
            chunk.clear();
            wire::push_frame(
                &mut chunk,
                &Frame::Chunk {
                    last: pieces.peek().is_none(),
                    bytes: piece.to_vec(),
                },
            );
            self.push(&chunk)?;
            self.flush().await?;
        }
        Ok(())
    }
}

/// Exports a reader looked up, kept while no export changes.
pub(super) struct ExportCache {
    version: u64,
    entries: HashMap<String, Arc<dyn Export>>,
}

/// Bound on a reader's export cache; beyond it the cache starts over.
pub(super) const EXPORT_CACHE: usize = 256;

impl ExportCache {
    pub(super) fn get(&mut self, shared: &Transport, name: &str) -> Option<Arc<dyn Export>> {
        let version = shared.exports_version.load(Ordering::Acquire);
        if version != self.version {
            self.entries.clear();
            self.version = version;
        }
        if let Some(e) = self.entries.get(name) {
            return Some(e.clone());
        }
        let e = shared.export(name)?;
        if self.entries.len() >= EXPORT_CACHE {
            self.entries.clear();
        }
        self.entries.insert(name.to_owned(), e.clone());
        Some(e)
    }
}

/// A route the peer bound on this connection ([`Frame::Bind`]), with the export it last led to.
pub(super) struct BoundRoute {
    to: String,
    actor_type: String,
    /// The export found, and the `exports_version` it was found at.
    export: Option<(u64, Arc<dyn Export>)>,
}

/// What one connection's reader keeps between frames.
pub(super) struct Inbound {
    peer: Arc<Peer>,
    /// The supervisors' frames read and not yet taken by the sink.
    inbox: inbox::Inbox,
    /// A frame being reassembled from chunks; bounded by the frame limit.
    chunks: wire::Chunks,
    cache: ExportCache,
    routes: Vec<BoundRoute>,
    /// Bytes of names and types in `routes` (at most [`wire::MAX_ROUTE_BYTES`]).
    route_bytes: usize,
}

impl Inbound {
    /// Handle one frame of a record; an error ends the connection.
    pub(super) async fn frame(
        &mut self,
        shared: &Arc<Transport>,
        frame: FrameRef<'_>,
    ) -> Result<(), String> {
        let FrameRef::Chunk { last, bytes } = frame else {
            return self.deliver(shared, frame).await;
        };
        let whole = match self.chunks.push(last, bytes) {
            Ok(Some(whole)) => whole,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("refused chunked frame: {e}")),
        };
        let result = match wire::Chunks::decode(&whole) {
            Ok(f) => self.deliver(shared, f).await,
            Err(e) => Err(format!("refused frame: {e}")),
        };
        self.chunks.recycle(whole);
        result
    }

    /// Handle one whole frame.
    pub(super) async fn deliver(
        &mut self,
        shared: &Arc<Transport>,
        frame: FrameRef<'_>,
    ) -> Result<(), String> {
        let outcome = match frame {
            FrameRef::Bind {
                route,
                to,
                actor_type,
            } => {
                let r = route as usize;
                let replaced = self
                    .routes
                    .get(r)
                    .map_or(0, |b| b.to.len() + b.actor_type.len());
                let bytes = self.route_bytes - replaced + to.len() + actor_type.len();
                if r > self.routes.len()
                    || route >= wire::MAX_ROUTES
                    || bytes > wire::MAX_ROUTE_BYTES
                {
                    return Err(format!("refused bind of route {route}"));
                }
                let bound = BoundRoute {
                    to: to.to_owned(),
                    actor_type: actor_type.to_owned(),
                    export: None,
                };
                self.route_bytes = bytes;
                if r < self.routes.len() {
                    self.routes[r] = bound;
                } else {
                    self.routes.push(bound);
                }
                return Ok(());
            }
            FrameRef::Cast { route, body } => {
                let Some(bound) = self.routes.get_mut(route as usize) else {
                    return Err(format!("refused cast on unbound route {route}"));
                };
                let version = shared.exports_version.load(Ordering::Acquire);
                let export = match &bound.export {
                    Some((v, e)) if *v == version => Some(e.clone()),
                    _ => {
                        let e = shared.export(&bound.to);
                        bound.export = e.clone().map(|e| (version, e));
                        e
                    }
                };
                deliver_cast(export, &bound.to, &bound.actor_type, body).await
            }
            FrameRef::Request {
                id: 0,
                to,
                actor_type,
                body,
                ..
            } => {
                // A cast by name: delivered here, with no frame future, to a cached export.
                let export = self.cache.get(shared, to);
                deliver_cast(export, to, actor_type, body).await
            }
            // Behind a busy driver they must not hold up the frames after them.
            f if inbox::queued(&f) => return self.inbox.push(f).await,
            f => {
                shared.on_frame(&self.peer, f).await;
                Ok(())
            }
        };
        if let Err(failure) = outcome {
            tracing::debug!(peer = %self.peer.id, ?failure, "remote cast not delivered");
        }
        Ok(())
    }
}

/// Deliver a cast read from a peer to `export`, the actor exported as `to` (if any).
pub(super) async fn deliver_cast(
    export: Option<Arc<dyn Export>>,
    to: &str,
    actor_type: &str,
    body: &[u8],
) -> Result<(), RemoteFailure> {
    match export {
        None => Err(RemoteFailure::NoSuchActor(to.to_owned())),
        Some(e) if e.actor_type() != actor_type => Err(RemoteFailure::UnknownActorType {
            expected: actor_type.to_owned(),
            found: e.actor_type().to_string(),
        }),
        Some(e) => match e.deliver(body, None) {
            Delivery::Done(r) => r,
            Delivery::Wait(f) => f.await,
        },
    }
}

/// Why a connection was reset by its peer's backlog overflowing ([`Peer::send_now`]).
const BACKLOG_RESET: &str = "backlog of frames for the peer overflowed; reconnecting to reconcile";

/// A connection ends because its peer's backlog overflowed: counted, and said why.
fn backlog_reset(shared: &Weak<Transport>) -> Ended {
    if let Some(t) = shared.upgrade() {
        t.backlog_resets.fetch_add(1, Ordering::Relaxed);
    }
    Ended::Lost(BACKLOG_RESET.into())
}

/// Carry frames over one connection until it fails, is replaced, or the link stops.
pub(super) async fn run_conn(
    shared: &Weak<Transport>,
    peer: &Arc<Peer>,
    conn: Conn,
    inbound_rx: &mut mpsc::Receiver<Conn>,
) -> Ended {
    let Conn {
        mut reader,
        writer,
        sealer,
        mut opener,
        ..
    } = conn;
    let (lost_tx, mut lost_rx) = oneshot::channel::<String>();
    let reader_shared = shared.clone();
    let max_frame = shared.upgrade().map_or(1 << 20, |s| s.opts.max_frame);
    let (inbox, outlet, drained) = inbox::inbox();
    let inbox_task = peer
        .tasks
        .spawn(inbox::run(shared.clone(), peer.clone(), outlet));
    let mut inbound = Inbound {
        peer: peer.clone(),
        inbox,
        chunks: wire::Chunks::new(max_frame),
        cache: ExportCache {
            version: u64::MAX,
            entries: HashMap::new(),
        },
        routes: Vec::new(),
        route_bytes: 0,
    };
    let reader = peer.tasks.spawn(async move {
        let why = 'records: loop {
            let mut record: BytesMut = match reader.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => break format!("read: {e}"),
                None => break "closed by peer".to_string(),
            };
            let len = match opener.open_in_place(&mut record) {
                Ok(len) => len,
                Err(e) => break format!("refused record: {e}"),
            };
            let Some(shared) = reader_shared.upgrade() else {
                break "node stopped".into();
            };
            for frame in wire::frames(&record[..len]) {
                let handled = match frame {
                    Ok(f) => inbound.frame(&shared, f).await,
                    Err(e) => Err(format!("refused frame: {e}")),
                };
                if let Err(why) = handled {
                    break 'records why;
                }
            }
        };
        // The peer closed (or the stream failed): what was read still reaches the sink, as it
        // did when the reader handed it over itself, before the connection counts as lost.
        drop(inbound);
        drained.cancelled().await;
        let _ = lost_tx.send(why);
    });
    let stop = peer.stop.clone();
    // A frame whose encoding exceeds CHUNK_SIZE (or the frame limit, if smaller) goes in pieces.
    let max_record = (max_frame - wire::SEAL_OVERHEAD).min(wire::CHUNK_SIZE + wire::FRAME_PREFIX);
    let mut writer = Writer {
        stream: writer.into_inner(),
        sealer,
        out: Vec::with_capacity(RECORD_TARGET),
        open: None,
        max_record,
        // Room for the chunk frame's own encoding and prefix.
        piece: (max_record - 64).min(wire::CHUNK_SIZE),
    };
    // The routes bound on the lost connection, before anything queued since (which may use them).
    let (mut control, mut data) = (Vec::new(), Vec::new());
    peer.out.rebinds(&mut data);
    let mut rebound = !data.is_empty();
    let ended = loop {
        if rebound {
            // Sent as a batch of its own, ahead of the queues.
            rebound = false;
        } else if !peer.out.take(&mut control, &mut data) {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Ended::Stopped,
                why = &mut lost_rx => break Ended::Lost(why.unwrap_or_else(|_| "reader ended".into())),
                _ = peer.reset.notified() => break backlog_reset(shared),
                c = inbound_rx.recv() => match c {
                    Some(c) => break Ended::Replaced(Box::new(c)),
                    None => break Ended::Stopped,
                },
                _ = peer.out.ready() => continue,
            }
        }
        let written = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ended::Stopped,
            why = &mut lost_rx => break Ended::Lost(why.unwrap_or_else(|_| "reader ended".into())),
            _ = peer.reset.notified() => break backlog_reset(shared),
            r = writer.batch(&control, &data, &peer.out) => r,
        };
        if let Err(why) = written {
            break Ended::Lost(why);
        }
        Outbox::recycle(&mut control);
        Outbox::recycle(&mut data);
    };
    reader.abort();
    // Once both have stopped, no frame of this connection reaches a directory after the
    // `Disconnected` the link reports next.
    let _ = reader.await;
    inbox_task.abort();
    let _ = inbox_task.await;
    ended
}

impl Transport {
    pub(crate) fn add_peer(self: &Arc<Self>, peer: NodeId, addr: SocketAddr) {
        if peer == self.id {
            return;
        }
        let link = self.link(&peer);
        *lock(&link.addr) = Some(addr);
    }

    pub(crate) fn remove_peer(&self, peer: &NodeId) {
        let removed = lock(&self.peers).remove(peer);
        if let Some(p) = removed {
            p.stop.cancel();
            p.out.close();
        }
        self.peer_lost(peer);
    }

    /// Whether an authenticated connection to `peer` is up right now.
    pub(crate) fn is_connected(&self, peer: &NodeId) -> bool {
        self.peer(peer)
            .is_some_and(|p| p.connected.load(Ordering::Acquire))
    }

    /// The peers this node has a link to (connected or connecting), in no order.
    pub(crate) fn peer_ids(&self) -> Vec<NodeId> {
        lock(&self.peers).keys().cloned().collect()
    }

    pub(crate) fn peer(&self, id: &NodeId) -> Option<Arc<Peer>> {
        lock(&self.peers).get(id).cloned()
    }

    /// The link to `id`, created (with its task) on first use.
    pub(super) fn link(self: &Arc<Self>, id: &NodeId) -> Arc<Peer> {
        let mut peers = lock(&self.peers);
        if let Some(p) = peers.get(id) {
            return p.clone();
        }
        let (inbound, inbound_rx) = mpsc::channel(2);
        let (backlog, backlog_rx) = mpsc::channel(self.opts.backlog_frames);
        let stop = self.stop.child_token();
        let peer = Arc::new(Peer {
            id: id.clone(),
            out: Outbox::new(Limits {
                control_frames: self.opts.control_queue,
                data_frames: self.opts.data_queue,
                lane_bytes: self.opts.max_frame,
                max_frame: self.opts.max_frame,
            }),
            inbound,
            addr: Mutex::new(None),
            connected: std::sync::atomic::AtomicBool::new(false),
            dropped: std::sync::atomic::AtomicBool::new(false),
            backlog,
            backlog_len: std::sync::atomic::AtomicUsize::new(0),
            backlog_bytes: std::sync::atomic::AtomicUsize::new(0),
            backlog_max_bytes: self.opts.backlog_bytes,
            reset: tokio::sync::Notify::new(),
            stop: stop.clone(),
            tasks: self.tasks.clone(),
        });
        peers.insert(id.clone(), peer.clone());
        self.tasks
            .spawn(Peer::run_backlog(Arc::downgrade(&peer), backlog_rx, stop));
        self.tasks
            .spawn(link_task(Arc::downgrade(self), peer.clone(), inbound_rx));
        peer
    }

    /// The connection to `peer` is gone: fail its calls in flight and its proxies.
    pub(super) fn peer_lost(&self, peer: &NodeId) {
        lock(&self.pending).retain(|_, p| p.peer != *peer);
        // The peer's references to actors here were finished on its side (as this node's are).
        lock(&self.watched).remove_peer(peer);
        let proxies: Vec<Weak<Cell>> = lock(&self.proxies).take_peer(peer);
        for p in proxies.into_iter().filter_map(|w| w.upgrade()) {
            p.finish(ExitReason::NodeDown(peer.as_str().into()));
        }
    }
}
