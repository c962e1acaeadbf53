//! Hooks for tests that forge a peer (malformed frames, unauthenticated peers) and for the
//! fuzzer (`crates/throng-fuzz`): the wire protocol, and every decoder that bytes from a peer or
//! from the disk reach, called the way the node calls it. Not a stable API.

pub use super::wire::*;

use bytes::BytesMut;
use throng_core::directory::{DurableEntry, StartError, StartSpec};
use throng_core::names::{Delta, Entry, GroupMember};
use throng_core::{Member, NodeId};
use tokio_util::codec::Decoder;

use super::export_id::ExportId;
use super::names::{self, Msg};
use super::wire;

/// Feed `bytes`, as they arrive on a connection before its peer is authenticated, to the
/// handshake's framing, and decode every message it yields as the acceptor does (a hello,
/// checked, with its node name; an auth) and as the dialer does (an ack). Returns how many
/// messages decoded; stops at the first framing error (which ends a real connection).
pub fn decode_handshake_stream(bytes: &[u8]) -> usize {
    let mut codec = super::transport::handshake_codec();
    let mut buf = BytesMut::from(bytes);
    let mut decoded = 0;
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if let Ok(hello) = decode::<Hello>(&frame) {
            if check_hello(&hello).is_ok() && NodeId::new(&hello.node).is_ok() {
                decoded += 1;
            }
        }
        decoded += usize::from(decode::<HelloAck>(&frame).is_ok());
        decoded += usize::from(decode::<Auth>(&frame).is_ok());
    }
    decoded
}

/// Decode an opened record as a connection's reader does: its frames, in order, chunked ones
/// reassembled (at most `max_frame` bytes), each with [`decode_frame_payloads`]. Returns how
/// many parts decoded; stops where the reader would end the connection.
pub fn decode_record(record: &[u8], max_frame: usize) -> usize {
    let mut chunks = Chunks::new(max_frame);
    let mut decoded = 0;
    for frame in frames(record) {
        let Ok(frame) = frame else {
            break;
        };
        let FrameRef::Chunk { last, bytes } = frame else {
            decoded += 1 + decode_frame_payloads(&frame);
            continue;
        };
        let whole = match chunks.push(last, bytes) {
            Ok(Some(whole)) => whole,
            Ok(None) => continue,
            Err(_) => break,
        };
        let Ok(f) = Chunks::decode(&whole) else {
            break;
        };
        decoded += 1 + decode_frame_payloads(&f);
        chunks.recycle(whole);
    }
    decoded
}

/// Decode what a node decodes of a frame it received, past the frame itself: the export names
/// it looks up, a start request's spec, a directory or registry message (and the addresses in a
/// registry message's entries), a reply to a start, stop or list. Returns how many parts
/// decoded.
pub fn decode_frame_payloads(frame: &FrameRef<'_>) -> usize {
    let name = |n: &str| usize::from(ExportId::decode(n).is_some());
    match frame {
        FrameRef::Request { to, .. } | FrameRef::Bind { to, .. } => name(to),
        FrameRef::Monitor { name: n, .. } => name(n),
        FrameRef::Start { record, .. } => {
            usize::from(postcard::from_bytes::<StartSpec>(record).is_ok())
        }
        FrameRef::Dir { msg, .. } => wire::decode_dir_batch(msg).map_or(0, |m| 1 + m.len()),
        FrameRef::Names { msg } => decode_names(msg).map_or(0, |m| 1 + m.addresses()),
        FrameRef::Reply {
            result: Ok(bytes), ..
        } => {
            // A start's or a stop's answer, or a list's (the caller knows which it expects).
            usize::from(postcard::from_bytes::<Result<(), StartError>>(bytes).is_ok())
                + usize::from(postcard::from_bytes::<Vec<(String, String)>>(bytes).is_ok())
        }
        FrameRef::Reply { .. }
        | FrameRef::Stop { .. }
        | FrameRef::List { .. }
        | FrameRef::Down { .. }
        | FrameRef::Chunk { .. }
        | FrameRef::Cast { .. }
        | FrameRef::Demonitor { .. } => 0,
    }
}

