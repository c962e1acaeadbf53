//! The executor of a [`Directory`]'s decisions, the one the runtime and the simulator share.
//!
//! A [`Directory`] decides and returns [`Action`]s; a [`Driver`] owns the directory and carries
//! those actions out through a [`Host`]: the few effects that touch the world (spawn or stop a
//! child, send a message to a peer, answer a request, tell listeners, merge two states). The
//! bookkeeping between the two lives here and only here:
//!
//! - **Requests.** The runtime hands each start or terminate its own answer handle
//!   ([`Host::Reply`]); the driver names it with a request id for the directory and gives the
//!   handle back, once, with the directory's answer.
//! - **Messages to itself.** An [`Action::Send`] addressed to this node is delivered to the
//!   directory at once, never handed to the host (a host sees only messages for peers).
//! - **Merges.** An [`Action::Merge`] drain-stops the winning child; when it exits, its final state
//!   and the losing copy's are merged by [`Host::merge`] (the user's conflict rule) and reported
//!   with [`Directory::merged`] instead of [`Directory::exited`].
//! - **Exits.** A snapshot the child took but that was not reported yet is applied before its exit
//!   (unless the exit carries a final one, which is newer).
//!
//! The tokio runtime (`throng`'s distributed supervisor) implements [`Host`] over real actors and
//! connections; `throng-sim` implements it over its simulated nodes and network, so the simulator
//! checks the code that runs in production, not a copy of it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::directory::{
    Action, ChildEvent, DirMsg, Directory, DurableEntry, Record, SpawnError, StartError, StartSpec,
    StopReason, Version,
};
use crate::{ExitClass, NodeId};

/// The effects a [`Driver`] asks of the runtime. Every method is called synchronously, from the
/// driver's own input handlers; none may call back into the driver (report outcomes later, as new
/// inputs).
pub trait Host {
    /// How a request is answered (a channel to a local caller, a peer and a call id, ...).
    type Reply;

    /// Spawn the child of `record` on this node, from `record.snapshot` if present (else from its
    /// args); report the outcome with [`Driver::spawned`].
    fn spawn(&mut self, record: Record);

    /// Stop the local child `key` (drain-stop it for [`StopReason::Move`] and
    /// [`StopReason::Terminate`]); report its exit with [`Driver::exited`]. A child that is not
    /// running is ignored.
    fn stop(&mut self, key: &str, reason: StopReason);

    /// Send `msg` to the directory of the same supervisor on `to` (never this node). Delivery
    /// may fail; the directories reconcile when the connection is re-established.
    fn send(&mut self, to: &NodeId, msg: DirMsg);

    /// Answer a request.
    fn reply(&mut self, reply: Self::Reply, result: Result<(), StartError>);

    /// Tell listeners.
    fn event(&mut self, event: ChildEvent);

    /// The backup of the running child `key` holds its state up to `version` (or it needs no
    /// backup): see [`Action::Replicated`]. Ignored by default.
    fn replicated(&mut self, key: &str, version: Version) {
        let _ = (key, version);
    }

    /// The durable entries ([`Directory::durable`]) of `keys` may have changed: write them,
    /// coalesced (called only with [`DirConfig::durable`](crate::directory::DirConfig::durable)).
    fn touched(&mut self, keys: BTreeSet<String>);

    /// Two copies of the child `key` are about to be merged ([`Host::merge`]): `ours`, the
    /// record of the copy that runs here, and `theirs`, the other copy's; `theirs_later` tells
    /// which one's state is the newer ([`Directory::is_newer_copy`]). When `theirs_later`, this
    /// copy's states that its backup has not acknowledged may not survive the merge (the default
    /// `resolve_conflict` keeps the other state): a runtime holding replies for them fails them
    /// here. Ignored by default.
    fn merging(&mut self, key: &str, ours: &Record, theirs: &Record, theirs_later: bool) {
        let _ = (key, ours, theirs, theirs_later);
    }

