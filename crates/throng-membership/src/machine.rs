//! The membership state machine: foca plus everything this crate decides, with no I/O.
//!
//! Inputs are datagrams (still sealed), timer firings, resolved seed addresses and leave requests;
//! outputs are sealed datagrams to send, timers to set, and [`MembershipEvent`]s with an updated
//! member view. Randomness (foca's and the nonces') comes from RNGs handed in at construction and
//! time only enters as timer firings, so the machine can be driven by the tokio task in
//! `membership` or, deterministically, by a test or simulator.
//!
//! Besides foca's own messages, a datagram may carry a small control frame:
//!
//! - `Hello(id)` → `Welcome(id)`: discovery. foca can only announce to an identity it already
//!   knows, but a seed is just an address; a node sends `Hello` to every seed address that is not a
//!   known member, and on `Welcome` (which carries the seed's identity) asks foca to announce to it.
//!   The seed answers foca's announce with its whole member list.
//!   With multicast discovery on, the same `Hello` also goes to the multicast group every interval
//!   (jittered); a `Hello` heard on the group from a node that is not a member is answered with
//!   `Welcome` as a seed would, at most [`MAX_MULTICAST_WELCOMES`] times per interval. Only `Hello`
//!   is accepted from the group socket.
//! - `Leaving(id)` → `LeavingAck(id)`: a graceful leave. The leaving node tells each member it is
//!   leaving, re-sends until each has acknowledged or `leave_timeout` passes, and only then tells
//!   foca to leave; so a member that acknowledged has reported `NodeLeaving` before it can learn
//!   of the `NodeDown`.
//!
//! The member view is recomputed from foca's active members whenever foca reports a change, and
//! diffed against the previous one to produce events: a name whose identity changed to a new run
//! yields `NodeDown(old)` then `NodeUp(new)`, so two runs of a node are never up together.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand::rngs::StdRng;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use throng_core::NodeId;
use tracing::{debug, error, info, warn};

use crate::config::MAX_SEED_ADDRS;
use crate::identity::GossipId;
use crate::seal::{Sealer, UnsealError, NONCE_LEN};
use crate::{MemberInfo, MembershipEvent};

type Swim = Foca<GossipId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// First plaintext byte of a datagram carrying a foca message.
const KIND_FOCA: u8 = 0;
/// First plaintext byte of a datagram carrying a [`Control`] frame.
const KIND_CONTROL: u8 = 1;
/// Longest pause between re-sends of `Leaving` to members that have not acknowledged it.
const MAX_LEAVE_RETRY: Duration = Duration::from_millis(200);
/// Most `Welcome`s sent in answer to multicast `Hello`s per multicast interval; the rest of the
/// senders are answered in later intervals (they keep saying `Hello`), or learn of this node
/// through foca's gossip meanwhile. Bounds what a flood of (replayed) multicast `Hello`s can
/// make this node send.
pub(crate) const MAX_MULTICAST_WELCOMES: u32 = 16;
/// Extra foca gossip rounds after leaving, so the `Down` update reaches more than foca's first
/// few random members directly (the rest learn it through gossip anyway).
const EXTRA_LEAVE_GOSSIP: usize = 2;

/// This crate's own frames (see the module docs). Each carries the sender's identity.
#[derive(Debug, Serialize, Deserialize)]
enum Control {
    Hello(GossipId),
    Welcome(GossipId),
    Leaving(GossipId),
    LeavingAck(GossipId),
}

/// A timer the machine asked for, delivered back through [`Machine::handle_tick`].
#[derive(Debug)]
pub(crate) enum Tick {
    /// One of foca's timers.
    Foca(foca::Timer<GossipId>),
    /// Re-send `Leaving` to whoever has not acknowledged it, in this leave round.
    LeaveRetry(u32),
    /// Stop waiting for acknowledgements of this leave round.
    LeaveDeadline(u32),
    /// Say `Hello` to the multicast group, and refill the budget of answers to multicast `Hello`s.
    Multicast,
}

/// An effect for the shell to carry out.
#[derive(Debug)]
pub(crate) enum Output {
    /// Send this sealed datagram.
    Send {
        /// Destination gossip address.
        to: SocketAddr,
        /// The sealed bytes.
        datagram: Vec<u8>,
    },
    /// Send this sealed datagram to the multicast group (from the gossip socket, so that answers
    /// come back to it).
    Multicast {
        /// The sealed bytes.
        datagram: Vec<u8>,
    },
    /// Call [`Machine::handle_tick`] with `tick` after `after`.
    Schedule {
        /// Delay from now.
        after: Duration,
        /// What to deliver.
        tick: Tick,
    },
}

