//! The handshake (shared secret or mutual TLS) and the listener: until a connection's peer is
//! authenticated it holds one of `max_handshakes` slots for at most `handshake_timeout`, and its
//! messages are at most [`wire::HANDSHAKE_MAX_FRAME`] bytes.

use super::*;

pub(super) fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

/// The framing of a connection until its peer is authenticated: a length prefix over
/// [`wire::HANDSHAKE_MAX_FRAME`] is refused before any room is reserved for it (the codec
/// reserves what a prefix announces, up to its limit).
pub(crate) fn handshake_codec() -> LengthDelimitedCodec {
    codec(wire::HANDSHAKE_MAX_FRAME)
}

pub(super) async fn read_plain<T: DeserializeOwned>(
    reader: &mut FramedRead<ReadHalf, LengthDelimitedCodec>,
) -> Result<T, WireError> {
    match reader.next().await {
        Some(Ok(bytes)) => wire::decode(&bytes),
        Some(Err(e)) => Err(io_error(e)),
        None => Err(WireError::Malformed(
            "connection closed during handshake".into(),
        )),
    }
}

pub(super) async fn write_plain<T: Serialize>(
    writer: &mut FramedWrite<WriteHalf, LengthDelimitedCodec>,
    value: &T,
) -> Result<(), WireError> {
    writer
        .send(Bytes::from(wire::encode(value)))
        .await
        .map_err(io_error)
}

/// A read or write failure during the handshake; TLS refusals (an alert from the peer, a
/// certificate we reject) keep their TLS meaning.
pub(super) fn io_error(e: std::io::Error) -> WireError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => WireError::Tls(t.to_string()),
        None => WireError::Malformed(e.to_string()),
    }
}

/// The byte stream under a connection: plain TCP, or TLS over TCP.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub(super) type ReadHalf = tokio::io::ReadHalf<Box<dyn Stream>>;
pub(super) type WriteHalf = tokio::io::WriteHalf<Box<dyn Stream>>;

/// The two halves of a connection, framed for the handshake ([`handshake_codec`]).
pub(super) fn split(
    stream: Box<dyn Stream>,
) -> (
    FramedRead<ReadHalf, LengthDelimitedCodec>,
    FramedWrite<WriteHalf, LengthDelimitedCodec>,
) {
    let (r, w) = tokio::io::split(stream);
    (
        FramedRead::new(r, handshake_codec()),
        FramedWrite::new(w, handshake_codec()),
    )
}

/// The peer proved who it is: from now on its records may be as large as the frame limit.
/// (The reader has decoded nothing past the handshake's last message yet: it decodes a frame
/// only when asked for one.)
fn authenticated(
    reader: &mut FramedRead<ReadHalf, LengthDelimitedCodec>,
    writer: &mut FramedWrite<WriteHalf, LengthDelimitedCodec>,
    max_frame: usize,
) {
    reader.decoder_mut().set_max_frame_length(max_frame);
    writer.encoder_mut().set_max_frame_length(max_frame);
}

pub(super) fn nonce() -> [u8; 32] {
    // Handshakes are rare: a fresh OS-seeded generator each time keeps no global RNG state.
    let mut n = [0u8; 32];
    match rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng) {
        Ok(mut rng) => rng.fill(&mut n),
        // No OS entropy: the handshake still authenticates (MACs), only nonce freshness suffers.
        Err(_) => n = *blake3::hash(&std::process::id().to_le_bytes()).as_bytes(),
    }
    n
}

pub(super) async fn dial(
    shared: &Transport,
    expected: &NodeId,
    addr: SocketAddr,
) -> Result<Conn, WireError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| WireError::Malformed(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let stream: Box<dyn Stream> = match &shared.opts.security {
        Security::SharedSecret => Box::new(stream),
        Security::Tls(t) => {
            // The acceptor's certificate must chain to the CA and carry the name we dial.
            let name =
                tls::server_name(expected.as_str()).map_err(|e| WireError::Tls(e.to_string()))?;
            Box::new(
                t.connector()
                    .connect(name, stream)
                    .await
                    .map_err(io_error)?,
            )
        }
    };
    let (mut reader, mut writer) = split(stream);
    let hello = Hello {
        magic: wire::MAGIC,
        version: wire::PROTOCOL_VERSION,
        node: shared.id.to_string(),
        incarnation: shared.incarnation.get(),
        nonce: nonce(),
    };
    write_plain(&mut writer, &hello).await?;
    let ack: HelloAck = read_plain(&mut reader).await?;
    let auth = wire::verify_ack(&shared.key, &hello, &ack)?;
    if ack.node != expected.as_str() {
        return Err(WireError::Malformed(format!(
            "dialed {expected} at {addr} but {} answered",
            ack.node
        )));
    }
    write_plain(&mut writer, &auth).await?;
    authenticated(&mut reader, &mut writer, shared.opts.max_frame);
    let (sealer, opener) = match shared.opts.security {
        Security::SharedSecret => wire::session(&shared.key, Role::Dialer, &hello, &ack),
        Security::Tls(_) => (Sealer::unsealed(), Opener::unsealed()),
    };
    Ok(Conn {
        reader,
        writer,
        sealer,
        opener,
        incarnation: ack.incarnation,
    })
}

/// First byte of a TLS connection (the content type of a handshake record). A shared-secret hello
/// starts with its 4-byte big-endian length, whose first byte is 0 for any frame under 16 MiB.
pub(super) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

