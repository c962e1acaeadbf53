//! The non-generic half of an actor: its identity, exit state, watchers, links and pending signals.
//!
//! Everything that other actors, supervisors and the registry need to know about an actor without
//! knowing its message type lives here, so that links, monitors and supervision work across actors of
//! different types. Exit signals travel out of band — not through the bounded mailbox — so a supervisor
//! whose mailbox is full still learns that a child died, as in Erlang.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use std::sync::OnceLock;
use tokio::task::AbortHandle;

use crate::ExitReason;

/// A process-unique actor identity. Never reused within one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId(u64);

impl ActorId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ActorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The numeric value (for logs and metrics).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// A signal delivered to an actor out of band.
#[derive(Debug, Clone)]
pub(crate) enum Signal {
    /// Stop with this reason after the current handler.
    Stop(ExitReason),
    /// A linked actor exited.
    Exit { from: ActorId, reason: ExitReason },
    /// An actor this one monitors exited.
    Down { id: ActorId, reason: ExitReason },
}

type Watcher = Box<dyn FnOnce(ActorId, &ExitReason) + Send>;

#[derive(Default)]
struct State {
    exit: Option<ExitReason>,
    /// By token, in the order they were added (see [`Cell::watch`]).
    watchers: std::collections::BTreeMap<u64, Watcher>,
    next_watcher: u64,
    links: Vec<Arc<Cell>>,
    signals: VecDeque<Signal>,
    trap_exit: bool,
    abort: Option<AbortHandle>,
}

pub(crate) struct Cell {
    id: ActorId,
    has_signal: AtomicBool,
    /// Wakes the run loop when it waits on an empty mailbox (set once at spawn). Signals wake the
    /// actor through its own mailbox, so an idle actor waits on exactly one thing.
    wake: OnceLock<Weak<dyn crate::mailbox::Signal>>,
    state: Mutex<State>,
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cell")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Cell {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Cell {
            id: ActorId::next(),
            has_signal: AtomicBool::new(false),
            wake: OnceLock::new(),
            state: Mutex::new(State::default()),
        })
    }

    pub(crate) fn id(&self) -> ActorId {
        self.id
    }

    /// Poisoning cannot leave `State` inconsistent (every critical section is a few plain field
    /// updates with no user code inside), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_abort(&self, handle: AbortHandle) {
        let mut st = self.lock();
        if st.exit.is_none() {
            st.abort = Some(handle);
        }
    }

    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.lock().exit.clone()
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.lock().exit.is_none()
    }

    pub(crate) fn set_trap_exit(&self, trap: bool) {
        self.lock().trap_exit = trap;
    }

    pub(crate) fn traps_exit(&self) -> bool {
        self.lock().trap_exit
    }

    /// Queue a signal for the actor; ignored once the actor has exited.
    pub(crate) fn deliver(&self, signal: Signal) {
        {
            let mut st = self.lock();
            if st.exit.is_some() {
                return;
            }
            st.signals.push_back(signal);
        }
        // Only the first pending signal needs a wake-up; the run loop drains them all at once.
        if !self.has_signal.swap(true, Ordering::AcqRel) {
            if let Some(mailbox) = self.wake.get().and_then(Weak::upgrade) {
                mailbox.signal();
            }
        }
    }

    pub(crate) fn set_wake(&self, wake: Weak<dyn crate::mailbox::Signal>) {
        let _ = self.wake.set(wake);
    }

    pub(crate) fn has_signal(&self) -> bool {
        self.has_signal.load(Ordering::Acquire)
    }

    pub(crate) fn take_signals(&self) -> VecDeque<Signal> {
        let mut st = self.lock();
        self.has_signal.store(false, Ordering::Release);
        std::mem::take(&mut st.signals)
    }

    /// Seal the actor's mailbox: it handles what is queued, refuses anything new, then stops.
    pub(crate) fn seal(&self) {
        if let Some(m) = self.wake.get().and_then(Weak::upgrade) {
            m.seal();
        }
    }

    /// Abort the actor's task: it stops at its next await point without running `stopped`.
    pub(crate) fn kill(&self) {
        let abort = self.lock().abort.take();
        if let Some(a) = abort {
            a.abort();
        }
    }

    /// Run `f` once with the exit reason when the actor exits. Hands `f` back with the reason,
    /// without registering it, if the actor has exited already.
    pub(crate) fn on_exit<F>(&self, f: F) -> Result<(), (F, ExitReason)>
    where
        F: FnOnce(ActorId, &ExitReason) + Send + 'static,
    {
        self.watch(f).map(|_| ())
    }

    /// [`Cell::on_exit`], returning a token that [`Cell::unwatch`] takes to remove `f`.
    pub(crate) fn watch<F>(&self, f: F) -> Result<u64, (F, ExitReason)>
    where
        F: FnOnce(ActorId, &ExitReason) + Send + 'static,
    {
        let mut st = self.lock();
        match &st.exit {
            Some(r) => Err((f, r.clone())),
            None => {
                let token = st.next_watcher;
                st.next_watcher += 1;
                st.watchers.insert(token, Box::new(f));
                Ok(token)
            }
        }
    }

    /// Removes the watcher [`Cell::watch`] returned `token` for, unless it ran (or runs) already.
    pub(crate) fn unwatch(&self, token: u64) {
        self.lock().watchers.remove(&token);
    }

    /// Link two live actors. If either has exited, the other receives the exit signal at once, as
    /// Erlang's `link/1` does for a dead process.
    pub(crate) fn link(a: &Arc<Cell>, b: &Arc<Cell>) {
        if a.id == b.id {
            return;
        }
        // Lock in id order so two concurrent links cannot deadlock.
        let (first, second) = if a.id < b.id { (a, b) } else { (b, a) };
        let mut s1 = first.lock();
        let mut s2 = second.lock();
        match (s1.exit.clone(), s2.exit.clone()) {
            (None, None) => {
                if !s1.links.iter().any(|c| c.id == second.id) {
                    s1.links.push(second.clone());
                    s2.links.push(first.clone());
                }
            }
            (Some(r), None) => {
                drop((s1, s2));
                second.deliver(Signal::Exit {
                    from: first.id,
                    reason: r,
                });
            }
            (None, Some(r)) => {
                drop((s1, s2));
                first.deliver(Signal::Exit {
                    from: second.id,
                    reason: r,
                });
            }
            (Some(_), Some(_)) => {}
        }
    }

    /// Remove the link between `a` and `b`. Returns `false` when `b` no longer held the link —
    /// because it has exited and its exit signal to `a` is already on its way.
    pub(crate) fn unlink(a: &Arc<Cell>, b: &Arc<Cell>) -> bool {
        a.lock().links.retain(|c| c.id != b.id);
        let mut sb = b.lock();
        let before = sb.links.len();
        sb.links.retain(|c| c.id != a.id);
        sb.links.len() != before
    }

    /// Record the exit (first one wins) and notify watchers and links outside the lock.
    pub(crate) fn finish(&self, reason: ExitReason) {
        let (watchers, links) = {
            let mut st = self.lock();
            if st.exit.is_some() {
                return;
            }
            st.exit = Some(reason.clone());
            st.abort = None;
            st.signals.clear();
            (
                std::mem::take(&mut st.watchers),
                std::mem::take(&mut st.links),
            )
        };
        for w in watchers.into_values() {
            w(self.id, &reason);
        }
        for l in links {
            l.lock().links.retain(|c| c.id != self.id);
            l.deliver(Signal::Exit {
                from: self.id,
                reason: reason.clone(),
            });
        }
    }
}
