//! Placement: which node owns a key, and which nodes would own it next.
//!
//! Throng places keys with a consistent-hashing ring with virtual nodes, so that a node joining or
//! leaving moves only about `1/n` of the keys (the rest keep running where they are) and every node
//! gets a roughly equal share. Every node computes placement locally from its membership view; two
//! nodes with the same member set must therefore get the same answer for every key, whatever order
//! they learned about the members in, whatever platform they run on and whichever Throng build they
//! are. That is why the hash function and the point scheme below are part of the protocol and pinned by
//! golden tests: changing them is a wire-incompatible change.
//!
//! # Scheme
//!
//! * Hash function: XXH3-64 with seed 0 (`xxhash_rust::xxh3::xxh3_64`), never `std`'s `DefaultHasher`,
//!   whose output may change between Rust releases.
//! * A key is hashed as its raw bytes: `h = xxh3_64(key)`.
//! * Node `name` has `vnodes_per_node` points on the ring; point `i` (for `i` in
//!   `0..vnodes_per_node`) is `xxh3_64(name_bytes ++ (i as u32).to_le_bytes())`. The index has a fixed
//!   width, so two different `(name, i)` pairs never hash the same input bytes.
//! * The owner of `h` is the node of the first point `>= h`, wrapping around to the smallest point.
//! * Points with equal values are ordered by node name (byte order), so the smaller name comes first
//!   and owns the keys up to that point: ties are broken the same way on every node.

use std::fmt;
use std::iter::FusedIterator;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::node::NodeId;

/// Number of virtual nodes per node used by [`RingConfig::default`]. With 128 points per node the
/// busiest node of a 3–10 node cluster typically holds well under 1.5× its fair share of keys.
pub const DEFAULT_VNODES_PER_NODE: u32 = 128;

/// Largest accepted `vnodes_per_node`. Memory and rebuild time grow with nodes × vnodes, and beyond a
/// few thousand points per node the balance no longer improves in a way anyone would notice.
pub const MAX_VNODES_PER_NODE: u32 = 4096;

/// Most nodes a [`Ring`] holds. Together with [`MAX_VNODES_PER_NODE`] this bounds a ring to
/// 16 Mi points (256 MiB); at the default 128 vnodes a full ring is 8 MiB.
pub const MAX_NODES: usize = 4096;

/// Why a ring cannot be configured or grown as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// `vnodes_per_node` is outside `1..=MAX_VNODES_PER_NODE`.
    #[error("vnodes_per_node must be in 1..={MAX_VNODES_PER_NODE}, got {0}")]
    InvalidVnodes(u32),
    /// The ring already holds [`MAX_NODES`] nodes.
    #[error("a ring holds at most {MAX_NODES} nodes")]
    TooManyNodes,
}

/// How a [`Ring`] is built. Valid by construction: [`RingConfig::new`] and deserialization both check
/// the bounds, so a [`Ring`] never has to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRingConfig")]
pub struct RingConfig {
    vnodes_per_node: u32,
}

impl RingConfig {
    /// A configuration with `vnodes_per_node` points per node, which must be in
    /// `1..=`[`MAX_VNODES_PER_NODE`].
    pub fn new(vnodes_per_node: u32) -> Result<Self, PlacementError> {
        if (1..=MAX_VNODES_PER_NODE).contains(&vnodes_per_node) {
            Ok(Self { vnodes_per_node })
        } else {
            Err(PlacementError::InvalidVnodes(vnodes_per_node))
        }
    }

    /// Points each node has on the ring.
    pub fn vnodes_per_node(&self) -> u32 {
        self.vnodes_per_node
    }
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            vnodes_per_node: DEFAULT_VNODES_PER_NODE,
        }
    }
}

/// The unchecked shape of a [`RingConfig`] as it appears in configuration files.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRingConfig {
    #[serde(default = "default_vnodes")]
    vnodes_per_node: u32,
}

fn default_vnodes() -> u32 {
    DEFAULT_VNODES_PER_NODE
}

impl TryFrom<RawRingConfig> for RingConfig {
    type Error = PlacementError;

