//! The rings before the recent joins: where a key that moves to a joiner still runs.
//!
//! A join moves keys to the joiner at once in every node's view, but each child runs on its old
//! holder until that holder's hand-off reaches it (moves are throttled: `max_moves`). Meanwhile
//! the joiner answers "no such actor" for it. The old holder is the key's owner on one of the
//! rings before the recent joins (the one before the join that moved it, or an earlier one if a
//! move was overtaken by the next join): a caller refused by the owner asks those nodes too
//! ([`Joins::owners_before`]). A refused call was not delivered, so asking another node keeps a
//! call at most once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use throng_core::directory::Distribution;
use throng_core::{NodeId, Ring};

/// How long a ring before a join is kept: a bound on a rebalance (a storm of 24 joiners against
/// 100,000 children rebalances in about 11 s on 2 cores, docs/benchmarks.md).
pub(super) const JOIN_WINDOW: Duration = Duration::from_secs(30);

/// How many rings before joins are kept, the latest (each is 16 bytes per virtual node, 128 per
/// node: about 55 KB at 27 nodes; a storm of 24 joiners makes up to 24 rings).
pub(super) const HISTORY: usize = 32;

/// At most this many other nodes are asked for a key its owner does not run.
pub(super) const MAX_ASKED: usize = 6;

/// The rings before the recent joins of one supervisor's ring, as this node saw them.
#[derive(Debug)]
pub(super) struct Joins {
    me: NodeId,
    /// The ring before each recent change that added nodes, with when the change was (oldest
    /// first; at most [`HISTORY`]).
    history: VecDeque<(Ring, Instant)>,
    /// The ring as of the last change.
    ring: Ring,
}

impl Joins {
    /// No node joined yet; `ring` is the starting ring.
    pub(super) fn new(me: NodeId, ring: Ring) -> Self {
        Joins {
            me,
            history: VecDeque::new(),
            ring,
        }
    }

