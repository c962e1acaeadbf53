//! The fuzz targets: one per kind of bytes a node decodes from a peer or from its disk. Each
//! knows how the node runs its decoders ([`Target::run`], through `throng::cluster::testing`,
//! which calls the node's own functions), how to make a valid input from a generated value (and
//! check that it decodes back to that value: [`Target::generate`]), and its fixed seeds, hostile
//! length prefixes included.

use throng::cluster::testing::{
    decode, decode_dir_batch, decode_durable_entry, decode_frame_payloads, decode_handshake_stream,
    decode_names, decode_record, encode, encode_durable_entry, encode_names, push_frame, Auth,
    Frame, FrameRef, Hello, HelloAck,
};
use throng_core::directory::{DirMsg, Record, StartSpec};

use crate::gen;
use crate::rng::Rng;

/// The frame limit the fuzzer decodes records under: the node's default.
pub const MAX_FRAME: usize = 8 << 20;

/// A decoder, or a group of decoders fed the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The bytes of a connection before authentication: the handshake's length-prefixed framing,
    /// each message decoded as a hello (checked: magic, version, node name), an ack and an auth.
    Handshake,
    /// An opened record: its length-prefixed frames, chunks reassembled, every frame's payloads
    /// decoded as the node does.
    Record,
    /// One frame (owned and borrowed decoders), and its payloads.
    Frame,
    /// A directory message, a start spec and a record (what `Dir` and `Start` frames carry).
    Dir,
    /// A registry message (what `Names` frames carry) and the addresses in its entries.
    Names,
    /// A durable entry, as read from a node's store at start.
    Durable,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 6] = [
        Target::Handshake,
        Target::Record,
        Target::Frame,
        Target::Dir,
        Target::Names,
        Target::Durable,
    ];

    /// Its name on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Target::Handshake => "handshake",
            Target::Record => "record",
            Target::Frame => "frame",
            Target::Dir => "dir",
            Target::Names => "names",
            Target::Durable => "durable",
        }
    }

    /// The target named `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Run the decoders on `bytes`; returns how many parts decoded.
    pub fn run(self, bytes: &[u8]) -> usize {
        match self {
            Target::Handshake => decode_handshake_stream(bytes),
            Target::Record => decode_record(bytes, MAX_FRAME),
            Target::Frame => {
                let owned = usize::from(decode::<Frame>(bytes).is_ok());
                owned + decode::<FrameRef>(bytes).map_or(0, |f| 1 + decode_frame_payloads(&f))
            }
            Target::Dir => {
                usize::from(decode::<DirMsg>(bytes).is_ok())
                    + usize::from(decode::<StartSpec>(bytes).is_ok())
                    + usize::from(decode::<Record>(bytes).is_ok())
                    + decode_dir_batch(bytes).map_or(0, |m| 1 + m.len())
            }
            Target::Names => decode_names(bytes).map_or(0, |_| 1),
            Target::Durable => usize::from(decode_durable_entry(bytes).is_ok()),
        }
    }

    /// A valid input: the encoding of a generated value, checked to decode back to it (an error
    /// names the value that did not).
    pub fn generate(self, rng: &mut Rng) -> Result<Vec<u8>, String> {
        match self {
            Target::Handshake => handshake(rng),
            Target::Record => record(rng),
            Target::Frame => {
                let f = gen::frame(rng);
                let bytes = encode(&f);
                round_trip(&f, decode::<Frame>(&bytes))?;
                round_trip(&f, decode::<FrameRef>(&bytes).map(FrameRef::into_owned))?;
                Ok(bytes)
            }
            Target::Dir => match rng.below(7) {
                0 => checked(&gen::start_spec(rng)),
                1 => checked(&gen::record(rng)),
                2 => checked(&gen::dir_batch(rng)),
                _ => checked(&gen::dir_msg(rng)),
            },
            Target::Names => {
                let m = gen::names_msg(rng);
                let bytes = encode_names(m.clone());
                round_trip(&m, decode_names(&bytes))?;
                Ok(bytes)
            }
            Target::Durable => {
                let e = gen::durable_entry(rng);
                let bytes = encode_durable_entry(&e);
                round_trip(&e, decode_durable_entry(&bytes))?;
                Ok(bytes)
            }
        }
    }

    /// Fixed inputs every run starts its pool with: valid encodings from the protocol's golden
    /// bytes, and hostile ones (length prefixes that claim far more than follows).
    pub fn seeds(self) -> Vec<Vec<u8>> {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len() / 2)
                .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
                .collect()
        };
        let list: &[&str] = match self {
            Target::Handshake => &[
                // A hello (node "n1"), behind the handshake's 4-byte big-endian length.
                "000000295448524706026e31070101010101010101010101010101010101010101010101010101010101010101",
                // Prefixes that claim 8 MiB, 4 GiB and just over the handshake limit.
                "00800000",
                "ffffffff",
                "00000401ff",
            ],
            Target::Record => &[
                // A frame (a 1-byte reply) behind its 4-byte little-endian length, twice.
                "0500000004030001070500000004030001 07",
                // A frame claiming 4 GiB; a chunk claiming 4 GiB of bytes.
                "ffffffff00",
                "0700000003 00ffffffff0f",
            ],
            Target::Frame => &[
                "00010275610174010905",
                "0801730101",
                "090102",
                "0a010275610174",
                // A `Names` frame whose message claims 4 GiB; a reply whose body claims as much.
                "09ffffffff0f",
                "0403 00ffffffff0f",
            ],
            Target::Dir => &[
                "016b0174010101",
                "016b017401010101010203ac02",
                "00016b017401010101010203ac020405",
                "03016b0161010604050101016307",
                "0601016bac02",
                "08016b017401010101010203ac02010601016201610106040501",
                "0901016b0405",
                // `Buried` and `Held` claiming 4 GiB of entries.
                "06ffffffff0f",
                "09ffffffff0f",
            ],
            Target::Names => &[
                // `SyncRequest` from "a" (incarnation 1); a delta claiming 4 GiB of ops.
                "02016101",
                "0001610101ffffffff0f",
                "0101610101000000ffffffff0f",
            ],
            Target::Durable => &[
                // Format 2 (header, a record with an absorbed generation), then format 1.
                "ff0201016b017401010101010203ac0201050101",
                "01016b017401010101010203ac020101",
                // Records and buried generations claiming 4 GiB.
                "ffffffff0f00",
                "00ffffffff0f",
            ],
        };
        list.iter().map(|s| hex(&s.replace(' ', ""))).collect()
    }
}

