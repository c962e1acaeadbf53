//! Node identity: the name a node is known by, and the incarnation that tells one run of it from the next.
//!
//! A [`NodeId`] is what placement hashes and what peers address, so it must be stable across restarts
//! and unambiguous when printed in logs, metrics labels and URLs: hence the restriction to printable
//! ASCII without whitespace and a hard length bound. An [`Incarnation`] changes every time a node
//! starts, so that a peer can tell "gotham came back" from "gotham never left"; the shell chooses the
//! value (for example wall-clock milliseconds at start-up) and the core only ever compares it.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The name of a node, e.g. `gotham` or `n1@10.0.0.2`.
///
/// Valid names are non-empty, at most [`NodeId::MAX_LEN`] bytes long, and made only of printable,
/// non-whitespace ASCII (`!` through `~`). Cloning is cheap (a reference-count increment), because node
/// names are copied into every placement answer, membership event and message header.
///
/// Ordering, equality and hashing are those of the name's bytes, so the order is the same on every
/// node and every platform; placement relies on it to break ties deterministically.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    /// The name is the empty string.
    #[error("node name is empty")]
    Empty,
    /// The name is longer than [`NodeId::MAX_LEN`] bytes.
    #[error("node name is {len} bytes long, the limit is {max}", max = NodeId::MAX_LEN)]
    TooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
    },
    /// The name contains a byte that is not printable, non-whitespace ASCII.
    #[error("node name has byte {byte:#04x} at offset {index}; only printable ASCII without whitespace is allowed")]
    InvalidByte {
        /// Offset of the first offending byte.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
}

impl NodeId {
    /// Longest accepted name, in bytes. Names travel in every message header and metric label, so a
    /// bound keeps those sizes known in advance (and a name fits behind a one-byte length prefix).
    pub const MAX_LEN: usize = 255;

    /// Validates `name` and makes a node id of it.
    ///
    /// ```
    /// use throng_core::NodeId;
    /// let id = NodeId::new("n1@10.0.0.2").unwrap();
    /// assert_eq!(id.as_str(), "n1@10.0.0.2");
    /// assert!(NodeId::new("has space").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, NodeIdError> {
        Self::validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    fn validate(name: &str) -> Result<(), NodeIdError> {
        if name.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(NodeIdError::TooLong { len: name.len() });
        }
        if let Some((index, &byte)) = name
            .as_bytes()
            .iter()
            .enumerate()
            .find(|(_, b)| !b.is_ascii_graphic())
        {
            return Err(NodeIdError::InvalidByte { index, byte });
        }
        Ok(())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's bytes: the exact input placement hashes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    // `NodeId("gotham")` in test failures is noise; the quoted name is unambiguous on its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::validate(&name)?;
        Ok(Self(Arc::from(name)))
    }
}

impl TryFrom<&str> for NodeId {
    type Error = NodeIdError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        String::from(&*id.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Sound because Eq, Ord and Hash are all derived from the inner `str`: lets maps keyed by `NodeId`
// be queried with a plain `&str`.
impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One run of a node: a new value every time the node starts.
///
/// The shell picks it (wall-clock milliseconds at start-up is the usual choice, since it grows across
/// restarts without any stored state); the core never reads a clock and only compares incarnations:
/// a higher incarnation of the same [`NodeId`] supersedes a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// The incarnation's raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A specific run of a specific node: what membership tracks, since a restarted node keeps its name
/// but must not inherit what peers believed about its previous run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node's name.
    pub id: NodeId,
    /// Which run of the node this is.
    pub incarnation: Incarnation,
}

impl Member {
    /// A member for run `incarnation` of node `id`.
    pub fn new(id: NodeId, incarnation: Incarnation) -> Self {
        Self { id, incarnation }
    }

    /// Whether `self` is a later run of the same node as `other`, so that news about `self` replaces
    /// news about `other`. Members of different nodes never supersede each other.
    pub fn supersedes(&self, other: &Member) -> bool {
        self.id == other.id && self.incarnation > other.incarnation
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.id, self.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{Error as ValueError, StrDeserializer};
    use serde::de::IntoDeserializer;

    #[test]
    fn accepts_typical_names() {
        for name in ["gotham", "n1@10.0.0.2", "a", "node-1.example:4369", "~!"] {
            let id = NodeId::new(name).unwrap();
            assert_eq!(id.as_str(), name);
            assert_eq!(id.to_string(), name);
            assert_eq!(name.parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
    }

    #[test]
    fn length_bound_is_inclusive() {
        let max = "x".repeat(NodeId::MAX_LEN);
        assert!(NodeId::new(&max).is_ok());
        let over = "x".repeat(NodeId::MAX_LEN + 1);
        assert_eq!(
            NodeId::new(&over),
            Err(NodeIdError::TooLong {
                len: NodeId::MAX_LEN + 1
            })
        );
    }

    #[test]
    fn rejects_whitespace_control_and_non_ascii() {
        assert_eq!(
            NodeId::new("a b"),
            Err(NodeIdError::InvalidByte {
                index: 1,
                byte: b' '
            })
        );
        assert_eq!(
            NodeId::new("ab\t"),
            Err(NodeIdError::InvalidByte {
                index: 2,
                byte: b'\t'
            })
        );
        assert_eq!(
            NodeId::new("\u{7f}"),
            Err(NodeIdError::InvalidByte {
                index: 0,
                byte: 0x7f
            })
        );
        assert!(matches!(
            NodeId::new("gothäm"),
            Err(NodeIdError::InvalidByte { index: 4, .. })
        ));
    }

    #[test]
    fn order_is_byte_order() {
        let mut ids: Vec<NodeId> = ["b", "B", "a", "aa"]
            .iter()
            .map(|s| NodeId::new(s).unwrap())
            .collect();
        ids.sort();
        let names: Vec<&str> = ids.iter().map(NodeId::as_str).collect();
        assert_eq!(names, ["B", "a", "aa", "b"]);
    }

    #[test]
    fn deserialize_validates() {
        let de: StrDeserializer<'_, ValueError> = "gotham".into_deserializer();
        assert_eq!(NodeId::deserialize(de).unwrap().as_str(), "gotham");
        let de: StrDeserializer<'_, ValueError> = "not valid".into_deserializer();
        assert!(NodeId::deserialize(de).is_err());
    }

    #[test]
    fn borrow_as_str_in_maps() {
        let mut set = std::collections::BTreeSet::new();
        set.insert(NodeId::new("gotham").unwrap());
        assert!(set.contains("gotham"));
    }

    #[test]
    fn later_incarnation_supersedes() {
        let id = NodeId::new("gotham").unwrap();
        let old = Member::new(id.clone(), Incarnation(1));
        let new = Member::new(id, Incarnation(2));
        assert!(new.supersedes(&old));
        assert!(!old.supersedes(&new));
        assert!(!new.supersedes(&new));
        let other = Member::new(NodeId::new("metropolis").unwrap(), Incarnation(9));
        assert!(!other.supersedes(&old));
        assert_eq!(new.to_string(), "gotham#2");
    }
}
