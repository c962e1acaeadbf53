//! What travels between nodes: the handshake, the session seal, and the frames.
//!
//! A connection starts with a three-message handshake in the clear (version and identities, fresh
//! nonces, and MACs keyed by the cluster secret that prove both sides hold it without revealing it).
//! Every frame after that is sealed with AES-256-GCM (ring's constant-time implementation, using the
//! CPU's AES and carry-less multiply instructions where present) under a per-connection, per-direction key
//! derived from the secret and both nonces, with a frame counter as nonce. So every frame — not only
//! the handshake — is authenticated (Erlang's cookie only guards the handshake, which is known to be
//! open to takeover), frames cannot be replayed into another connection or reordered within one, and
//! nothing is readable without the secret.
//!
//! In TLS mode ([`super::tls`]) the same handshake runs inside TLS (for the version and the
//! incarnations) and records are not sealed again: see [`Sealer::unsealed`].
//!
//! Decoding is total: any byte string yields a value or a typed [`WireError`], never a panic (see the
//! property tests).

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};

/// Version of the node-to-node protocol, checked in the handshake.
pub const PROTOCOL_VERSION: u16 = 11;

/// First bytes of every handshake hello.
pub const MAGIC: [u8; 4] = *b"THRG";

/// Largest handshake message ([`Hello`], [`HelloAck`], [`Auth`]) a node reads: with the longest
/// node name ([`throng_core::NodeId::MAX_LEN`]) a hello or an ack takes about 340 bytes. The
/// handshake's length-prefixed framing refuses a longer prefix before reserving room for it, so an
/// unauthenticated peer claiming a frame of `max_frame` bytes (8 MiB by default) costs the node
/// nothing; the limit rises to `max_frame` once the peer is authenticated.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;

/// A malformed, forged or incompatible message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes do not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The peer does not hold the cluster secret (bad MAC or bad seal).
    #[error("peer is not authenticated with this cluster's secret")]
    Unauthenticated,
    /// The TLS layer refused the peer or failed (TLS mode).
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer's hello claims a node name its TLS certificate is not issued for (TLS mode).
    #[error("peer claims node name {claimed:?} but its certificate is for {certified:?}")]
    NotCertified {
        /// The name in the hello.
        claimed: String,
        /// The DNS names on the peer's certificate.
        certified: Vec<String>,
    },
    /// The message is too large to send.
    #[error("message of {size} bytes exceeds the {max}-byte frame limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// The long-term key every node derives from the cluster secret.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derive the transport key from the shared cluster secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        ClusterKey(blake3::derive_key("throng 2026-11 transport v1", secret))
    }

    fn mac(&self, label: &[u8], transcript: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(label);
        h.update(transcript);
        *h.finalize().as_bytes()
    }
}

/// First handshake message, from the dialing node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Sender's node name.
    pub node: String,
    /// Sender's incarnation.
    pub incarnation: u64,
    /// Fresh random nonce.
    pub nonce: [u8; 32],
}

/// Second handshake message, from the accepting node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Sender's node name.
    pub node: String,
    /// Sender's incarnation.
    pub incarnation: u64,
    /// Fresh random nonce.
    pub nonce: [u8; 32],
    /// Proof that the acceptor holds the cluster key, over the transcript.
    pub mac: [u8; 32],
}

/// Third handshake message: the dialer's proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// Proof that the dialer holds the cluster key, over the transcript.
    pub mac: [u8; 32],
}

/// Why a remote request failed on the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteFailure {
    /// No actor is exported under this name there.
    NoSuchActor(String),
    /// The name is exported by an actor of another type.
    UnknownActorType {
        /// The type the caller addressed.
        expected: String,
        /// The type registered there.
        found: String,
    },
    /// The message (or reply) did not decode.
    Decode(String),
    /// The actor exited before replying.
    Exited,
    /// The handler failed; the actor stopped with this reason.
    Failed(String),
    /// The actor did not reply in time on its node.
    Timeout,
    /// The node has no actor type registered under this name.
    UnknownType(String),
    /// A child with this key already runs there.
    AlreadyStarted(String),
    /// The child failed to start there (its `started` hook or args).
    StartFailed(String),
    /// The actor refused the message (it is stopping or moving): nothing was delivered, so the
    /// caller may safely send it again (to the key's new owner).
    NotDelivered,
}

/// An exit reason as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireExit {
    /// [`crate::ExitReason::Normal`].
    Normal,
    /// [`crate::ExitReason::Shutdown`].
    Shutdown,
    /// [`crate::ExitReason::Killed`].
    Killed,
    /// [`crate::ExitReason::NoProc`].
    NoProc,
    /// [`crate::ExitReason::Panic`].
    Panic(String),
    /// [`crate::ExitReason::Error`].
    Error(String),
    /// Any other reason, as text.
    Other(String),
}

impl From<&crate::ExitReason> for WireExit {
    fn from(r: &crate::ExitReason) -> Self {
        use crate::ExitReason as E;
        match r {
            E::Normal => WireExit::Normal,
            E::Shutdown => WireExit::Shutdown,
            E::Killed => WireExit::Killed,
            E::NoProc => WireExit::NoProc,
            E::Panic(m) => WireExit::Panic(m.to_string()),
            E::Error(m) => WireExit::Error(m.to_string()),
            other => WireExit::Other(other.to_string()),
        }
    }
}

impl From<WireExit> for crate::ExitReason {
    fn from(w: WireExit) -> Self {
        use crate::ExitReason as E;
        match w {
            WireExit::Normal => E::Normal,
            WireExit::Shutdown => E::Shutdown,
            WireExit::Killed => E::Killed,
            WireExit::NoProc => E::NoProc,
            WireExit::Panic(m) => E::Panic(m.into()),
            WireExit::Error(m) | WireExit::Other(m) => E::Error(m.into()),
        }
    }
}