    fn try_from(raw: RawRingConfig) -> Result<Self, Self::Error> {
        Self::new(raw.vnodes_per_node)
    }
}

/// A consistent-hashing ring over a set of nodes.
///
/// The ring is a pure function of its configuration and its node *set*: two rings with the same
/// configuration and the same nodes compare equal and answer every query identically, however they
/// were built. Lookups ([`Ring::node_for`]) are a binary search over a sorted array and never
/// allocate; [`Ring::insert`] and [`Ring::remove`] rebuild that array and cost `O(points log points)`.
///
/// ```
/// use throng_core::{NodeId, Ring, RingConfig};
///
/// let nodes = ["gotham", "metropolis", "central-city"].map(|n| NodeId::new(n).unwrap());
/// let ring = Ring::from_nodes(RingConfig::default(), nodes).unwrap();
/// let owner = ring.node_for(b"batman").unwrap();
/// // The first successor is the owner; the second is where the key goes if the owner dies.
/// let next: Vec<&NodeId> = ring.successors(b"batman", 2).collect();
/// assert_eq!(next[0], owner);
/// assert_ne!(next[1], owner);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Ring {
    config: RingConfig,
    /// Sorted by name, no duplicates; a node's position here is its index in `points`.
    nodes: Vec<NodeId>,
    /// `(point, node index)` sorted ascending. Because `nodes` is sorted, ordering equal points by
    /// index is ordering them by name, which is the documented tie-break.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// An empty ring.
    pub fn new(config: RingConfig) -> Self {
        Self {
            config,
            nodes: Vec::new(),
            points: Vec::new(),
        }
    }

    /// A ring holding every node of `nodes`; duplicates are ignored. Cheaper than repeated
    /// [`Ring::insert`], since the points are sorted once.
    pub fn from_nodes(
        config: RingConfig,
        nodes: impl IntoIterator<Item = NodeId>,
    ) -> Result<Self, PlacementError> {
        let mut nodes: Vec<NodeId> = nodes.into_iter().collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.len() > MAX_NODES {
            return Err(PlacementError::TooManyNodes);
        }
        let vnodes = config.vnodes_per_node;
        let mut points = Vec::with_capacity(nodes.len() * vnodes as usize);
        for (index, node) in nodes.iter().enumerate() {
            push_points(&mut points, node, index as u32, vnodes);
        }
        points.sort_unstable();
        Ok(Self {
            config,
            nodes,
            points,
        })
    }

    /// The configuration the ring was built with.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// Adds `node`. Returns `Ok(true)` if it was added, `Ok(false)` if it was already there (the ring
    /// is unchanged), and an error if the ring is full.
    pub fn insert(&mut self, node: NodeId) -> Result<bool, PlacementError> {
        let position = match self.nodes.binary_search(&node) {
            Ok(_) => return Ok(false),
            Err(position) => position,
        };
        if self.nodes.len() >= MAX_NODES {
            return Err(PlacementError::TooManyNodes);
        }
        // Indices are positions in the sorted node list, so every node after the new one shifts by
        // one; shifting keeps the relative order of equal points, and the sort below places the new
        // node's points.
        let new_index = position as u32;
        for (_, index) in &mut self.points {
            if *index >= new_index {
                *index += 1;
            }
        }
        push_points(
            &mut self.points,
            &node,
            new_index,
            self.config.vnodes_per_node,
        );
        self.points.sort_unstable();
        self.nodes.insert(position, node);
        Ok(true)
    }

    /// Removes `node`. Returns whether it was there. Only the keys `node` owned change owner.
    pub fn remove(&mut self, node: &NodeId) -> bool {
        let Ok(position) = self.nodes.binary_search(node) else {
            return false;
        };
        self.nodes.remove(position);
        let removed = position as u32;
        // Decrementing the indices above `removed` is monotonic, so the array stays sorted.
        self.points.retain_mut(|(_, index)| {
            if *index == removed {
                return false;
            }
            if *index > removed {
                *index -= 1;
            }
            true
        });
        true
    }

    /// Whether `node` is on the ring.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.nodes.binary_search(node).is_ok()
    }

    /// Number of nodes on the ring.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes on the ring, sorted by name.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The node that owns `key`, or `None` if the ring is empty. `O(log points)`, no allocation.
    pub fn node_for(&self, key: &[u8]) -> Option<&NodeId> {
        let start = self.start(xxh3_64(key))?;
        Some(&self.nodes[self.points[start].1 as usize])
    }

    /// The first `n` distinct nodes clockwise from `key`, starting with its owner: where replicas of
    /// the key's data belong, in the order the nodes would take the key over as owners die.
    ///
    /// Yields `min(n, self.len())` nodes. Finding the start is `O(log points)`; the iterator then
    /// walks points until it has seen `n` distinct nodes, and for `n > 1` allocates one bitset of
    /// `ceil(len / 64)` words to recognise nodes it has already yielded.
    pub fn successors(&self, key: &[u8], n: usize) -> Successors<'_> {
        let remaining = n.min(self.nodes.len());
        let seen = if remaining > 1 {
            vec![0; self.nodes.len().div_ceil(64)]
        } else {
            Vec::new()
        };
        Successors {
            ring: self,
            next: self.start(xxh3_64(key)).unwrap_or(0),
            steps_left: self.points.len(),
            remaining,
            seen,
        }
    }

    /// Index of the first point at or after `hash`, wrapping; `None` on an empty ring.
    fn start(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let index = self.points.partition_point(|&(point, _)| point < hash);
        Some(if index == self.points.len() { 0 } else { index })
    }
}

