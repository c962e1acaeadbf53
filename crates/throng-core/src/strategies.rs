//! Distribution strategies beyond the plain ring ([`crate::directory::Uniform`]).

use crate::directory::Distribution;
use crate::{NodeId, Ring};

/// Explicit placement: a key of the form `"<node>/<rest>"` is owned by `<node>` while that node
/// is in the view, so a caller chooses where a child runs and every node still finds it from the
/// key alone (no table). When the named node is not in the view (down, leaving, or not a node at
/// all), the key falls back to the ring — the child fails over like any other and comes back to
/// its node when the node returns. Keys without a `/` are placed by the ring.
#[derive(Debug, Clone, Copy, Default)]
pub struct Explicit;

impl Explicit {
    fn named(key: &[u8], ring: &Ring) -> Option<NodeId> {
        let slash = key.iter().position(|b| *b == b'/')?;
        let name = std::str::from_utf8(&key[..slash]).ok()?;
        ring.nodes().iter().find(|n| n.as_str() == name).cloned()
    }
}

impl Distribution for Explicit {
    fn owner(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        Self::named(key, ring).or_else(|| ring.node_for(key).cloned())
    }

    fn backup(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        let owner = self.owner(key, ring)?;
        // The node that owns the key without its named node: the ring, skipping the owner.
        ring.successors(key, ring.len())
            .find(|n| **n != owner)
            .cloned()
    }

    /// A named node keeps its keys while it is on the ring; the rest is the ring's rule.
    fn removal_is_local(&self) -> bool {
        true
    }
}

/// Uniform pseudo-random placement (Horde's `UniformRandomDistribution`, made addressable): each
/// key goes to the node with the highest weight `xxh3(key ++ 0xff ++ node name)` over the view
/// (rendezvous hashing). Every node computes the same owner from the key alone, so calls still
/// route by key in one hop; keys spread evenly without virtual nodes; and a view change moves
/// only the keys of the nodes that came or went. The backup is the node of the second-highest
/// weight — the owner once the owner is gone. Costs O(nodes) per lookup (the ring is O(log)).
#[derive(Debug, Clone, Copy, Default)]
pub struct UniformRandom;

impl UniformRandom {
    fn weight(key: &[u8], node: &NodeId) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(key);
        h.update(&[0xff]);
        h.update(node.as_str().as_bytes());
        h.digest()
    }

    /// The two nodes of highest weight for `key`, highest first (ties broken by name).
    fn top_two<'a>(key: &[u8], ring: &'a Ring) -> (Option<&'a NodeId>, Option<&'a NodeId>) {
        let mut best: Option<(u64, &NodeId)> = None;
        let mut second: Option<(u64, &NodeId)> = None;
        for node in ring.nodes() {
            let w = (Self::weight(key, node), node);
            if best.is_none_or(|b| (w.0, w.1) > (b.0, b.1)) {
                second = best;
                best = Some(w);
            } else if second.is_none_or(|s| (w.0, w.1) > (s.0, s.1)) {
                second = Some(w);
            }
        }
        (best.map(|b| b.1), second.map(|s| s.1))
    }
}

impl Distribution for UniformRandom {
    fn owner(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        Self::top_two(key, ring).0.cloned()
    }

    fn backup(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        Self::top_two(key, ring).1.cloned()
    }