/// A sealed frame's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Deliver `body` (a serialized message) to the actor exported as `to`.
    Request {
        /// Correlates the reply; 0 for a cast.
        id: u64,
        /// Export name.
        to: String,
        /// The actor type the caller expects ([`crate::cluster::RemoteActor::TYPE`]).
        actor_type: String,
        /// The serialized message.
        body: Vec<u8>,
        /// Milliseconds the caller waits; 0 for a cast.
        timeout_ms: u64,
    },
    /// Watch the actor exported as `name`: the receiver answers with [`Frame::Down`] when it exits
    /// (at once with `NoProc` if there is none).
    Monitor {
        /// Monitor id chosen by the watcher.
        mid: u64,
        /// Export name.
        name: String,
    },
    /// A monitored actor exited.
    Down {
        /// The monitor id.
        mid: u64,
        /// Why.
        reason: WireExit,
    },
    /// A piece of a frame too large to send at once (see [`CHUNK_SIZE`]): its encoding split in
    /// order; `last` completes it. Whole frames (control traffic) may travel between the pieces,
    /// which is why large messages never hold up small ones for longer than one chunk.
    Chunk {
        /// Whether this piece completes the frame.
        last: bool,
        /// The piece.
        bytes: Vec<u8>,
    },
    /// The outcome of a call.
    Reply {
        /// The request's id.
        id: u64,
        /// The serialized reply, or why there is none.
        result: Result<Vec<u8>, RemoteFailure>,
    },
    /// Start a distributed child on the receiving node (its owner in the sender's view); answered
    /// with a [`Frame::Reply`] carrying `Result<(), StartError>`.
    Start {
        /// Correlates the reply.
        id: u64,
        /// The distributed supervisor's name.
        sup: String,
        /// What the child is started from (`throng_core::directory::StartSpec`: its owner draws
        /// its generation and makes its record), encoded.
        record: Vec<u8>,
    },
    /// Terminate (stop for good) the distributed child `key` on its owner; answered with a
    /// [`Frame::Reply`] carrying `Result<(), StartError>`.
    Stop {
        /// Correlates the reply.
        id: u64,
        /// The distributed supervisor's name.
        sup: String,
        /// The child's key.
        key: String,
    },
    /// List the distributed children of `sup` running on the receiver; the reply carries
    /// `Vec<(key, actor type)>`.
    List {
        /// Correlates the reply.
        id: u64,
        /// The distributed supervisor's name.
        sup: String,
    },
    /// Messages between the directories of supervisor `sup`, in the order sent: the encoding of
    /// a `Vec<throng_core::directory::DirMsg>` ([`DirBatch`]).
    Dir {
        /// The distributed supervisor's name.
        sup: String,
        /// The encoded messages ([`DirBatch::finish`], read by [`decode_dir_batch`]).
        msg: Vec<u8>,
    },
    /// A message between the name registries of two nodes (see [`crate::cluster::names`]).
    Names {
        /// The encoded message.
        msg: Vec<u8>,
    },
    /// From now on, on this link and in this direction, `route` stands for the export `to` of type
    /// `actor_type` (at most [`MAX_ROUTES`] per link; see [`Frame::Cast`]). A route is bound before
    /// its first use, in the same lane, and bound again at the start of every new connection.
    Bind {
        /// The route number, below [`MAX_ROUTES`].
        route: u32,
        /// Export name.
        to: String,
        /// The actor type the sender expects.
        actor_type: String,
    },
    /// A cast through a bound route: a [`Frame::Request`] with id 0 without the name and type.
    Cast {
        /// The route, bound earlier by a [`Frame::Bind`].
        route: u32,
        /// The serialized message.
        body: Vec<u8>,
    },
    /// The watcher no longer needs the [`Frame::Monitor`]s `mids` (every reference they stood
    /// for was dropped): the receiver forgets them, and sends no [`Frame::Down`] for them. At
    /// most [`MAX_DEMONITORS`] per frame.
    Demonitor {
        /// Monitor ids.
        mids: Vec<u64>,
    },
}

/// Monitor ids a [`Frame::Demonitor`] carries at most.
pub const MAX_DEMONITORS: usize = 8192;

/// Routes a link binds at most in each direction ([`Frame::Bind`]); casts to further actors carry
/// their names.
pub const MAX_ROUTES: u32 = 1024;

/// Bytes of names and types a link binds at most in each direction (beyond, casts carry names).
pub const MAX_ROUTE_BYTES: usize = 256 * 1024;

/// A frame decoded in place: the hot variants borrow their strings and bytes from the record
/// instead of allocating (same encoding as [`Frame`], variant for variant).
#[derive(Debug, Deserialize)]
pub enum FrameRef<'a> {
    /// See [`Frame::Request`].
    Request {
        /// Correlates the reply; 0 for a cast.
        id: u64,
        /// Export name.
        to: &'a str,
        /// The actor type the caller expects.
        actor_type: &'a str,
        /// The serialized message.
        body: &'a [u8],
        /// Milliseconds the caller waits; 0 for a cast.
        timeout_ms: u64,
    },
    /// See [`Frame::Monitor`].
    Monitor {
        /// Monitor id.
        mid: u64,
        /// Export name.
        name: String,
    },
    /// See [`Frame::Down`].
    Down {
        /// Monitor id.
        mid: u64,
        /// Why.
        reason: WireExit,
    },
    /// See [`Frame::Chunk`].
    Chunk {
        /// Whether this piece completes the frame.
        last: bool,
        /// The piece.
        bytes: &'a [u8],
    },
    /// See [`Frame::Reply`].
    Reply {
        /// The request's id.
        id: u64,
        /// The reply or the failure.
        result: Result<Vec<u8>, RemoteFailure>,
    },
    /// See [`Frame::Start`].
    Start {
        /// Correlates the reply.
        id: u64,
        /// The supervisor.
        sup: &'a str,
        /// The encoded start spec.
        record: &'a [u8],
    },
    /// See [`Frame::Stop`].
    Stop {
        /// Correlates the reply.
        id: u64,
        /// The supervisor.
        sup: &'a str,
        /// The child's key.
        key: &'a str,
    },
    /// See [`Frame::List`].
    List {
        /// Correlates the reply.
        id: u64,
        /// The supervisor.
        sup: &'a str,
    },
    /// See [`Frame::Dir`].
    Dir {
        /// The supervisor.
        sup: &'a str,
        /// The encoded message.
        msg: &'a [u8],
    },
    /// See [`Frame::Names`].
    Names {
        /// The encoded message.
        msg: &'a [u8],
    },
    /// See [`Frame::Bind`].
    Bind {
        /// The route number.
        route: u32,
        /// Export name.
        to: &'a str,
        /// The actor type the sender expects.
        actor_type: &'a str,
    },
    /// See [`Frame::Cast`].
    Cast {
        /// The route.
        route: u32,
        /// The serialized message.
        body: &'a [u8],
    },
    /// See [`Frame::Demonitor`].
    Demonitor {
        /// Monitor ids.
        mids: Vec<u64>,
    },
}

