//! The node's view of the cluster: which members are up, which of them are leaving, the placement
//! ring over the members that may own keys, and the listeners of changes to all three.
//!
//! Membership (`throng-membership`) decides who is up; this module is the one place where its
//! decisions become the node's view, so that every reader — placement (`node_for`), the
//! distributed supervisors, and user listeners — sees the same view. A listener subscribes with
//! [`View::subscribe`], which returns the members of the moment and the stream of every change
//! after them, taken under the same lock that every change is made under: applying the events in
//! order to the members gives the view at any later point, so a listener never misses a member.
//! (A view that changed silently — the first member list, or a re-sync after lagging — is
//! announced as the events that lead from the old view to the new one.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, RwLock};

use throng_core::{Incarnation, NodeId, Ring, RingConfig};
use throng_membership::MemberInfo;
use tokio::sync::broadcast;

/// What listeners hear about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A node joined (or came back as a new incarnation).
    NodeUp(MemberInfo),
    /// A node announced that it is shutting down gracefully; `NodeDown` follows.
    NodeLeaving(MemberInfo),
    /// A node left or was declared failed.
    NodeDown(MemberInfo),
    /// This node had been declared down by the others and rejoined: work they took over from it
    /// may now run twice.
    Rejoined(MemberInfo),
}

/// Bound on buffered cluster events per listener; a slower listener sees `Lagged` and should
/// subscribe again ([`crate::cluster::Node::subscribe`]) to start from a fresh view.
pub const EVENT_CAPACITY: usize = 1024;

/// A member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's run and addresses.
    pub info: MemberInfo,
    /// Whether it announced a graceful leave (it is still up until its `NodeDown`).
    pub leaving: bool,
}

/// A listener's start: the members up when it subscribed and every change after them, taken
/// atomically (see [`crate::cluster::Node::subscribe`]).
#[derive(Debug)]
pub struct ClusterSubscription {
    /// The other members up at the moment of subscribing, in name order.
    pub members: Vec<MemberStatus>,
    /// Every change after `members`, in order. On `Lagged`, subscribe again.
    pub events: broadcast::Receiver<ClusterEvent>,
}

impl ClusterSubscription {
    /// The members of the snapshot as the events that would have announced them (`NodeUp`, then
    /// `NodeLeaving` for a member that is leaving), so that a listener can handle the snapshot and
    /// the stream with the same code.
    pub fn replay(&self) -> Vec<ClusterEvent> {
        let mut out = Vec::with_capacity(self.members.len());
        for m in &self.members {
            out.push(ClusterEvent::NodeUp(m.info.clone()));
            if m.leaving {
                out.push(ClusterEvent::NodeLeaving(m.info.clone()));
            }
        }
        out
    }
}

/// Bound on the runs remembered as declared down (the oldest name is forgotten beyond it).
pub(super) const MAX_DOWN: usize = 4096;

/// The members and their listeners: changed and read under one lock.
struct Members {
    /// The other members that are up, by name (one run per name).
    up: BTreeMap<NodeId, MemberStatus>,
    /// The runs declared down since they were last up, by name (at most [`MAX_DOWN`]): the
    /// transport refuses their connections until membership reports them up again, so that a
    /// node the cluster declared down (a gossip-only partition, a pause) cannot keep talking to
    /// the nodes whose view no longer holds it.
    down: BTreeMap<NodeId, Incarnation>,
    events: broadcast::Sender<ClusterEvent>,
}

/// The node's view of the cluster (see the module doc).
pub(super) struct View {
    me: NodeId,
    members: Mutex<Members>,
    /// Placement ring over the members that may own keys: up and not leaving, this node included
    /// unless it leaves. Written only under `members`' lock, read without it.
    ring: RwLock<Ring>,
    /// Members that announced a graceful leave and are still up (this node included once it
    /// leaves). Written only under `members`' lock.
    leaving: RwLock<BTreeSet<NodeId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are plain map updates; a poisoned lock still guards a consistent map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl View {
    /// A view holding only this node, on a ring with `config`.
    pub(super) fn new(me: NodeId, config: RingConfig) -> View {
        let mut ring = Ring::new(config);
        if let Err(e) = ring.insert(me.clone()) {
            tracing::error!(node = %me, error = %e, "node not placed on its own ring");
        }
        View {
            me,
            members: Mutex::new(Members {
                up: BTreeMap::new(),
                down: BTreeMap::new(),
                events: broadcast::channel(EVENT_CAPACITY).0,
            }),
            ring: RwLock::new(ring),
            leaving: RwLock::new(BTreeSet::new()),
        }
    }

    /// The members of the moment and every change after them (see the module doc).
    pub(super) fn subscribe(&self) -> ClusterSubscription {
        let m = lock(&self.members);
        ClusterSubscription {
            members: m.up.values().cloned().collect(),
            events: m.events.subscribe(),
        }
    }

    /// A receiver of the changes from now on (no snapshot).
    pub(super) fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        lock(&self.members).events.subscribe()
    }

    /// The other members that are up, in name order (leaving ones included).
    pub(super) fn members(&self) -> Vec<MemberInfo> {
        lock(&self.members)
            .up
            .values()
            .map(|m| m.info.clone())
            .collect()
    }

