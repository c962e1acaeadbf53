//! Why an actor stopped.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use throng_core::ExitClass;

use crate::ActorId;

/// Why an actor stopped. Watchers (monitors, links, supervisors, the registry) all see the same value.
///
/// Cheap to clone: messages are shared behind `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The actor stopped itself on purpose ([`crate::Context::stop`]).
    Normal,
    /// The actor was asked to stop (by its supervisor, [`crate::ActorRef::stop`], or a shutdown).
    Shutdown,
    /// A handler panicked; the payload's message if it was a string.
    Panic(Arc<str>),
    /// A handler returned an error.
    Error(Arc<str>),
    /// The actor was killed without running its `stopped` hook: a brutal kill, a shutdown timeout that
    /// ran out, or its runtime going away.
    Killed,
    /// A linked actor exited abnormally and this actor was not trapping exits.
    Linked {
        /// The linked actor that exited first.
        from: ActorId,
        /// Why it exited.
        reason: Arc<ExitReason>,
    },
    /// The actor lives on another node, and that node is down (or the connection to it was lost).
    NodeDown(Arc<str>),
    /// There was no such actor to begin with (Erlang's `noproc`): a remote name nobody exports.
    NoProc,
    /// The actor lost its registered name to a concurrent registration on another node, and its
    /// node stops such actors ([`crate::cluster::names::OnConflict::Stop`], as Horde does).
    NameConflict {
        /// The contested name.
        name: Arc<str>,
        /// The node whose registration won.
        winner: Arc<str>,
    },
    /// A supervisor gave up: its children needed more restarts than its intensity allows.
    RestartIntensity {
        /// Restarts counted within the window, including the one that exceeded it.
        restarts: u32,
        /// The window.
        period: Duration,
    },
}

impl ExitReason {
    /// A reason for an actor that failed with `message`.
    pub fn error(message: impl Into<String>) -> Self {
        ExitReason::Error(Arc::from(message.into()))
    }

    /// How restart policies see this reason: `Normal` and `Shutdown` are not failures; everything else is.
    pub fn class(&self) -> ExitClass {
        match self {
            ExitReason::Normal => ExitClass::Normal,
            ExitReason::Shutdown => ExitClass::Shutdown,
            _ => ExitClass::Abnormal,
        }
    }

    /// Whether this reason is a failure (anything but `Normal` and `Shutdown`).
    pub fn is_abnormal(&self) -> bool {
        self.class() == ExitClass::Abnormal
    }

    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let msg: Arc<str> = if let Some(s) = payload.downcast_ref::<&'static str>() {
            Arc::from(*s)
        } else if let Some(s) = payload.downcast_ref::<String>() {
            Arc::from(s.as_str())
        } else {
            Arc::from("non-string panic payload")
        };
        ExitReason::Panic(msg)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Panic(m) => write!(f, "panic: {m}"),
            ExitReason::Error(m) => write!(f, "error: {m}"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::NodeDown(n) => write!(f, "node {n} is down"),
            ExitReason::NoProc => f.write_str("no such actor"),
            ExitReason::Linked { from, reason } => {
                write!(f, "linked actor {from} exited: {reason}")
            }
            ExitReason::NameConflict { name, winner } => {
                write!(
                    f,
                    "lost the name {name:?} to a registration on node {winner}"
                )
            }
            ExitReason::RestartIntensity { restarts, period } => write!(
                f,
                "restart intensity exceeded: {restarts} restarts within {period:?}"
            ),
        }
    }
}