fn round_trip<T: PartialEq + std::fmt::Debug, E: std::fmt::Display>(
    value: &T,
    decoded: Result<T, E>,
) -> Result<(), String> {
    match decoded {
        Ok(d) if d == *value => Ok(()),
        Ok(d) => Err(format!("{value:?} decoded as {d:?}")),
        Err(e) => Err(format!("{value:?} does not decode: {e}")),
    }
}

/// The encoding of a directory message, start spec or record, checked to decode back.
fn checked<T>(value: &T) -> Result<Vec<u8>, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(value);
    round_trip(value, decode::<T>(&bytes))?;
    Ok(bytes)
}

/// A connection's first bytes: a hello, then usually an auth (the acceptor's view), or an ack.
fn handshake(rng: &mut Rng) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut push = |bytes: Vec<u8>| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    };
    let hello = gen::hello(rng);
    round_trip(&hello, decode::<Hello>(&encode(&hello)))?;
    push(encode(&hello));
    if rng.bool() {
        push(encode(&gen::auth(rng)));
    } else {
        let ack = gen::hello_ack(rng);
        round_trip(&ack, decode::<HelloAck>(&encode(&ack)))?;
        push(encode(&ack));
    }
    let auth = gen::auth(rng);
    round_trip(&auth, decode::<Auth>(&encode(&auth)))?;
    let decoded = decode_handshake_stream(&out);
    if decoded < 2 {
        return Err(format!("{hello:?} and its answer gave {decoded} messages"));
    }
    Ok(out)
}

/// An opened record: a few frames, one of them sometimes in chunks with others between them.
fn record(rng: &mut Rng) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut whole = 0;
    for _ in 0..1 + rng.below(4) {
        let f = match gen::frame(rng) {
            // A chunk outside a chunked frame is one: see below.
            Frame::Chunk { .. } => Frame::List {
                id: gen::u64(rng),
                sup: gen::string(rng),
            },
            f => f,
        };
        push_frame(&mut out, &f);
        whole += 1;
    }
    if rng.one_in(3) {
        let big = Frame::Dir {
            sup: gen::string(rng),
            msg: encode(&gen::dir_batch(rng)),
        };
        let bytes = encode(&big);
        let piece = 1 + rng.below(bytes.len());
        let mut pieces = bytes.chunks(piece).peekable();
        while let Some(p) = pieces.next() {
            let last = pieces.peek().is_none();
            push_frame(
                &mut out,
                &Frame::Chunk {
                    last,
                    bytes: p.to_vec(),
                },
            );
            if !last && rng.one_in(2) {
                push_frame(
                    &mut out,
                    &Frame::List {
                        id: 1,
                        sup: "s".into(),
                    },
                );
                whole += 1;
            }
        }
        whole += 1;
    }
    let decoded = decode_record(&out, MAX_FRAME);
    if decoded < whole {
        return Err(format!("a record of {whole} frames gave {decoded} parts"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_seeds_decode() {
        for t in Target::ALL {
            assert!(t.run(&t.seeds()[0]) > 0, "{}", t.name());
        }
    }

    #[test]
    fn generated_inputs_decode_back() {
        let mut rng = Rng::new(1);
        for t in Target::ALL {
            for _ in 0..500 {
                let input = t.generate(&mut rng).unwrap();
                assert!(t.run(&input) > 0, "{}: {input:02x?}", t.name());
            }
        }
    }
}