    /// The ring became `new` at `now`. If it gained nodes, the ring before is kept; except when
    /// this node's ring held only itself (it just started, or was alone): then this node is the
    /// one joining the others, and the ring before its join is theirs (`new` without it).
    pub(super) fn changed(&mut self, new: &Ring, now: Instant) {
        let old = std::mem::replace(&mut self.ring, new.clone());
        self.expire(now);
        let fresh = old.nodes().iter().all(|n| *n == self.me);
        let before = if fresh {
            if !new.contains(&self.me) || new.len() < 2 {
                return;
            }
            let others = new.nodes().iter().filter(|n| **n != self.me).cloned();
            match Ring::from_nodes(new.config(), others) {
                Ok(r) => r,
                Err(_) => return,
            }
        } else if new.nodes().iter().any(|n| !old.contains(n)) {
            old
        } else {
            return;
        };
        self.history.push_back((before, now));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// Where else `key`, which `owner` (its owner now) does not run, may run: its owners on the
    /// rings before the recent joins, the latest first (at most [`MAX_ASKED`] nodes, each in the
    /// ring now).
    pub(super) fn owners_before(
        &mut self,
        distribution: &dyn Distribution,
        key: &str,
        owner: &NodeId,
        now: Instant,
    ) -> Vec<NodeId> {
        self.expire(now);
        let mut out: Vec<NodeId> = Vec::new();
        for (ring, _) in self.history.iter().rev() {
            if out.len() == MAX_ASKED {
                break;
            }
            if let Some(n) = distribution.owner(key.as_bytes(), ring) {
                if n != *owner && self.ring.contains(&n) && !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }

    fn expire(&mut self, now: Instant) {
        while self
            .history
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= JOIN_WINDOW)
        {
            self.history.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use throng_core::directory::Uniform;
    use throng_core::RingConfig;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid")
    }

    fn ring(names: &[&str]) -> Ring {
        Ring::from_nodes(RingConfig::default(), names.iter().map(|n| id(n))).expect("ring")
    }

    /// Keys owned by `to` on `after` and by another node on `before`.
    fn moved_keys(before: &Ring, after: &Ring, to: &str) -> Vec<(String, NodeId)> {
        (0..2000)
            .map(|i| format!("k{i}"))
            .filter_map(|k| {
                let now = Uniform.owner(k.as_bytes(), after)?;
                let then = Uniform.owner(k.as_bytes(), before)?;
                (now == id(to) && then != now).then_some((k, then))
            })
            .collect()
    }

    #[test]
    fn a_non_member_keeps_no_ring_for_its_first_view() {
        let mut j = Joins::new(id("x"), ring(&[]));
        j.changed(&ring(&["a", "b"]), Instant::now());
        assert!(j.history.is_empty());
    }

    #[test]
    fn a_key_moved_to_a_joiner_is_looked_for_on_its_owner_before_the_join() {
        let t0 = Instant::now();
        let mut j = Joins::new(id("a"), ring(&["a", "b", "c"]));
        j.changed(&ring(&["a", "b", "c", "d", "e"]), t0);
        let moved = moved_keys(
            &ring(&["a", "b", "c"]),
            &ring(&["a", "b", "c", "d", "e"]),
            "d",
        );
        assert!(!moved.is_empty());
        for (k, holder) in moved {
            assert_eq!(j.owners_before(&Uniform, &k, &id("d"), t0), [holder], "{k}");
        }
        // A key that did not move has no other place to look.
        let stayed = (0..2000)
            .map(|i| format!("k{i}"))
            .find(|k| {
                Uniform.owner(k.as_bytes(), &ring(&["a", "b", "c"])) == Some(id("b"))
                    && Uniform.owner(k.as_bytes(), &ring(&["a", "b", "c", "d", "e"]))
                        == Some(id("b"))
            })
            .expect("some key stays on b");
        assert!(j.owners_before(&Uniform, &stayed, &id("b"), t0).is_empty());
        // Past the window, nothing is kept.
        assert!(j
            .owners_before(&Uniform, "k1", &id("zz"), t0 + JOIN_WINDOW)
            .is_empty());
        assert!(j.history.is_empty());
    }

    #[test]
    fn the_node_that_joins_looks_for_its_keys_on_the_nodes_that_were_there() {
        let t0 = Instant::now();
        let mut j = Joins::new(id("d"), ring(&[]));
        j.changed(&ring(&["a", "b", "c", "d"]), t0);
        let moved = moved_keys(&ring(&["a", "b", "c"]), &ring(&["a", "b", "c", "d"]), "d");
        for (k, holder) in moved {
            assert_eq!(j.owners_before(&Uniform, &k, &id("d"), t0), [holder]);
        }
        // A ring that only lost nodes adds nothing.
        j.changed(&ring(&["a", "b", "c"]), t0);
        assert_eq!(j.history.len(), 1);
    }

    #[test]
    fn every_owner_a_key_had_during_a_storm_of_joins_is_looked_at() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        let ring_of = |k: usize| {
            Ring::from_nodes(RingConfig::default(), names[..k].iter().map(|n| id(n))).expect("ring")
        };
        // A cluster that formed one node at a time, then a storm of joins one at a time (more
        // than the history keeps).
        let mut j = Joins::new(id("n00"), ring(&[]));
        for k in 1..=40 {
            j.changed(&ring_of(k), t0);
        }
        assert_eq!(j.history.len(), HISTORY);
        let last = ring_of(40);
        // Kept: the latest.
        let kept: Vec<Ring> = (40 - HISTORY..40).map(ring_of).collect();
        for i in 0..500 {
            let key = format!("k{i}");
            let owner = Uniform.owner(key.as_bytes(), &last).expect("owner");
            let asked = j.owners_before(&Uniform, &key, &owner, t0);
            assert!(asked.len() <= MAX_ASKED);
            // Every node asked owned the key on a kept ring; the owner it had just before it
            // moved to its owner now is asked first.
            let owners: Vec<NodeId> = kept
                .iter()
                .map(|r| Uniform.owner(key.as_bytes(), r).expect("owner"))
                .collect();
            for n in &asked {
                assert!(owners.contains(n), "{key}: {n} never owned it");
            }
            if let Some(last_hop) = owners.iter().rev().find(|o| **o != owner) {
                assert_eq!(asked.first(), Some(last_hop), "{key}");
            }
        }
    }
}