impl fmt::Debug for Ring {
    // The points array is thousands of entries of noise; the node set and config define the ring.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("config", &self.config)
            .field("nodes", &self.nodes)
            .field("points", &self.points.len())
            .finish()
    }
}

/// Appends `node`'s points, tagged with `index`, to `points` (unsorted).
fn push_points(points: &mut Vec<(u64, u32)>, node: &NodeId, index: u32, vnodes: u32) {
    // One stack buffer per node: the name is copied once and only the index suffix changes.
    let name = node.as_bytes();
    let mut buffer = [0u8; NodeId::MAX_LEN + 4];
    buffer[..name.len()].copy_from_slice(name);
    let input_len = name.len() + 4;
    for vnode in 0..vnodes {
        buffer[name.len()..input_len].copy_from_slice(&vnode.to_le_bytes());
        points.push((xxh3_64(&buffer[..input_len]), index));
    }
}

/// Iterator over the distinct nodes clockwise from a key; see [`Ring::successors`].
#[derive(Debug, Clone)]
pub struct Successors<'a> {
    ring: &'a Ring,
    /// Next point to look at.
    next: usize,
    /// Points not yet looked at; every node has a point, so a full turn finds them all.
    steps_left: usize,
    /// Nodes still to yield.
    remaining: usize,
    /// Bitset over node indices already yielded; empty when at most one node is to be yielded.
    seen: Vec<u64>,
}

impl<'a> Iterator for Successors<'a> {
    type Item = &'a NodeId;