    /// Removing a node other than the two of highest weight leaves both.
    fn removal_is_local(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RingConfig;

    fn ring(names: &[&str]) -> Ring {
        Ring::from_nodes(
            RingConfig::default(),
            names.iter().map(|n| NodeId::new(n).unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn a_named_node_owns_its_keys_and_the_ring_takes_over_when_it_is_gone() {
        let r = ring(&["a", "b", "c"]);
        for k in ["b/x", "b/y", "b/zzz"] {
            assert_eq!(Explicit.owner(k.as_bytes(), &r).unwrap().as_str(), "b");
            let backup = Explicit.backup(k.as_bytes(), &r).unwrap();
            assert_ne!(backup.as_str(), "b");
            // Without b, the key goes to its backup: the failover target is where the copy is.
            let without = ring(&["a", "c"]);
            assert_eq!(Explicit.owner(k.as_bytes(), &without).unwrap(), backup);
        }
        // Unknown names and plain keys follow the ring.
        for k in ["nobody/x", "plain"] {
            assert_eq!(
                Explicit.owner(k.as_bytes(), &r),
                r.node_for(k.as_bytes()).cloned()
            );
        }
        assert_eq!(Explicit.owner(b"x", &ring(&[])), None);
    }
}

#[cfg(test)]
mod uniform_random {
    use super::*;
    use crate::RingConfig;
    use proptest::prelude::*;

    fn ring(names: &[String]) -> Ring {
        Ring::from_nodes(
            RingConfig::default(),
            names.iter().map(|n| NodeId::new(n).unwrap()),
        )
        .unwrap()
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn golden_owners() {
        // Placement is part of the cluster's contract: nodes of different builds must agree.
        let r = ring(&nodes(5));
        let owners: Vec<String> = ["a", "b", "hero-1", "hero-2"]
            .iter()
            .map(|k| UniformRandom.owner(k.as_bytes(), &r).unwrap().to_string())
            .collect();
        assert_eq!(owners, GOLDEN);
    }

    const GOLDEN: [&str; 4] = ["node-1", "node-0", "node-0", "node-3"];

    #[test]
    fn keys_spread_evenly() {
        let r = ring(&nodes(8));
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..80_000 {
            let k = format!("key-{i}");
            *counts
                .entry(UniformRandom.owner(k.as_bytes(), &r).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 8);
        for (node, c) in counts {
            assert!((9_000..=11_000).contains(&c), "{node} owns {c} of 80000");
        }
    }

    #[test]
    fn an_empty_view_owns_nothing() {
        let r = Ring::new(RingConfig::default());
        assert_eq!(UniformRandom.owner(b"k", &r), None);
        assert_eq!(UniformRandom.backup(b"k", &ring(&nodes(1))), None);
    }

    proptest! {
        #[test]
        fn the_backup_owns_the_key_once_the_owner_is_gone_and_only_its_keys_move(
            n in 2usize..10, key in ".{0,20}", gone in 0usize..10,
        ) {
            let names = nodes(n);
            let r = ring(&names);
            let owner = UniformRandom.owner(key.as_bytes(), &r).unwrap();
            let backup = UniformRandom.backup(key.as_bytes(), &r).unwrap();
            prop_assert_ne!(&owner, &backup);
            let without_owner: Vec<String> =
                names.iter().filter(|x| **x != owner.as_str()).cloned().collect();
            prop_assert_eq!(UniformRandom.owner(key.as_bytes(), &ring(&without_owner)), Some(backup));
            // Removing any other node leaves the owner in place.
            let other = &names[gone % n];
            if *other != owner.as_str() {
                let rest: Vec<String> = names.iter().filter(|x| *x != other).cloned().collect();
                prop_assert_eq!(UniformRandom.owner(key.as_bytes(), &ring(&rest)), Some(owner));
            }
        }
    }
}

/// `Distribution::removal_is_local`, which the directory relies on to re-derive placement after
/// a node loss for a few children only: removing nodes changes a key's owner only if it was
/// removed, and its backup only if its owner or its backup was removed.
#[cfg(test)]
mod removal_is_local {
    use super::*;
    use crate::directory::Uniform;
    use crate::RingConfig;
    use proptest::prelude::*;

    fn ring(names: &[String]) -> Ring {
        Ring::from_nodes(
            RingConfig::default(),
            names.iter().map(|n| NodeId::new(n).unwrap()),
        )
        .unwrap()
    }

    fn holds(d: &dyn Distribution, names: &[String], removed: &[String], key: &str) -> bool {
        let before = ring(names);
        let rest: Vec<String> = names
            .iter()
            .filter(|n| !removed.contains(n))
            .cloned()
            .collect();
        let after = ring(&rest);
        let key = key.as_bytes();
        let (owner, backup) = (d.owner(key, &before), d.backup(key, &before));
        let gone =
            |n: &Option<NodeId>| n.as_ref().is_some_and(|n| removed.contains(&n.to_string()));
        let owner_kept = gone(&owner) || d.owner(key, &after) == owner;
        let backup_kept = gone(&owner) || gone(&backup) || d.backup(key, &after) == backup;
        owner_kept && backup_kept
    }

    /// Placement by key modulo the number of nodes: removing any node moves most keys.
    struct Modulo;

    impl Distribution for Modulo {
        fn owner(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
            let i = xxhash_rust::xxh3::xxh3_64(key) as usize % ring.len().max(1);
            ring.nodes().get(i).cloned()
        }
    }

    #[test]
    fn the_check_tells_a_distribution_that_is_not_local() {
        let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        let removed = vec!["n7".to_owned()];
        let moved = (0..100)
            .filter(|k| !holds(&Modulo, &names, &removed, &format!("k{k}")))
            .count();
        assert!(moved > 10, "{moved} of 100 keys");
        assert!(!Modulo.removal_is_local());
    }

    proptest! {
        #[test]
        fn removing_nodes_changes_only_their_keys_placement(
            n in 2usize..12,
            removed in proptest::collection::vec(0usize..12, 1..4),
            key in "([a-z0-9]{1,6}/)?[a-z0-9]{0,12}",
        ) {
            let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let removed: Vec<String> = removed.iter().map(|i| format!("n{}", i % n)).collect();
            // A key may name a node (Explicit): make some name one of the ring's nodes.
            let key = key.replacen("n", &format!("n{}", key.len() % n), 1);
            for d in [&Uniform as &dyn Distribution, &Explicit, &UniformRandom] {
                prop_assert!(d.removal_is_local());
                prop_assert!(holds(d, &names, &removed, &key), "{key:?} without {removed:?}");
            }
        }
    }
}