impl FrameRef<'_> {
    /// An owned copy.
    pub fn into_owned(self) -> Frame {
        match self {
            FrameRef::Request {
                id,
                to,
                actor_type,
                body,
                timeout_ms,
            } => Frame::Request {
                id,
                to: to.to_owned(),
                actor_type: actor_type.to_owned(),
                body: body.to_vec(),
                timeout_ms,
            },
            FrameRef::Monitor { mid, name } => Frame::Monitor { mid, name },
            FrameRef::Down { mid, reason } => Frame::Down { mid, reason },
            FrameRef::Chunk { last, bytes } => Frame::Chunk {
                last,
                bytes: bytes.to_vec(),
            },
            FrameRef::Reply { id, result } => Frame::Reply { id, result },
            FrameRef::Start { id, sup, record } => Frame::Start {
                id,
                sup: sup.to_owned(),
                record: record.to_vec(),
            },
            FrameRef::Stop { id, sup, key } => Frame::Stop {
                id,
                sup: sup.to_owned(),
                key: key.to_owned(),
            },
            FrameRef::List { id, sup } => Frame::List {
                id,
                sup: sup.to_owned(),
            },
            FrameRef::Dir { sup, msg } => Frame::Dir {
                sup: sup.to_owned(),
                msg: msg.to_vec(),
            },
            FrameRef::Names { msg } => Frame::Names { msg: msg.to_vec() },
            FrameRef::Bind {
                route,
                to,
                actor_type,
            } => Frame::Bind {
                route,
                to: to.to_owned(),
                actor_type: actor_type.to_owned(),
            },
            FrameRef::Cast { route, body } => Frame::Cast {
                route,
                body: body.to_vec(),
            },
            FrameRef::Demonitor { mids } => Frame::Demonitor { mids },
        }
    }
}

/// Frames whose encoding exceeds this (or the frame limit, if smaller) are sent as
/// [`Frame::Chunk`] pieces of at most this size.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Bytes a frame adds to a record besides its encoding (its length prefix).
pub const FRAME_PREFIX: usize = 4;

/// Append `frame` to a record: frames travel in sealed *records* of one or more frames, so that a
/// burst of small messages costs one seal and one write, not one each.
pub fn push_frame(record: &mut Vec<u8>, frame: &Frame) {
    let start = record.len();
    record.extend_from_slice(&[0; FRAME_PREFIX]);
    // Serializing these types into a Vec cannot fail.
    let _ = append(record, frame);
    let len = (record.len() - start - FRAME_PREFIX) as u32;
    record[start..start + FRAME_PREFIX].copy_from_slice(&len.to_le_bytes());
}

/// A postcard output that appends to a `Vec` (postcard's `to_extend` goes byte by byte).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Append the postcard encoding of `value` to `buf`. On error `buf` may hold part of it: callers
/// truncate.
pub fn append<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), postcard::Error> {
    postcard::serialize_with_flavor(value, Append(buf))
}

/// Directory messages for one peer, gathered while a supervisor's driver handles its inputs and
/// sent as one [`Frame::Dir`]: a burst (a reconnection's reconciliation re-sends a message per
/// shared key; a start storm replicates every new child) costs a frame per [`DIR_BATCH_BYTES`],
/// not per message, in the sender's backlog and on the wire.
#[derive(Debug, Default)]
pub struct DirBatch {
    count: usize,
    bytes: Vec<u8>,
}

/// A [`DirBatch`] is sent once it holds this many bytes (a larger message goes alone).
pub const DIR_BATCH_BYTES: usize = 64 * 1024;

impl DirBatch {
    /// Append `msg`. An unencodable message is dropped, with an error returned.
    pub fn push(&mut self, msg: &throng_core::directory::DirMsg) -> Result<(), postcard::Error> {
        let len = self.bytes.len();
        append(&mut self.bytes, msg).inspect_err(|_| self.bytes.truncate(len))?;
        self.count += 1;
        Ok(())
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether it is due to be sent ([`DIR_BATCH_BYTES`]).
    pub fn is_full(&self) -> bool {
        self.bytes.len() >= DIR_BATCH_BYTES
    }

    /// The messages gathered, encoded as a `Vec<DirMsg>` (the payload of a [`Frame::Dir`]);
    /// the batch is left empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 5);
        // A sequence's length prefix (a varint), then its elements: postcard's `Vec` encoding.
        let _ = append(&mut out, &self.count);
        out.append(&mut self.bytes);
        self.count = 0;
        out
    }
}

/// The messages of a [`Frame::Dir`] payload, in order. Decoded one by one: the claimed count
/// reserves nothing (a short payload claiming many messages costs only what it holds).
pub fn decode_dir_batch(msg: &[u8]) -> Result<Vec<throng_core::directory::DirMsg>, WireError> {
    let malformed = |e: postcard::Error| WireError::Malformed(e.to_string());
    let (count, mut rest): (usize, &[u8]) = postcard::take_from_bytes(msg).map_err(malformed)?;
    if count > rest.len() {
        return Err(WireError::Malformed(format!(
            "a batch of {count} directory messages in {} bytes",
            rest.len()
        )));
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let (m, r) = postcard::take_from_bytes(rest).map_err(malformed)?;
        out.push(m);
        rest = r;
    }
    Ok(out)
}

/// The size of `value`'s encoding (a pass that writes nothing): what senders check against the
/// frame limit before encoding, and pass to the `append_*` functions below.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, postcard::Error> {
    postcard::experimental::serialized_size(value)
}

/// Append `value`, whose encoding is `len` bytes ([`encoded_len`]), the way a `Vec<u8>` field
/// holding its encoding is: length, then bytes. This is how senders embed a message in a frame
/// without encoding it into a buffer of its own.
fn append_embedded<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
    len: usize,
) -> Result<(), postcard::Error> {
    append(buf, &len)?;
    let before = buf.len();
    append(buf, value)?;
    if buf.len() - before != len {
        // A `Serialize` impl that writes differently on two passes.
        return Err(postcard::Error::SerializeSeqLengthUnknown);
    }
    Ok(())
}

/// Index of [`Frame::Request`] among the variants (postcard encodes a variant as its index).
const REQUEST_VARIANT: u32 = 0;
/// Index of [`Frame::Cast`].
const CAST_VARIANT: u32 = 11;

