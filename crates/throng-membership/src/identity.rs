//! The identity foca gossips about: a [`MemberInfo`] plus a bump counter.
//!
//! foca's `Addr` is the [`throng_core::NodeId`], so foca keeps at most one identity per node name.
//! When two identities share a name, the higher incarnation wins (a restarted node replaces its
//! previous run), then the higher bump (a run that was wrongly declared down and renewed itself
//! with [`foca::Identity::renew`] replaces its down identity). The addresses break the remaining
//! ties so that every node picks the same winner even for two processes misconfigured with the same
//! name and incarnation.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use throng_core::{Incarnation, NodeId};

use crate::MemberInfo;

/// A node's identity in foca: who it is, plus how many times this run has renewed itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GossipId {
    /// The node and run.
    pub(crate) info: MemberInfo,
    /// Renewals of this run after being declared down; starts at 0.
    pub(crate) bump: u32,
}

impl GossipId {
    /// The first identity of a run.
    pub(crate) fn new(info: MemberInfo) -> Self {
        Self { info, bump: 0 }
    }

    fn rank(&self) -> (Incarnation, u32, SocketAddr, SocketAddr) {
        (
            self.info.incarnation,
            self.bump,
            self.info.gossip_addr,
            self.info.rpc_addr,
        )
    }
}

impl foca::Identity for GossipId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            info: self.info.clone(),
            bump: self.bump.checked_add(1)?,
        })
    }

    fn addr(&self) -> NodeId {
        self.info.id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn info(incarnation: u64, port: u16) -> MemberInfo {
        MemberInfo {
            id: NodeId::new("gotham").unwrap(),
            incarnation: Incarnation(incarnation),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)),
        }
    }

    #[test]
    fn later_incarnation_wins_over_any_bump() {
        let old = GossipId {
            info: info(1, 9000),
            bump: 7,
        };
        let new = GossipId::new(info(2, 8000));
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert_eq!(old.addr(), new.addr());
    }

    #[test]
    fn renewal_wins_over_the_renewed() {
        let first = GossipId::new(info(1, 9000));
        let renewed = first.renew().unwrap();
        assert_eq!(renewed.bump, 1);
        assert_eq!(renewed.info, first.info);
        assert!(renewed.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&renewed));
        let last = GossipId {
            info: info(1, 9000),
            bump: u32::MAX,
        };
        assert_eq!(last.renew(), None);
    }

    #[test]
    fn ties_break_the_same_way_everywhere() {
        let a = GossipId::new(info(1, 9000));
        let b = GossipId::new(info(1, 9002));
        assert!(a.win_addr_conflict(&b) != b.win_addr_conflict(&a));
    }
}