    /// Merge two states of the child `key` (of type `actor_type`) that met: `ours` is the newer
    /// copy's state (the winning copy's, unless the other is a later version of the same child:
    /// [`Directory::is_newer_copy`]), `theirs` the other's. `None` keeps `ours`.
    fn merge(
        &mut self,
        key: &str,
        actor_type: &str,
        ours: Option<&[u8]>,
        theirs: Option<&[u8]>,
    ) -> Option<Vec<u8>>;
}

/// How a child ended, as the runtime reports it to [`Driver::exited`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// How it exited.
    pub class: ExitClass,
    /// The snapshot it took as it stopped cleanly, if any (the newest of its states).
    pub last: Option<Vec<u8>>,
    /// A snapshot it took earlier that was not yet reported with [`Driver::snapshot`].
    pub pending: Option<Vec<u8>>,
}

/// A mistake planted in the driver on purpose, to show that the simulator catches a shell bug.
/// Not for production use.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The driver forgets to answer every successful start.
    ForgetStartReply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Start,
    Terminate,
}

/// Owns a node's [`Directory`] of one supervisor and carries out its decisions through a
/// [`Host`]. `R` is the host's [`Host::Reply`].
pub struct Driver<R> {
    dir: Directory,
    requests: HashMap<u64, (ReqKind, R)>,
    next_req: u64,
    /// Children stopping to merge another copy's state ([`Action::Merge`]), with that copy.
    merging: HashMap<String, Record>,
    planted: Option<PlantedBug>,
}

impl<R> std::fmt::Debug for Driver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("me", self.dir.me())
            .field("requests", &self.requests.len())
            .field("merging", &self.merging.len())
            .finish_non_exhaustive()
    }
}

impl<R> Driver<R> {
    /// A driver over `dir`.
    pub fn new(dir: Directory) -> Self {
        Driver {
            dir,
            requests: HashMap::new(),
            next_req: 0,
            merging: HashMap::new(),
            planted: None,
        }
    }

    /// Plant `bug` (see [`PlantedBug`]).
    #[doc(hidden)]
    pub fn plant(&mut self, bug: PlantedBug) {
        self.planted = Some(bug);
    }

    /// The directory, to read.
    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// Requests waiting for the directory's answer.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Whether the child `key` is stopping to merge another copy into it.
    pub fn is_merging(&self, key: &str) -> bool {
        self.merging.contains_key(key)
    }

    fn request(&mut self, kind: ReqKind, reply: R) -> u64 {
        self.next_req += 1;
        self.requests.insert(self.next_req, (kind, reply));
        self.next_req
    }

    /// Start the child of `spec` (see [`Directory::start`]); the answer goes to `reply`.
    pub fn start<H: Host<Reply = R>>(&mut self, host: &mut H, spec: StartSpec, reply: R) {
        let req = self.request(ReqKind::Start, reply);
        let actions = self.dir.start(req, spec);
        self.execute(host, actions);
    }

    /// Terminate the child `key` (see [`Directory::terminate`]); the answer goes to `reply`.
    pub fn terminate<H: Host<Reply = R>>(&mut self, host: &mut H, key: &str, reply: R) {
        let req = self.request(ReqKind::Terminate, reply);
        let actions = self.dir.terminate(req, key);
        self.execute(host, actions);
    }

    /// Keep what a previous run of this node kept on disk, read at its start, until
    /// [`Driver::recover`] (see [`Directory::preload`]).
    pub fn preload(&mut self, entries: impl IntoIterator<Item = (String, DurableEntry)>) {
        self.dir.preload(entries);
    }

    /// Take back what a previous run of this node kept on disk (`entries`, and what
    /// [`Driver::preload`] kept; see [`Directory::recover`]).
    pub fn recover<H: Host<Reply = R>>(
        &mut self,
        host: &mut H,
        entries: impl IntoIterator<Item = (String, DurableEntry)>,
    ) {
        let actions = self.dir.recover(entries);
        self.execute(host, actions);
    }

    /// This node leaves: hand every child off (see [`Directory::leave`]).
    pub fn leave<H: Host<Reply = R>>(&mut self, host: &mut H) {
        let actions = self.dir.leave();
        self.execute(host, actions);
    }

