//! Export identities: what an exported actor is to the other nodes.
//!
//! An actor is reached from another node through the name it is exported under on its node. Four
//! kinds of actors are exported — the ones a user exports by name, distributed children
//! (supervisor + key), actors registered under a unique name in the cluster registry, and group
//! members — and each kind has its own namespace: an [`ExportId`] is encoded with a kind tag, and
//! a child's supervisor with its length, so that the encoding is injective. No user name, key or
//! registry name, whatever characters it holds, can stand for another kind's or another
//! supervisor's actor (`"sep"` + `"x:k"` and `"sep:x"` + `"k"` are two children).
//!
//! The encoded form is what travels in frames and keys the export table: one string, so the hot
//! path (a cast through a name) costs no more than before.

use std::fmt::Write;

/// Which actor an export name stands for (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExportId<'a> {
    /// Exported by the user under a name of their choosing ([`super::Node::export`]).
    User(&'a str),
    /// The distributed child `key` of supervisor `sup`.
    Child {
        /// The supervisor's name.
        sup: &'a str,
        /// The child's key.
        key: &'a str,
    },
    /// The actor registered as `name` in the cluster registry.
    Name(&'a str),
    /// A member of registry groups: the local actor with this id.
    Group(u64),
}

impl ExportId<'_> {
    /// The encoded name: a kind tag, then the fields (a child's supervisor prefixed by its length
    /// in bytes).
    pub(crate) fn encode(&self) -> String {
        match *self {
            ExportId::User(name) => format!("u{name}"),
            ExportId::Child { sup, key } => {
                let mut s = String::with_capacity(sup.len() + key.len() + 8);
                let _ = write!(s, "c{}:{sup}{key}", sup.len());
                s
            }
            ExportId::Name(name) => format!("n{name}"),
            ExportId::Group(id) => format!("g{id}"),
        }
    }

    /// The identity an encoded name stands for, or `None` if it is no encoding of one.
    pub(crate) fn decode(s: &str) -> Option<ExportId<'_>> {
        let (tag, rest) = (s.get(..1)?, s.get(1..)?);
        match tag {
            "u" => Some(ExportId::User(rest)),
            "n" => Some(ExportId::Name(rest)),
            "g" => rest.parse().ok().map(ExportId::Group),
            "c" => {
                let (len, tail) = rest.split_once(':')?;
                if len.is_empty() || (len.len() > 1 && len.starts_with('0')) {
                    return None;
                }
                let len: usize = len.parse().ok()?;
                Some(ExportId::Child {
                    sup: tail.get(..len)?,
                    key: tail.get(len..)?,
                })
            }
            _ => None,
        }
    }
}

impl ExportId<'static> {
    /// What the encoded name `s` stands for, for a person: a user export's own name, or a
    /// description of the child or registered name (the raw text if it is no encoding).
    pub(crate) fn describe(s: &str) -> String {
        match ExportId::decode(s) {
            Some(id) => id.to_string(),
            None => s.to_owned(),
        }
    }
}

impl std::fmt::Display for ExportId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportId::User(name) => f.write_str(name),
            ExportId::Child { sup, key } => write!(f, "child {key:?} of supervisor {sup:?}"),
            ExportId::Name(name) => write!(f, "registered name {name:?}"),
            ExportId::Group(id) => write!(f, "group member {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_encodings() {
        // The wire contract (protocol version 6): changing these changes the protocol.
        assert_eq!(ExportId::User("counter").encode(), "ucounter");
        assert_eq!(
            ExportId::Child {
                sup: "sep",
                key: "x:k"
            }
            .encode(),
            "c3:sepx:k"
        );
        assert_eq!(
            ExportId::Child {
                sup: "sep:x",
                key: "k"
            }
            .encode(),
            "c5:sep:xk"
        );
        assert_eq!(ExportId::Name("reg:a").encode(), "nreg:a");
        assert_eq!(ExportId::Group(42).encode(), "g42");
    }

    #[test]
    fn keys_with_separators_stay_apart() {
        let a = ExportId::Child {
            sup: "sep",
            key: "x:k",
        };
        let b = ExportId::Child {
            sup: "sep:x",
            key: "k",
        };
        assert_ne!(a.encode(), b.encode());
        // A supervisor named like a registry prefix is still a supervisor.
        let c = ExportId::Child {
            sup: "reg",
            key: "",
        };
        assert_ne!(c.encode(), ExportId::Name("").encode());
        assert_ne!(ExportId::User("g1").encode(), ExportId::Group(1).encode());
    }

    #[test]
    fn malformed_names_decode_to_none() {
        for s in [
            "", "x", "c", "c:", "c3", "c03:abc", "c9:ab", "gx", "g", "c-1:a",
        ] {
            assert_eq!(ExportId::decode(s), None, "{s:?}");
        }
    }

    fn any_id() -> impl Strategy<Value = (u8, String, String, u64)> {
        (0u8..4, ".{0,12}", ".{0,12}", any::<u64>())
    }

    /// The identity drawn from `x`, with the fields its kind ignores cleared.
    fn build(x: &(u8, String, String, u64)) -> ExportId<'_> {
        match x.0 {
            0 => ExportId::User(&x.1),
            1 => ExportId::Child {
                sup: &x.1,
                key: &x.2,
            },
            2 => ExportId::Name(&x.1),
            _ => ExportId::Group(x.3),
        }
    }

    proptest! {
        #[test]
        fn encoding_is_injective_and_round_trips(x in any_id(), y in any_id()) {
            let (ix, iy) = (build(&x), build(&y));
            let (ex, ey) = (ix.encode(), iy.encode());
            prop_assert_eq!(ExportId::decode(&ex), Some(ix));
            prop_assert_eq!(ix == iy, ex == ey);
        }

        #[test]
        fn decoding_any_string_never_panics(s in ".{0,40}") {
            let _ = ExportId::decode(&s);
        }
    }
}
