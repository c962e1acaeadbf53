//! Laws of the placement ring: stability when nodes join or leave, independence from history, balance.
//!
//! The tolerances are wide enough that a correct ring with 128 virtual nodes essentially never fails
//! them (a node's share of the ring has a relative spread of about `1/sqrt(128)`, roughly 9%), and
//! narrow enough that a ring without virtual nodes, or one that reshuffles keys, fails at once.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::Index;
use throng_core::{NodeId, Ring, RingConfig};

/// Distinct, valid node names.
fn names(count: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<NodeId>> {
    prop::collection::btree_set("[a-z][a-z0-9@.:-]{0,15}", count).prop_map(|set| {
        set.into_iter()
            .map(|name| NodeId::new(&name).unwrap())
            .collect()
    })
}

/// `count` keys that differ from one test case to the next through `salt`.
fn keys(salt: u64, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("{salt:016x}/child-{i}").into_bytes())
        .collect()
}

fn ring_of(nodes: &[NodeId]) -> Ring {
    Ring::from_nodes(RingConfig::default(), nodes.iter().cloned()).unwrap()
}

proptest! {
    /// (a) A node joining n nodes takes keys only for itself (no key moves between old nodes), and
    /// takes about 1/(n+1) of them.
    #[test]
    fn join_moves_only_keys_to_the_new_node(
        all in names(2..=11),
        pick in any::<Index>(),
        salt in any::<u64>(),
    ) {
        let mut old_nodes = all.clone();
        let joining = old_nodes.remove(pick.index(all.len()));
        let before = ring_of(&old_nodes);
        let mut after = before.clone();
        prop_assert_eq!(after.insert(joining.clone()), Ok(true));

        let keys = keys(salt, 5_000);
        let mut moved = 0usize;
        for key in &keys {
            let old = before.node_for(key).unwrap();
            let new = after.node_for(key).unwrap();
            if old != new {
                prop_assert_eq!(new, &joining, "key moved between two old nodes");
                moved += 1;
            }
        }
        let fair = 1.0 / all.len() as f64;
        let share = moved as f64 / keys.len() as f64;
        prop_assert!(
            (0.5 * fair..=1.6 * fair).contains(&share),
            "joining node took {share:.4} of the keys; fair share is {fair:.4}"
        );
    }

    /// (b) A node leaving moves only the keys it owned, and each goes to the key's second successor:
    /// the node `successors` named as the next owner is the one that takes over.
    #[test]
    fn leave_moves_only_the_leaving_nodes_keys(
        nodes in names(2..=10),
        pick in any::<Index>(),
        salt in any::<u64>(),
    ) {
        let leaving = nodes[pick.index(nodes.len())].clone();
        let before = ring_of(&nodes);
        let mut after = before.clone();
        prop_assert!(after.remove(&leaving));

        for key in keys(salt, 2_000) {
            let old = before.node_for(&key).unwrap();
            let new = after.node_for(&key).unwrap();
            if old == &leaving {
                let heir = before.successors(&key, 2).nth(1).unwrap();
                prop_assert_eq!(new, heir);
            } else {
                prop_assert_eq!(new, old);
            }
        }
    }

    /// (c) The ring is a function of the node set: any sequence of inserts and removes gives the same
    /// ring, and the same owners, as building it at once from the final set.
    #[test]
    fn history_does_not_matter(
        pool in names(1..=12),
        ops in prop::collection::vec((any::<bool>(), any::<Index>()), 0..40),
        vnodes in 1u32..=256,
        salt in any::<u64>(),
    ) {
        let config = RingConfig::new(vnodes).unwrap();
        let mut ring = Ring::new(config);
        let mut model = BTreeSet::new();
        for (insert, pick) in ops {
            let node = pool[pick.index(pool.len())].clone();
            if insert {
                prop_assert_eq!(ring.insert(node.clone()), Ok(model.insert(node)));
            } else {
                prop_assert_eq!(ring.remove(&node), model.remove(&node));
            }
        }
        let expected: Vec<NodeId> = model.iter().cloned().collect();
        prop_assert_eq!(ring.nodes(), expected.as_slice());

        // Built in reverse order, to be sure the order of the input does not leak either.
        let bulk = Ring::from_nodes(config, model.into_iter().rev()).unwrap();
        prop_assert_eq!(&ring, &bulk);
        for key in keys(salt, 500) {
            prop_assert_eq!(ring.node_for(&key), bulk.node_for(&key));
        }
    }

    /// (d) With 128 vnodes and 3 to 10 nodes, every node owns between 0.5/n and 1.75/n of the keys.
    /// The spread is the ring's own, not the hash's: over 2,000 random sets of 8 names the most
    /// loaded node's arc averaged 1.13x its fair share and reached 1.54x (1.59x with
    /// `xxh3_64_with_seed(name, i)` points instead), so a bound of 1.5x failed a case in a few
    /// thousand (`j-` among 8 names: 1.50x of the ring, 1.54x of 10,000 keys).
    #[test]
    fn load_is_balanced(nodes in names(3..=10), salt in any::<u64>()) {
        let ring = ring_of(&nodes);
        let keys = keys(salt, 10_000);
        let mut owned = vec![0usize; nodes.len()];
        for key in &keys {
            let owner = ring.node_for(key).unwrap();
            owned[ring.nodes().binary_search(owner).unwrap()] += 1;
        }
        let fair = 1.0 / nodes.len() as f64;
        for (node, count) in ring.nodes().iter().zip(owned) {
            let share = count as f64 / keys.len() as f64;
            prop_assert!(
                (0.5 * fair..=1.75 * fair).contains(&share),
                "{node} owns {share:.4} of the keys; fair share is {fair:.4}"
            );
        }
    }

    /// Successors are distinct, start with the owner, number `min(n, len)`, and a shorter list is a
    /// prefix of a longer one (the replica order does not depend on how many replicas are asked for).
    #[test]
    fn successors_laws(
        nodes in names(1..=8),
        vnodes in 1u32..=64,
        n in 0usize..10,
        key in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let ring = Ring::from_nodes(RingConfig::new(vnodes).unwrap(), nodes.iter().cloned()).unwrap();
        let succ: Vec<&NodeId> = ring.successors(&key, n).collect();
        prop_assert_eq!(succ.len(), n.min(nodes.len()));
        if let Some(first) = succ.first() {
            prop_assert_eq!(Some(*first), ring.node_for(&key));
        }
        let distinct: BTreeSet<&NodeId> = succ.iter().copied().collect();
        prop_assert_eq!(distinct.len(), succ.len());
        let all: Vec<&NodeId> = ring.successors(&key, nodes.len()).collect();
        prop_assert_eq!(&all[..succ.len()], succ.as_slice());
    }
}