/// Encode a durable entry as a node writes it to its store (the current format, with its
/// header).
pub fn encode_durable_entry(entry: &DurableEntry) -> Vec<u8> {
    super::dist::encode_entry(entry).unwrap_or_default()
}

/// Decode a durable entry as a node reads it from its store at start.
pub fn decode_durable_entry(bytes: &[u8]) -> Result<DurableEntry, String> {
    super::dist::decode_entry(bytes).map_err(|e| e.to_string())
}

/// A registry message (what a [`Frame::Names`] carries), field for field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamesMsg {
    /// Local writes of `from`.
    Delta {
        /// The origin.
        from: Member,
        /// Its writes.
        delta: Delta,
    },
    /// Part `index` of `from`'s full state at `seq`.
    Full {
        /// The origin.
        from: Member,
        /// The origin's sequence number the state covers.
        seq: u64,
        /// The part's number, from 0.
        index: u32,
        /// Whether it is the last part.
        last: bool,
        /// Unique names.
        names: Vec<(String, Entry)>,
        /// Group memberships.
        groups: Vec<(String, Vec<GroupMember>)>,
    },
    /// `from` asks for the receiver's full state.
    SyncRequest {
        /// The origin.
        from: Member,
    },
    /// `from` has written up to `seq`.
    Seq {
        /// The origin.
        from: Member,
        /// Its last sequence number.
        seq: u64,
    },
}

impl NamesMsg {
    /// How many values of the entries and group members it carries decode as addresses.
    fn addresses(&self) -> usize {
        let values: Vec<&[u8]> = match self {
            NamesMsg::Delta { delta, .. } => delta
                .ops
                .iter()
                .filter_map(|op| match op {
                    throng_core::names::Op::Register { value, .. } => Some(value.as_slice()),
                    throng_core::names::Op::Join { member, .. } => Some(member.value.as_slice()),
                    _ => None,
                })
                .collect(),
            NamesMsg::Full { names, groups, .. } => names
                .iter()
                .map(|(_, e)| e.value.as_slice())
                .chain(
                    groups
                        .iter()
                        .flat_map(|(_, m)| m.iter().map(|m| m.value.as_slice())),
                )
                .collect(),
            NamesMsg::SyncRequest { .. } | NamesMsg::Seq { .. } => Vec::new(),
        };
        values
            .into_iter()
            .filter(|v| names::addr_decodes(v))
            .count()
    }
}

impl From<Msg> for NamesMsg {
    fn from(m: Msg) -> Self {
        match m {
            Msg::Delta { from, delta } => NamesMsg::Delta { from, delta },
            Msg::Full {
                from,
                seq,
                index,
                last,
                names,
                groups,
            } => NamesMsg::Full {
                from,
                seq,
                index,
                last,
                names,
                groups,
            },
            Msg::SyncRequest { from } => NamesMsg::SyncRequest { from },
            Msg::Seq { from, seq } => NamesMsg::Seq { from, seq },
        }
    }
}

impl From<NamesMsg> for Msg {
    fn from(m: NamesMsg) -> Self {
        match m {
            NamesMsg::Delta { from, delta } => Msg::Delta { from, delta },
            NamesMsg::Full {
                from,
                seq,
                index,
                last,
                names,
                groups,
            } => Msg::Full {
                from,
                seq,
                index,
                last,
                names,
                groups,
            },
            NamesMsg::SyncRequest { from } => Msg::SyncRequest { from },
            NamesMsg::Seq { from, seq } => Msg::Seq { from, seq },
        }
    }
}

/// Encode a registry message as a node sends it.
pub fn encode_names(msg: NamesMsg) -> Vec<u8> {
    postcard::to_allocvec(&Msg::from(msg)).unwrap_or_default()
}

/// Decode a registry message as a node receives it.
pub fn decode_names(bytes: &[u8]) -> Result<NamesMsg, String> {
    names::decode_msg(bytes)
        .map(NamesMsg::from)
        .map_err(|e| e.to_string())
}

/// The encoding of a registry entry's value for an actor of type `actor_type` (a group member
/// with actor id `member`, or a unique name).
pub fn encode_address(actor_type: &str, member: Option<u64>) -> Vec<u8> {
    names::encode_addr(actor_type, member)
}