/// Which socket a datagram came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// The gossip socket.
    Unicast,
    /// The multicast group's socket.
    Multicast,
}

/// What became of a received datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Authentic and processed.
    Accepted,
    /// Not sealed with this cluster's key (or not sealed at all).
    Refused(UnsealError),
    /// Authentic, but foca or the control decoder rejected its contents.
    Rejected,
}

/// Fixed parameters of a machine.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// foca's configuration, packet size included.
    pub(crate) foca: foca::Config,
    /// Most members in the view.
    pub(crate) max_members: usize,
    /// How long a leave round waits for acknowledgements.
    pub(crate) leave_timeout: Duration,
    /// Multicast discovery's interval, if it is on.
    pub(crate) multicast_interval: Option<Duration>,
}

#[derive(Debug)]
struct Entry {
    info: MemberInfo,
    leaving: bool,
}

#[derive(Debug)]
enum Phase {
    Running,
    /// A leave round is waiting for acknowledgements from `pending`.
    Leaving {
        round: u32,
        pending: BTreeMap<NodeId, SocketAddr>,
        then_leave: bool,
    },
    /// The others were told this node is leaving; it is still a member.
    Announced,
    /// foca has left the cluster; nothing more happens.
    Left,
}

/// See the module docs.
pub(crate) struct Machine {
    foca: Swim,
    runtime: AccumulatingRuntime<GossipId>,
    sealer: Sealer,
    nonces: StdRng,
    local: MemberInfo,
    settings: Settings,
    view: BTreeMap<NodeId, Entry>,
    /// Active members left out of the view because it is full.
    excluded: usize,
    phase: Phase,
    /// Last leave round started, and last one finished.
    round: u32,
    completed_round: u32,
    /// `Welcome`s that may still be sent in answer to multicast `Hello`s in this interval.
    multicast_budget: u32,
    /// Multicast `Hello`s left unanswered because the budget was spent.
    multicast_unanswered: u64,
    outputs: Vec<Output>,
    events: Vec<MembershipEvent>,
    view_changed: bool,
}

