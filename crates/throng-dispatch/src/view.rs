//! What a node's page shows, recomputed every [`REFRESH_EVERY`] from local state only — the node
//! statuses this node heard of, the local city's roster, recent events — and published (to the
//! JSON API and to every SSE client at once) only when it changed. A page costs the cluster
//! nothing: no hero is asked anything for it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use throng::cluster::{ChildEvent, ClusterEvent, MemberInfo};
use tokio::sync::{broadcast, watch};

use crate::city::{CityMsg, CityReply};
use crate::control::{ControlMsg, ControlReply, NodeInfo};
use crate::home::{Counters, Home, CONTROL_EXPORT};
use crate::roster::Roster;
pub use crate::snapshot::{CityRow, HeroRow, NodeRow, Snapshot};

/// How often the view is recomputed.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// How long the view waits for the city's roster.
const CITY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Known {
    status: &'static str,
    info: Option<NodeInfo>,
}

/// The nodes this node heard of, with their status and info.
#[derive(Default)]
pub struct Nodes(Mutex<BTreeMap<String, Known>>);

impl Nodes {
    fn set(&self, name: &str, status: &'static str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_owned())
            .and_modify(|k| k.status = status)
            .or_insert(Known { status, info: None });
    }

    fn set_info(&self, info: NodeInfo) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = m.get_mut(&info.node) {
            k.info = Some(info);
        }
    }

    /// The status of `name` (`down` if never heard of).
    pub fn status(&self, name: &str) -> &'static str {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(name).map_or("down", |k| k.status)
    }

    /// The info of the node whose city is `city`.
    pub fn by_city(&self, city: &str) -> Option<NodeInfo> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.values()
            .filter_map(|k| k.info.clone())
            .find(|i| i.city.eq_ignore_ascii_case(city))
    }

    /// The city of node `name`, once known.
    pub fn city_of(&self, name: &str) -> Option<String> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(name)
            .and_then(|k| k.info.as_ref().map(|i| i.city.clone()))
    }

    fn all(&self) -> Vec<(String, Known)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(n, k)| (n.clone(), k.clone())).collect()
    }
}

/// A snapshot with its rendered HTML (rendered once, sent to every SSE client).
#[derive(Debug)]
pub struct Published {
    /// The data.
    pub snapshot: Snapshot,
    /// The page's live part.
    pub html: String,
}

/// The view's moving parts: node statuses and the published snapshot.
pub struct View {
    /// Node statuses.
    pub nodes: Nodes,
    tx: watch::Sender<Arc<Published>>,
}

