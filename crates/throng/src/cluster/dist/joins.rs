//! The nodes that joined the placement ring lately, and the ring without them.
//!
//! A join moves keys to the joiner at once in every node's view, but each child runs on its old
//! holder until that holder's hand-off reaches it (moves are throttled: `max_moves`). Meanwhile
//! the joiner answers "no such actor" for it. The old holder of a key is, for keys that moved
//! straight from the nodes that were there before, its owner on the ring without the recent
//! joiners: a caller refused by the owner asks that node too ([`Joins::owners_before`]). A refused
//! call was not delivered, so asking another node keeps a call at most once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use throng_core::directory::Distribution;
use throng_core::{NodeId, Ring};

/// How long a node counts as a recent joiner: a bound on a rebalance (a storm of 24 joiners
/// against 100,000 children rebalances in about 11 s on 2 cores, docs/benchmarks.md).
pub(super) const JOIN_WINDOW: Duration = Duration::from_secs(30);

/// The recent joiners of one supervisor's ring, as this node saw them.
#[derive(Debug)]
pub(super) struct Joins {
    me: NodeId,
    /// The joiners still within [`JOIN_WINDOW`], with when this node saw them join (at most one
    /// entry per node of the ring).
    joined: Vec<(NodeId, Instant)>,
    /// The ring without them (`None` if there are none, or none of the ring is left).
    before: Option<Ring>,
    /// The ring as of the last change.
    ring: Ring,
    /// The rings before the last changes that added nodes (at most [`HISTORY`], oldest first),
    /// with when each change was.
    history: VecDeque<(Ring, Instant)>,
}

/// How many rings before recent joins are kept besides the ring without the joiners (each is
/// 16 bytes per virtual node: 128 per node, so about 55 KB at 27 nodes; kept for [`JOIN_WINDOW`]).
pub(super) const HISTORY: usize = 16;

/// At most this many other nodes are asked for a key its owner does not run.
pub(super) const MAX_ASKED: usize = 4;

impl Joins {
    /// No node joined yet; `ring` is the starting ring.
    pub(super) fn new(me: NodeId, ring: Ring) -> Self {
        Joins {
            me,
            joined: Vec::new(),
            before: None,
            ring,
            history: VecDeque::new(),
        }
    }

    /// The ring became `new` at `now`. The nodes it gained are recent joiners, except when this
    /// node's ring held only itself (it just started, or was alone): then this node is the one
    /// that joins the others, and the others held the keys before — until another node joins
    /// after it. (One ring without the joiners stands for the holders before them: right for keys
    /// that move straight from the nodes that were there, the common case of a join or a storm
    /// of joins into a settled cluster; a key that moved twice meanwhile is looked for on the
    /// wrong node, and the call waits for its move as it did without this.)
    pub(super) fn changed(&mut self, new: &Ring, now: Instant) {
        let old = std::mem::replace(&mut self.ring, new.clone());
        let fresh = old.nodes().iter().all(|n| *n == self.me);
        self.joined
            .retain(|(n, at)| new.contains(n) && now.duration_since(*at) < JOIN_WINDOW);
        if fresh {
            if new.contains(&self.me)
                && new.len() > 1
                && !self.joined.iter().any(|(n, _)| *n == self.me)
            {
                self.joined.push((self.me.clone(), now));
            }
        } else {
            let mut others = false;
            for n in new.nodes() {
                if !old.contains(n) && !self.joined.iter().any(|(j, _)| j == n) {
                    self.joined.push((n.clone(), now));
                    others = true;
                }
            }
            if others {
                self.history.push_back((old, now));
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
                // This node is settled in by the time others join after it: the keys it
                // took when it joined are mostly here (and the cluster it joined may have
                // been forming, with no key to take).
                self.joined.retain(|(n, _)| *n != self.me);
            }
        }
        self.rebuild();
    }