/// Append the encoding of a [`Frame::Cast`] whose body is the encoding of `msg` (`len` bytes, see
/// [`encoded_len`]), without building it.
pub fn append_cast<M: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    route: u32,
    msg: &M,
    len: usize,
) -> Result<(), postcard::Error> {
    append(buf, &(CAST_VARIANT, route))?;
    append_embedded(buf, msg, len)
}

/// Append the encoding of a [`Frame::Request`] whose body is the encoding of `msg` (`len` bytes,
/// see [`encoded_len`]), the same bytes as encoding the frame, without building it (no copy of the
/// name, type or body).
pub fn append_request<M: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    id: u64,
    to: &str,
    actor_type: &str,
    msg: &M,
    len: usize,
    timeout_ms: u64,
) -> Result<(), postcard::Error> {
    append(buf, &(REQUEST_VARIANT, id, to, actor_type))?;
    append_embedded(buf, msg, len)?;
    append(buf, &timeout_ms)
}

/// [`append_request`] with the body already encoded.
pub fn append_request_bytes(
    buf: &mut Vec<u8>,
    id: u64,
    to: &str,
    actor_type: &str,
    body: &[u8],
    timeout_ms: u64,
) -> Result<(), postcard::Error> {
    append(buf, &(REQUEST_VARIANT, id, to, actor_type, body.len()))?;
    buf.extend_from_slice(body);
    append(buf, &timeout_ms)
}

/// The frames of an opened record, in order; a malformed one ends the iteration with an error.
pub fn frames(record: &[u8]) -> impl Iterator<Item = Result<FrameRef<'_>, WireError>> + '_ {
    let mut rest = record;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < FRAME_PREFIX {
            rest = &[];
            return Some(Err(WireError::Malformed("truncated frame length".into())));
        }
        let mut len = [0u8; FRAME_PREFIX];
        len.copy_from_slice(&rest[..FRAME_PREFIX]);
        let len = u32::from_le_bytes(len) as usize;
        let body = &rest[FRAME_PREFIX..];
        if len > body.len() {
            rest = &[];
            return Some(Err(WireError::Malformed(
                "frame longer than its record".into(),
            )));
        }
        rest = &body[len..];
        Some(decode(&body[..len]))
    })
}

/// A frame being reassembled from its [`Frame::Chunk`] pieces, bounded by the frame limit.
#[derive(Debug)]
pub struct Chunks {
    partial: Vec<u8>,
    max_frame: usize,
}

impl Chunks {
    /// Reassembly of frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Chunks {
            partial: Vec::new(),
            max_frame,
        }
    }

    /// Add the next piece. Returns the whole frame's encoding once `last` completes it (decode it
    /// with [`Chunks::decode`], then hand the buffer back with [`Chunks::recycle`]); an error
    /// (the frame would exceed the limit) ends the connection.
    pub fn push(&mut self, last: bool, piece: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        if self.partial.len() + piece.len() > self.max_frame {
            return Err(WireError::TooLarge {
                size: self.partial.len() + piece.len(),
                max: self.max_frame,
            });
        }
        self.partial.extend_from_slice(piece);
        Ok(last.then(|| std::mem::take(&mut self.partial)))
    }

    /// Decode a reassembled frame: any frame but another chunk.
    pub fn decode(whole: &[u8]) -> Result<FrameRef<'_>, WireError> {
        match decode::<FrameRef>(whole)? {
            FrameRef::Chunk { .. } => Err(WireError::Malformed("nested chunk".into())),
            f => Ok(f),
        }
    }

    /// Give back the buffer [`Chunks::push`] returned, so the next frame reuses it (a large one
    /// is shrunk to [`CHUNK_SIZE`]).
    pub fn recycle(&mut self, mut whole: Vec<u8>) {
        whole.clear();
        whole.shrink_to(CHUNK_SIZE);
        self.partial = whole;
    }
}

/// Encode a handshake message or frame.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Decode a handshake message or frame.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Which end of a connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We dialed.
    Dialer,
    /// We accepted.
    Acceptor,
}

fn transcript(hello: &Hello, ack: &HelloAck) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&encode(hello));
    let unsigned = HelloAck {
        mac: [0; 32],
        ..ack.clone()
    };
    h.update(&encode(&unsigned));
    *h.finalize().as_bytes()
}

/// Check a hello's magic and version.
pub fn check_hello(hello: &Hello) -> Result<(), WireError> {
    if hello.magic != MAGIC {
        return Err(WireError::Malformed("not a Throng hello".into()));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(WireError::Version {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        });
    }
    Ok(())
}

/// The acceptor signs its ack.
pub fn sign_ack(key: &ClusterKey, hello: &Hello, ack: &mut HelloAck) {
    ack.mac = [0; 32];
    ack.mac = key.mac(b"acceptor", &transcript(hello, ack));
}

/// The dialer checks the acceptor's proof and produces its own.
pub fn verify_ack(key: &ClusterKey, hello: &Hello, ack: &HelloAck) -> Result<Auth, WireError> {
    if ack.version != PROTOCOL_VERSION {
        return Err(WireError::Version {
            ours: PROTOCOL_VERSION,
            theirs: ack.version,
        });
    }
    let t = transcript(hello, ack);
    if !constant_time_eq(&key.mac(b"acceptor", &t), &ack.mac) {
        return Err(WireError::Unauthenticated);
    }
    Ok(Auth {
        mac: key.mac(b"dialer", &t),
    })
}