    /// The outcome of a [`Host::spawn`].
    pub fn spawned<H: Host<Reply = R>>(
        &mut self,
        host: &mut H,
        key: &str,
        result: Result<(), SpawnError>,
    ) {
        let actions = self.dir.spawned(key, result);
        self.execute(host, actions);
    }

    /// The running child `key` took a snapshot.
    pub fn snapshot<H: Host<Reply = R>>(&mut self, host: &mut H, key: &str, snapshot: Vec<u8>) {
        let actions = self.dir.snapshot(key, snapshot);
        self.execute(host, actions);
    }

    /// The local child `key` exited (`now`: the driver's clock, for restart intensity).
    pub fn exited<H: Host<Reply = R>>(
        &mut self,
        host: &mut H,
        key: &str,
        exit: Exit,
        now: Duration,
    ) {
        let Exit {
            class,
            last,
            pending,
        } = exit;
        let mut actions = Vec::new();
        if let (Some(p), true) = (pending, last.is_none()) {
            actions.extend(self.dir.snapshot(key, p));
        }
        if let Some(theirs) = self.merging.remove(key) {
            // A conflict: the winner (this copy) stopped; merge the loser's state in.
            let ours = last.or_else(|| {
                self.dir
                    .owned()
                    .get(key)
                    .and_then(|o| o.record.snapshot.clone())
            });
            let later = self.dir.is_newer_copy(key, &theirs);
            if let Some(o) = self.dir.owned().get(key) {
                host.merging(key, &o.record, &theirs, later);
            }
            let (ours, theirs_state) = if later {
                (theirs.snapshot.as_deref(), ours.as_deref())
            } else {
                (ours.as_deref(), theirs.snapshot.as_deref())
            };
            let merged = host.merge(key, &theirs.actor_type, ours, theirs_state);
            actions.extend(self.dir.merged(key, merged));
        } else {
            actions.extend(self.dir.exited(key, class, last, now));
        }
        self.execute(host, actions);
    }

    /// A message from the directory on `from`.
    pub fn receive<H: Host<Reply = R>>(&mut self, host: &mut H, from: &NodeId, msg: DirMsg) {
        let actions = self.dir.receive(from, msg);
        self.execute(host, actions);
    }

    /// The eligible nodes changed (see [`Directory::set_members`]).
    pub fn set_members<'a, 'b, H: Host<Reply = R>>(
        &mut self,
        host: &mut H,
        owners: impl IntoIterator<Item = &'a NodeId>,
        leaving: impl IntoIterator<Item = &'b NodeId>,
    ) {
        let actions = self.dir.set_members(owners, leaving);
        self.execute(host, actions);
    }

    /// Membership declared `node` down (see [`Directory::node_down`]).
    pub fn node_down<H: Host<Reply = R>>(&mut self, host: &mut H, node: &NodeId) {
        let actions = self.dir.node_down(node);
        self.execute(host, actions);
    }

    /// The connection to `peer` was lost and re-established (see [`Directory::reconnected`]).
    pub fn reconnected<H: Host<Reply = R>>(&mut self, host: &mut H, peer: &NodeId) {
        let actions = self.dir.reconnected(peer);
        self.execute(host, actions);
    }

    /// The connection to `peer` closed (see [`Directory::disconnected`]).
    pub fn disconnected<H: Host<Reply = R>>(&mut self, host: &mut H, peer: &NodeId) {
        let actions = self.dir.disconnected(peer);
        self.execute(host, actions);
    }

