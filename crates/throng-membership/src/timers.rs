//! The membership task's timer queue.
//!
//! foca asks for timers and requires every one of them to be delivered. Rather than a tokio task per
//! timer, the membership task keeps them here and sleeps until the earliest; the clock is an input
//! (`now`), so this is plain data.
//!
//! Bounds: foca's own timers are structurally few (one probe cycle, three periodic timers, one
//! suspicion timer per suspected member), except `RemoveDown`, which it sets for every member that
//! goes down and which fires a day later — churn would pile those up. A `RemoveDown` only matters for
//! the latest identity of a node name (foca keeps one identity per name), so this queue keeps one per
//! name, the latest, which makes the queue O(names). Past `limit` entries a new timer is refused and
//! the caller counts it; that is a bug-level condition, not a designed steady state.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use throng_core::NodeId;
use tokio::time::Instant;

use crate::identity::GossipId;
use crate::machine::Tick;

/// Longest delay accepted; longer requests are shortened to this (foca's longest is one day).
const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Pending timers, earliest first.
#[derive(Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Scheduled>,
    remove_down: BTreeMap<NodeId, (Instant, GossipId)>,
    /// Never later than the earliest `remove_down` deadline (may be earlier after a replacement).
    remove_down_next: Option<Instant>,
    seq: u64,
    limit: usize,
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    tick: Tick,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    // Reversed: `BinaryHeap` is a max-heap and the earliest (then first scheduled) must come out.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Timers {
    /// An empty queue holding at most `limit` timers.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            remove_down: BTreeMap::new(),
            remove_down_next: None,
            seq: 0,
            limit,
        }
    }

    /// Pending timers.
    pub(crate) fn len(&self) -> usize {
        self.heap.len() + self.remove_down.len()
    }

    /// Schedules `tick` `after` from `now`; false if refused because the queue is full.
    pub(crate) fn schedule(&mut self, now: Instant, after: Duration, tick: Tick) -> bool {
        let Some(at) = now.checked_add(after.min(MAX_DELAY)) else {
            return false;
        };
        if let Tick::Foca(foca::Timer::RemoveDown(id)) = tick {
            let name = id.info.id.clone();
            if !self.remove_down.contains_key(&name) && self.len() >= self.limit {
                return false;
            }
            self.remove_down.insert(name, (at, id));
            self.remove_down_next = Some(self.remove_down_next.map_or(at, |next| next.min(at)));
            return true;
        }
        if self.len() >= self.limit {
            return false;
        }
        self.seq += 1;
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            tick,
        });
        true
    }

    /// When the earliest pending timer is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.heap.peek().map(|s| s.at), self.remove_down_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes one timer due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Tick> {
        if self.heap.peek().is_some_and(|s| s.at <= now) {
            return self.heap.pop().map(|s| s.tick);
        }
        if self.remove_down_next.is_some_and(|next| next <= now) {
            let due = self
                .remove_down
                .iter()
                .find(|(_, (at, _))| *at <= now)
                .map(|(name, _)| name.clone());
            if let Some((_, id)) = due.and_then(|name| self.remove_down.remove(&name)) {
                return Some(Tick::Foca(foca::Timer::RemoveDown(id)));
            }
            self.remove_down_next = self.remove_down.values().map(|(at, _)| *at).min();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemberInfo;
    use throng_core::Incarnation;

    fn id(name: &str, incarnation: u64) -> GossipId {
        GossipId::new(MemberInfo {
            id: NodeId::new(name).unwrap(),
            incarnation: Incarnation(incarnation),
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            rpc_addr: "127.0.0.1:2".parse().unwrap(),
        })
    }

    fn drain(timers: &mut Timers, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| timers.pop_due(now))
            .map(|t| format!("{t:?}"))
            .collect()
    }

    #[test]
    fn fires_in_deadline_then_schedule_order() {
        let now = Instant::now();
        let mut timers = Timers::new(10);
        let ms = Duration::from_millis;
        assert!(timers.schedule(now, ms(20), Tick::LeaveRetry(2)));
        assert!(timers.schedule(now, ms(10), Tick::LeaveRetry(1)));
        assert!(timers.schedule(now, ms(20), Tick::LeaveRetry(3)));
        assert_eq!(timers.next_deadline(), Some(now + ms(10)));
        assert!(drain(&mut timers, now + ms(9)).is_empty());
        assert_eq!(drain(&mut timers, now + ms(10)), ["LeaveRetry(1)"]);
        assert_eq!(
            drain(&mut timers, now + ms(30)),
            ["LeaveRetry(2)", "LeaveRetry(3)"]
        );
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn keeps_one_remove_down_per_name_and_respects_the_limit() {
        let now = Instant::now();
        let secs = Duration::from_secs;
        let mut timers = Timers::new(3);
        let remove = |g| Tick::Foca(foca::Timer::RemoveDown(g));
        assert!(timers.schedule(now, secs(5), remove(id("a", 1))));
        assert!(timers.schedule(now, secs(9), remove(id("a", 2))));
        assert!(timers.schedule(now, secs(7), remove(id("b", 1))));
        assert_eq!(timers.len(), 2);
        assert!(timers.schedule(now, secs(1), Tick::LeaveDeadline(1)));
        assert!(!timers.schedule(now, secs(1), Tick::LeaveDeadline(2)));
        assert!(!timers.schedule(now, secs(1), remove(id("c", 1))));
        // Replacing an existing name is always allowed.
        assert!(timers.schedule(now, secs(8), remove(id("b", 2))));

        assert_eq!(drain(&mut timers, now + secs(1)), ["LeaveDeadline(1)"]);
        // The early wake-up left by the replaced "a" timer finds nothing due.
        assert!(drain(&mut timers, now + secs(5)).is_empty());
        assert_eq!(timers.next_deadline(), Some(now + secs(8)));
        let fired = drain(&mut timers, now + secs(9));
        assert_eq!(fired.len(), 2);
        assert!(fired
            .iter()
            .all(|t| t.contains("Incarnation(2)") || t.contains("incarnation: 2")));
        assert_eq!(timers.len(), 0);
    }
}
