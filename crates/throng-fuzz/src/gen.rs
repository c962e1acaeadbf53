//! Structured generation: random *valid* values of every type that travels between nodes or sits
//! on disk, biased towards the values decoders get wrong (empty, boundary, long, non-ASCII).
//! Their encodings are the fuzzer's valid inputs, and the material its mutations start from.

use throng::cluster::testing::{
    encode, encode_address, Auth, Frame, Hello, HelloAck, NamesMsg, RemoteFailure, WireExit, MAGIC,
    PROTOCOL_VERSION,
};
use throng_core::directory::{
    DirMsg, DurableEntry, Epoch, Generation, Holder, Record, StartError, StartSpec, Tag, Version,
    Writer,
};
use throng_core::names::{Delta, Entry, GroupMember, Op};
use throng_core::{Incarnation, Member, NodeId, RestartPolicy};

use crate::rng::Rng;

/// Integers decoders meet at their edges.
const EDGES: [u64; 12] = [
    0,
    1,
    2,
    127,
    128,
    255,
    16_383,
    16_384,
    u32::MAX as u64,
    u32::MAX as u64 + 1,
    u64::MAX - 1,
    u64::MAX,
];

/// A `u64`: mostly small, often an edge, sometimes anything.
pub fn u64(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => *rng.pick(&EDGES),
        1 => rng.u64(),
        _ => rng.below(1000) as u64,
    }
}

/// A `u32`, likewise.
pub fn u32(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 => *rng.pick(&[0, 1, 127, 128, 1023, 1024, u32::MAX - 1, u32::MAX]),
        1 => rng.u64() as u32,
        _ => rng.below(1100) as u32,
    }
}

/// A non-zero `u64`.
fn nonzero(rng: &mut Rng) -> u64 {
    u64(rng).max(1)
}

/// A string: often empty or short ASCII, sometimes an export name's encoding, non-ASCII, or long.
pub fn string(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => String::new(),
        1 => rng
            .pick(&["é", "🦀", "日本", "a\u{0}b", "\u{feff}", "ü:1"])
            .to_string(),
        2 => rng
            .pick(&[
                "uacct",
                "c3:supkey",
                "c0:k",
                "c10:x",
                "g42",
                "g",
                "nname",
                "x",
                "c:",
            ])
            .to_string(),
        3 => "k".repeat(rng.below(400)),
        _ => {
            let n = rng.below(12);
            (0..n)
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect()
        }
    }
}

/// Bytes: mostly short, sometimes a few hundred, rarely over a chunk's size.
pub fn bytes(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(40) {
        0 => 300 + rng.below(2000),
        1..=8 => 0,
        _ => rng.below(24),
    };
    rng.bytes(n)
}

/// A valid node name.
pub fn node(rng: &mut Rng) -> NodeId {
    let n = if rng.one_in(20) {
        NodeId::MAX_LEN
    } else {
        1 + rng.below(10)
    };
    let name: String = (0..n)
        .map(|_| char::from(b'!' + rng.below(94) as u8))
        .collect();
    NodeId::new(&name).unwrap_or_else(|_| NodeId::new("n").expect("a valid name"))
}

fn member(rng: &mut Rng) -> Member {
    Member::new(node(rng), Incarnation(u64(rng)))
}

fn generation(rng: &mut Rng) -> Generation {
    Generation::new(nonzero(rng)).unwrap_or(Generation::MIN)
}

fn tag(rng: &mut Rng) -> Tag {
    Tag::new(nonzero(rng)).unwrap_or_else(|| Tag::new(1).expect("1 is a tag"))
}

fn epoch(rng: &mut Rng) -> Epoch {
    Epoch(u64(rng), u64(rng))
}

fn policy(rng: &mut Rng) -> RestartPolicy {
    *rng.pick(&[
        RestartPolicy::Permanent,
        RestartPolicy::Transient,
        RestartPolicy::Temporary,
    ])
}

fn list<T>(rng: &mut Rng, max: usize, mut item: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    let n = rng.below(max + 1);
    (0..n).map(|_| item(rng)).collect()
}

fn option<T>(rng: &mut Rng, item: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    rng.bool().then(|| item(rng))
}

/// A child's start spec.
pub fn start_spec(rng: &mut Rng) -> StartSpec {
    StartSpec {
        key: string(rng),
        actor_type: string(rng),
        args: bytes(rng),
        policy: policy(rng),
    }
}

/// A child's record.
pub fn record(rng: &mut Rng) -> Record {
    let mut r = Record::new(start_spec(rng), generation(rng));
    r.snapshot = option(rng, bytes);
    r.version = Version::new(u64(rng));
    r.absorbed = (0..rng.below(4)).map(|_| generation(rng)).collect();
    r.written_by = option(rng, |rng| Writer::of(&node(rng), epoch(rng)));
    r
}