impl Machine {
    /// A machine for run `local`, sealing with `sealer`, with foca drawing from `foca_rng` and
    /// nonces drawn from `nonce_rng`.
    pub(crate) fn new(
        local: MemberInfo,
        settings: Settings,
        sealer: Sealer,
        foca_rng: StdRng,
        nonce_rng: StdRng,
    ) -> Self {
        let foca = Foca::new(
            GossipId::new(local.clone()),
            settings.foca.clone(),
            foca_rng,
            PostcardCodec,
        );
        Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            sealer,
            nonces: nonce_rng,
            local,
            settings,
            view: BTreeMap::new(),
            excluded: 0,
            phase: Phase::Running,
            round: 0,
            completed_round: 0,
            multicast_budget: MAX_MULTICAST_WELCOMES,
            multicast_unanswered: 0,
            outputs: Vec::new(),
            events: Vec::new(),
            view_changed: false,
        }
    }

    /// Starts the machine's own periodic work: with multicast discovery on, says `Hello` to the
    /// group now and schedules the next one. Call once, before anything else.
    pub(crate) fn start(&mut self) {
        if self.settings.multicast_interval.is_some() {
            self.multicast_round();
        }
    }

    /// Multicast `Hello`s left unanswered so far because of the rate limit.
    pub(crate) fn multicast_unanswered(&self) -> u64 {
        self.multicast_unanswered
    }

    /// The live members other than this node, with whether each announced it is leaving.
    pub(crate) fn view(&self) -> impl Iterator<Item = (&MemberInfo, bool)> {
        self.view.values().map(|e| (&e.info, e.leaving))
    }

    /// Whether the view changed since the last call.
    pub(crate) fn take_view_changed(&mut self) -> bool {
        std::mem::take(&mut self.view_changed)
    }

    /// Moves the pending outputs into `into`.
    pub(crate) fn take_outputs(&mut self, into: &mut Vec<Output>) {
        into.append(&mut self.outputs);
    }

    /// Moves the pending events into `into`.
    pub(crate) fn take_events(&mut self, into: &mut Vec<MembershipEvent>) {
        into.append(&mut self.events);
    }

    /// Active members left out of the view because it is full.
    pub(crate) fn excluded(&self) -> usize {
        self.excluded
    }

    /// The last leave round that has finished (see [`Machine::begin_leaving`]).
    pub(crate) fn completed_round(&self) -> u32 {
        self.completed_round
    }

    /// Whether this node has left the cluster.
    pub(crate) fn has_left(&self) -> bool {
        matches!(self.phase, Phase::Left)
    }

    /// Processes a datagram received from `from` on the socket `via`; it is decrypted in place.
    pub(crate) fn handle_datagram(
        &mut self,
        from: SocketAddr,
        via: Via,
        datagram: &mut [u8],
    ) -> Received {
        let plaintext = match self.sealer.unseal(datagram) {
            Ok(plaintext) => plaintext,
            Err(err) => return Received::Refused(err),
        };
        if self.has_left() {
            return Received::Accepted;
        }
        let accepted = match plaintext.split_first() {
            Some((&KIND_FOCA, _)) if via == Via::Multicast => {
                debug!(%from, "foca message on the multicast group");
                false
            }
            Some((&KIND_FOCA, body)) => match self.foca.handle_data(body, &mut self.runtime) {
                Ok(()) => true,
                Err(err) => {
                    debug!(%from, %err, "foca rejected a datagram");
                    false
                }
            },
            Some((&KIND_CONTROL, body)) => match postcard::from_bytes::<Control>(body) {
                Ok(Control::Hello(peer)) if via == Via::Multicast => {
                    self.handle_multicast_hello(from, peer);
                    true
                }
                Ok(control) if via == Via::Multicast => {
                    debug!(%from, ?control, "only Hello is expected on the multicast group");
                    false
                }
                Ok(control) => {
                    self.handle_control(from, control);
                    true
                }
                Err(err) => {
                    debug!(%from, %err, "undecodable control frame");
                    false
                }
            },
            _ => false,
        };
        self.flush_foca();
        if accepted {
            Received::Accepted
        } else {
            Received::Rejected
        }
    }

    /// Delivers a timer the machine asked for.
    pub(crate) fn handle_tick(&mut self, tick: Tick) {
        match tick {
            Tick::Foca(timer) => {
                if self.has_left() {
                    return;
                }
                if let Err(err) = self.foca.handle_timer(timer, &mut self.runtime) {
                    debug!(%err, "foca timer");
                }
                self.flush_foca();
            }
            Tick::LeaveRetry(r) => {
                if matches!(self.phase, Phase::Leaving { round, .. } if round == r) {
                    self.send_leaving();
                    self.schedule(self.leave_retry(), Tick::LeaveRetry(r));
                }
            }
            Tick::LeaveDeadline(r) => {
                if let Phase::Leaving { round, pending, .. } = &self.phase {
                    if *round == r {
                        warn!(
                            unacknowledged = ?pending.keys().collect::<Vec<_>>(),
                            "leaving without every member's acknowledgement"
                        );
                        self.finish_leave_round();
                    }
                }
            }
            Tick::Multicast => self.multicast_round(),
        }
    }

    /// One multicast round: refill the answer budget, say `Hello` to the group, schedule the next
    /// round after the interval ±20 % (drawn from the seeded RNG, so that nodes started together
    /// drift apart). Stops for good once this node is leaving.
    fn multicast_round(&mut self) {
        let Some(interval) = self.settings.multicast_interval else {
            return;
        };
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        self.multicast_budget = MAX_MULTICAST_WELCOMES;
        let hello = Control::Hello(self.foca.identity().clone());
        match postcard::to_allocvec(&hello) {
            Ok(body) => {
                if let Some(datagram) = self.seal(KIND_CONTROL, &body) {
                    self.outputs.push(Output::Multicast { datagram });
                }
            }
            Err(err) => error!(%err, "cannot encode a control frame"),
        }
        let after = jittered(interval, self.nonces.next_u64());
        self.schedule(after, Tick::Multicast);
    }

    /// A `Hello` heard on the multicast group: answered like a seed's `Hello` if the sender is
    /// not a member yet (a member's `Hello` needs no answer) and the budget allows.
    fn handle_multicast_hello(&mut self, from: SocketAddr, peer: GossipId) {
        if peer.info.id == self.local.id {
            // Our own `Hello`, looped back, unless another node uses this name.
            if peer.info != self.local {
                warn!(%from, other = ?peer.info, "another node uses this node's name");
            }
            return;
        }
        if !matches!(self.phase, Phase::Running)
            || self.foca.iter_members().any(|m| m.id().info == peer.info)
        {
            return;
        }
        if self.multicast_budget == 0 {
            self.multicast_unanswered += 1;
            debug!(%from, node = %peer.info.id, "multicast Hello left unanswered: rate limit");
            return;
        }
        self.multicast_budget -= 1;
        debug!(%from, node = %peer.info.id, "answering a multicast Hello");
        let welcome = Control::Welcome(self.foca.identity().clone());
        self.send_control(from, &welcome);
    }

    /// Says `Hello` to each of `addrs` (resolved seeds) that is neither this node nor a known member.
    pub(crate) fn announce_to(&mut self, addrs: &[SocketAddr]) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        let known: HashSet<SocketAddr> = self
            .foca
            .iter_members()
            .map(|m| m.id().info.gossip_addr)
            .collect();
        let hello = Control::Hello(self.foca.identity().clone());
        for &addr in addrs.iter().take(MAX_SEED_ADDRS) {
            if addr != self.local.gossip_addr && !known.contains(&addr) {
                self.send_control(addr, &hello);
            }
        }
    }

    /// Starts a leave round: tells every member this node is leaving and waits (bounded by
    /// `leave_timeout`) for their acknowledgements; then, if `then_leave` (or if an earlier,
    /// unfinished round asked for it), leaves the cluster. Returns the round's number, which
    /// [`Machine::completed_round`] reaches when it is over.
    pub(crate) fn begin_leaving(&mut self, then_leave: bool) -> u32 {
        let then_leave = match self.phase {
            Phase::Left => return self.round,
            Phase::Leaving { then_leave: t, .. } => then_leave || t,
            Phase::Running | Phase::Announced => then_leave,
        };
        self.round += 1;
        let round = self.round;
        let pending: BTreeMap<NodeId, SocketAddr> = self
            .foca
            .iter_members()
            .map(|m| (m.id().info.id.clone(), m.id().info.gossip_addr))
            .collect();
        info!(
            round,
            members = pending.len(),
            then_leave,
            "telling the cluster this node is leaving"
        );
        let nobody = pending.is_empty();
        self.phase = Phase::Leaving {
            round,
            pending,
            then_leave,
        };
        if nobody {
            self.finish_leave_round();
        } else {
            self.send_leaving();
            self.schedule(self.leave_retry(), Tick::LeaveRetry(round));
            self.schedule(self.settings.leave_timeout, Tick::LeaveDeadline(round));
        }
        round
    }

    fn leave_retry(&self) -> Duration {
        self.settings.foca.probe_rtt.min(MAX_LEAVE_RETRY)
    }

    fn finish_leave_round(&mut self) {
        let Phase::Leaving {
            round, then_leave, ..
        } = self.phase
        else {
            return;
        };
        self.completed_round = round;
        if !then_leave {
            self.phase = Phase::Announced;
            return;
        }
        if let Err(err) = self.foca.leave_cluster(&mut self.runtime) {
            error!(%err, "foca could not leave the cluster");
        }
        for _ in 0..EXTRA_LEAVE_GOSSIP {
            if let Err(err) = self.foca.gossip(&mut self.runtime) {
                debug!(%err, "gossip after leaving");
            }
        }
        self.phase = Phase::Left;
        self.flush_foca();
        info!("left the cluster");
    }

    fn send_leaving(&mut self) {
        let Phase::Leaving { pending, .. } = &self.phase else {
            return;
        };
        let targets: Vec<SocketAddr> = pending.values().copied().collect();
        let leaving = Control::Leaving(self.foca.identity().clone());
        for to in targets {
            self.send_control(to, &leaving);
        }
    }

    fn handle_control(&mut self, from: SocketAddr, control: Control) {
        match control {
            Control::Hello(peer) => {
                if peer.info.id == self.local.id {
                    if peer.info != self.local {
                        warn!(%from, other = ?peer.info, "another node uses this node's name");
                    }
                } else if matches!(self.phase, Phase::Running) {
                    let welcome = Control::Welcome(self.foca.identity().clone());
                    self.send_control(from, &welcome);
                }
            }
            Control::Welcome(peer) => {
                let known = self.foca.iter_members().any(|m| m.id() == &peer);
                if peer.info.id != self.local.id && !known && matches!(self.phase, Phase::Running) {
                    debug!(seed = %peer.info.id, %from, "announcing to seed");
                    if let Err(err) = self.foca.announce(peer, &mut self.runtime) {
                        debug!(%err, "announce");
                    }
                }
            }
            Control::Leaving(peer) => {
                if let Some(entry) = self.view.get_mut(&peer.info.id) {
                    if entry.info == peer.info && !entry.leaving {
                        entry.leaving = true;
                        self.view_changed = true;
                        info!(member = %peer.info.id, incarnation = %peer.info.incarnation, "member leaving");
                        self.events.push(MembershipEvent::NodeLeaving(peer.info));
                    }
                }
                let ack = Control::LeavingAck(self.foca.identity().clone());
                self.send_control(from, &ack);
            }
            Control::LeavingAck(peer) => {
                if let Phase::Leaving { pending, .. } = &mut self.phase {
                    pending.remove(&peer.info.id);
                    if pending.is_empty() {
                        self.finish_leave_round();
                    }
                }
            }
        }
    }

    /// Carries out what foca asked for during the last call into it.
    fn flush_foca(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.seal_and_send(to.info.gossip_addr, KIND_FOCA, &data);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.schedule(after, Tick::Foca(timer));
        }
        let mut members_changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(..) => members_changed = true,
                OwnedNotification::Active => info!("in contact with the cluster"),
                OwnedNotification::Idle => info!("no other member is up"),
                OwnedNotification::Rejoin(id) => {
                    warn!(
                        bump = id.bump,
                        "the cluster declared this node down; rejoined"
                    );
                    self.events
                        .push(MembershipEvent::Rejoined(self.local.clone()));
                }
                OwnedNotification::Defunct => {
                    if !self.has_left() {
                        error!("the cluster declared this node down and it cannot rejoin");
                    }
                }
            }
        }
        if members_changed {
            self.reconcile();
        }
    }

    /// Brings the view in line with foca's active members and emits the difference as events.
    fn reconcile(&mut self) {
        let active: BTreeMap<NodeId, MemberInfo> = self
            .foca
            .iter_members()
            .map(|m| (m.id().info.id.clone(), m.id().info.clone()))
            .collect();
        let mut downs = Vec::new();
        self.view.retain(|name, entry| {
            let same_run = active.get(name) == Some(&entry.info);
            if !same_run {
                downs.push(entry.info.clone());
            }
            same_run
        });
        let mut ups = Vec::new();
        let mut excluded = 0;
        for (name, info) in active {
            if self.view.contains_key(&name) {
                continue;
            }
            if self.view.len() >= self.settings.max_members {
                excluded += 1;
                continue;
            }
            ups.push(info.clone());
            self.view.insert(
                name,
                Entry {
                    info,
                    leaving: false,
                },
            );
        }
        if excluded > self.excluded {
            warn!(
                excluded,
                max_members = self.settings.max_members,
                "member view is full; further members are not reported"
            );
        }
        self.excluded = excluded;
        self.view_changed |= !downs.is_empty() || !ups.is_empty();
        for info in downs {
            info!(member = %info.id, incarnation = %info.incarnation, "member down");
            self.events.push(MembershipEvent::NodeDown(info));
        }
        for info in ups {
            info!(member = %info.id, incarnation = %info.incarnation, addr = %info.gossip_addr, "member up");
            self.events.push(MembershipEvent::NodeUp(info));
        }
    }

    fn schedule(&mut self, after: Duration, tick: Tick) {
        self.outputs.push(Output::Schedule { after, tick });
    }

    fn send_control(&mut self, to: SocketAddr, control: &Control) {
        match postcard::to_allocvec(control) {
            Ok(body) => self.seal_and_send(to, KIND_CONTROL, &body),
            Err(err) => error!(%err, "cannot encode a control frame"),
        }
    }

    fn seal_and_send(&mut self, to: SocketAddr, kind: u8, body: &[u8]) {
        if let Some(datagram) = self.seal(kind, body) {
            self.outputs.push(Output::Send { to, datagram });
        }
    }

    fn seal(&mut self, kind: u8, body: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0; NONCE_LEN];
        self.nonces.fill_bytes(&mut nonce);
        match self.sealer.seal(nonce, &[&[kind], body]) {
            Ok(datagram) => Some(datagram),
            Err(err) => {
                error!(%err, "cannot seal a datagram");
                None
            }
        }
    }
}