/// The acceptor checks the dialer's proof.
pub fn verify_auth(
    key: &ClusterKey,
    hello: &Hello,
    ack: &HelloAck,
    auth: &Auth,
) -> Result<(), WireError> {
    if constant_time_eq(&key.mac(b"dialer", &transcript(hello, ack)), &auth.mac) {
        Ok(())
    } else {
        Err(WireError::Unauthenticated)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // blake3::Hash compares in constant time.
    blake3::Hash::from_bytes(*a) == blake3::Hash::from_bytes(*b)
}

/// Seals outgoing records of one connection direction.
pub struct Sealer {
    cipher: Protection,
    counter: u64,
}

/// Opens incoming records of one connection direction.
pub struct Opener {
    cipher: Protection,
    counter: u64,
}

/// How records of one direction are protected.
enum Protection {
    /// AES-256-GCM under a session key (shared-secret mode); boxed, as its expanded key is large.
    Sealed(Box<LessSafeKey>),
    /// Records travel as they are: the stream under them (TLS) encrypts and authenticates every
    /// byte, in order, so a second seal would add cost and no protection.
    ByTransport,
}

impl Sealer {
    /// A sealer for a connection whose stream already encrypts and authenticates (TLS): records
    /// pass unchanged.
    pub fn unsealed() -> Self {
        Sealer {
            cipher: Protection::ByTransport,
            counter: 0,
        }
    }
}

impl Opener {
    /// The counterpart of [`Sealer::unsealed`].
    pub fn unsealed() -> Self {
        Opener {
            cipher: Protection::ByTransport,
            counter: 0,
        }
    }
}

/// Session keys for both directions, from our point of view.
pub fn session(key: &ClusterKey, role: Role, hello: &Hello, ack: &HelloAck) -> (Sealer, Opener) {
    let t = transcript(hello, ack);
    let d2a = key.mac(b"session dialer->acceptor", &t);
    let a2d = key.mac(b"session acceptor->dialer", &t);
    let (send, recv) = match role {
        Role::Dialer => (d2a, a2d),
        Role::Acceptor => (a2d, d2a),
    };
    (
        Sealer {
            cipher: Protection::Sealed(aead_key(&send)),
            counter: 0,
        },
        Opener {
            cipher: Protection::Sealed(aead_key(&recv)),
            counter: 0,
        },
    )
}

fn aead_key(key: &[u8; 32]) -> Box<LessSafeKey> {
    // A 32-byte key is always valid for AES-256.
    Box::new(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"),
    ))
}

/// Each direction has its own key, and each record of it its own counter: a nonce is never used
/// twice under one key.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Size the seal adds to a frame.
pub const SEAL_OVERHEAD: usize = 16;

impl Sealer {
    /// Seal `plain` in place (it grows by [`SEAL_OVERHEAD`]).
    /// Unsealed ([`Sealer::unsealed`]): unchanged.
    pub fn seal(&mut self, plain: &mut Vec<u8>) -> Result<(), WireError> {
        self.seal_from(plain, 0)
    }

    /// Seal the bytes of `buf` from `start` on in place and append the tag: how the writer seals a
    /// record behind the ones already in its output buffer, with no copy.
    /// Unsealed ([`Sealer::unsealed`]): unchanged.
    pub fn seal_from(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), WireError> {
        let Protection::Sealed(cipher) = &self.cipher else {
            return Ok(());
        };
        let Some(plain) = buf.get_mut(start..) else {
            return Err(WireError::Malformed("record start past its end".into()));
        };
        let tag: Tag = cipher
            .seal_in_place_separate_tag(nonce(self.counter), Aad::empty(), plain)
            .map_err(|_| WireError::Malformed("frame too large to seal".into()))?;
        self.counter += 1;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Bytes the seal adds to a record (0 when the transport protects it).
    pub fn overhead(&self) -> usize {
        match self.cipher {
            Protection::Sealed(_) => SEAL_OVERHEAD,
            Protection::ByTransport => 0,
        }
    }
}

impl Opener {
    /// Open a sealed frame in place. Any tampering, replay or reordering fails authentication.
    /// Unsealed ([`Opener::unsealed`]): unchanged.
    pub fn open(&mut self, sealed: &mut Vec<u8>) -> Result<(), WireError> {
        let len = self.open_in_place(sealed)?;
        sealed.truncate(len);
        Ok(())
    }