pub(super) async fn accept(
    shared: &Transport,
    stream: TcpStream,
) -> Result<(NodeId, Conn), WireError> {
    let _ = stream.set_nodelay(true);
    // A peer in the other security mode would otherwise fail with a puzzling decode error.
    let mut first = [0u8; 1];
    let peeked = stream.peek(&mut first).await.map_err(io_error)?;
    let speaks_tls = peeked == 1 && first[0] == TLS_HANDSHAKE_RECORD;
    match (&shared.opts.security, speaks_tls) {
        (Security::SharedSecret, true) => {
            return Err(WireError::Tls(
                "peer speaks TLS but this node is in shared-secret mode (set tls_ca, tls_cert, tls_key)"
                    .into(),
            ))
        }
        (Security::Tls(_), false) if peeked > 0 => {
            return Err(WireError::Tls(
                "peer does not speak TLS; is it in shared-secret mode?".into(),
            ))
        }
        _ => {}
    }
    // In TLS mode, the client certificate the CA vouched for (the handshake requires one).
    let mut certified = None;
    let stream: Box<dyn Stream> = match &shared.opts.security {
        Security::SharedSecret => Box::new(stream),
        Security::Tls(t) => {
            let tls = t.acceptor().accept(stream).await.map_err(io_error)?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .cloned()
                .ok_or_else(|| WireError::Tls("peer presented no certificate".into()))?;
            certified = Some(cert);
            Box::new(tls)
        }
    };
    let (mut reader, mut writer) = split(stream);
    let hello: Hello = read_plain(&mut reader).await?;
    wire::check_hello(&hello)?;
    let peer = NodeId::new(&hello.node).map_err(|e| WireError::Malformed(e.to_string()))?;
    if let Some(cert) = &certified {
        // A node speaks only as the name it was issued.
        if !tls::certified_as(cert, peer.as_str()) {
            return Err(WireError::NotCertified {
                claimed: hello.node,
                certified: tls::cert_names(cert),
            });
        }
    }
    let mut ack = HelloAck {
        version: wire::PROTOCOL_VERSION,
        node: shared.id.to_string(),
        incarnation: shared.incarnation.get(),
        nonce: nonce(),
        mac: [0; 32],
    };
    wire::sign_ack(&shared.key, &hello, &mut ack);
    write_plain(&mut writer, &ack).await?;
    let auth: Auth = read_plain(&mut reader).await?;
    wire::verify_auth(&shared.key, &hello, &ack, &auth)?;
    authenticated(&mut reader, &mut writer, shared.opts.max_frame);
    let (sealer, opener) = match shared.opts.security {
        Security::SharedSecret => wire::session(&shared.key, Role::Acceptor, &hello, &ack),
        Security::Tls(_) => (Sealer::unsealed(), Opener::unsealed()),
    };
    Ok((
        peer,
        Conn {
            reader,
            writer,
            sealer,
            opener,
            incarnation: hello.incarnation,
        },
    ))
}

pub(super) async fn accept_loop(
    shared: Weak<Transport>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Until it is authenticated, a connection costs this node a task, buffers and a slot;
        // past the bound a new one is closed at once, before anything is read from it.
        let Ok(slot) = shared.handshakes.clone().try_acquire_owned() else {
            shared.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            shared.log_refusal(
                addr,
                format!(
                    "{} handshakes in progress (max_handshakes); closed at once",
                    shared.opts.max_handshakes
                ),
            );
            continue;
        };
        shared.tasks.clone().spawn(async move {
            let timeout = shared.opts.handshake_timeout;
            let handshake = tokio::select! {
                // A node shutting down does not wait for handshakes in progress.
                _ = shared.stop.cancelled() => return,
                h = tokio::time::timeout(timeout, accept(&shared, stream)) => h,
            };
            // Authenticated (or failed): the slot is free for the next connection.
            drop(slot);
            if !matches!(handshake, Ok(Ok(_))) {
                shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            }
            match handshake {
                Ok(Ok((peer, conn))) if peer == shared.id => {
                    tracing::warn!(%addr, %peer, incarnation = conn.incarnation, "refused connection: peer claims our own name");
                }
                Ok(Ok((peer, conn))) => {
                    if shared.view.admits(&peer, Incarnation(conn.incarnation)) {
                        let link = shared.link(&peer);
                        let _ = link.inbound.send(conn).await;
                    } else {
                        shared.log_refusal(
                            addr,
                            format!(
                                "{peer} was declared down; it must rejoin the membership first"
                            ),
                        );
                    }
                }
                Ok(Err(e)) => shared.log_refusal(addr, e.to_string()),
                Err(_) => shared.log_refusal(addr, "handshake timed out".into()),
            }
        });
    }
}

/// Whether a failed dial was the peer (or we) refusing the other's identity, as opposed to the
/// network failing: refusals are logged at warn.
pub(super) fn is_refusal(e: &WireError) -> bool {
    matches!(
        e,
        WireError::Tls(_)
            | WireError::NotCertified { .. }
            | WireError::Unauthenticated
            | WireError::Version { .. }
    )
}

impl Transport {
    /// Log an incoming connection refused: at warn the first time per address and reason in
    /// [`REFUSAL_LOG_INTERVAL`], at debug otherwise.
    pub(super) fn log_refusal(&self, addr: SocketAddr, why: String) {
        let now = tokio::time::Instant::now();
        let fresh = {
            let mut seen = lock(&self.refusals);
            if seen.len() >= REFUSAL_LOG_KEYS {
                seen.clear();
            }
            match seen.entry((addr.ip(), why.clone())) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let stale = now.duration_since(*e.get()) >= REFUSAL_LOG_INTERVAL;
                    if stale {
                        e.insert(now);
                    }
                    stale
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(now);
                    true
                }
            }
        };
        if fresh {
            tracing::warn!(%addr, error = %why, "refused connection");
        } else {
            tracing::debug!(%addr, error = %why, "refused connection");
        }
    }
}