    /// Where else `key`, which `owner` (its owner now) does not run, may run (at most
    /// [`MAX_ASKED`] nodes): its owner on the ring without the recent joiners (a move from the
    /// nodes that were there not done yet), then its owners before each recent join, the latest
    /// first (a key that moved to an earlier joiner of a storm, and moves on to a later one).
    pub(super) fn owners_before(
        &mut self,
        distribution: &dyn Distribution,
        key: &str,
        owner: &NodeId,
        now: Instant,
    ) -> Vec<NodeId> {
        let expired = |at: &Instant| now.duration_since(*at) >= JOIN_WINDOW;
        if self.joined.iter().any(|(_, at)| expired(at)) {
            self.joined.retain(|(_, at)| !expired(at));
            self.rebuild();
        }
        while self.history.front().is_some_and(|(_, at)| expired(at)) {
            self.history.pop_front();
        }
        let mut out: Vec<NodeId> = Vec::new();
        let rings = self
            .before
            .iter()
            .chain(self.history.iter().rev().map(|(r, _)| r));
        for ring in rings {
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

    fn rebuild(&mut self) {
        self.before = None;
        if self.joined.is_empty() {
            return;
        }
        let rest = self
            .ring
            .nodes()
            .iter()
            .filter(|n| !self.joined.iter().any(|(j, _)| j == *n))
            .cloned();
        self.before = Ring::from_nodes(self.ring.config(), rest)
            .ok()
            .filter(|r| !r.is_empty());
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

    #[test]
    fn a_non_member_sees_no_joiner_in_the_first_ring() {
        let mut j = Joins::new(id("x"), ring(&[]));
        j.changed(&ring(&["a", "b"]), Instant::now());
        assert!(j.joined.is_empty() && j.before.is_none());
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
    fn a_key_moved_to_a_joiner_is_looked_for_on_its_owner_before_the_join() {
        let t0 = Instant::now();
        // The cluster this node started into: this node is the joiner, not the others.
        let mut j = Joins::new(id("a"), ring(&[]));
        j.changed(&ring(&["a", "b", "c"]), t0);
        assert_eq!(j.joined.len(), 1);
        assert_eq!(j.joined[0].0, id("a"));
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
        // Past the window, nobody is a recent joiner.
        assert!(j
            .owners_before(&Uniform, "k1", &id("zz"), t0 + JOIN_WINDOW)
            .is_empty());
        assert!(j.joined.is_empty());
    }

    #[test]
    fn a_key_that_moved_to_an_earlier_joiner_is_looked_for_there_too() {
        let t0 = Instant::now();
        let (r0, r1, r2) = (
            ring(&["a", "b", "c"]),
            ring(&["a", "b", "c", "d"]),
            ring(&["a", "b", "c", "d", "e"]),
        );
        let mut j = Joins::new(id("a"), r0.clone());
        j.changed(&r1, t0);
        j.changed(&r2, t0);
        let (k, first) = (0..5000)
            .map(|i| format!("k{i}"))
            .find_map(|k| {
                let o = |r: &Ring| Uniform.owner(k.as_bytes(), r);
                let first = o(&r0)?;
                (o(&r1) == Some(id("d")) && o(&r2) == Some(id("e"))).then_some((k.clone(), first))
            })
            .expect("a key that moves to d, then to e");
        assert_eq!(
            j.owners_before(&Uniform, &k, &id("e"), t0),
            [first, id("d")]
        );
    }

    #[test]
    fn every_owner_a_key_had_during_a_storm_of_joins_is_looked_at() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..24).map(|i| format!("n{i:02}")).collect();
        let ring_of = |k: usize| {
            Ring::from_nodes(RingConfig::default(), names[..k].iter().map(|n| id(n))).expect("ring")
        };
        // Three nodes, then 21 joins one at a time (more than the history keeps).
        let mut j = Joins::new(id("n00"), ring_of(3));
        for k in 4..=24 {
            j.changed(&ring_of(k), t0);
        }
        let last = ring_of(24);
        for i in 0..500 {
            let key = format!("k{i}");
            let owner = Uniform.owner(key.as_bytes(), &last).expect("owner");
            let mut history: Vec<NodeId> = Vec::new();
            for k in 3..24 {
                let o = Uniform.owner(key.as_bytes(), &ring_of(k)).expect("owner");
                if o != owner && !history.contains(&o) {
                    history.push(o);
                }
            }
            let asked = j.owners_before(&Uniform, &key, &owner, t0);
            // Its owner before the storm is asked first; the others its key had within the kept
            // history are asked too (up to the bound).
            if let Some(first) = history.first() {
                assert_eq!(asked.first(), Some(first), "{key}");
            }
            // Every node asked was an owner of the key; the owner it had just before it moved to
            // its owner now is asked too (the last hop of its moves).
            for n in &asked {
                assert!(history.contains(n), "{key}: {n} never owned it");
            }
            let kept = 24usize.saturating_sub(HISTORY).max(3)..24;
            if let Some(last_hop) = kept
                .rev()
                .map(|k| Uniform.owner(key.as_bytes(), &ring_of(k)).expect("owner"))
                .find(|o| *o != owner)
            {
                assert!(
                    asked.contains(&last_hop),
                    "{key}: {last_hop} not asked ({asked:?})"
                );
            }
            assert!(asked.len() <= MAX_ASKED);
        }
    }

    #[test]
    fn the_node_that_joins_looks_for_its_keys_on_the_nodes_that_were_there() {
        let t0 = Instant::now();
        let mut j = Joins::new(id("d"), ring(&["d"]));
        j.changed(&ring(&["a", "b", "c", "d"]), t0);
        let moved = moved_keys(&ring(&["a", "b", "c"]), &ring(&["a", "b", "c", "d"]), "d");
        for (k, holder) in moved {
            assert_eq!(j.owners_before(&Uniform, &k, &id("d"), t0), [holder]);
        }
        // A node that left is no joiner any more; one that left and came back is one again.
        j.changed(&ring(&["a", "b", "c"]), t0);
        assert!(j.joined.is_empty() && j.before.is_none());
        let mut j = Joins::new(id("a"), ring(&["a", "b"]));
        j.changed(&ring(&["a", "b", "c"]), t0);
        j.changed(&ring(&["a", "b"]), t0);
        j.changed(&ring(&["a", "b", "c"]), t0);
        assert_eq!(j.joined.len(), 1);
        // The node that joined is settled once another joins after it: the keys that move to
        // the new one are looked for on every node that was there, itself included.
        let mut j = Joins::new(id("d"), ring(&[]));
        j.changed(&ring(&["a", "b", "c", "d"]), t0);
        j.changed(&ring(&["a", "b", "c", "d", "e"]), t0);
        assert_eq!(
            j.joined.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            [id("e")]
        );
    }
}
