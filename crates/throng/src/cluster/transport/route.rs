//! [`RemoteRoute`]: what a remote [`ActorRef`] sends through — the link to its peer, a route
//! bound on that link for casts, and the pending table for calls.

use super::*;

/// Sends to one remote actor: the route behind a remote [`ActorRef`].
pub(crate) struct RemoteRoute<A: Actor> {
    shared: Weak<Transport>,
    peer: NodeId,
    /// Whether `peer` is this node (a name resolved here: delivered without the transport).
    local: bool,
    /// The link to `peer` first found: kept, so that a request costs no lookup.
    link: std::sync::OnceLock<Arc<Peer>>,
    /// A newer link, once the first has closed (the peer was removed and added again).
    relink: Mutex<Option<Arc<Peer>>>,
    /// The route number bound on `link` for casts ([`Frame::Cast`]); `None` if the link could
    /// bind no more.
    bound: std::sync::OnceLock<Option<u32>>,
    name: String,
    actor_type: &'static str,
    /// The node's frame limit (checked before a message is queued).
    max_frame: usize,
    encode: fn(&A::Msg) -> Result<Vec<u8>, String>,
    /// The size of a message's encoding.
    size: fn(&A::Msg) -> Result<usize, String>,
    /// Appends a request frame carrying the message (id, name, type, message and its size,
    /// timeout in ms).
    append: AppendRequest<A>,
    /// Appends a cast frame through a bound route (route, message and its size).
    cast: AppendCast<A>,
    decode: fn(&[u8]) -> Result<A::Reply, String>,
}

pub(super) type AppendCast<A> =
    fn(&mut Vec<u8>, u32, &<A as Actor>::Msg, usize) -> Result<(), String>;