/// `interval` ±20 %, placed by `random` (uniform over `u64`).
fn jittered(interval: Duration, random: u64) -> Duration {
    let fifth = interval / 5;
    let span = u64::try_from(fifth.as_nanos() * 2).unwrap_or(u64::MAX);
    let offset = if span == 0 { 0 } else { random % (span + 1) };
    interval - fifth + Duration::from_nanos(offset)
}

/// Encoded size of `info`'s identity: it travels twice in every foca header, so it must fit the
/// datagram with room to spare.
pub(crate) fn identity_len(info: &MemberInfo) -> usize {
    postcard::to_allocvec(&GossipId {
        info: info.clone(),
        bump: u32::MAX,
    })
    .map_or(usize::MAX, |v| v.len())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use rand::SeedableRng;
    use throng_core::Incarnation;

    use super::*;
    use crate::config::DetectionProfile;
    use crate::seal;

    const SECRET: &[u8] = b"machine unit-test secret";
    const INTERVAL: Duration = Duration::from_millis(1000);

    fn info(name: &str, port: u16) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(name).unwrap(),
            incarnation: Incarnation(1),
            gossip_addr: SocketAddr::from(([10, 0, 0, 1], port)),
            rpc_addr: SocketAddr::from(([10, 0, 0, 1], port + 1000)),
        }
    }

    fn machine(multicast: Option<Duration>, seed: u64) -> Machine {
        let mut foca = DetectionProfile::Fast.foca_config();
        foca.max_packet_size = NonZeroUsize::new(1400 - seal::OVERHEAD - 1).unwrap();
        let settings = Settings {
            foca,
            max_members: 16,
            leave_timeout: Duration::from_secs(1),
            multicast_interval: multicast,
        };
        Machine::new(
            info("local", 1),
            settings,
            Sealer::new(SECRET),
            StdRng::seed_from_u64(seed),
            StdRng::seed_from_u64(seed + 1),
        )
    }

    fn sealed(secret: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
        Sealer::new(secret)
            .seal([7; NONCE_LEN], &[&[kind], body])
            .unwrap()
    }

    fn hello(secret: &[u8], from: &MemberInfo) -> Vec<u8> {
        let body = postcard::to_allocvec(&Control::Hello(GossipId::new(from.clone()))).unwrap();
        sealed(secret, KIND_CONTROL, &body)
    }

    fn outputs(machine: &mut Machine) -> Vec<Output> {
        let mut out = Vec::new();
        machine.take_outputs(&mut out);
        out
    }

    fn welcomes_to(outputs: &[Output]) -> Vec<SocketAddr> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    /// Whether `outputs` hold a multicast `Hello` from `local` and the next round's timer.
    fn is_multicast_round(outputs: &[Output]) -> Option<Duration> {
        let [Output::Multicast { datagram }, Output::Schedule {
            after,
            tick: Tick::Multicast,
        }] = outputs
        else {
            return None;
        };
        let mut datagram = datagram.clone();
        let plain = Sealer::new(SECRET).unseal(&mut datagram).ok()?;
        let (&KIND_CONTROL, body) = plain.split_first()? else {
            return None;
        };
        match postcard::from_bytes::<Control>(body).ok()? {
            Control::Hello(id) if id.info == info("local", 1) => Some(*after),
            _ => None,
        }
    }

    #[test]
    fn without_multicast_start_does_nothing() {
        let mut m = machine(None, 1);
        m.start();
        assert!(outputs(&mut m).is_empty());
        m.handle_tick(Tick::Multicast);
        assert!(outputs(&mut m).is_empty());
    }

    #[test]
    fn multicast_hello_at_start_and_every_jittered_interval() {
        let mut m = machine(Some(INTERVAL), 2);
        m.start();
        let mut delays = Vec::new();
        delays.push(is_multicast_round(&outputs(&mut m)).expect("hello at start"));
        for _ in 0..50 {
            m.handle_tick(Tick::Multicast);
            delays.push(is_multicast_round(&outputs(&mut m)).expect("hello every round"));
        }
        let (low, high) = (INTERVAL * 4 / 5, INTERVAL * 6 / 5);
        assert!(
            delays.iter().all(|d| (low..=high).contains(d)),
            "{delays:?}"
        );
        let distinct: HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 40, "jittered: {delays:?}");
        // Same seed, same delays: randomness is an input.
        let mut again = machine(Some(INTERVAL), 2);
        again.start();
        assert_eq!(is_multicast_round(&outputs(&mut again)), Some(delays[0]));
    }

    #[test]
    fn jitter_bounds() {
        assert_eq!(jittered(INTERVAL, 0), INTERVAL * 4 / 5);
        assert_eq!(
            jittered(INTERVAL, u64::MAX),
            INTERVAL - INTERVAL / 5 + Duration::from_nanos(u64::MAX % 400_000_001)
        );
        assert_eq!(
            jittered(Duration::from_nanos(3), 12345),
            Duration::from_nanos(3)
        );
    }

    #[test]
    fn multicast_stops_once_leaving() {
        let mut m = machine(Some(INTERVAL), 3);
        m.start();
        outputs(&mut m);
        m.begin_leaving(false);
        outputs(&mut m);
        m.handle_tick(Tick::Multicast);
        assert!(outputs(&mut m).is_empty());
    }

    #[test]
    fn multicast_hellos_are_answered_within_budget() {
        let mut m = machine(Some(INTERVAL), 4);
        m.start();
        outputs(&mut m);
        let peers: Vec<MemberInfo> = (0..MAX_MULTICAST_WELCOMES + 4)
            .map(|i| info(&format!("peer{i}"), 100 + i as u16))
            .collect();
        for peer in &peers {
            let mut d = hello(SECRET, peer);
            assert_eq!(
                m.handle_datagram(peer.gossip_addr, Via::Multicast, &mut d),
                Received::Accepted
            );
        }
        let answered = welcomes_to(&outputs(&mut m));
        let expected: Vec<SocketAddr> = peers
            .iter()
            .take(MAX_MULTICAST_WELCOMES as usize)
            .map(|p| p.gossip_addr)
            .collect();
        assert_eq!(answered, expected);
        assert_eq!(m.multicast_unanswered(), 4);

        // The next round refills the budget.
        m.handle_tick(Tick::Multicast);
        outputs(&mut m);
        let last = peers.last().unwrap();
        let mut d = hello(SECRET, last);
        m.handle_datagram(last.gossip_addr, Via::Multicast, &mut d);
        assert_eq!(welcomes_to(&outputs(&mut m)), [last.gossip_addr]);
    }

    #[test]
    fn own_and_foreign_multicast_hellos_are_not_answered() {
        let mut m = machine(Some(INTERVAL), 5);
        m.start();
        outputs(&mut m);
        // Our own Hello, looped back.
        let mut d = hello(SECRET, &info("local", 1));
        assert_eq!(
            m.handle_datagram(info("local", 1).gossip_addr, Via::Multicast, &mut d),
            Received::Accepted
        );
        // Another cluster's Hello.
        let stranger = info("stranger", 9);
        let mut d = hello(b"some other cluster secret", &stranger);
        assert!(matches!(
            m.handle_datagram(stranger.gossip_addr, Via::Multicast, &mut d),
            Received::Refused(_)
        ));
        assert!(welcomes_to(&outputs(&mut m)).is_empty());
    }

    #[test]
    fn only_hello_is_taken_from_the_group() {
        let mut m = machine(Some(INTERVAL), 6);
        m.start();
        outputs(&mut m);
        let peer = info("peer", 2);
        let welcome =
            postcard::to_allocvec(&Control::Welcome(GossipId::new(peer.clone()))).unwrap();
        let mut d = sealed(SECRET, KIND_CONTROL, &welcome);
        assert_eq!(
            m.handle_datagram(peer.gossip_addr, Via::Multicast, &mut d),
            Received::Rejected
        );
        let mut d = sealed(SECRET, KIND_FOCA, b"whatever");
        assert_eq!(
            m.handle_datagram(peer.gossip_addr, Via::Multicast, &mut d),
            Received::Rejected
        );
        assert!(
            outputs(&mut m).is_empty(),
            "no announce from a multicast Welcome"
        );
        // The same Welcome on the gossip socket makes foca announce.
        let mut d = sealed(SECRET, KIND_CONTROL, &welcome);
        m.handle_datagram(peer.gossip_addr, Via::Unicast, &mut d);
        assert_eq!(welcomes_to(&outputs(&mut m)), [peer.gossip_addr]);
    }
}