    fn execute<H: Host<Reply = R>>(&mut self, host: &mut H, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn(record) => host.spawn(record),
                Action::Merge { key, theirs } => {
                    host.stop(&key, StopReason::Move);
                    self.merging.insert(key, theirs);
                }
                Action::Stop { key, reason } => host.stop(&key, reason),
                Action::Send { to, msg } => {
                    if &to == self.dir.me() {
                        let me = to;
                        queue.extend(self.dir.receive(&me, msg));
                    } else {
                        host.send(&to, msg);
                    }
                }
                Action::Reply { req, result } => {
                    if let Some((kind, reply)) = self.requests.remove(&req) {
                        let forget = self.planted == Some(PlantedBug::ForgetStartReply)
                            && kind == ReqKind::Start
                            && result.is_ok();
                        if !forget {
                            host.reply(reply, result);
                        }
                    }
                }
                Action::Event(event) => host.event(event),
                Action::Replicated { key, version } => host.replicated(&key, version),
            }
        }
        if self.dir.touched_len() > 0 {
            host.touched(self.dir.take_touched());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::DirConfig;
    use crate::RestartPolicy;

    #[derive(Default)]
    struct Log {
        spawned: Vec<String>,
        stopped: Vec<(String, StopReason)>,
        sent: Vec<(NodeId, DirMsg)>,
        replies: Vec<(u32, Result<(), StartError>)>,
        events: Vec<ChildEvent>,
        merges: usize,
    }

    impl Host for Log {
        type Reply = u32;
        fn spawn(&mut self, record: Record) {
            self.spawned.push(record.key);
        }
        fn stop(&mut self, key: &str, reason: StopReason) {
            self.stopped.push((key.to_owned(), reason));
        }
        fn send(&mut self, to: &NodeId, msg: DirMsg) {
            self.sent.push((to.clone(), msg));
        }
        fn reply(&mut self, reply: u32, result: Result<(), StartError>) {
            self.replies.push((reply, result));
        }
        fn event(&mut self, event: ChildEvent) {
            self.events.push(event);
        }
        fn touched(&mut self, _keys: BTreeSet<String>) {}
        fn merge(
            &mut self,
            _key: &str,
            _actor_type: &str,
            ours: Option<&[u8]>,
            theirs: Option<&[u8]>,
        ) -> Option<Vec<u8>> {
            self.merges += 1;
            let max = ours.into_iter().chain(theirs).max()?;
            Some(max.to_vec())
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn spec(key: &str) -> StartSpec {
        StartSpec {
            key: key.into(),
            actor_type: "counter".into(),
            args: Vec::new(),
            policy: RestartPolicy::Permanent,
        }
    }

    fn alone() -> Driver<u32> {
        let mut d = Driver::new(Directory::new(DirConfig::new(id("a"))));
        let mut log = Log::default();
        d.set_members(&mut log, [&id("a")], []);
        d
    }

    #[test]
    fn a_start_is_answered_once_with_the_callers_handle() {
        let mut d = alone();
        let mut log = Log::default();
        d.start(&mut log, spec("k"), 7);
        assert_eq!(log.spawned, vec!["k".to_string()]);
        assert!(log.replies.is_empty(), "answered before the child runs");
        d.spawned(&mut log, "k", Ok(()));
        assert_eq!(log.replies, vec![(7, Ok(()))]);
        assert_eq!(d.pending_requests(), 0);
    }

    #[test]
    fn a_planted_forgotten_reply_leaves_the_caller_waiting() {
        let mut d = alone();
        d.plant(PlantedBug::ForgetStartReply);
        let mut log = Log::default();
        d.start(&mut log, spec("k"), 7);
        d.spawned(&mut log, "k", Ok(()));
        assert!(log.replies.is_empty());
    }

    #[test]
    fn a_pending_snapshot_is_applied_before_the_exit_unless_a_final_one_came() {
        let mut d = alone();
        let mut log = Log::default();
        d.start(&mut log, spec("k"), 1);
        d.spawned(&mut log, "k", Ok(()));
        d.exited(
            &mut log,
            "k",
            Exit {
                class: ExitClass::Abnormal,
                last: None,
                pending: Some(vec![4]),
            },
            Duration::from_secs(1),
        );
        let owned = d.directory().owned().get("k").expect("restarted");
        assert_eq!(owned.record.snapshot, Some(vec![4]));
        assert_eq!(log.spawned.last().map(String::as_str), Some("k"));
    }
}
