//! Keyed children placed by consistent hashing — the first slice of the distributed supervisor.
//!
//! An actor type implements [`Keyed`] and is registered on every node that may host it
//! ([`Node::register`]). [`Node::start_child`] from any node starts the child on the owner of its
//! key (`node_for(key)`), under that node's local supervisor, with the child's restart policy; the
//! owner exports it as `"<TYPE>/<key>"` and re-exports every restarted incarnation, so
//! [`Node::child`] reaches it in one hop from anywhere. A node asked to host a type it has not
//! registered answers a typed error.
//!
//! Not yet here (issue 5): replication of specs and snapshots to ring successors, failover when the
//! owner dies, distribution strategies other than the ring, and the sans-io directory state machine
//! that those decisions belong in. Known gap until rebalancing (issue 6): when the ring changes (a
//! node joins, leaves or dies), the children whose key changed owner keep running where they were
//! started, or are gone with a dead node, so `child(key)` for those keys answers `NoSuchActor` from
//! the new owner.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use throng_core::RestartPolicy;
use tokio::sync::oneshot;

use super::node::{Pending, Shared};
use super::wire::{Frame, RemoteFailure};
use super::{Node, RemoteActor};
use crate::supervisor::ChildSpec;
use crate::ActorRef;

/// An actor type that can run as a keyed child anywhere in the cluster.
pub trait Keyed: RemoteActor {
    /// What a child is started from; travels to the owner node, so it is serde.
    type Args: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// Build the child for `key` (again at every restart, from the same args).
    fn start(key: &str, args: Self::Args) -> Self;

    /// Restart policy of the children (default: permanent).
    fn restart() -> RestartPolicy {
        RestartPolicy::Permanent
    }
}

/// A keyed-child operation (start, terminate, list) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The owner node has not registered this actor type.
    #[error("node {node} does not host actor type {actor_type}")]
    UnknownType {
        /// The owner.
        node: String,
        /// The type.
        actor_type: String,
    },
    /// A child with this key already runs on its owner.
    #[error("child {0:?} already started")]
    AlreadyStarted(String),
    /// The child's start failed on its owner (bad args, `started` error or panic).
    #[error("child failed to start: {0}")]
    Failed(String),
    /// The owner is down, unreachable, or did not answer in time.
    #[error("owner node {0} is down or unreachable")]
    NodeDown(String),
    /// The arguments (or an answer) could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// No child with this key runs on its owner.
    #[error("no child {0:?}")]
    NoSuchChild(String),
}

/// How long keyed-child operations wait for the owner to answer.
pub const CHILD_OP_TIMEOUT: Duration = Duration::from_secs(10);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A registered type, erased: starts a child from serialized args on this node.
pub(crate) trait HostType: Send + Sync {
    fn start<'a>(
        &'a self,
        shared: &'a Arc<Shared>,
        key: &'a str,
        args: &'a [u8],
    ) -> BoxFuture<'a, Result<(), RemoteFailure>>;
}

struct Host<A>(PhantomData<fn() -> A>);

/// The export name of the child of type `A` with `key`.
pub fn child_name<A: RemoteActor>(key: &str) -> String {
    format!("{}/{key}", A::TYPE)
}

impl<A: Keyed> HostType for Host<A> {
    fn start<'a>(
        &'a self,
        shared: &'a Arc<Shared>,
        key: &'a str,
        args: &'a [u8],
    ) -> BoxFuture<'a, Result<(), RemoteFailure>> {
        Box::pin(async move {
            let args: A::Args =
                postcard::from_bytes(args).map_err(|e| RemoteFailure::Decode(e.to_string()))?;
            let name = child_name::<A>(key);
            if shared.is_exported(&name) {
                return Err(RemoteFailure::AlreadyStarted(key.to_owned()));
            }
            let sup = shared
                .children
                .get()
                .ok_or_else(|| RemoteFailure::StartFailed("node is not running".into()))?;
            let owned_key = key.to_owned();
            let weak = Arc::downgrade(shared);
            let spec = ChildSpec::new(move || A::start(&owned_key, args.clone()))
                .restart(A::restart())
                .on_start(move |child: &ActorRef<A>| {
                    if let Some(shared) = weak.upgrade() {
                        let _ = shared.export_typed(&name, child, true);
                    }
                });
            sup.start_child(spec)
                .await
                .map(|_| ())
                .map_err(|e| RemoteFailure::StartFailed(e.to_string()))
        })
    }
}

impl Shared {
    /// Stop a keyed child hosted here through its supervisor.
    pub(super) async fn host_stop(&self, actor_type: &str, key: &str) -> Result<(), RemoteFailure> {
        let name = format!("{actor_type}/{key}");
        let handle = self
            .exported_handle(&name)
            .ok_or_else(|| RemoteFailure::NoSuchActor(key.to_owned()))?;
        let sup = self
            .children
            .get()
            .ok_or_else(|| RemoteFailure::StartFailed("node is not running".into()))?;
        sup.terminate_child(&handle)
            .await
            .map_err(|e| RemoteFailure::Failed(e.to_string()))
    }

    /// The keyed children hosted here, as `(type, key)`.
    pub(super) fn host_list(&self) -> Vec<(String, String)> {
        let types = self.types.read().unwrap_or_else(|p| p.into_inner());
        self.export_names()
            .into_iter()
            .filter_map(|name| {
                let (t, k) = name.split_once('/')?;
                types.contains_key(t).then(|| (t.to_owned(), k.to_owned()))
            })
            .collect()
    }

