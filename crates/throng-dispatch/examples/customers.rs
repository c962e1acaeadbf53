//! Throng in a business setting: the customer-actor service of the reference pull request, as a
//! small REST API. Each customer is a distributed child keyed by its id; its record is its
//! snapshot, so it survives a crash, a node failure and a move to another node — and, with a data
//! directory, a restart of every node: the supervisor is durable (`Durability::ASYNC`) when the
//! node has one.
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
//!
//! Where the customers are kept: `--data-dir DIR`, else `THRONG_DATA_DIR`, else
//! `$XDG_DATA_HOME/throng-dispatch/customers/<node>` (or `~/.local/share/...` without
//! `XDG_DATA_HOME`); one directory per node. Stop every node (Ctrl-C, `kill -9`) and start them
//! again with the same names and directories: every customer is back with its last record.
//! `--in-memory` keeps nothing on disk.
//!
//! Answers: 201/200/204 on success; 400 for a bad request (malformed JSON, an id that is empty or
//! longer than 64 bytes, a name or e-mail longer than 256 bytes); 404 only for a customer that does
//! not exist; 409 for an id already taken; 503 with `Retry-After` while a customer exists but
//! cannot be reached right now (its node is down or the cluster is settling, no quorum, a node
//! without the data directory a durable supervisor needs, a timeout); 500 for what only a bug
//! causes. See `child_status` and `call_status`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use throng::cluster::{
    ChildError, DistOptions, DistSupervisor, Durability, Keyed, Node, NodeConfig, RemoteActor,
};
use throng::prelude::*;

/// Longest customer id, in bytes.
const MAX_ID: usize = 64;

/// Longest name or e-mail, in bytes.
const MAX_FIELD: usize = 256;

/// What a 503 asks the client to wait before trying again, in seconds: about the time a failed
/// node takes to be detected and its customers to run elsewhere.
const RETRY_AFTER_SECS: &str = "2";

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