    fn next(&mut self) -> Option<Self::Item> {
        let points = &self.ring.points;
        while self.remaining > 0 && self.steps_left > 0 {
            let index = points[self.next].1 as usize;
            self.next = if self.next + 1 == points.len() {
                0
            } else {
                self.next + 1
            };
            self.steps_left -= 1;
            if !self.seen.is_empty() {
                let (word, bit) = (index / 64, 1u64 << (index % 64));
                if self.seen[word] & bit != 0 {
                    continue;
                }
                self.seen[word] |= bit;
            }
            self.remaining -= 1;
            return Some(&self.ring.nodes[index]);
        }
        debug_assert_eq!(self.remaining, 0, "a full turn must visit every node");
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Successors<'_> {}

impl FusedIterator for Successors<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn ring(names: &[&str]) -> Ring {
        Ring::from_nodes(RingConfig::default(), names.iter().map(|n| id(n))).unwrap()
    }

    fn keys(count: usize) -> impl Iterator<Item = Vec<u8>> {
        (0..count).map(|i| format!("key-{i}").into_bytes())
    }

    #[test]
    fn config_bounds() {
        assert_eq!(RingConfig::default().vnodes_per_node(), 128);
        assert_eq!(RingConfig::new(0), Err(PlacementError::InvalidVnodes(0)));
        assert!(RingConfig::new(1).is_ok());
        assert!(RingConfig::new(MAX_VNODES_PER_NODE).is_ok());
        assert_eq!(
            RingConfig::new(MAX_VNODES_PER_NODE + 1),
            Err(PlacementError::InvalidVnodes(MAX_VNODES_PER_NODE + 1))
        );
    }

    #[test]
    fn deserialize_validates_config() {
        use serde::de::value::{Error as ValueError, MapDeserializer};
        use serde::de::IntoDeserializer;
        use std::collections::BTreeMap;
        fn parse(fields: &[(&'static str, u32)]) -> Result<RingConfig, ValueError> {
            let map: BTreeMap<&str, u32> = fields.iter().copied().collect();
            let de: MapDeserializer<'_, _, ValueError> = map.into_deserializer();
            RingConfig::deserialize(de)
        }
        assert_eq!(
            parse(&[("vnodes_per_node", 64)]).unwrap().vnodes_per_node(),
            64
        );
        assert!(parse(&[("vnodes_per_node", 0)]).is_err());
        assert!(
            parse(&[("vnodes", 64)]).is_err(),
            "unknown fields are typos"
        );
        assert_eq!(parse(&[]).unwrap(), RingConfig::default());
    }

    #[test]
    fn empty_ring_places_nothing() {
        let ring = Ring::new(RingConfig::default());
        assert!(ring.is_empty());
        assert_eq!(ring.node_for(b"anything"), None);
        assert_eq!(ring.successors(b"anything", 3).count(), 0);
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = ring(&["gotham"]);
        for key in keys(1_000) {
            assert_eq!(ring.node_for(&key), Some(&id("gotham")));
        }
        let all: Vec<_> = ring.successors(b"k", 5).collect();
        assert_eq!(all, [&id("gotham")]);
    }

    #[test]
    fn single_vnode_ring_still_works() {
        let config = RingConfig::new(1).unwrap();
        let ring = Ring::from_nodes(config, [id("a"), id("b"), id("c")]).unwrap();
        for key in keys(200) {
            let succ: Vec<_> = ring.successors(&key, 3).collect();
            assert_eq!(succ.len(), 3);
            assert_eq!(Some(succ[0]), ring.node_for(&key));
        }
    }

    #[test]
    fn insert_and_remove_report_membership() {
        let mut ring = Ring::new(RingConfig::default());
        assert_eq!(ring.insert(id("b")), Ok(true));
        assert_eq!(ring.insert(id("a")), Ok(true));
        assert_eq!(ring.insert(id("b")), Ok(false));
        assert_eq!(ring.nodes(), [id("a"), id("b")]);
        assert_eq!(ring.len(), 2);
        assert!(ring.contains(&id("a")));
        assert!(ring.remove(&id("a")));
        assert!(!ring.remove(&id("a")));
        assert!(!ring.contains(&id("a")));
        assert_eq!(ring.nodes(), [id("b")]);
    }

    #[test]
    fn node_limit_is_enforced() {
        let names = (0..MAX_NODES).map(|i| id(&format!("n{i}")));
        let config = RingConfig::new(1).unwrap();
        let mut ring = Ring::from_nodes(config, names).unwrap();
        assert_eq!(ring.len(), MAX_NODES);
        assert_eq!(
            ring.insert(id("one-too-many")),
            Err(PlacementError::TooManyNodes)
        );
        assert_eq!(ring.insert(id("n0")), Ok(false));
        let too_many = (0..=MAX_NODES).map(|i| id(&format!("n{i}")));
        assert_eq!(
            Ring::from_nodes(config, too_many),
            Err(PlacementError::TooManyNodes)
        );
    }

    #[test]
    fn removal_moves_only_that_nodes_keys() {
        let before = ring(&["a", "b", "c", "d"]);
        let mut after = before.clone();
        assert!(after.remove(&id("c")));
        for key in keys(5_000) {
            let old = before.node_for(&key).unwrap();
            let new = after.node_for(&key).unwrap();
            if old != &id("c") {
                assert_eq!(old, new);
            } else {
                assert_ne!(new, &id("c"));
            }
        }
    }

    #[test]
    fn removed_key_goes_to_its_second_successor() {
        let before = ring(&["a", "b", "c", "d", "e"]);
        for key in keys(2_000) {
            let succ: Vec<_> = before.successors(&key, 2).collect();
            let mut after = before.clone();
            after.remove(succ[0]);
            assert_eq!(after.node_for(&key), Some(succ[1]));
        }
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let names = [
            "gotham",
            "metropolis",
            "central-city",
            "star-city",
            "bludhaven",
        ];
        let mut forward = Ring::new(RingConfig::default());
        for n in names {
            forward.insert(id(n)).unwrap();
        }
        let mut backward = Ring::new(RingConfig::default());
        for n in names.iter().rev() {
            backward.insert(id(n)).unwrap();
        }
        // Inserting and removing an extra node must leave no trace either.
        backward.insert(id("zzz")).unwrap();
        backward.insert(id("aaa")).unwrap();
        backward.remove(&id("zzz"));
        backward.remove(&id("aaa"));
        let bulk = ring(&names);
        assert_eq!(forward, backward);
        assert_eq!(forward, bulk);
        for key in keys(2_000) {
            assert_eq!(forward.node_for(&key), backward.node_for(&key));
            assert_eq!(forward.node_for(&key), bulk.node_for(&key));
        }
    }

    #[test]
    fn successors_are_distinct_and_start_with_owner() {
        let ring = ring(&["a", "b", "c", "d", "e", "f"]);
        for key in keys(1_000) {
            for n in [0, 1, 2, 3, 6, 10] {
                let succ: Vec<&NodeId> = ring.successors(&key, n).collect();
                assert_eq!(succ.len(), n.min(6));
                assert_eq!(ring.successors(&key, n).len(), n.min(6));
                if n > 0 {
                    assert_eq!(Some(succ[0]), ring.node_for(&key));
                }
                let mut dedup = succ.clone();
                dedup.sort();
                dedup.dedup();
                assert_eq!(dedup.len(), succ.len());
            }
        }
    }

    #[test]
    fn successors_are_prefixes_of_each_other() {
        let ring = ring(&["a", "b", "c", "d", "e"]);
        for key in keys(500) {
            let all: Vec<_> = ring.successors(&key, 5).collect();
            for n in 0..=5 {
                let prefix: Vec<_> = ring.successors(&key, n).collect();
                assert_eq!(prefix, all[..n]);
            }
        }
    }

    #[test]
    fn equal_points_go_to_the_smaller_name() {
        // Forge a tie: the same point for two nodes, with the key hashing exactly onto it.
        let hash = xxh3_64(b"k");
        let ring = Ring {
            config: RingConfig::new(1).unwrap(),
            nodes: vec![id("a"), id("b")],
            points: vec![(hash, 0), (hash, 1)],
        };
        assert_eq!(ring.node_for(b"k"), Some(&id("a")));
        let succ: Vec<_> = ring.successors(b"k", 2).collect();
        assert_eq!(succ, [&id("a"), &id("b")]);
    }

    /// Pins the hash function and point scheme: placement is shared between nodes of possibly
    /// different builds, so any change here is a protocol change and must be deliberate. The expected
    /// values were computed independently with the reference C library (libxxhash 0.8.1,
    /// `XXH3_64bits`) and a few lines of Python implementing the scheme in the module docs.
    #[test]
    fn scheme_is_stable() {
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        let mut points = Vec::new();
        push_points(&mut points, &id("gotham"), 7, 128);
        assert_eq!(points[0], (0x590d_fa7c_fd59_a46f, 7));
        assert_eq!(points[127], (0x7a50_de82_5b70_590d, 7));
        let ring = ring(&["gotham", "metropolis", "central-city"]);
        let owners: Vec<&str> = ["batman", "superman", "flash", "robin", "lois"]
            .iter()
            .map(|k| ring.node_for(k.as_bytes()).unwrap().as_str())
            .collect();
        assert_eq!(
            owners,
            ["gotham", "metropolis", "gotham", "central-city", "gotham"]
        );
    }
}