    /// Start a keyed child of a registered type here.
    pub(super) async fn host_start(
        self: &Arc<Self>,
        actor_type: &str,
        key: &str,
        args: &[u8],
    ) -> Result<(), RemoteFailure> {
        let host = self
            .types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(actor_type)
            .cloned()
            .ok_or_else(|| RemoteFailure::UnknownType(actor_type.to_owned()))?;
        host.start(self, key, args).await
    }
}

impl Node {
    /// Allow this node to host keyed children of type `A`. Register the same types on every node
    /// that may own keys.
    pub fn register<A: Keyed>(&self) {
        self.shared
            .types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(A::TYPE, Arc::new(Host::<A>(PhantomData)));
    }

    /// Start the child of type `A` with `key` on the node that owns the key, from `args`, and
    /// return a reference to it (valid from any node, across its restarts).
    pub async fn start_child<A: Keyed>(
        &self,
        key: &str,
        args: A::Args,
    ) -> Result<ActorRef<A>, ChildError> {
        let owner = self
            .node_for(key.as_bytes())
            .ok_or_else(|| ChildError::NodeDown("(no node owns keys)".into()))?;
        let bytes = postcard::to_allocvec(&args).map_err(|e| ChildError::Codec(e.to_string()))?;
        let result = if owner == self.shared.id {
            self.shared.host_start(A::TYPE, key, &bytes).await
        } else {
            let (actor_type, key) = (A::TYPE.to_owned(), key.to_owned());
            self.ask(&owner, |id| Frame::Start {
                id,
                actor_type,
                key,
                args: bytes,
            })
            .await?
            .map(|_| ())
        };
        match result {
            Ok(()) => Ok(self.remote::<A>(&owner, &child_name::<A>(key))),
            Err(RemoteFailure::UnknownType(t)) => Err(ChildError::UnknownType {
                node: owner.to_string(),
                actor_type: t,
            }),
            Err(RemoteFailure::AlreadyStarted(k)) => Err(ChildError::AlreadyStarted(k)),
            Err(RemoteFailure::Exited) => Err(ChildError::NodeDown(owner.to_string())),
            Err(other) => Err(ChildError::Failed(format!("{other:?}"))),
        }
    }

    /// Send `frame` (built with a fresh request id) to `peer` and wait for its `Reply`.
    async fn ask(
        &self,
        peer_id: &throng_core::NodeId,
        frame: impl FnOnce(u64) -> Frame,
    ) -> Result<Result<Vec<u8>, RemoteFailure>, ChildError> {
        let shared = &self.shared;
        let down = || ChildError::NodeDown(peer_id.to_string());
        let peer = shared.peer_handle(peer_id).ok_or_else(down)?;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Pending {
                    peer: peer_id.clone(),
                    tx,
                },
            );
        let exchange = async {
            peer.data.send(frame(id)).await.map_err(|_| down())?;
            rx.await.map_err(|_| down())
        };
        match tokio::time::timeout(CHILD_OP_TIMEOUT, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) | Err(_) => {
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(down())
            }
        }
    }

    /// Stop the child of type `A` with `key` on its owner (it is not restarted).
    pub async fn terminate_child<A: Keyed>(&self, key: &str) -> Result<(), ChildError> {
        let owner = self
            .node_for(key.as_bytes())
            .ok_or_else(|| ChildError::NodeDown("(no node owns keys)".into()))?;
        let result = if owner == self.shared.id {
            self.shared.host_stop(A::TYPE, key).await
        } else {
            let (actor_type, key) = (A::TYPE.to_owned(), key.to_owned());
            self.ask(&owner, |id| Frame::Stop {
                id,
                actor_type,
                key,
            })
            .await?
            .map(|_| ())
        };
        result.map_err(|f| match f {
            RemoteFailure::NoSuchActor(k) => ChildError::NoSuchChild(k),
            other => ChildError::Failed(format!("{other:?}")),
        })
    }

    /// Every keyed child in the cluster as `(node, type, key)`, asking each owner (sorted).
    pub async fn children(&self) -> Result<Vec<(throng_core::NodeId, String, String)>, ChildError> {
        let mut all = Vec::new();
        for owner in self.owners() {
            let list = if owner == self.shared.id {
                self.shared.host_list()
            } else {
                let bytes = self
                    .ask(&owner, |id| Frame::List { id })
                    .await?
                    .map_err(|f| ChildError::Failed(format!("{f:?}")))?;
                postcard::from_bytes::<Vec<(String, String)>>(&bytes)
                    .map_err(|e| ChildError::Codec(e.to_string()))?
            };
            all.extend(list.into_iter().map(|(t, k)| (owner.clone(), t, k)));
        }
        all.sort();
        Ok(all)
    }

    /// Whether the child of type `A` with `key` runs on this node.
    pub fn hosts<A: Keyed>(&self, key: &str) -> bool {
        self.shared.is_exported(&child_name::<A>(key))
    }

    /// A reference to the child of type `A` with `key`, wherever the ring places it now (one hop;
    /// errors surface on `call`/`cast`). `None` while no node owns keys.
    pub fn child<A: Keyed>(&self, key: &str) -> Option<ActorRef<A>> {
        let owner = self.node_for(key.as_bytes())?;
        Some(self.remote::<A>(&owner, &child_name::<A>(key)))
    }
}