impl View {
    /// A view of `h` with only this node in it.
    pub fn new(h: &Home) -> Arc<View> {
        let nodes = Nodes::default();
        nodes.set(&h.name, "up");
        nodes.set_info(crate::control::info(h));
        let first = Snapshot {
            me: h.name.clone(),
            city: h.city_name.clone(),
            nodes: Vec::new(),
            heroes: Vec::new(),
            cities: Vec::new(),
            events: Vec::new(),
        };
        let html = crate::page::live(&first);
        Arc::new(View {
            nodes,
            tx: watch::channel(Arc::new(Published {
                snapshot: first,
                html,
            }))
            .0,
        })
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Published> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// Start the tasks that keep the view up to date.
    pub fn spawn(self: &Arc<Self>, h: &'static Home) {
        tokio::spawn(watch_cluster(self.clone(), h));
        tokio::spawn(watch_children(h));
        tokio::spawn(refresh(self.clone(), h));
    }
}

fn member_up(view: &Arc<View>, h: &'static Home, m: &MemberInfo) {
    view.nodes.set(m.id.as_ref(), "up");
    let (view, peer) = (view.clone(), m.id.clone());
    tokio::spawn(async move {
        let control = h
            .node
            .remote::<crate::control::Control>(&peer, CONTROL_EXPORT);
        for _ in 0..20 {
            if let Ok(ControlReply::Info(i)) = control.call(ControlMsg::Info).await {
                view.nodes.set_info(i);
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

async fn watch_cluster(view: Arc<View>, h: &'static Home) {
    let sub = h.node.subscribe();
    let mut events = sub.events;
    for m in &sub.members {
        member_up(&view, h, &m.info);
        if m.leaving {
            view.nodes.set(m.info.id.as_ref(), "leaving");
        }
    }
    loop {
        match events.recv().await {
            Ok(ClusterEvent::NodeUp(m)) => {
                h.event(format!("node {} is up", m.id));
                member_up(&view, h, &m);
            }
            Ok(ClusterEvent::NodeLeaving(m)) => {
                h.event(format!("node {} is leaving", m.id));
                view.nodes.set(m.id.as_ref(), "leaving");
            }
            Ok(ClusterEvent::NodeDown(m)) => {
                h.event(format!("node {} is down", m.id));
                view.nodes.set(m.id.as_ref(), "down");
            }
            Ok(ClusterEvent::Rejoined(m)) => {
                h.event(format!(
                    "this node rejoined after being declared down ({})",
                    m.id
                ));
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Start again from a fresh view.
                let sub = h.node.subscribe();
                events = sub.events;
                for m in &sub.members {
                    member_up(&view, h, &m.info);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn watch_children(h: &'static Home) {
    let mut events = h.heroes.events();
    loop {
        let e = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let c = &h.counters;
        match e.event {
            ChildEvent::Restarted { key }
                if h.recovering.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                // Its own copy, kept on this node's disk by an earlier run.
                h.event(format!(
                    "{key} is back on {} from its data directory with its state",
                    h.name
                ));
            }
            ChildEvent::Restarted { key } => {
                Counters::bump(&c.hero_restarts);
                h.event(format!("{key} crashed and was restarted from its snapshot"));
            }
            ChildEvent::FailedOver {
                key,
                from,
                from_snapshot,
            } => {
                Counters::bump(&c.failovers);
                let how = if from_snapshot {
                    "with its state"
                } else {
                    "from scratch (no snapshot)"
                };
                h.event(format!("{key} failed over here from {from} {how}"));
            }
            ChildEvent::Adopted { key, from } => {
                Counters::bump(&c.handoffs);
                h.event(format!("{key} handed over here by {from} with its state"));
            }
            ChildEvent::Migrated { key, to } => {
                h.event(format!("{key} handed off to {to}"));
            }
            ChildEvent::Conflict { key, other, .. } => {
                h.event(format!("{key} also ran on {other}; one copy was kept"));
            }
            ChildEvent::GaveUp { key, restarts } => {
                h.event(format!("{key} crashed {restarts} times; given up"));
            }
            _ => {}
        }
    }
}

async fn refresh(view: Arc<View>, h: &'static Home) {
    let mut roster = Roster::default();
    let mut every = tokio::time::interval(REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Some(city) = crate::city::local() {
            if let Ok(Ok(CityReply::Roster(_, r))) =
                tokio::time::timeout(CITY_TIMEOUT, city.call(CityMsg::Get)).await
            {
                roster = r;
            }
        }
        let snap = build(&view, h, &roster);
        if view.tx.borrow().snapshot == snap {
            continue;
        }
        let html = crate::page::live(&snap);
        view.tx.send_replace(Arc::new(Published {
            snapshot: snap,
            html,
        }));
    }
}

fn build(view: &View, h: &Home, roster: &Roster) -> Snapshot {
    let heroes: Vec<HeroRow> = roster
        .heroes
        .values()
        .map(|e| HeroRow {
            name: e.name.clone(),
            node: e.node.clone(),
            health: e.health.max(0),
            fights_won: e.fights_won,
            fights_lost: e.fights_lost,
            status: if view.nodes.status(&e.node) == "up" {
                e.activity.as_str()
            } else {
                "moving"
            },
            city: e.city.clone(),
        })
        .collect();
    let mut nodes = Vec::new();
    let mut cities = Vec::new();
    for (name, k) in view.nodes.all() {
        let here = heroes
            .iter()
            .filter(|r| r.node == name && r.status != "moving")
            .count();
        if let Some(i) = &k.info {
            let status = if name == h.name && crate::city::local().is_none() {
                "in ruins"
            } else if k.status == "up" {
                "ok"
            } else {
                k.status
            };
            cities.push(CityRow {
                name: i.city.clone(),
                node: name.clone(),
                heroes: heroes
                    .iter()
                    .filter(|r| r.city.as_deref() == Some(&i.city))
                    .count(),
                status,
            });
        }
        nodes.push(NodeRow {
            name,
            status: k.status,
            heroes: here,
            city: k.info.as_ref().map(|i| i.city.clone()),
            http: k.info.map(|i| i.http),
        });
    }
    Snapshot {
        me: h.name.clone(),
        city: h.city_name.clone(),
        nodes,
        heroes,
        cities,
        events: h.events(),
    }
}
