//! The simulated runtime as the driver sees it ([`SimHost`]): the effects the driver asks for,
//! recorded in order for the simulator to carry out; and the simulated children's state (a
//! counter, encoded as a snapshot).

use std::collections::BTreeSet;

use throng_core::directory::{ChildEvent, DirMsg, Record, StartError, StopReason};
use throng_core::driver::Host;
use throng_core::NodeId;

/// What a node's driver asked of its simulated runtime, in order.
pub(crate) enum Effect {
    Spawn(Record),
    Stop(String),
    Send(NodeId, DirMsg),
    Reply(u64, Result<(), StartError>),
    Event(ChildEvent),
    /// The durable entries of these keys may have changed (durable directories only).
    Touched(BTreeSet<String>),
}

/// The simulated runtime as the driver sees it ([`Host`]): it records the effects asked of it,
/// which the simulator then carries out (children spawn and stop after delays, messages travel
/// the simulated network, replies go to the waiting clients).
#[derive(Default)]
pub(crate) struct SimHost {
    pub(crate) effects: Vec<Effect>,
}

impl Host for SimHost {
    type Reply = u64;

    fn spawn(&mut self, record: Record) {
        self.effects.push(Effect::Spawn(record));
    }

    fn stop(&mut self, key: &str, _reason: StopReason) {
        self.effects.push(Effect::Stop(key.to_owned()));
    }

    fn send(&mut self, to: &NodeId, msg: DirMsg) {
        self.effects.push(Effect::Send(to.clone(), msg));
    }

    fn reply(&mut self, reply: u64, result: Result<(), StartError>) {
        self.effects.push(Effect::Reply(reply, result));
    }

    /// The node's writer writes them after a short delay ([`SimConfig::durable`]).
    ///
    /// [`SimConfig::durable`]: crate::SimConfig::durable
    fn touched(&mut self, keys: BTreeSet<String>) {
        self.effects.push(Effect::Touched(keys));
    }

    fn event(&mut self, event: ChildEvent) {
        self.effects.push(Effect::Event(event));
    }

    /// The simulated actors' conflict rule: two counters that met keep the larger.
    fn merge(
        &mut self,
        _key: &str,
        _actor_type: &str,
        ours: Option<&[u8]>,
        theirs: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let state = |s: Option<&[u8]>| s.and_then(decode).unwrap_or(0);
        Some(encode(state(ours).max(state(theirs))))
    }
}

pub(crate) fn state_of(record: &Record) -> Option<u64> {
    decode(record.snapshot.as_deref()?)
}

pub(crate) fn decode(snapshot: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = snapshot.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

pub(crate) fn encode(state: u64) -> Vec<u8> {
    state.to_le_bytes().to_vec()
}

pub(crate) fn event_kind(e: &ChildEvent) -> &'static str {
    match e {
        ChildEvent::Started { .. } => "event: started",
        ChildEvent::Restarted { .. } => "event: restarted",
        ChildEvent::Stopped { .. } => "event: stopped",
        ChildEvent::FailedOver { .. } => "event: failed over",
        ChildEvent::Adopted { .. } => "event: adopted",
        ChildEvent::Migrated { .. } => "event: migrated",
        ChildEvent::Conflict { .. } => "event: conflict",
        ChildEvent::GaveUp { .. } => "event: gave up",
    }
}

pub(crate) fn msg_kind(m: &DirMsg) -> &'static str {
    match m {
        DirMsg::Replicate { .. } => "replicate",
        DirMsg::Ack { .. } => "ack",
        DirMsg::Drop { .. } => "drop",
        DirMsg::Adopt { .. } => "adopt",
        DirMsg::Dropped { .. } => "dropped",
        DirMsg::Held { .. } => "held",
        DirMsg::Conflict { .. } => "conflict",
        DirMsg::Chase { .. } => "chase",
        DirMsg::Chased { .. } => "chased",
        DirMsg::Removed { .. } => "removed",
        DirMsg::Buried { .. } => "buried",
        DirMsg::Recovered { .. } => "recovered",
    }
}