pub(super) type AppendRequest<A> =
    fn(&mut Vec<u8>, u64, &str, &'static str, &<A as Actor>::Msg, usize, u64) -> Result<(), String>;

/// Bytes a request frame adds to its name, type and body, at most (variant, id, lengths,
/// timeout), besides [`FRAME_OVERHEAD`].
pub(super) const REQUEST_HEAD: usize = 48;

impl<A: RemoteActor> RemoteRoute<A> {
    pub(super) fn new(shared: &Arc<Transport>, peer: &NodeId, name: &str) -> Self {
        RemoteRoute {
            shared: Arc::downgrade(shared),
            peer: peer.clone(),
            local: *peer == shared.id,
            link: std::sync::OnceLock::new(),
            relink: Mutex::new(None),
            bound: std::sync::OnceLock::new(),
            name: name.to_owned(),
            actor_type: A::TYPE,
            max_frame: shared.opts.max_frame,
            encode: |m| postcard::to_allocvec(m).map_err(|e| e.to_string()),
            size: |m| wire::encoded_len(m).map_err(|e| e.to_string()),
            append: |buf, id, to, actor_type, msg, len, timeout_ms| {
                wire::append_request(buf, id, to, actor_type, msg, len, timeout_ms)
                    .map_err(|e| e.to_string())
            },
            cast: |buf, route, msg, len| {
                wire::append_cast(buf, route, msg, len).map_err(|e| e.to_string())
            },
            decode: |b| postcard::from_bytes(b).map_err(|e| e.to_string()),
        }
    }
}

/// A request's message: typed (encoded straight into the queue) or already encoded.
pub(super) enum Outgoing<M> {
    Msg(M),
    Body(Vec<u8>),
}

/// How a request to a peer was refused before it was sent.
pub(super) enum Refused {
    NodeDown,
    TooLarge { size: usize, max: usize },
    Codec(String),
}

impl<A: Actor> RemoteRoute<A> {
    pub(super) fn shared(&self) -> Result<Arc<Transport>, String> {
        self.shared.upgrade().ok_or_else(|| self.peer.to_string())
    }

    /// The first link found to the peer, looked up now if none was yet.
    pub(super) fn first_link(&self) -> Option<&Arc<Peer>> {
        if let Some(p) = self.link.get() {
            return Some(p);
        }
        let peer = self.shared.upgrade()?.peer(&self.peer)?;
        Some(self.link.get_or_init(|| peer))
    }

    /// The link to use once the first has closed: the one kept, unless `fresh`, else the node's
    /// current one.
    pub(super) fn relink(&self, fresh: bool) -> Option<Arc<Peer>> {
        let mut kept = lock(&self.relink);
        if !fresh {
            if let Some(p) = kept.as_ref() {
                return Some(p.clone());
            }
        }
        let peer = self.shared.upgrade()?.peer(&self.peer)?;
        *kept = Some(peer.clone());
        Some(peer)
    }

    /// Queue one request frame that `encode` appends on the peer's data lane if it has room
    /// (`Ok(false)`: full). With `bind`, `encode` is given the route bound for this actor on the
    /// link, if there is one, and may encode a [`Frame::Cast`] through it.
    pub(super) fn try_enqueue(
        &self,
        bind: bool,
        mut encode: impl FnMut(&mut Vec<u8>, Option<u32>) -> Result<(), String>,
    ) -> Result<bool, Refused> {
        // The common case: the first link found is still open (no lock, no reference count).
        let first = self.first_link().ok_or(Refused::NodeDown)?;
        let route = if bind {
            *self
                .bound
                .get_or_init(|| first.out.bind(&self.name, self.actor_type))
        } else {
            None
        };
        match first.out.try_push(Lane::Data, |buf| encode(buf, route)) {
            Err(PushError::Closed) => {}
            other => return Self::pushed(other),
        }
        // The first link has closed (the peer was removed, and perhaps added again): use the
        // current one, looked up again once if the kept one closed too. Requests on it carry
        // names.
        for fresh in [false, true] {
            let peer = self.relink(fresh).ok_or(Refused::NodeDown)?;
            match peer.out.try_push(Lane::Data, |buf| encode(buf, None)) {
                Err(PushError::Closed) if !fresh => continue,
                other => return Self::pushed(other),
            }
        }
        Err(Refused::NodeDown)
    }

    /// [`RemoteRoute::try_enqueue`], waiting for room.
    pub(super) async fn enqueue(
        &self,
        mut encode: impl FnMut(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), Refused> {
        let first = self.first_link().ok_or(Refused::NodeDown)?.clone();
        match first.out.push(Lane::Data, &mut encode).await {
            Err(PushError::Closed) => {}
            other => return Self::pushed(other).map(|_| ()),
        }
        for fresh in [false, true] {
            let peer = self.relink(fresh).ok_or(Refused::NodeDown)?;
            match peer.out.push(Lane::Data, &mut encode).await {
                Err(PushError::Closed) if !fresh => continue,
                other => return Self::pushed(other).map(|_| ()),
            }
        }
        Err(Refused::NodeDown)
    }

    pub(super) fn pushed(result: Result<(), PushError>) -> Result<bool, Refused> {
        match result {
            Ok(()) => Ok(true),
            Err(PushError::Full) => Ok(false),
            Err(PushError::Closed) => Err(Refused::NodeDown),
            Err(PushError::TooLarge { size, max }) => Err(Refused::TooLarge { size, max }),
            Err(PushError::Codec(e)) => Err(Refused::Codec(e)),
        }
    }

    /// Queue a request carrying `msg`: encoded straight into the peer's queue when it has room;
    /// otherwise encoded once and queued when room is made (the wait holds no borrow of the
    /// message, which need not be `Sync`).
    pub(super) async fn send_request(
        &self,
        id: u64,
        msg: Outgoing<A::Msg>,
        timeout_ms: u64,
    ) -> Result<(), Refused> {
        let len = match &msg {
            Outgoing::Msg(m) => (self.size)(m).map_err(Refused::Codec)?,
            Outgoing::Body(b) => b.len(),
        };
        self.check_size(len)?;
        // Casts go through a route bound on the link (no name or type on the wire).
        let queued = self.try_enqueue(id == 0, |buf, route| match (&msg, route) {
            (Outgoing::Msg(m), Some(route)) => (self.cast)(buf, route, m, len),
            (Outgoing::Msg(m), None) => {
                (self.append)(buf, id, &self.name, self.actor_type, m, len, timeout_ms)
            }
            (Outgoing::Body(b), _) => {
                wire::append_request_bytes(buf, id, &self.name, self.actor_type, b, timeout_ms)
                    .map_err(|e| e.to_string())
            }
        })?;
        if queued {
            return Ok(());
        }
        let body = match msg {
            Outgoing::Msg(m) => (self.encode)(&m).map_err(Refused::Codec)?,
            Outgoing::Body(b) => b,
        };
        self.enqueue(|buf| {
            wire::append_request_bytes(buf, id, &self.name, self.actor_type, &body, timeout_ms)
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Refuse, before queueing anything, a message whose encoding (`len` bytes) would make a
    /// request frame over the frame limit (the outbox checks the exact size again).
    pub(super) fn check_size(&self, len: usize) -> Result<(), Refused> {
        let size = len + self.name.len() + self.actor_type.len() + REQUEST_HEAD + FRAME_OVERHEAD;
        if size > self.max_frame {
            return Err(Refused::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    pub(super) fn send_error(&self, refused: Refused) -> SendError {
        match refused {
            Refused::NodeDown => SendError::NodeDown(self.peer.to_string()),
            Refused::TooLarge { size, max } => {
                SendError::Codec(format!("{size} bytes exceeds the {max}-byte frame limit"))
            }
            Refused::Codec(e) => SendError::Codec(e),
        }
    }

    async fn cast(&self, msg: A::Msg) -> Result<(), SendError> {
        if self.local {
            // Addressed to this node by name: deliver locally (failures of a cast are not reported).
            let shared = self.shared().map_err(SendError::NodeDown)?;
            let body = (self.encode)(&msg).map_err(SendError::Codec)?;
            let _ = shared
                .local_request(&self.name, self.actor_type, &body, None)
                .await;
            return Ok(());
        }
        self.send_request(0, Outgoing::Msg(msg), 0)
            .await
            .map_err(|r| self.send_error(r))
    }

    fn try_cast(&self, msg: A::Msg) -> Result<(), TrySendError<A::Msg>> {
        if self.local {
            return Err(TrySendError::Exited(msg));
        }
        let Ok(len) = (self.size)(&msg) else {
            return Err(TrySendError::Exited(msg));
        };
        if self.check_size(len).is_err() {
            return Err(TrySendError::Exited(msg));
        }
        let queued = self.try_enqueue(true, |buf, route| match route {
            Some(route) => (self.cast)(buf, route, &msg, len),
            None => (self.append)(buf, 0, &self.name, self.actor_type, &msg, len, 0),
        });
        match queued {
            Ok(true) => Ok(()),
            Ok(false) => Err(TrySendError::Full(msg)),
            Err(_) => Err(TrySendError::Exited(msg)),
        }
    }

    async fn call(&self, msg: A::Msg, timeout: Duration) -> Result<A::Reply, CallError> {
        if self.local {
            let body = (self.encode)(&msg).map_err(CallError::Codec)?;
            return self.call_body(body, timeout).await;
        }
        self.exchange(timeout, Outgoing::Msg(msg)).await
    }

    /// [`RemoteRoute::call`] with the message already encoded.
    pub(crate) async fn call_body(
        &self,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<A::Reply, CallError> {
        if !self.local {
            return self.exchange(timeout, Outgoing::Body(body)).await;
        }
        let shared = self
            .shared()
            .map_err(|_| CallError::NodeDown(self.peer.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let reply = ReplyOnce::new(move |r| {
            let _ = tx.send(r);
        });
        let outcome = async {
            let _ = shared
                .local_request(&self.name, self.actor_type, &body, Some(reply))
                .await;
            rx.await.unwrap_or(Err(RemoteFailure::Exited))
        };
        let result = tokio::time::timeout(timeout, outcome)
            .await
            .unwrap_or(Err(RemoteFailure::Timeout));
        self.finish_call(result.map_err(Ok), timeout)
    }

    /// Send a request carrying `msg` and wait for its reply.
    pub(super) async fn exchange(
        &self,
        timeout: Duration,
        msg: Outgoing<A::Msg>,
    ) -> Result<A::Reply, CallError> {
        let down = || CallError::NodeDown(self.peer.to_string());
        let shared = self.shared().map_err(|_| down())?;
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        let send = |id| self.send_request(id, msg, timeout_ms);
        match shared.request(&self.peer, timeout, send).await {
            Ok(r) => self.finish_call(r.map_err(Ok), timeout),
            Err(RequestError::Send(Refused::NodeDown) | RequestError::Lost) => Err(down()),
            Err(RequestError::Send(Refused::TooLarge { size, max })) => {
                Err(CallError::TooLarge { size, max })
            }
            Err(RequestError::Send(Refused::Codec(e))) => Err(CallError::Codec(e)),
            Err(RequestError::Timeout) => Err(CallError::Timeout(timeout)),
        }
    }

    /// Turn a reply (or a failure, `Ok` = reported by the remote side) into the caller's result.
    pub(super) fn finish_call(
        &self,
        result: Result<Vec<u8>, Result<RemoteFailure, CallError>>,
        timeout: Duration,
    ) -> Result<A::Reply, CallError> {
        match result {
            Err(Err(e)) => Err(e),
            Ok(bytes) => (self.decode)(&bytes).map_err(CallError::Codec),
            Err(Ok(failure)) => Err(match failure {
                RemoteFailure::NoSuchActor(n) => CallError::NoSuchActor(ExportId::describe(&n)),
                RemoteFailure::NotDelivered => {
                    CallError::NoSuchActor(ExportId::describe(&self.name))
                }
                RemoteFailure::UnknownActorType { expected, found } => {
                    CallError::UnknownActorType { expected, found }
                }
                RemoteFailure::Decode(m) => CallError::Codec(m),
                RemoteFailure::Exited => CallError::NodeDown(self.peer.to_string()),
                RemoteFailure::Failed(m) => CallError::Failed(ExitReason::Error(m.into())),
                RemoteFailure::Timeout => CallError::Timeout(timeout),
                RemoteFailure::UnknownType(m)
                | RemoteFailure::AlreadyStarted(m)
                | RemoteFailure::StartFailed(m) => CallError::Failed(ExitReason::Error(m.into())),
            }),
        }
    }
}

/// A request's entry in the pending table, removed when this is dropped unless the reply (or
/// the connection's end) took it: the table holds only the calls someone still waits for, so it
/// is bounded by the calls in progress, not by the calls ever given up on.
struct PendingEntry<'a> {
    table: &'a Mutex<HashMap<u64, Pending>>,
    /// `None` once the entry was taken.
    id: Option<u64>,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(self.table).remove(&id);
        }
    }
}

/// Why a request got no reply (see [`Transport::request`]).
#[derive(Debug)]
pub(crate) enum RequestError<E> {
    /// The request could not be queued.
    Send(E),
    /// The connection to the peer was lost (the request may or may not have been handled).
    Lost,
    /// No reply in time (the request may or may not have been handled).
    Timeout,
}

impl Transport {
    /// Tells the peers that the monitors `pruned` (every reference they stood for was dropped
    /// here) are no longer needed: one [`Frame::Demonitor`] per peer and [`wire::MAX_DEMONITORS`]
    /// ids, from a task that must not wait (queued behind the backlog if the lane is full).
    fn demonitor(&self, pruned: Vec<(NodeId, u64)>) {
        let mut by_peer: HashMap<NodeId, Vec<u64>> = HashMap::new();
        for (peer, mid) in pruned {
            by_peer.entry(peer).or_default().push(mid);
        }
        for (peer, mids) in by_peer {
            let Some(p) = self.peer(&peer) else {
                continue;
            };
            for chunk in mids.chunks(wire::MAX_DEMONITORS) {
                p.control_from_actor(Frame::Demonitor {
                    mids: chunk.to_vec(),
                });
            }
        }
    }

    /// One request to `peer`, the one path every request with a reply takes (remote calls,
    /// supervisors' start, stop and list, ...): a fresh id and a pending entry that the reply
    /// completes; `send(id)` queues the request frame; waits for the reply at most `timeout`.
    /// The pending entry never outlives the request, also when the caller drops it before the
    /// answer (a frame never sent, or one whose answer never comes, would otherwise keep it).
    pub(crate) async fn request<E, F, Fut>(
        &self,
        peer: &NodeId,
        timeout: Duration,
        send: F,
    ) -> Result<Result<Vec<u8>, RemoteFailure>, RequestError<E>>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            id,
            Pending {
                peer: peer.clone(),
                tx,
            },
        );
        // Removes the entry however the request ends without its answer: an error, the timeout,
        // or the caller dropping this future (a `select!`, a timeout of its own).
        let mut entry = PendingEntry {
            table: &self.pending,
            id: Some(id),
        };
        let exchange = async {
            send(id).await.map_err(RequestError::Send)?;
            let answer = rx.await;
            // Taken by the reply, or by the connection's end (which drops it unanswered).
            entry.id = None;
            answer.map_err(|_| RequestError::Lost)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout))
    }

    /// See `Node::remote`.
    pub(in crate::cluster) fn remote<A: RemoteActor>(
        self: &Arc<Self>,
        peer: &NodeId,
        name: &str,
    ) -> ActorRef<A> {
        self.remote_ref(peer, name, true)
    }

    /// The local actor exported as `name` with type `A`, if any.
    pub(in crate::cluster) fn local_export<A: RemoteActor>(
        &self,
        name: &str,
    ) -> Option<ActorRef<A>> {
        self.export(name).and_then(|e| {
            e.any()
                .downcast_ref::<TypedExport<A>>()
                .map(|t| t.0.clone())
        })
    }

    /// [`Transport::remote`]; without `monitor`, a transient reference for one request: no monitor
    /// is set up, so its handle does not follow the remote actor's exit.
    /// A route to the actor exported as `name` on `peer`, for requests only (no handle, no
    /// monitor).
    pub(in crate::cluster) fn route<A: RemoteActor>(
        self: &Arc<Self>,
        peer: &NodeId,
        name: &str,
    ) -> RemoteRoute<A> {
        RemoteRoute::new(self, peer, name)
    }

    pub(in crate::cluster) fn remote_ref<A: RemoteActor>(
        self: &Arc<Self>,
        peer: &NodeId,
        name: &str,
        monitor: bool,
    ) -> ActorRef<A> {
        if *peer == self.id {
            if let Some(local) = self.export(name).and_then(|e| {
                e.any()
                    .downcast_ref::<TypedExport<A>>()
                    .map(|t| t.0.clone())
            }) {
                return local;
            }
        }
        let proxy = Cell::new();
        let route = Arc::new(RemoteRoute::new(self, peer, name));
        if !monitor {
            // Nothing watches the remote actor: the handle stays "alive"; requests still fail
            // with typed errors.
        } else if *peer != self.id {
            let mid = self.next_id.fetch_add(1, Ordering::Relaxed);
            let pruned = lock(&self.proxies).insert((peer.clone(), mid), Arc::downgrade(&proxy));
            self.demonitor(pruned);
            match self.peer(peer) {
                Some(p) => p.control_from_actor(Frame::Monitor {
                    mid,
                    name: name.to_owned(),
                }),
                None => proxy.finish(ExitReason::NodeDown(peer.as_str().into())),
            }
        } else {
            self.monitor_local(name, Arc::downgrade(&proxy));
        }
        ActorRef::remote(route, proxy)
    }
}

impl<A: Actor> crate::actor_ref::RemoteSend<A> for RemoteRoute<A> {
    fn cast(&self, msg: A::Msg) -> crate::actor_ref::BoxFut<'_, Result<(), SendError>> {
        Box::pin(RemoteRoute::cast(self, msg))
    }

    fn try_cast(&self, msg: A::Msg) -> Result<(), TrySendError<A::Msg>> {
        RemoteRoute::try_cast(self, msg)
    }

    fn call(
        &self,
        msg: A::Msg,
        timeout: Duration,
    ) -> crate::actor_ref::BoxFut<'_, Result<A::Reply, CallError>> {
        Box::pin(RemoteRoute::call(self, msg, timeout))
    }
}