/// The status for a failed start, terminate or list of customers.
fn child_status(e: &ChildError) -> StatusCode {
    match e {
        ChildError::NoSuchChild(_) => StatusCode::NOT_FOUND,
        ChildError::AlreadyStarted(_) => StatusCode::CONFLICT,
        // The customer's start failed on its owner, or nodes disagree on the encoding: a bug or
        // a mismatched deployment, not something a retry fixes.
        ChildError::Failed(_) | ChildError::Codec(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // The customer (or the place it goes) exists but cannot be reached now: its node is
        // down or starting (no supervisor or actor type registered yet), the cluster is
        // settling or lacks a quorum, or a node lacks the data directory durability needs.
        ChildError::NodeDown(_)
        | ChildError::UnknownType { .. }
        | ChildError::NoSupervisor(_)
        | ChildError::NoQuorum { .. }
        | ChildError::Unsettled(_)
        | ChildError::NotDurable(_) => StatusCode::SERVICE_UNAVAILABLE,
        // A kind of failure added later: assume it passes.
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The status for a failed call to a customer.
fn call_status(e: &CallError) -> StatusCode {
    match e {
        // The owner of the key runs no such customer (a call is retried while a customer moves
        // or comes back, so this is the answer for an id nobody created, or one deleted).
        CallError::NoSuchActor(_) => StatusCode::NOT_FOUND,
        CallError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        // The handler failed, another type holds the name, or the encoding does not match.
        CallError::Failed(_) | CallError::UnknownActorType { .. } | CallError::Codec(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        // It exists but did not answer: its node is down, it was restarting or moving, or it
        // was too slow.
        CallError::Timeout(_) | CallError::NodeDown(_) | CallError::Exited(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON error; a 503 says when to try again.
fn error(status: StatusCode, why: impl ToString) -> Response {
    let mut r = (status, Json(json!({ "error": why.to_string() }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    r
}

fn child_error(e: ChildError) -> Response {
    match child_status(&e) {
        StatusCode::NOT_FOUND => error(StatusCode::NOT_FOUND, "no such customer"),
        StatusCode::CONFLICT => error(StatusCode::CONFLICT, "customer exists"),
        status => error(status, e),
    }
}

fn call_error(e: CallError) -> Response {
    match call_status(&e) {
        StatusCode::NOT_FOUND => error(StatusCode::NOT_FOUND, "no such customer"),
        status => error(status, e),
    }
}

/// Why an id is refused (answered 400), if it is.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(format!("an id is 1 to {MAX_ID} bytes"));
    }
    Ok(())
}

/// Why a record is refused (answered 400), if it is.
fn check_record(c: &Customer) -> Result<(), String> {
    if c.name.len() > MAX_FIELD || c.email.len() > MAX_FIELD {
        return Err(format!("a name or an e-mail is at most {MAX_FIELD} bytes"));
    }
    Ok(())
}

fn bad_request(why: impl ToString) -> Response {
    error(StatusCode::BAD_REQUEST, why)
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
        Err(e) => child_error(e),
    }
}

async fn create(State(app): State<App>, b: Result<Json<NewCustomer>, JsonRejection>) -> Response {
    let c = match b {
        Ok(Json(c)) => c,
        Err(e) => return bad_request(e.body_text()),
    };
    let record = Customer {
        name: c.name,
        email: c.email,
    };
    if let Err(why) = check_id(&c.id).and_then(|()| check_record(&record)) {
        return bad_request(why);
    }
    match app
        .customers
        .start_child::<CustomerActor>(&c.id, record.clone())
        .await
    {
        Ok(_) => (StatusCode::CREATED, Json(record)).into_response(),
        Err(e) => child_error(e),
    }
}

async fn read(State(app): State<App>, Path(id): Path<String>) -> Response {
    if let Err(why) = check_id(&id) {
        return bad_request(why);
    }
    match app
        .customers
        .call::<CustomerActor>(&id, CustomerMsg::Get)
        .await
    {
        Ok(c) => Json(c).into_response(),
        Err(e) => call_error(e),
    }
}

async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    b: Result<Json<Customer>, JsonRejection>,
) -> Response {
    let c = match b {
        Ok(Json(c)) => c,
        Err(e) => return bad_request(e.body_text()),
    };
    if let Err(why) = check_id(&id).and_then(|()| check_record(&c)) {
        return bad_request(why);
    }
    match app
        .customers
        .call::<CustomerActor>(&id, CustomerMsg::Update(c))
        .await
    {
        Ok(c) => Json(c).into_response(),
        Err(e) => call_error(e),
    }
}

async fn delete(State(app): State<App>, Path(id): Path<String>) -> Response {
    if let Err(why) = check_id(&id) {
        return bad_request(why);
    }
    match app.customers.terminate_child(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => child_error(e),
    }
}

/// Command line: `[PORT] [--data-dir DIR | --in-memory]`.
struct Args {
    port: u16,
    data_dir: Option<PathBuf>,
    in_memory: bool,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        port: 8080,
        data_dir: None,
        in_memory: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--data-dir" => match it.next() {
                Some(d) if !d.is_empty() => a.data_dir = Some(d.into()),
                _ => return Err("--data-dir needs a directory".into()),
            },
            "--in-memory" => a.in_memory = true,
            port => a.port = port.parse().map_err(|e| format!("port {port:?}: {e}"))?,
        }
    }
    if a.in_memory && a.data_dir.is_some() {
        return Err("--data-dir and --in-memory exclude each other".into());
    }
    Ok(a)
}

/// The node's data directory when neither `--data-dir` nor `THRONG_DATA_DIR` names one:
/// `$XDG_DATA_HOME/throng-dispatch/customers/<node>`, else under `~/.local/share`.
fn default_data_dir(node: &str) -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = var("XDG_DATA_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| h.join(".local/share")))?;
    Some(base.join("throng-dispatch").join("customers").join(node))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&args)?;
    // A cluster node from THRONG_* settings, or a single local node.
    let mut config = if std::env::var_os("THRONG_NAME").is_some() {
        NodeConfig::load(None)?
    } else {
        let mut c = NodeConfig::local("customers", b"customers-example-secret-loopback")?;
        c.data_dir = std::env::var_os("THRONG_DATA_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        c
    };
    if args.in_memory {
        config.data_dir = None;
    } else if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    } else if config.data_dir.is_none() {
        config.data_dir = default_data_dir(config.name.as_ref());
    }
    let data_dir = config.data_dir.clone();
    let node = Arc::new(Node::join(config).await?);
    node.register::<CustomerActor>();
    // Durable when this node has a data directory; in memory otherwise.
    let durability = if node.has_store() {
        Durability::ASYNC
    } else {
        Durability::None
    };
    let app = App {
        customers: node.supervisor(
            "customers",
            DistOptions {
                durability,
                ..Default::default()
            },
        ),
    };
    let router = Router::new()
        .route("/customers", get(list).post(create))
        .route("/customers/{id}", get(read).put(update).delete(delete))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!(
        "customer service (node {}) on http://127.0.0.1:{}/customers",
        node.id(),
        args.port
    );
    match &data_dir {
        Some(dir) => println!("customers kept in {}", dir.display()),
        None => println!("customers kept in memory only"),
    }
    tokio::select! {
        r = axum::serve(listener, router) => r?,
        // One node stops: its customers move to the others with their records (the last node
        // keeps them in its data directory).
        _ = tokio::signal::ctrl_c() => node.leave().await,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_customer_is_not_found() {
        assert_eq!(
            child_status(&ChildError::NoSuchChild("42".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call_status(&CallError::NoSuchActor("customers/42".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            child_status(&ChildError::AlreadyStarted("42".into())),
            StatusCode::CONFLICT
        );
    }

    #[test]
    fn an_unreachable_customer_is_unavailable_not_missing() {
        let unavailable = [
            ChildError::NodeDown("c2".into()),
            ChildError::NoQuorum { seen: 1, needed: 2 },
            ChildError::Unsettled("42".into()),
            ChildError::NotDurable("node c1 has no data_dir".into()),
            ChildError::NoSupervisor("customers".into()),
            ChildError::UnknownType {
                node: "c2".into(),
                actor_type: "example.Customer".into(),
            },
        ];
        for e in &unavailable {
            assert_eq!(child_status(e), StatusCode::SERVICE_UNAVAILABLE, "{e}");
        }
        for e in [
            CallError::NodeDown("c2".into()),
            CallError::Timeout(std::time::Duration::from_secs(5)),
        ] {
            assert_eq!(call_status(&e), StatusCode::SERVICE_UNAVAILABLE, "{e}");
        }
    }

    #[tokio::test]
    async fn a_customer_that_exited_mid_call_is_unavailable() {
        let actor = throng::spawn(CustomerActor {
            record: Customer {
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
        });
        let e = CallError::Exited(actor.id());
        assert_eq!(call_status(&e), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn bugs_are_server_errors_and_oversized_records_too_large() {
        for e in [
            ChildError::Failed("panicked".into()),
            ChildError::Codec("bad".into()),
        ] {
            assert_eq!(child_status(&e), StatusCode::INTERNAL_SERVER_ERROR, "{e}");
        }
        for e in [
            CallError::Failed(ExitReason::Error("boom".into())),
            CallError::Codec("bad".into()),
            CallError::UnknownActorType {
                expected: "example.Customer".into(),
                found: "other".into(),
            },
        ] {
            assert_eq!(call_status(&e), StatusCode::INTERNAL_SERVER_ERROR, "{e}");
        }
        assert_eq!(
            call_status(&CallError::TooLarge {
                size: 10_000_000,
                max: 1_000_000
            }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn a_503_says_when_to_retry_and_a_404_does_not() {
        let r = child_error(ChildError::NodeDown("c2".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS);
        let r = call_error(CallError::Timeout(std::time::Duration::from_secs(5)));
        assert_eq!(r.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS);
        let r = call_error(CallError::NoSuchActor("customers/42".into()));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn bad_input_is_a_bad_request() {
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(MAX_ID + 1)).is_err());
        assert!(check_id("42").is_ok());
        let long = Customer {
            name: "n".repeat(MAX_FIELD + 1),
            email: "a@b".into(),
        };
        assert!(check_record(&long).is_err());
        assert_eq!(bad_request("no").status(), StatusCode::BAD_REQUEST);
        let args = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(args(&["not-a-port"]).is_err());
        assert!(args(&["--data-dir"]).is_err());
        assert!(args(&["--data-dir", "/d", "--in-memory"]).is_err());
        let a = args(&["8081", "--data-dir", "/d"]).unwrap();
        assert_eq!((a.port, a.data_dir), (8081, Some(PathBuf::from("/d"))));
    }
}