fn holder(rng: &mut Rng) -> Holder {
    Holder {
        node: node(rng),
        origin: node(rng),
        tag: option(rng, tag),
        epoch: epoch(rng),
    }
}

/// A directory message, any variant.
pub fn dir_msg(rng: &mut Rng) -> DirMsg {
    match rng.below(13) {
        0 => DirMsg::Replicate {
            record: record(rng),
            epoch: epoch(rng),
        },
        1 => DirMsg::Ack {
            key: string(rng),
            version: Version::new(u64(rng)),
            epoch: epoch(rng),
        },
        2 => DirMsg::Drop {
            key: string(rng),
            origin: node(rng),
            tag: option(rng, tag),
            epoch: epoch(rng),
            remove: option(rng, generation),
        },
        3 => DirMsg::Dropped {
            key: string(rng),
            origin: node(rng),
            tag: option(rng, tag),
            epoch: epoch(rng),
            remove: rng.bool(),
            next: option(rng, |r| (node(r), tag(r))),
        },
        4 => DirMsg::Chase {
            key: string(rng),
            from: node(rng),
            tag: tag(rng),
            generation: generation(rng),
        },
        5 => DirMsg::Removed {
            key: string(rng),
            generation: generation(rng),
        },
        6 => DirMsg::Buried {
            removed: list(rng, 6, |r| (string(r), generation(r))),
        },
        7 => DirMsg::Chased {
            key: string(rng),
            from: node(rng),
            tag: tag(rng),
            next: option(rng, |r| (node(r), tag(r))),
        },
        8 => DirMsg::Adopt {
            record: record(rng),
            hops: rng.byte(),
            tag: tag(rng),
            holders: list(rng, 4, holder),
            moved: rng.bool(),
        },
        9 => DirMsg::Held {
            keys: list(rng, 6, |r| (string(r), epoch(r))),
        },
        10 => DirMsg::Conflict { key: string(rng) },
        11 => DirMsg::Recovered { ask: rng.bool() },
        _ => DirMsg::Buried { removed: vec![] },
    }
}

/// The payload of a `Frame::Dir`: directory messages in a batch.
pub fn dir_batch(rng: &mut Rng) -> Vec<DirMsg> {
    list(rng, 4, dir_msg)
}

/// What a node keeps on disk for a key.
pub fn durable_entry(rng: &mut Rng) -> DurableEntry {
    DurableEntry {
        records: list(rng, 4, record),
        buried: list(rng, 6, generation),
    }
}

/// A registry entry's value: usually an actor's address, as the registry writes it.
fn value(rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(4) {
        bytes(rng)
    } else {
        encode_address(&string(rng), option(rng, u64))
    }
}

fn group_member(rng: &mut Rng) -> GroupMember {
    GroupMember {
        value: value(rng),
        meta: bytes(rng),
    }
}

fn op(rng: &mut Rng) -> Op {
    match rng.below(5) {
        0 => Op::Register {
            name: string(rng),
            value: value(rng),
            meta: bytes(rng),
            stamp: u64(rng),
        },
        1 => Op::Unregister { name: string(rng) },
        2 => Op::UpdateMeta {
            name: string(rng),
            meta: bytes(rng),
        },
        3 => Op::Join {
            group: string(rng),
            member: group_member(rng),
        },
        _ => Op::Leave {
            group: string(rng),
            value: value(rng),
        },
    }
}

/// A registry message, any variant.
pub fn names_msg(rng: &mut Rng) -> NamesMsg {
    match rng.below(4) {
        0 => NamesMsg::Delta {
            from: member(rng),
            delta: Delta {
                first_seq: u64(rng),
                ops: list(rng, 6, op),
            },
        },
        1 => NamesMsg::Full {
            from: member(rng),
            seq: u64(rng),
            index: u32(rng),
            last: rng.bool(),
            names: list(rng, 4, |r| {
                let entry = Entry {
                    value: value(r),
                    meta: bytes(r),
                    seq: u64(r),
                    stamp: u64(r),
                };
                (string(r), entry)
            }),
            groups: list(rng, 3, |r| (string(r), list(r, 3, group_member))),
        },
        2 => NamesMsg::SyncRequest { from: member(rng) },
        _ => NamesMsg::Seq {
            from: member(rng),
            seq: u64(rng),
        },
    }
}

