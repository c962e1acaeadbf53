//! Throng in a business setting: the customer-actor service of the reference pull request, as a
//! small REST API. Each customer is a distributed child keyed by its id; its record is its
//! snapshot, so it survives a crash, a node failure and a move to another node.
//!
//! ```text
//! cargo run -p throng-dispatch --example customers                  # one node on :8080
//! # a cluster: THRONG_* settings as for any node (see README), one HTTP port each
//! THRONG_NAME=c1 THRONG_GOSSIP_BIND=127.0.0.1:7201 THRONG_SECRET=change-me-to-a-long-secret \
//!   cargo run -p throng-dispatch --example customers -- 8081
//! THRONG_NAME=c2 THRONG_GOSSIP_BIND=127.0.0.1:7202 THRONG_SEEDS=127.0.0.1:7201 \
//!   THRONG_SECRET=change-me-to-a-long-secret cargo run -p throng-dispatch --example customers -- 8082
//!
//! curl -XPOST localhost:8080/customers -H 'content-type: application/json' \
//!      -d '{"id":"42","name":"Ada","email":"ada@example.com"}'
//! curl localhost:8080/customers/42
//! curl -XPUT localhost:8080/customers/42 -H 'content-type: application/json' \
//!      -d '{"name":"Ada Lovelace","email":"ada@example.com"}'
//! curl localhost:8080/customers
//! curl -XDELETE localhost:8080/customers/42
//! ```

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use throng::cluster::{ChildError, DistSupervisor, Keyed, Node, NodeConfig, RemoteActor};
use throng::prelude::*;

/// A customer's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Customer {
    name: String,
    email: String,
}

/// The customer actor: owns one record.
struct CustomerActor {
    record: Customer,
}

#[derive(Debug, Serialize, Deserialize)]
enum CustomerMsg {
    Get,
    Update(Customer),
}

impl Actor for CustomerActor {
    type Msg = CustomerMsg;
    type Reply = Customer;

    async fn handle(
        &mut self,
        msg: CustomerMsg,
        _ctx: &mut Context<Self>,
    ) -> ActorResult<Customer> {
        if let CustomerMsg::Update(c) = msg {
            self.record = c;
        }
        Ok(self.record.clone())
    }
}

impl RemoteActor for CustomerActor {
    const TYPE: &'static str = "example.Customer";
}

impl Keyed for CustomerActor {
    type Args = Customer;
    type State = Customer;

    fn start(_id: &str, record: Customer) -> Self {
        CustomerActor { record }
    }

    fn snapshot(&self) -> Option<Customer> {
        Some(self.record.clone())
    }

    fn restore(_id: &str, _args: Customer, record: Customer) -> Self {
        CustomerActor { record }
    }
}

#[derive(Clone)]
struct App {
    customers: DistSupervisor,
}

#[derive(Deserialize)]
struct NewCustomer {
    id: String,
    name: String,
    email: String,
}

fn error(status: StatusCode, why: impl ToString) -> Response {
    (status, Json(json!({ "error": why.to_string() }))).into_response()
}

async fn list(State(app): State<App>) -> Response {
    match app.customers.children().await {
        Ok(children) => Json(
            children
                .into_iter()
                .map(|c| json!({ "id": c.key, "node": c.node.to_string() }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn create(State(app): State<App>, Json(c): Json<NewCustomer>) -> Response {
    if c.id.is_empty() || c.id.len() > 64 {
        return error(StatusCode::BAD_REQUEST, "id must be 1 to 64 bytes");
    }
    let record = Customer {
        name: c.name,
        email: c.email,
    };
    match app
        .customers
        .start_child::<CustomerActor>(&c.id, record.clone())
        .await
    {
        Ok(_) => (StatusCode::CREATED, Json(record)).into_response(),
        Err(ChildError::AlreadyStarted(_)) => error(StatusCode::CONFLICT, "customer exists"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn read(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app
        .customers
        .call::<CustomerActor>(&id, CustomerMsg::Get)
        .await
    {
        Ok(c) => Json(c).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(c): Json<Customer>,
) -> Response {
    match app
        .customers
        .call::<CustomerActor>(&id, CustomerMsg::Update(c))
        .await
    {
        Ok(c) => Json(c).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

async fn delete(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.customers.terminate_child(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(ChildError::NoSuchChild(_)) => error(StatusCode::NOT_FOUND, "no such customer"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(8080);
    // A cluster node from THRONG_* settings, or a single local node.
    let config = if std::env::var_os("THRONG_NAME").is_some() {
        NodeConfig::load(None)?
    } else {
        NodeConfig::local("customers", b"customers-example-secret-loopback")?
    };
    let node = Arc::new(Node::join(config).await?);
    node.register::<CustomerActor>();
    let app = App {
        customers: node.supervisor("customers", Default::default()),
    };
    let router = Router::new()
        .route("/customers", get(list).post(create))
        .route("/customers/{id}", get(read).put(update).delete(delete))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "customer service (node {}) on http://127.0.0.1:{port}/customers",
        node.id()
    );
    tokio::select! {
        r = axum::serve(listener, router) => r?,
        _ = tokio::signal::ctrl_c() => node.leave().await,
    }
    Ok(())
}
