//! The control actor every node exports as [`crate::home::CONTROL_EXPORT`], so any node's page can act on any
//! node: tell its page address and city, stop it gracefully, crash it, bomb its city.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use throng::cluster::RemoteActor;
use throng::prelude::*;

use crate::city::CityMsg;
use crate::home::{home, Home};

/// How long a stop or crash waits so that its reply reaches the caller first.
const REPLY_GRACE: Duration = Duration::from_millis(150);

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub node: String,
    /// Its city.
    pub city: String,
    /// Its page.
    pub http: String,
}

/// Requests to a node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum ControlMsg {
    /// Who are you?
    Info,
    /// Leave the cluster gracefully and exit.
    Stop,
    /// Abort the process (no leave: the others detect the failure).
    Crash,
    /// Crash the city.
    Bomb,
}

/// Answers of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlReply {
    /// Its info.
    Info(NodeInfo),
    /// Done (or about to be).
    Done,
    /// Could not.
    Refused(String),
}

/// The control actor.
pub struct Control;

impl Actor for Control {
    type Msg = ControlMsg;
    type Reply = ControlReply;

    async fn handle(
        &mut self,
        msg: ControlMsg,
        _ctx: &mut Context<Self>,
    ) -> ActorResult<ControlReply> {
        let Some(h) = home() else {
            return Ok(ControlReply::Refused("node is starting".into()));
        };
        Ok(act(h, msg))
    }
}

impl RemoteActor for Control {
    const TYPE: &'static str = "dispatch.Control";
}

/// Carry out `msg` on this node.
pub fn act(h: &'static Home, msg: ControlMsg) -> ControlReply {
    match msg {
        ControlMsg::Info => ControlReply::Info(info(h)),
        ControlMsg::Stop => {
            tokio::spawn(async move {
                tokio::time::sleep(REPLY_GRACE).await;
                stop_gracefully(h).await;
            });
            ControlReply::Done
        }
        ControlMsg::Crash => {
            h.event(format!("{} crashes now (abort, no leave)", h.name));
            std::thread::spawn(|| {
                std::thread::sleep(REPLY_GRACE);
                std::process::abort();
            });
            ControlReply::Done
        }
        ControlMsg::Bomb => match crate::city::local() {
            Some(city) => match city.try_cast(CityMsg::Bomb) {
                Ok(()) => {
                    h.event(format!("{} is being bombed!", h.city_name));
                    ControlReply::Done
                }
                Err(_) => ControlReply::Refused("the city's mailbox is full".into()),
            },
            None => ControlReply::Refused(format!("{} is in ruins right now", h.city_name)),
        },
    }
}

/// This node's info.
pub fn info(h: &Home) -> NodeInfo {
    NodeInfo {
        node: h.name.clone(),
        city: h.city_name.clone(),
        http: h.http_url.clone(),
    }
}

/// Leave the cluster (the others take the heroes over from their replicated snapshots) and exit:
/// how one node stops while the others go on (the page's "stop", SIGTERM, Ctrl-C of a `node`
/// run by hand).
pub async fn stop_gracefully(h: &Home) -> ! {
    h.event(format!("{} leaves the cluster gracefully", h.name));
    h.node.leave().await;
    tracing::info!(node = %h.name, "left the cluster; bye");
    std::process::exit(0)
}

/// Stop at once without leaving, and exit: how every node of the demo stops when the demo stops.
/// A graceful leave would hand this node's heroes to the other nodes, which are stopping too;
/// instead each node writes what it holds to its data directory first (if it has one), and the
/// heroes come back with their state when the nodes start again.
pub async fn shut_down(h: &Home) -> ! {
    let kept = if h.node.has_store() {
        "its heroes stay in its data directory"
    } else {
        "no data directory: its heroes are not kept"
    };
    h.event(format!("{} shuts down with the demo ({kept})", h.name));
    h.node.shutdown().await;
    tracing::info!(node = %h.name, "shut down; bye");
    std::process::exit(0)
}
