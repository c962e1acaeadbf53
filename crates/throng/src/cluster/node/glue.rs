//! The membership glue: membership's events carried into the node's view, connections,
//! registry and supervisors.

use super::*;

/// Carry membership into the node: the view (ring, leaving members, listeners), connections,
/// the registry and the distributed supervisors. The first member list and a re-sync after
/// missed events go through [`View::reset`], which announces what changed, like any event.
pub(super) async fn membership_glue(
    shared: Weak<Shared>,
    membership: Weak<Membership>,
    stop: CancellationToken,
) {
    let Some(m) = membership.upgrade() else {
        return;
    };
    let (members, mut rx) = m.subscribe_with_members();
    let leaving = m.leaving();
    drop(m);
    if let Some(s) = shared.upgrade() {
        s.view_reset(&members, &leaving).await;
    }
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = rx.recv() => e,
        };
        let Some(s) = shared.upgrade() else { return };
        match event {
            Ok(MembershipEvent::NodeUp(info)) => s.member_changed(ClusterEvent::NodeUp(info)).await,
            Ok(MembershipEvent::NodeLeaving(info)) => {
                s.member_changed(ClusterEvent::NodeLeaving(info)).await
            }
            Ok(MembershipEvent::NodeDown(info)) => {
                s.member_changed(ClusterEvent::NodeDown(info)).await
            }
            Ok(MembershipEvent::Rejoined(info)) => {
                tracing::warn!(node = %info.id, "this node was declared down and rejoined");
                s.t.view.apply(ClusterEvent::Rejoined(info));
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "membership events lagged; re-syncing");
                let Some(m) = membership.upgrade() else {
                    return;
                };
                let (members, fresh) = m.subscribe_with_members();
                rx = fresh;
                s.view_reset(&members, &m.leaving()).await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Shared {
    /// Install a full member list (see [`View::reset`]) and carry out what changed.
    pub(super) async fn view_reset(
        self: &Arc<Self>,
        members: &[MemberInfo],
        leaving: &[MemberInfo],
    ) {
        self.names.names.members_view(members);
        for change in self.t.view.reset(members, leaving) {
            self.member_effects(&change);
        }
        self.sups.dists_view().await;
    }

    /// One membership change: the connections and the registry first, then the view (which tells
    /// the listeners), then the supervisors.
    pub(super) async fn member_changed(self: &Arc<Self>, event: ClusterEvent) {
        match &event {
            ClusterEvent::NodeUp(info) => {
                tracing::info!(node = %info.id, incarnation = %info.incarnation, "node up");
                self.names.names.node_up(&info.member());
            }
            ClusterEvent::NodeLeaving(info) => tracing::info!(node = %info.id, "node leaving"),
            ClusterEvent::NodeDown(info) => {
                tracing::warn!(node = %info.id, incarnation = %info.incarnation, "node down");
                self.names.names.node_down(&info.id);
            }
            ClusterEvent::Rejoined(_) => {}
        }
        self.member_effects(&event);
        self.t.view.apply(event.clone());
        self.sups.dists_view().await;
        if let ClusterEvent::NodeDown(info) = event {
            let down = info.id;
            self.sups
                .dists_notify(|| Input::NodeDown(down.clone()))
                .await;
        }
    }

    /// What a change means for the connections.
    pub(super) fn member_effects(self: &Arc<Self>, event: &ClusterEvent) {
        match event {
            ClusterEvent::NodeUp(info) => self.t.add_peer(info.id.clone(), info.rpc_addr),
            ClusterEvent::NodeDown(info) => self.t.remove_peer(&info.id),
            ClusterEvent::NodeLeaving(_) | ClusterEvent::Rejoined(_) => {}
        }
    }
}
