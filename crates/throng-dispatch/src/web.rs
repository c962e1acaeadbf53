//! The dispatch center's HTTP server: the page, its SSE stream, the JSON API and `/metrics`, all on
//! one port.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use throng::cluster::ChildError;

use crate::city::{City, CityMsg, CityReply};
use crate::control::{self, Control, ControlMsg, ControlReply};
use crate::hero::{Hero, HeroArgs};
use crate::home::{now_ms, Counters, Home, CITY_EXPORT, CONTROL_EXPORT};
use crate::roster::Tombstone;
use crate::view::View;

/// Longest hero name.
pub const MAX_NAME: usize = 32;

#[derive(Clone)]
struct App {
    h: &'static Home,
    view: Arc<View>,
}

/// The router of one node.
pub fn router(h: &'static Home, view: Arc<View>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/api/nodes", get(nodes))
        .route("/api/cities", get(cities))
        .route("/api/heroes", get(heroes).post(create))
        .route("/api/heroes/{name}", get(hero).delete(terminate))
        .route("/api/heroes/{name}/assign", post(assign))
        .route("/api/nodes/{name}/{action}", post(node_action))
        .route("/metrics", get(metrics))
        .with_state(App { h, view })
}

fn error(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(json!({ "error": why.into() }))).into_response()
}

async fn index(State(app): State<App>) -> Html<String> {
    let p = app.view.current();
    Html(crate::page::page(&p.snapshot, &p.html))
}

