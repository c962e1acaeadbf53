//! Directory messages that reach this node for a supervisor it has not started yet.
//!
//! Right after a node (re)starts, its transport is up — and its peers' views include it — before
//! the application has created its supervisors: a peer may already hand it a child
//! ([`DirMsg::Adopt`]), replicate to it, or ask it to drop a copy. Such a message dropped on the
//! floor is not like one lost with a connection: the connection stays up, so nothing reconciles
//! it, and a hand-off stays in flight until its sender gives up (the chaos soak saw a restarted
//! node run a counter from its disk's older record for 20 s while the newer state waited in its
//! peer's unconfirmed hand-off). They are kept here, bounded, and handed to the supervisor in
//! arrival order when it starts; those of a peer whose connection closes meanwhile are dropped
//! (as if lost with it: the peer reconciles on its next connection), and so are those older than
//! [`EARLY_AGE`] (a supervisor that never starts here).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use throng_core::directory::DirMsg;
use throng_core::NodeId;

/// Messages kept at most, all supervisors together (the driver's queue, where they go when the
/// supervisor starts, holds twice as many).
pub(super) const EARLY_MAX: usize = 2048;

/// Bytes of encoded messages kept at most.
pub(super) const EARLY_BYTES: usize = 4 << 20;

/// A message kept longer is dropped.
pub(super) const EARLY_AGE: Duration = Duration::from_secs(30);

struct Kept {
    sup: String,
    from: NodeId,
    msg: DirMsg,
    size: usize,
    at: Instant,
}

/// The messages kept for supervisors not started yet, oldest first.
#[derive(Default)]
pub(super) struct Early {
    kept: VecDeque<Kept>,
    bytes: usize,
    /// Messages dropped because a bound was reached (logged once in a while).
    dropped: u64,
}

impl Early {
    /// Keeps `msgs` (decoded from a frame of `size` bytes) from `from` for supervisor `sup`;
    /// returns how many were dropped for lack of room.
    pub(super) fn keep(
        &mut self,
        sup: &str,
        from: &NodeId,
        msgs: Vec<DirMsg>,
        size: usize,
        now: Instant,
    ) -> usize {
        self.expire(now);
        let each = size / msgs.len().max(1) + 1;
        let mut dropped = 0;
        for msg in msgs {
            if self.kept.len() >= EARLY_MAX || self.bytes + each > EARLY_BYTES {
                dropped += 1;
                continue;
            }
            self.bytes += each;
            self.kept.push_back(Kept {
                sup: sup.to_owned(),
                from: from.clone(),
                msg,
                size: each,
                at: now,
            });
        }
        self.dropped += dropped as u64;
        dropped
    }

    /// The messages kept for `sup`, in arrival order (removed).
    pub(super) fn take(&mut self, sup: &str, now: Instant) -> Vec<(NodeId, DirMsg)> {
        self.expire(now);
        let mut taken = Vec::new();
        let mut rest = VecDeque::with_capacity(self.kept.len());
        for k in self.kept.drain(..) {
            if k.sup == sup {
                self.bytes -= k.size;
                taken.push((k.from, k.msg));
            } else {
                rest.push_back(k);
            }
        }
        self.kept = rest;
        taken
    }

    /// The connection to `peer` closed: what it sent is dropped, as if lost with it.
    pub(super) fn forget(&mut self, peer: &NodeId) {
        let bytes = &mut self.bytes;
        self.kept.retain(|k| {
            let keep = k.from != *peer;
            if !keep {
                *bytes -= k.size;
            }
            keep
        });
    }

    /// How many messages are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(k) = self.kept.front() {
            if now.duration_since(k.at) < EARLY_AGE {
                break;
            }
            self.bytes -= k.size;
            self.kept.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str) -> NodeId {
        NodeId::new(n).expect("valid")
    }

    fn msg(key: &str) -> DirMsg {
        DirMsg::Conflict { key: key.into() }
    }

    #[test]
    fn messages_are_kept_per_supervisor_in_order_and_taken_once() {
        let mut e = Early::default();
        let t = Instant::now();
        e.keep("a", &id("n1"), vec![msg("1"), msg("2")], 20, t);
        e.keep("b", &id("n1"), vec![msg("x")], 10, t);
        e.keep("a", &id("n2"), vec![msg("3")], 10, t);
        let got = e.take("a", t);
        assert_eq!(
            got,
            vec![
                (id("n1"), msg("1")),
                (id("n1"), msg("2")),
                (id("n2"), msg("3"))
            ]
        );
        assert!(e.take("a", t).is_empty());
        assert_eq!(e.len(), 1);
        assert_eq!(e.take("b", t), vec![(id("n1"), msg("x"))]);
        assert_eq!(e.bytes, 0);
    }

    #[test]
    fn a_closed_connection_and_age_drop_what_was_kept() {
        let mut e = Early::default();
        let t = Instant::now();
        e.keep("a", &id("n1"), vec![msg("1")], 10, t);
        e.keep("a", &id("n2"), vec![msg("2")], 10, t);
        e.forget(&id("n1"));
        assert_eq!(e.len(), 1);
        assert!(e.take("a", t + EARLY_AGE).is_empty(), "too old");
        assert_eq!(e.bytes, 0);
    }

    #[test]
    fn the_bounds_hold() {
        let mut e = Early::default();
        let t = Instant::now();
        let many: Vec<DirMsg> = (0..EARLY_MAX + 10).map(|i| msg(&i.to_string())).collect();
        assert_eq!(e.keep("a", &id("n1"), many, EARLY_MAX + 10, t), 10);
        assert_eq!(e.len(), EARLY_MAX);
        let mut e = Early::default();
        assert_eq!(e.keep("a", &id("n1"), vec![msg("big")], EARLY_BYTES, t), 1);
        assert_eq!(e.len(), 0);
    }
}
