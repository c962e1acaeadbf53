//! Throng: stateful, supervised actors on tokio — and, as the project grows, across a cluster.
//!
//! This crate is the runtime users depend on. Its decisions (restart intensity, placement) come from
//! the sans-io [`throng_core`] crate; this crate carries them out with tokio tasks.
//!
//! - [`Actor`], [`ActorRef`], [`Context`]: typed actors with bounded mailboxes, calls with timeouts,
//!   casts with backpressure, timers, monitors and links.
//! - [`supervisor::DynamicSupervisor`]: restart policies, restart intensity, shutdown timeouts.
//! - [`registry::Registry`]: unique names with metadata, `via`-style addressing, and groups.
//!
//! ```
//! use throng::prelude::*;
//!
//! struct Greeter;
//!
//! impl Actor for Greeter {
//!     type Msg = String;
//!     type Reply = String;
//!
//!     async fn handle(&mut self, name: String, _ctx: &mut Context<Self>) -> ActorResult<String> {
//!         Ok(format!("hello, {name}"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sup = DynamicSupervisor::start(SupervisorOptions::default()).await.unwrap();
//! let greeter = sup.start_child(ChildSpec::new(|| Greeter)).await.unwrap();
//! assert_eq!(greeter.call("Ada".into()).await.unwrap(), "hello, Ada");
//! # }
//! ```

mod actor;
mod actor_ref;
mod cell;
pub mod cluster;
mod exit;
mod mailbox;
pub mod registry;
pub mod supervisor;

pub use actor::{
    spawn, spawn_with, start, start_with, Actor, ActorError, ActorResult, Context, SpawnOptions,
    TimerRef, DEFAULT_MAILBOX, MAX_MAILBOX,
};
pub use actor_ref::{
    ActorHandle, ActorRef, CallError, Monitor, SendError, TrySendError, DEFAULT_CALL_TIMEOUT,
};
pub use cell::ActorId;
pub use exit::ExitReason;
pub use throng_core::{Intensity, RestartPolicy};

/// Everything a typical user needs: `use throng::prelude::*;`.
pub mod prelude {
    pub use crate::registry::Registry;
    pub use crate::supervisor::{ChildSpec, DynamicSupervisor, Shutdown, SupervisorOptions};
    pub use crate::{
        Actor, ActorError, ActorHandle, ActorId, ActorRef, ActorResult, CallError, Context,
        ExitReason, Intensity, RestartPolicy,
    };
}