async fn events(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = app.view.subscribe();
    rx.mark_changed();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let p = rx.borrow_and_update().clone();
        Some((Ok(Event::default().event("view").data(&p.html)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn nodes(State(app): State<App>) -> Response {
    Json(&app.view.current().snapshot.nodes).into_response()
}

async fn cities(State(app): State<App>) -> Response {
    Json(&app.view.current().snapshot.cities).into_response()
}

async fn heroes(State(app): State<App>) -> Response {
    Json(&app.view.current().snapshot.heroes).into_response()
}

async fn hero(State(app): State<App>, Path(name): Path<String>) -> Response {
    let p = app.view.current();
    match p.snapshot.heroes.iter().find(|r| r.name == name) {
        Some(r) => Json(r).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no hero {name:?}")),
    }
}

/// A hero name: 1..=32 letters, digits, spaces, `-`, `_` or `.`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
}

#[derive(Deserialize)]
struct Create {
    name: String,
    city: Option<String>,
}

async fn create(State(app): State<App>, body: Option<Json<Create>>) -> Response {
    let Some(Json(c)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"name\": ...}",
        );
    };
    let h = app.h;
    let name = c.name.trim().to_owned();
    if !valid_name(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            "a name is 1 to 32 letters, digits, spaces, '-', '_' or '.'",
        );
    }
    if let Some(city) = crate::city::local() {
        if let Ok(CityReply::Roster(_, r)) = city.call(CityMsg::Get).await {
            if r.is_defeated(&name) {
                return error(
                    StatusCode::CONFLICT,
                    format!("{name} fell in battle and never comes back"),
                );
            }
        }
    }
    // By default a hero serves the city of the node it lands on.
    let city = c
        .city
        .or_else(|| {
            let owner = h.heroes.node_for(&name)?;
            app.view.nodes.city_of(owner.as_ref())
        })
        .unwrap_or_else(|| h.city_name.clone());
    let args = HeroArgs {
        tick_ms: h.tick.as_millis() as u64,
        city: Some(city),
    };
    match h.heroes.start_child::<Hero>(&name, args).await {
        Ok(_) => {
            Counters::bump(&h.counters.heroes_created);
            let node = h.heroes.node_for(&name).map(|n| n.to_string());
            (
                StatusCode::CREATED,
                Json(json!({ "name": name, "node": node })),
            )
                .into_response()
        }
        Err(ChildError::AlreadyStarted(_)) => {
            error(StatusCode::CONFLICT, format!("{name} already exists"))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn terminate(State(app): State<App>, Path(name): Path<String>) -> Response {
    let h = app.h;
    match h.heroes.terminate_child(&name).await {
        Ok(()) => {
            if let Some(city) = crate::city::local() {
                let _ = city
                    .cast(CityMsg::Gone {
                        name: name.clone(),
                        tombstone: Tombstone {
                            version: now_ms(),
                            defeated: false,
                        },
                    })
                    .await;
            }
            h.event(format!("{name} was terminated"));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(ChildError::NoSuchChild(_)) => {
            error(StatusCode::NOT_FOUND, format!("no hero {name:?}"))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
struct Assign {
    city: String,
}

async fn assign(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Option<Json<Assign>>,
) -> Response {
    let Some(Json(a)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"city\": ...}",
        );
    };
    let Some(info) = app.view.nodes.by_city(&a.city) else {
        return error(StatusCode::NOT_FOUND, format!("no city {:?}", a.city));
    };
    let Some(peer) = app
        .h
        .node
        .nodes()
        .into_iter()
        .find(|n| n.as_ref() == info.node)
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is down", info.node),
        );
    };
    let city = app.h.node.remote::<City>(&peer, CITY_EXPORT);
    match city.call(CityMsg::Assign { hero: name }).await {
        Ok(CityReply::Assigned(Ok(entry))) => Json(json!({
            "name": entry.name, "city": entry.city, "health": entry.health
        }))
        .into_response(),
        Ok(CityReply::Assigned(Err(why))) => error(StatusCode::CONFLICT, why),
        Ok(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn node_action(
    State(app): State<App>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let msg = match action.as_str() {
        "stop" => ControlMsg::Stop,
        "crash" => ControlMsg::Crash,
        "bomb" => ControlMsg::Bomb,
        other => return error(StatusCode::NOT_FOUND, format!("no action {other:?}")),
    };
    let h = app.h;
    let reply = if name == h.name {
        control::act(h, msg)
    } else {
        let Some(peer) = h.node.nodes().into_iter().find(|n| n.as_ref() == name) else {
            return error(StatusCode::NOT_FOUND, format!("no live node {name:?}"));
        };
        h.event(format!("asking {name} to {action}"));
        match h
            .node
            .remote::<Control>(&peer, CONTROL_EXPORT)
            .call(msg)
            .await
        {
            Ok(r) => r,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    };
    match reply {
        ControlReply::Refused(why) => error(StatusCode::CONFLICT, why),
        _ => (
            StatusCode::ACCEPTED,
            Json(json!({ "node": name, "action": action })),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let h = app.h;
    let p = app.view.current();
    let stats = h.heroes.stats().await;
    let c = &h.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let me = &h.name;
    let mut out = String::new();
    out.push_str("# HELP throng_actors Actors running per node (heroes as this node sees them; the city here).\n# TYPE throng_actors gauge\n");
    for n in &p.snapshot.nodes {
        let _ = writeln!(
            out,
            "throng_actors{{node=\"{}\",kind=\"hero\"}} {}",
            n.name, n.heroes
        );
    }
    let _ = writeln!(
        out,
        "throng_actors{{node=\"{me}\",kind=\"city\"}} {}",
        u8::from(crate::city::local().is_some())
    );
    let _ = writeln!(
        out,
        "# HELP throng_messages_total Messages handled on this node.\n# TYPE throng_messages_total counter\n\
         throng_messages_total{{node=\"{me}\",kind=\"hero\"}} {}\n\
         throng_messages_total{{node=\"{me}\",kind=\"city\"}} {}",
        get(&c.hero_messages),
        get(&c.city_messages)
    );
    let _ = writeln!(
        out,
        "# HELP throng_restarts_total Restarts after a crash on this node.\n# TYPE throng_restarts_total counter\n\
         throng_restarts_total{{node=\"{me}\",kind=\"hero\"}} {}\n\
         throng_restarts_total{{node=\"{me}\",kind=\"city\"}} {}",
        get(&c.hero_restarts),
        get(&c.city_starts).saturating_sub(1)
    );
    let _ = writeln!(
        out,
        "# HELP throng_handoffs_total Children handed over to this node with their exact state (a node left gracefully, or joined and rebalanced).\n# TYPE throng_handoffs_total counter\n\
         throng_handoffs_total{{node=\"{me}\"}} {}",
        get(&c.handoffs)
    );
    let _ = writeln!(
        out,
        "# HELP throng_failovers_total Children restarted here from their replicated snapshot after their node failed.\n# TYPE throng_failovers_total counter\n\
         throng_failovers_total{{node=\"{me}\"}} {}",
        get(&c.failovers)
    );
    let _ = writeln!(
        out,
        "# HELP throng_dist_children Distributed children on this node.\n# TYPE throng_dist_children gauge\n\
         throng_dist_children{{node=\"{me}\",state=\"running\"}} {}\n\
         throng_dist_children{{node=\"{me}\",state=\"backup\"}} {}\n\
         throng_dist_children{{node=\"{me}\",state=\"unreplicated\"}} {}",
        stats.running, stats.backups, stats.unreplicated
    );
    let conns = h.node.connection_stats();
    let _ = writeln!(
        out,
        "# HELP throng_handshakes Connections to this node's RPC port in their handshake now.\n# TYPE throng_handshakes gauge\n\
         throng_handshakes{{node=\"{me}\"}} {}\n\
         # HELP throng_handshakes_total Connections to this node's RPC port that were refused at once (max_handshakes in progress) or whose handshake failed.\n# TYPE throng_handshakes_total counter\n\
         throng_handshakes_total{{node=\"{me}\",outcome=\"refused\"}} {}\n\
         throng_handshakes_total{{node=\"{me}\",outcome=\"failed\"}} {}",
        conns.handshaking, conns.handshakes_refused, conns.handshakes_failed
    );
    let _ = writeln!(
        out,
        "# HELP throng_dispatch_heroes_total Heroes created through, and defeated on, this node.\n# TYPE throng_dispatch_heroes_total counter\n\
         throng_dispatch_heroes_total{{node=\"{me}\",event=\"created\"}} {}\n\
         throng_dispatch_heroes_total{{node=\"{me}\",event=\"defeated\"}} {}",
        get(&c.heroes_created),
        get(&c.heroes_defeated)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