    /// Open a sealed record in place; returns the length of its content (the record minus the
    /// tag). Any tampering, replay or reordering fails authentication.
    pub fn open_in_place(&mut self, sealed: &mut [u8]) -> Result<usize, WireError> {
        let Protection::Sealed(cipher) = &self.cipher else {
            return Ok(sealed.len());
        };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(WireError::Unauthenticated);
        }
        let len = cipher
            .open_in_place(nonce(self.counter), Aad::empty(), sealed)
            .map_err(|_| WireError::Unauthenticated)?
            .len();
        self.counter += 1;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: "a".into(),
            incarnation: 1,
            nonce: [1; 32],
        }
    }

    fn ack(key: &ClusterKey, h: &Hello) -> HelloAck {
        let mut a = HelloAck {
            version: PROTOCOL_VERSION,
            node: "b".into(),
            incarnation: 2,
            nonce: [2; 32],
            mac: [0; 32],
        };
        sign_ack(key, h, &mut a);
        a
    }

    /// Every wire type's encoding of a fixed value, as hex: a change here is a change of the
    /// protocol and must come with a new [`PROTOCOL_VERSION`] (and these strings updated).
    fn golden_values() -> Vec<(&'static str, Vec<u8>)> {
        let s = |x: &str| x.to_owned();
        let mut v: Vec<(&'static str, Vec<u8>)> = vec![
            (
                "Hello",
                encode(&Hello {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    node: s("n1"),
                    incarnation: 7,
                    nonce: [1; 32],
                }),
            ),
            (
                "HelloAck",
                encode(&HelloAck {
                    version: PROTOCOL_VERSION,
                    node: s("n2"),
                    incarnation: 8,
                    nonce: [2; 32],
                    mac: [3; 32],
                }),
            ),
            ("Auth", encode(&Auth { mac: [4; 32] })),
        ];
        let failures = [
            RemoteFailure::NoSuchActor(s("a")),
            RemoteFailure::UnknownActorType {
                expected: s("e"),
                found: s("f"),
            },
            RemoteFailure::Decode(s("d")),
            RemoteFailure::Exited,
            RemoteFailure::Failed(s("x")),
            RemoteFailure::Timeout,
            RemoteFailure::UnknownType(s("t")),
            RemoteFailure::AlreadyStarted(s("k")),
            RemoteFailure::StartFailed(s("s")),
            RemoteFailure::NotDelivered,
        ];
        v.extend(failures.iter().map(|f| ("RemoteFailure", encode(f))));
        let exits = [
            WireExit::Normal,
            WireExit::Shutdown,
            WireExit::Killed,
            WireExit::NoProc,
            WireExit::Panic(s("p")),
            WireExit::Error(s("e")),
            WireExit::Other(s("o")),
        ];
        v.extend(exits.iter().map(|e| ("WireExit", encode(e))));
        let frames = [
            Frame::Request {
                id: 1,
                to: s("ua"),
                actor_type: s("t"),
                body: vec![9],
                timeout_ms: 5,
            },
            Frame::Monitor {
                mid: 2,
                name: s("ua"),
            },
            Frame::Down {
                mid: 2,
                reason: WireExit::Killed,
            },
            Frame::Chunk {
                last: true,
                bytes: vec![1, 2],
            },
            Frame::Reply {
                id: 3,
                result: Ok(vec![7]),
            },
            Frame::Reply {
                id: 3,
                result: Err(RemoteFailure::Timeout),
            },
            Frame::Start {
                id: 4,
                sup: s("s"),
                record: vec![8],
            },
            Frame::Stop {
                id: 5,
                sup: s("s"),
                key: s("k"),
            },
            Frame::List { id: 6, sup: s("s") },
            Frame::Dir {
                sup: s("s"),
                msg: vec![1],
            },
            Frame::Names { msg: vec![2] },
            Frame::Bind {
                route: 1,
                to: s("ua"),
                actor_type: s("t"),
            },
            Frame::Cast {
                route: 1,
                body: vec![3],
            },
            Frame::Demonitor { mids: vec![2, 300] },
        ];
        v.extend(frames.iter().map(|f| ("Frame", encode(f))));
        v
    }

    const GOLDEN: &[&str] = &[
        "Hello 544852470b026e31070101010101010101010101010101010101010101010101010101010101010101",
        "HelloAck 0b026e320802020202020202020202020202020202020202020202020202020202020202020303030303030303030303030303030303030303030303030303030303030303",
        "Auth 0404040404040404040404040404040404040404040404040404040404040404",
        "RemoteFailure 000161",
        "RemoteFailure 0101650166",
        "RemoteFailure 020164",
        "RemoteFailure 03",
        "RemoteFailure 040178",
        "RemoteFailure 05",
        "RemoteFailure 060174",
        "RemoteFailure 07016b",
        "RemoteFailure 080173",
        "RemoteFailure 09",
        "WireExit 00",
        "WireExit 01",
        "WireExit 02",
        "WireExit 03",
        "WireExit 040170",
        "WireExit 050165",
        "WireExit 06016f",
        "Frame 00010275610174010905",
        "Frame 0102027561",
        "Frame 020202",
        "Frame 0301020102",
        "Frame 0403000107",
        "Frame 04030105",
        "Frame 050401730108",
        "Frame 06050173016b",
        "Frame 07060173",
        "Frame 0801730101",
        "Frame 090102",
        "Frame 0a010275610174",
        "Frame 0b010103",
        "Frame 0c0202ac02",
    ];

    #[test]
    fn golden_bytes_of_every_wire_type() {
        let hex: Vec<String> = golden_values()
            .iter()
            .map(|(name, bytes)| {
                let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("{name} {h}")
            })
            .collect();
        let want: Vec<String> = GOLDEN.iter().map(|s| s.to_string()).collect();
        assert_eq!(hex, want, "the wire format changed: bump PROTOCOL_VERSION");
    }

    /// The directory's messages (carried by [`Frame::Dir`]) and the start spec (carried by
    /// [`Frame::Start`]), encoded, as hex: also part of the protocol.
    fn directory_golden_values() -> Vec<(&'static str, Vec<u8>)> {
        use throng_core::directory::{
            DirMsg, Epoch, Generation, Holder, Record, StartSpec, Tag as HandOffTag, Version,
            Writer,
        };
        use throng_core::{NodeId, RestartPolicy};
        let n = |s: &str| NodeId::new(s).unwrap();
        let k = || "k".to_owned();
        let g = Generation::new(300).unwrap();
        let t = |x| HandOffTag::new(x).unwrap();
        let e = Epoch(4, 5);
        let spec = StartSpec {
            key: k(),
            actor_type: "t".into(),
            args: vec![1],
            policy: RestartPolicy::Transient,
        };
        let mut record = Record::new(spec.clone(), g);
        record.snapshot = Some(vec![2]);
        record.write(Version::new(3), Writer::of(&n("a"), e));
        record.acknowledged(Version::new(2));
        let holder = Holder {
            node: n("b"),
            origin: n("a"),
            tag: Some(t(6)),
            epoch: e,
        };
        let msgs = [
            DirMsg::Replicate {
                record: record.clone(),
                epoch: e,
            },
            DirMsg::Ack {
                key: k(),
                version: Version::new(3),
                epoch: e,
            },
            DirMsg::Drop {
                key: k(),
                origin: n("a"),
                tag: None,
                epoch: e,
                remove: None,
            },
            DirMsg::Drop {
                key: k(),
                origin: n("a"),
                tag: Some(t(6)),
                epoch: e,
                remove: Some(g),
            },
            DirMsg::Dropped {
                key: k(),
                origin: n("a"),
                tag: Some(t(6)),
                epoch: e,
                remove: true,
                next: Some((n("c"), t(7))),
            },
            DirMsg::Chase {
                key: k(),
                from: n("a"),
                tag: t(6),
                generation: g,
            },
            DirMsg::Removed {
                key: k(),
                generation: g,
            },
            DirMsg::Buried {
                removed: vec![(k(), g)],
            },
            DirMsg::Chased {
                key: k(),
                from: n("a"),
                tag: t(6),
                next: None,
            },
            DirMsg::Adopt {
                record: record.clone(),
                hops: 1,
                tag: t(6),
                holders: vec![holder],
                moved: true,
            },
            DirMsg::Held {
                keys: vec![(k(), e)],
            },
            DirMsg::Conflict { key: k() },
            DirMsg::Recovered { ask: true },
        ];
        let mut v = vec![("StartSpec", encode(&spec)), ("Record", encode(&record))];
        v.extend(msgs.iter().map(|m| ("DirMsg", encode(m))));
        v
    }

    const DIRECTORY_GOLDEN: &[&str] = &[
        "StartSpec 016b0174010101",
        "Record 016b017401010101010203ac020001eaf4c2e383bcfce1be0102",
        "DirMsg 00016b017401010101010203ac020001eaf4c2e383bcfce1be01020405",
        "DirMsg 01016b030405",
        "DirMsg 02016b016100040500",
        "DirMsg 02016b01610106040501ac02",
        "DirMsg 03016b0161010604050101016307",
        "DirMsg 04016b016106ac02",
        "DirMsg 05016bac02",
        "DirMsg 0601016bac02",
        "DirMsg 07016b01610600",
        "DirMsg 08016b017401010101010203ac020001eaf4c2e383bcfce1be0102010601016201610106040501",
        "DirMsg 0901016b0405",
        "DirMsg 0a016b",
        "DirMsg 0b01",
    ];

    #[test]
    fn golden_bytes_of_directory_messages() {
        let hex: Vec<String> = directory_golden_values()
            .iter()
            .map(|(name, bytes)| {
                let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("{name} {h}")
            })
            .collect();
        let want: Vec<String> = DIRECTORY_GOLDEN.iter().map(|s| s.to_string()).collect();
        assert_eq!(hex, want, "the wire format changed: bump PROTOCOL_VERSION");
    }

    #[test]
    fn a_dir_batch_decodes_as_the_messages_in_order() {
        use throng_core::directory::DirMsg;
        let msgs: Vec<DirMsg> = directory_golden_values()
            .iter()
            .filter_map(|(_, bytes)| decode::<DirMsg>(bytes).ok())
            .collect();
        assert!(msgs.len() > 5);
        let mut batch = DirBatch::default();
        assert!(batch.is_empty());
        // Past 127 messages the length prefix takes two bytes.
        let many: Vec<DirMsg> = msgs.iter().cycle().take(300).cloned().collect();
        for m in &many {
            batch.push(m).unwrap();
        }
        let payload = batch.finish();
        assert!(batch.is_empty());
        assert_eq!(payload, encode(&many), "the payload is a Vec<DirMsg>");
        assert_eq!(decode_dir_batch(&payload).unwrap(), many);
        assert_eq!(decode_dir_batch(&batch.finish()).unwrap(), Vec::new());
        // A batch claiming more messages than it holds is an error, not a panic.
        assert!(decode_dir_batch(&[0xff, 0xff, 0x03]).is_err());
        assert!(decode_dir_batch(&payload[..payload.len() - 1]).is_err());
    }

    #[test]
    fn a_zero_generation_or_tag_is_a_decode_error() {
        use throng_core::directory::{DirMsg, Record};
        // A record of generation 0 (what a start request carried before version 6), no
        // absorbed generations, no writer, nothing acknowledged.
        let mut record = [
            0x01, 0x6b, 0x01, 0x74, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert!(decode::<Record>(&record).is_err());
        // `Removed` of generation 0, `Chase` of tag 0 (generation 1).
        assert!(decode::<DirMsg>(&[0x05, 0x01, 0x6b, 0x00]).is_err());
        assert!(decode::<DirMsg>(&[0x04, 0x01, 0x6b, 0x01, 0x61, 0x00, 0x01]).is_err());
        // The same with a 1 decode.
        record[9] = 0x01;
        assert_eq!(decode::<Record>(&record).map(|r| r.generation.get()), Ok(1));
        // A writer of fingerprint 0 is no writer.
        let written = |writer: u8| {
            let mut r = record[..11].to_vec();
            r.extend([0x01, writer, 0x00]);
            r
        };
        assert!(decode::<Record>(&written(0x00)).is_err());
        assert_eq!(
            decode::<Record>(&written(0x07)).map(|r| r.written_by.map(|w| w.get())),
            Ok(Some(7))
        );
        // More absorbed generations than a record keeps: refused.
        let absorbing = |n: u8| {
            let mut r = record[..10].to_vec();
            r.push(n);
            r.extend(std::iter::repeat_n(0x01, n.into()));
            r.extend([0x00, 0x00]);
            r
        };
        assert_eq!(
            decode::<Record>(&absorbing(8)).map(|r| r.absorbed.len()),
            Ok(8)
        );
        assert!(decode::<Record>(&absorbing(9)).is_err());
        assert!(decode::<DirMsg>(&[0x05, 0x01, 0x6b, 0x01]).is_ok());
        assert!(decode::<DirMsg>(&[0x04, 0x01, 0x6b, 0x01, 0x61, 0x01, 0x01]).is_ok());
    }

    #[test]
    fn handshake_and_sealed_frames() {
        let key = ClusterKey::from_secret(b"s3cret");
        let h = hello();
        let a = ack(&key, &h);
        let auth = verify_ack(&key, &h, &a).unwrap();
        verify_auth(&key, &h, &a, &auth).unwrap();
        let (mut d_seal, mut d_open) = session(&key, Role::Dialer, &h, &a);
        let (mut a_seal, mut a_open) = session(&key, Role::Acceptor, &h, &a);
        for i in 0..3u8 {
            let mut m = vec![i; 10];
            d_seal.seal(&mut m).unwrap();
            a_open.open(&mut m).unwrap();
            assert_eq!(m, vec![i; 10]);
            let mut r = vec![i; 3];
            a_seal.seal(&mut r).unwrap();
            d_open.open(&mut r).unwrap();
        }
    }

    #[test]
    fn wrong_secret_is_refused_both_ways() {
        let good = ClusterKey::from_secret(b"good");
        let bad = ClusterKey::from_secret(b"bad");
        let h = hello();
        // A dialer with the wrong secret rejects the real acceptor's proof...
        assert_eq!(
            verify_ack(&bad, &h, &ack(&good, &h)),
            Err(WireError::Unauthenticated)
        );
        // ...and an acceptor rejects a dialer's forged proof.
        let a = ack(&good, &h);
        let forged = verify_ack(&good, &h, &a)
            .map(|_| Auth { mac: [7; 32] })
            .unwrap();
        assert_eq!(
            verify_auth(&good, &h, &a, &forged),
            Err(WireError::Unauthenticated)
        );
        let auth_bad = Auth {
            mac: bad.mac(b"dialer", &transcript(&h, &a)),
        };
        assert_eq!(
            verify_auth(&good, &h, &a, &auth_bad),
            Err(WireError::Unauthenticated)
        );
    }

    #[test]
    fn replayed_or_reordered_frames_are_refused() {
        let key = ClusterKey::from_secret(b"s");
        let h = hello();
        let a = ack(&key, &h);
        let (mut seal, _) = session(&key, Role::Dialer, &h, &a);
        let (_, mut open) = session(&key, Role::Acceptor, &h, &a);
        let mut first = b"one".to_vec();
        let mut second = b"two".to_vec();
        seal.seal(&mut first).unwrap();
        seal.seal(&mut second).unwrap();
        let mut replay = first.clone();
        assert_eq!(
            open.open(&mut second.clone()),
            Err(WireError::Unauthenticated)
        );
        open.open(&mut first).unwrap();
        assert_eq!(open.open(&mut replay), Err(WireError::Unauthenticated));
        open.open(&mut second).unwrap();
    }

    #[test]
    fn frames_appended_in_place_encode_as_the_frames_do() {
        let msg = (7u64, String::from("hello"), vec![1u8, 2, 3]);
        let body = postcard::to_allocvec(&msg).unwrap();
        let request = Frame::Request {
            id: 300,
            to: "sink".into(),
            actor_type: "bench.Sink".into(),
            body: body.clone(),
            timeout_ms: 5000,
        };
        let mut direct = Vec::new();
        let len = encoded_len(&msg).unwrap();
        assert_eq!(len, body.len());
        append_request(&mut direct, 300, "sink", "bench.Sink", &msg, len, 5000).unwrap();
        assert_eq!(direct, encode(&request));
        let mut raw = Vec::new();
        append_request_bytes(&mut raw, 300, "sink", "bench.Sink", &body, 5000).unwrap();
        assert_eq!(raw, encode(&request));
        let cast = Frame::Cast {
            route: 1000,
            body: postcard::to_allocvec(&msg).unwrap(),
        };
        let mut direct = Vec::new();
        append_cast(&mut direct, 1000, &msg, len).unwrap();
        assert_eq!(direct, encode(&cast));
    }

    #[test]
    fn records_sealed_behind_others_open_in_place() {
        let key = ClusterKey::from_secret(b"0123456789abcdef");
        let (h, a) = (hello(), ack(&key, &hello()));
        let (mut seal, _) = session(&key, Role::Dialer, &h, &a);
        let (_, mut open) = session(&key, Role::Acceptor, &h, &a);
        let mut out = b"head".to_vec();
        out.extend_from_slice(b"first record");
        seal.seal_from(&mut out, 4).unwrap();
        let first_end = out.len();
        out.extend_from_slice(b"second");
        seal.seal_from(&mut out, first_end).unwrap();
        assert_eq!(&out[..4], b"head");
        let len = open.open_in_place(&mut out[4..first_end]).unwrap();
        assert_eq!(&out[4..4 + len], b"first record");
        let mut tampered = out[first_end..].to_vec();
        tampered[0] ^= 1;
        assert_eq!(
            open.open_in_place(&mut tampered),
            Err(WireError::Unauthenticated)
        );
        let len = open.open_in_place(&mut out[first_end..]).unwrap();
        assert_eq!(&out[first_end..first_end + len], b"second");
        assert_eq!(
            open.open_in_place(&mut [0u8; 3]),
            Err(WireError::Unauthenticated)
        );
    }

    #[test]
    fn unsealed_records_pass_unchanged() {
        let (mut seal, mut open) = (Sealer::unsealed(), Opener::unsealed());
        let mut r = b"record".to_vec();
        seal.seal(&mut r).unwrap();
        assert_eq!(r, b"record");
        open.open(&mut r).unwrap();
        assert_eq!(r, b"record");
    }

    #[test]
    fn the_largest_handshake_messages_fit_the_handshake_frame_limit() {
        let name = "n".repeat(throng_core::NodeId::MAX_LEN);
        let hello = Hello {
            magic: MAGIC,
            version: u16::MAX,
            node: name.clone(),
            incarnation: u64::MAX,
            nonce: [0xff; 32],
        };
        let ack = HelloAck {
            version: u16::MAX,
            node: name,
            incarnation: u64::MAX,
            nonce: [0xff; 32],
            mac: [0xff; 32],
        };
        for len in [
            encode(&hello).len(),
            encode(&ack).len(),
            encode(&Auth { mac: [0xff; 32] }).len(),
        ] {
            assert!(len <= HANDSHAKE_MAX_FRAME / 2, "{len} bytes");
        }
    }

    #[test]
    fn version_mismatch_is_typed() {
        let mut h = hello();
        h.version = 99;
        assert_eq!(
            check_hello(&h),
            Err(WireError::Version {
                ours: PROTOCOL_VERSION,
                theirs: 99
            })
        );
    }

    proptest! {
        /// Decoders are total: arbitrary bytes never panic.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Frame>(&bytes);
            let _ = decode::<FrameRef>(&bytes);
            let _ = decode::<Hello>(&bytes);
            let _ = decode::<HelloAck>(&bytes);
            let _ = decode::<Auth>(&bytes);
            let key = ClusterKey::from_secret(b"k");
            let h = hello();
            let a = ack(&key, &h);
            let (_, mut open) = session(&key, Role::Acceptor, &h, &a);
            let mut b = bytes.clone();
            prop_assert!(open.open(&mut b).is_err() || bytes.len() >= SEAL_OVERHEAD);
        }

        /// Records of arbitrary bytes never panic the frame splitter.
        #[test]
        fn record_splitter_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for f in frames(&bytes) {
                let _ = f;
            }
        }

        /// Frames round-trip through records.
        #[test]
        fn records_round_trip(ids in proptest::collection::vec(any::<u64>(), 0..20)) {
            let sent: Vec<Frame> = ids.iter().map(|&id| Frame::Reply { id, result: Ok(vec![1, 2, 3]) }).collect();
            let mut record = Vec::new();
            for f in &sent {
                push_frame(&mut record, f);
            }
            let got: Vec<Frame> = frames(&record).map(|f| f.unwrap().into_owned()).collect();
            prop_assert_eq!(got, sent);
        }

        /// Frames round-trip through encode/seal/open/decode.
        #[test]
        fn frames_round_trip(id in any::<u64>(), to in ".{0,20}", body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let key = ClusterKey::from_secret(b"k");
            let h = hello();
            let a = ack(&key, &h);
            let (mut seal, _) = session(&key, Role::Dialer, &h, &a);
            let (_, mut open) = session(&key, Role::Acceptor, &h, &a);
            let frame = Frame::Request { id, to, actor_type: "T".into(), body, timeout_ms: 5 };
            let mut bytes = encode(&frame);
            seal.seal(&mut bytes).unwrap();
            open.open(&mut bytes).unwrap();
            prop_assert_eq!(decode::<Frame>(&bytes).unwrap(), frame.clone());
            prop_assert_eq!(decode::<FrameRef>(&bytes).unwrap().into_owned(), frame);
        }
    }
}