    /// Whether the transport may take a connection from run `incarnation` of `node`: not if
    /// membership declared that run down and has not seen it up since.
    pub(super) fn admits(&self, node: &NodeId, incarnation: Incarnation) -> bool {
        lock(&self.members).down.get(node) != Some(&incarnation)
    }

    /// The owner of `key` on the ring.
    pub(super) fn node_for(&self, key: &[u8]) -> Option<NodeId> {
        self.ring().node_for(key).cloned()
    }

    /// The nodes that may own keys now (up and not leaving), this one included, sorted.
    pub(super) fn owners(&self) -> Vec<NodeId> {
        self.ring().nodes().to_vec()
    }

    /// The ring parameters.
    pub(super) fn ring_config(&self) -> RingConfig {
        self.ring().config()
    }

    /// The members leaving gracefully, as this node knows them.
    pub(super) fn leaving(&self) -> Vec<NodeId> {
        self.leaving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn edit(&self, f: impl FnOnce(&mut Ring, &mut BTreeSet<NodeId>)) {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let mut leaving = self.leaving.write().unwrap_or_else(|p| p.into_inner());
        f(&mut ring, &mut leaving);
    }

    /// Apply one change reported by membership and tell the listeners. Returns whether it changed
    /// the view (an event about a run the view no longer holds, or holds already, changes
    /// nothing and is not repeated to listeners).
    pub(super) fn apply(&self, event: ClusterEvent) -> bool {
        let mut m = lock(&self.members);
        if !self.apply_locked(&mut m, &event) {
            return false;
        }
        let _ = m.events.send(event);
        true
    }

    fn apply_locked(&self, m: &mut Members, event: &ClusterEvent) -> bool {
        match event {
            ClusterEvent::NodeUp(info) => {
                if info.id == self.me {
                    return false;
                }
                let fresh = MemberStatus {
                    info: info.clone(),
                    leaving: false,
                };
                if m.up.get(&info.id) == Some(&fresh) {
                    return false;
                }
                m.up.insert(info.id.clone(), fresh);
                m.down.remove(&info.id);
                self.edit(|ring, leaving| {
                    leaving.remove(&info.id);
                    if let Err(e) = ring.insert(info.id.clone()) {
                        tracing::error!(node = %info.id, error = %e, "node not placed on the ring");
                    }
                });
            }
            ClusterEvent::NodeLeaving(info) => {
                match m.up.get_mut(&info.id) {
                    Some(s) if s.info == *info && !s.leaving => s.leaving = true,
                    _ => return false,
                }
                self.edit(|ring, leaving| {
                    leaving.insert(info.id.clone());
                    ring.remove(&info.id);
                });
            }
            ClusterEvent::NodeDown(info) => {
                if m.up.get(&info.id).is_none_or(|s| s.info != *info) {
                    return false;
                }
                m.up.remove(&info.id);
                if m.down.len() >= MAX_DOWN && !m.down.contains_key(&info.id) {
                    m.down.pop_first();
                }
                m.down.insert(info.id.clone(), info.incarnation);
                self.edit(|ring, leaving| {
                    leaving.remove(&info.id);
                    ring.remove(&info.id);
                });
            }
            ClusterEvent::Rejoined(_) => {}
        }
        true
    }

    /// Replace the view with a full member list from membership (its first list, or a re-sync
    /// after missed events), telling the listeners the events that lead from the old view to the
    /// new one. Returns those events, so that the caller can apply their effects too.
    pub(super) fn reset(
        &self,
        members: &[MemberInfo],
        leaving: &[MemberInfo],
    ) -> Vec<ClusterEvent> {
        let mut m = lock(&self.members);
        let target: BTreeMap<&NodeId, &MemberInfo> = members
            .iter()
            .filter(|i| i.id != self.me)
            .map(|i| (&i.id, i))
            .collect();
        let is_leaving = |i: &MemberInfo| leaving.iter().any(|l| l == i);
        let mut changes = Vec::new();
        for (id, s) in &m.up {
            if target.get(id).is_none_or(|i| **i != s.info) {
                changes.push(ClusterEvent::NodeDown(s.info.clone()));
            }
        }
        for info in target.values() {
            let known = m.up.get(&info.id).filter(|s| s.info == **info);
            if known.is_none() {
                changes.push(ClusterEvent::NodeUp((*info).clone()));
            }
            if is_leaving(info) && !known.is_some_and(|s| s.leaving) {
                changes.push(ClusterEvent::NodeLeaving((*info).clone()));
            }
        }
        for event in &changes {
            if self.apply_locked(&mut m, event) {
                let _ = m.events.send(event.clone());
            }
        }
        changes
    }

    /// This node starts leaving: it owns no more keys (it is still a member until it goes).
    pub(super) fn leave_self(&self) {
        let _m = lock(&self.members);
        self.edit(|ring, leaving| {
            leaving.insert(self.me.clone());
            ring.remove(&self.me);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, inc: u64) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(name).unwrap(),
            incarnation: Incarnation(inc),
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            rpc_addr: "127.0.0.1:2".parse().unwrap(),
        }
    }

    fn view() -> View {
        View::new(NodeId::new("me").unwrap(), RingConfig::default())
    }

    /// A listener's own picture: its snapshot, then every event applied in order.
    fn picture(sub: &mut ClusterSubscription) -> BTreeMap<NodeId, MemberStatus> {
        let mut seen: BTreeMap<NodeId, MemberStatus> = BTreeMap::new();
        let mut apply = |e: ClusterEvent| match e {
            ClusterEvent::NodeUp(i) => {
                seen.insert(
                    i.id.clone(),
                    MemberStatus {
                        info: i,
                        leaving: false,
                    },
                );
            }
            ClusterEvent::NodeLeaving(i) => {
                if let Some(s) = seen.get_mut(&i.id) {
                    s.leaving = true;
                }
            }
            ClusterEvent::NodeDown(i) => {
                seen.remove(&i.id);
            }
            ClusterEvent::Rejoined(_) => {}
        };
        for e in sub.replay() {
            apply(e);
        }
        while let Ok(e) = sub.events.try_recv() {
            apply(e);
        }
        seen
    }

    fn current(v: &View) -> BTreeMap<NodeId, MemberStatus> {
        lock(&v.members).up.clone()
    }

    #[test]
    fn a_listener_that_subscribed_before_the_first_member_list_hears_of_it() {
        // The interleaving that lost members: a listener subscribes, then the membership glue
        // installs the member list membership had gathered meanwhile. That list must reach the
        // listener as events, not only the ring.
        let v = view();
        let mut sub = v.subscribe();
        assert!(sub.members.is_empty());
        let changes = v.reset(&[info("a", 1), info("b", 1)], &[info("b", 1)]);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(picture(&mut sub), current(&v));
        assert_eq!(
            v.owners(),
            vec![NodeId::new("a").unwrap(), NodeId::new("me").unwrap()]
        );
        assert_eq!(v.leaving(), vec![NodeId::new("b").unwrap()]);
    }

    #[test]
    fn a_listener_sees_the_snapshot_plus_the_stream_whenever_it_subscribes() {
        let v = view();
        enum Step {
            Apply(ClusterEvent),
            Reset(Vec<MemberInfo>),
        }
        let steps = [
            Step::Apply(ClusterEvent::NodeUp(info("a", 1))),
            Step::Apply(ClusterEvent::NodeUp(info("b", 1))),
            Step::Apply(ClusterEvent::NodeLeaving(info("a", 1))),
            Step::Reset(vec![info("a", 1), info("b", 2), info("c", 1)]),
            Step::Apply(ClusterEvent::NodeDown(info("a", 1))),
            Step::Apply(ClusterEvent::NodeDown(info("c", 7))),
        ];
        let mut subs = Vec::new();
        for step in steps {
            subs.push(v.subscribe());
            match step {
                Step::Apply(e) => {
                    v.apply(e);
                }
                Step::Reset(members) => {
                    v.reset(&members, &[]);
                }
            }
        }
        for (i, sub) in subs.iter_mut().enumerate() {
            assert_eq!(picture(sub), current(&v), "listener {i}");
        }
        let now = current(&v);
        assert_eq!(now.len(), 2);
        assert_eq!(
            now[&NodeId::new("b").unwrap()].info.incarnation,
            Incarnation(2)
        );
        assert!(v.owners().contains(&NodeId::new("c").unwrap()));
        assert!(!v.owners().contains(&NodeId::new("a").unwrap()));
    }

    #[test]
    fn a_run_declared_down_is_not_admitted_until_it_is_up_again() {
        let v = view();
        let a = NodeId::new("a").unwrap();
        assert!(
            v.admits(&a, Incarnation(1)),
            "not known yet: a joining node may dial first"
        );
        v.apply(ClusterEvent::NodeUp(info("a", 1)));
        v.apply(ClusterEvent::NodeDown(info("a", 1)));
        assert!(!v.admits(&a, Incarnation(1)));
        assert!(v.admits(&a, Incarnation(2)), "a new run is a new node");
        v.apply(ClusterEvent::NodeUp(info("a", 1)));
        assert!(v.admits(&a, Incarnation(1)), "rejoined");
    }

    #[test]
    fn a_reset_to_the_same_view_says_nothing() {
        let v = view();
        v.reset(&[info("a", 1)], &[]);
        let mut sub = v.subscribe();
        assert!(v.reset(&[info("a", 1)], &[]).is_empty());
        assert!(sub.events.try_recv().is_err());
    }

    #[test]
    fn stale_events_are_not_repeated_to_listeners() {
        let v = view();
        v.apply(ClusterEvent::NodeUp(info("a", 2)));
        let mut sub = v.subscribe();
        assert!(
            !v.apply(ClusterEvent::NodeDown(info("a", 1))),
            "an older run"
        );
        assert!(!v.apply(ClusterEvent::NodeUp(info("a", 2))), "already up");
        assert!(!v.apply(ClusterEvent::NodeUp(info("me", 1))), "this node");
        assert!(sub.events.try_recv().is_err());
    }
}