fn start_error(rng: &mut Rng) -> StartError {
    match rng.below(6) {
        0 => StartError::AlreadyStarted(string(rng)),
        1 => StartError::NotOwner {
            owner: option(rng, node),
        },
        2 => StartError::Failed(string(rng)),
        3 => StartError::NoQuorum {
            seen: u64(rng) as usize,
            needed: u64(rng) as usize,
        },
        4 => StartError::NoSuchChild(string(rng)),
        _ => StartError::UnknownType {
            actor_type: string(rng),
        },
    }
}

fn remote_failure(rng: &mut Rng) -> RemoteFailure {
    match rng.below(10) {
        0 => RemoteFailure::NoSuchActor(string(rng)),
        1 => RemoteFailure::UnknownActorType {
            expected: string(rng),
            found: string(rng),
        },
        2 => RemoteFailure::Decode(string(rng)),
        3 => RemoteFailure::Exited,
        4 => RemoteFailure::Failed(string(rng)),
        5 => RemoteFailure::Timeout,
        6 => RemoteFailure::UnknownType(string(rng)),
        7 => RemoteFailure::AlreadyStarted(string(rng)),
        8 => RemoteFailure::StartFailed(string(rng)),
        _ => RemoteFailure::NotDelivered,
    }
}

fn wire_exit(rng: &mut Rng) -> WireExit {
    match rng.below(7) {
        0 => WireExit::Normal,
        1 => WireExit::Shutdown,
        2 => WireExit::Killed,
        3 => WireExit::NoProc,
        4 => WireExit::Panic(string(rng)),
        5 => WireExit::Error(string(rng)),
        _ => WireExit::Other(string(rng)),
    }
}

/// A reply's body: the answer to a start or stop, or to a list, or anything.
fn reply_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => {
            let answer: Result<(), StartError> = if rng.bool() {
                Ok(())
            } else {
                Err(start_error(rng))
            };
            encode(&answer)
        }
        1 => encode(&list(rng, 5, |r| (string(r), string(r)))),
        _ => bytes(rng),
    }
}

/// A frame, any variant, with the payloads a node sends in it.
pub fn frame(rng: &mut Rng) -> Frame {
    match rng.below(13) {
        0 => Frame::Request {
            id: u64(rng),
            to: string(rng),
            actor_type: string(rng),
            body: bytes(rng),
            timeout_ms: u64(rng),
        },
        1 => Frame::Monitor {
            mid: u64(rng),
            name: string(rng),
        },
        2 => Frame::Down {
            mid: u64(rng),
            reason: wire_exit(rng),
        },
        3 => Frame::Chunk {
            last: rng.bool(),
            bytes: bytes(rng),
        },
        4 => Frame::Reply {
            id: u64(rng),
            result: if rng.bool() {
                Ok(reply_body(rng))
            } else {
                Err(remote_failure(rng))
            },
        },
        5 => Frame::Start {
            id: u64(rng),
            sup: string(rng),
            record: encode(&start_spec(rng)),
        },
        6 => Frame::Stop {
            id: u64(rng),
            sup: string(rng),
            key: string(rng),
        },
        7 => Frame::List {
            id: u64(rng),
            sup: string(rng),
        },
        8 => Frame::Dir {
            sup: string(rng),
            msg: encode(&dir_batch(rng)),
        },
        9 => Frame::Names {
            msg: throng::cluster::testing::encode_names(names_msg(rng)),
        },
        10 => Frame::Bind {
            route: u32(rng),
            to: string(rng),
            actor_type: string(rng),
        },
        11 => Frame::Cast {
            route: u32(rng),
            body: bytes(rng),
        },
        _ => Frame::Demonitor {
            mids: list(rng, 8, u64),
        },
    }
}

/// A handshake hello (usually valid: our magic and version, a valid node name).
pub fn hello(rng: &mut Rng) -> Hello {
    Hello {
        magic: if rng.one_in(8) {
            [rng.byte(), rng.byte(), rng.byte(), rng.byte()]
        } else {
            MAGIC
        },
        version: if rng.one_in(8) {
            rng.u64() as u16
        } else {
            PROTOCOL_VERSION
        },
        node: if rng.one_in(8) {
            string(rng)
        } else {
            node(rng).to_string()
        },
        incarnation: u64(rng),
        nonce: nonce(rng),
    }
}

fn nonce(rng: &mut Rng) -> [u8; 32] {
    let mut n = [0u8; 32];
    n.iter_mut().for_each(|b| *b = rng.byte());
    n
}

/// A handshake ack.
pub fn hello_ack(rng: &mut Rng) -> HelloAck {
    HelloAck {
        version: PROTOCOL_VERSION,
        node: node(rng).to_string(),
        incarnation: u64(rng),
        nonce: nonce(rng),
        mac: nonce(rng),
    }
}

/// A handshake auth.
pub fn auth(rng: &mut Rng) -> Auth {
    Auth { mac: nonce(rng) }
}
