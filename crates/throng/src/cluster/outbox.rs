//! A peer's outgoing queues: frames encoded by their senders, straight into the bytes the writer
//! seals and writes.
//!
//! A sender (an `ActorRef::cast`, a call, an actor's task replying) encodes its frame in place at
//! the end of a lane's buffer, under a short lock: no frame value is built, no message body is
//! encoded into a buffer of its own, nothing is allocated once the buffers have grown, and the
//! writer is woken only when a lane goes from empty to non-empty. The writer takes both buffers
//! whole (swapping in its spent ones) and packs them into sealed records, control first. A stream
//! of casts thus costs the writer one wake-up, one seal and one write per batch, not per message.
//!
//! Two lanes: *control* (replies, monitors, downs) and *data* (requests, directory and registry
//! traffic). The writer drains control first, and between the pieces of a large frame, so that
//! replies are never stuck behind a long transfer. Each lane is bounded in frames and in bytes;
//! a lane that is empty always takes one frame (so a frame as large as the frame limit can go).
//! Data senders wait for room (backpressure); control senders that must not wait get
//! [`PushError::Full`].
//!
//! Routes: a remote actor reference binds its (export name, actor type) to a small number on the
//! link once ([`Outbox::bind`], a [`Frame::Bind`] queued on the data lane), and its casts then
//! carry that number instead of the name and type ([`Frame::Cast`]): fewer bytes to encode, seal
//! and decode, and no name lookup per message on the receiver. Numbers are never reused on a link
//! (at most [`MAX_ROUTES`] and [`MAX_ROUTE_BYTES`] of names; beyond, casts carry names). A new connection starts with the bindings
//! whose frames the writer already took, so the receiver's table matches every frame still queued.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::wire::{self, Frame, FRAME_PREFIX, MAX_ROUTES, MAX_ROUTE_BYTES};

/// Which queue a frame goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Replies, monitors and downs: drained first.
    Control,
    /// Requests and the rest.
    Data,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PushError {
    /// The lane is at its bound (only from [`Outbox::try_push`]).
    Full,
    /// The peer's link is gone.
    Closed,
    /// The frame's encoding is over the frame limit.
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The message could not be encoded.
    Codec(String),
}

/// Bounds of the two lanes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Frames queued on the control lane.
    pub control_frames: usize,
    /// Frames queued on the data lane.
    pub data_frames: usize,
    /// Bytes queued per lane (a lane that is empty takes one frame of any allowed size).
    pub lane_bytes: usize,
    /// The node's frame limit: a frame's encoding with its length prefix and the record's seal
    /// must fit in it.
    pub max_frame: usize,
}

/// Bytes a frame needs in a record beside its encoding: its length prefix, and the seal of a
/// record holding it alone.
pub(super) const FRAME_OVERHEAD: usize = FRAME_PREFIX + wire::SEAL_OVERHEAD;

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    frames: usize,
    /// Senders waiting for room: while there are any, senders that do not wait are refused
    /// (`Full`), so a busy producer cannot starve them.
    waiters: usize,
}

struct State {
    control: Queue,
    data: Queue,
    closed: bool,
    /// Route numbers by (export name, actor type).
    /// (Keyed by name, then type, so that a lookup borrows the name instead of copying it.)
    routes: HashMap<String, Vec<(&'static str, u32)>>,
    /// The bound routes, by number.
    bound: Vec<(String, &'static str)>,
    /// How many of `bound` had their `Bind` frames taken by the writer.
    binds_taken: usize,
    /// Bytes of names and types in `bound`.
    bound_bytes: usize,
}

/// The outgoing queues of one peer; see the module documentation.
pub(super) struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when a lane goes from empty to non-empty.
    ready: Notify,
    /// Wakes senders waiting for room (in either lane).
    room: Notify,
    limits: Limits,
}

/// Takes a frame's partial encoding back out of its lane unless forgotten: on an error return, and
/// when a message's `Serialize` panics (the lane then holds whole frames only).
struct Rollback<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.start);
    }
}

/// A sender registered as waiting for room in a lane, for as long as this lives (also when its
/// future is dropped mid-wait).
struct Waiting<'a> {
    outbox: &'a Outbox,
    lane: Lane,
}

impl<'a> Waiting<'a> {
    fn register(outbox: &'a Outbox, lane: Lane) -> Self {
        outbox.lock().queue(lane).waiters += 1;
        Waiting { outbox, lane }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.outbox.lock();
        let queue = state.queue(self.lane);
        queue.waiters -= 1;
    }
}

impl State {
    fn queue(&mut self, lane: Lane) -> &mut Queue {
        match lane {
            Lane::Control => &mut self.control,
            Lane::Data => &mut self.data,
        }
    }
}

/// Capacity a lane's buffer keeps between batches: enough for the usual batch without growing
/// again, little for a link that goes idle after a burst.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Outbox {
    pub(super) fn new(limits: Limits) -> Self {
        Outbox {
            state: Mutex::new(State {
                control: Queue::default(),
                data: Queue::default(),
                closed: false,
                routes: HashMap::new(),
                bound: Vec::new(),
                binds_taken: 0,
                bound_bytes: 0,
            }),
            ready: Notify::new(),
            room: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections append bytes or swap buffers; a poisoned lock (a message's `Serialize`
        // panicked while encoding) still guards whole frames: the partial encoding is rolled back
        // as the panic unwinds (see `Rollback`).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue one frame that `encode` appends to the lane's buffer, unless the lane is full.
    /// `encode` runs under the outbox's lock: it must not send to this peer.
    pub(super) fn try_push<F>(&self, lane: Lane, encode: F) -> Result<(), PushError>
    where
        F: FnOnce(&mut Vec<u8>) -> Result<(), String>,
    {
        self.push_now(lane, encode, false)
    }

    /// [`Outbox::try_push`]; `waiter`: the caller is one of the lane's registered waiters.
    fn push_now<F>(&self, lane: Lane, encode: F, waiter: bool) -> Result<(), PushError>
    where
        F: FnOnce(&mut Vec<u8>) -> Result<(), String>,
    {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        let was_idle = state.control.frames == 0 && state.data.frames == 0;
        let (queue, max_frames) = match lane {
            Lane::Control => (&mut state.control, self.limits.control_frames),
            Lane::Data => (&mut state.data, self.limits.data_frames),
        };
        let full = queue.frames > 0
            && (queue.frames >= max_frames || queue.bytes.len() >= self.limits.lane_bytes);
        if full || (!waiter && queue.waiters > 0) {
            return Err(PushError::Full);
        }
        let start = queue.bytes.len();
        let rollback = Rollback {
            buf: &mut queue.bytes,
            start,
        };
        rollback.buf.extend_from_slice(&[0; FRAME_PREFIX]);
        encode(rollback.buf).map_err(PushError::Codec)?;
        let size = rollback.buf.len() - start - FRAME_PREFIX;
        if size + FRAME_OVERHEAD > self.limits.max_frame {
            return Err(PushError::TooLarge {
                size: size + FRAME_OVERHEAD,
                max: self.limits.max_frame,
            });
        }
        std::mem::forget(rollback);
        queue.bytes[start..start + FRAME_PREFIX].copy_from_slice(&(size as u32).to_le_bytes());
        queue.frames += 1;
        drop(state);
        if was_idle {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The route number of export `to` of type `actor_type` on this link, bound now if it is not
    /// yet (its `Bind` frame queued on the data lane, beyond the lane's bounds: a link binds at
    /// most [`MAX_ROUTES`]). `None` when the link has bound all it may, or is closed.
    pub(super) fn bind(&self, to: &str, actor_type: &'static str) -> Option<u32> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let known = state
            .routes
            .get(to)
            .and_then(|types| types.iter().find(|(t, _)| *t == actor_type));
        if let Some((_, route)) = known {
            return Some(*route);
        }
        let bytes = to.len() + actor_type.len();
        // A binding must fit in a frame (with room for its other fields).
        if state.bound_bytes + bytes > MAX_ROUTE_BYTES
            || bytes + 32 + FRAME_OVERHEAD > self.limits.max_frame
        {
            return None;
        }
        let route = u32::try_from(state.bound.len())
            .ok()
            .filter(|r| *r < MAX_ROUTES)?;
        state.bound_bytes += bytes;
        let bind = Frame::Bind {
            route,
            to: to.to_owned(),
            actor_type: actor_type.to_owned(),
        };
        let was_idle = state.control.frames == 0 && state.data.frames == 0;
        wire::push_frame(&mut state.data.bytes, &bind);
        state.data.frames += 1;
        state
            .routes
            .entry(to.to_owned())
            .or_default()
            .push((actor_type, route));
        state.bound.push((to.to_owned(), actor_type));
        drop(state);
        if was_idle {
            self.ready.notify_one();
        }
        Some(route)
    }

    /// Append, in lane format, the `Bind` frames the writer already took: what a new connection
    /// starts with.
    pub(super) fn rebinds(&self, out: &mut Vec<u8>) {
        let state = self.lock();
        for (route, (to, actor_type)) in state.bound[..state.binds_taken].iter().enumerate() {
            wire::push_frame(
                out,
                &Frame::Bind {
                    route: route as u32,
                    to: to.clone(),
                    actor_type: (*actor_type).to_owned(),
                },
            );
        }
    }

    /// Queue one frame, waiting for room in the lane (backpressure). Senders that wait are not
    /// overtaken by senders that do not (see [`Queue::waiters`]).
    pub(super) async fn push<F>(&self, lane: Lane, mut encode: F) -> Result<(), PushError>
    where
        F: FnMut(&mut Vec<u8>) -> Result<(), String>,
    {
        match self.push_now(lane, &mut encode, false) {
            Err(PushError::Full) => {}
            other => return other,
        }
        let _waiting = Waiting::register(self, lane);
        loop {
            // Registered before trying, so that room made between the try and the wait is seen.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push_now(lane, &mut encode, true) {
                Err(PushError::Full) => room.await,
                other => return other,
            }
        }
    }

    /// Move everything queued into `control` and `data` (which the writer passes empty) and wake
    /// the senders waiting for room. Returns whether anything was taken.
    pub(super) fn take(&self, control: &mut Vec<u8>, data: &mut Vec<u8>) -> bool {
        let mut state = self.lock();
        let taken = state.control.frames + state.data.frames > 0;
        std::mem::swap(&mut state.control.bytes, control);
        std::mem::swap(&mut state.data.bytes, data);
        state.control.frames = 0;
        state.data.frames = 0;
        state.binds_taken = state.bound.len();
        drop(state);
        if taken {
            self.room.notify_waiters();
        }
        taken
    }

    /// Move the queued control frames only into `control` (passed empty).
    pub(super) fn take_control(&self, control: &mut Vec<u8>) {
        let mut state = self.lock();
        std::mem::swap(&mut state.control.bytes, control);
        let taken = state.control.frames > 0;
        state.control.frames = 0;
        drop(state);
        if taken {
            self.room.notify_waiters();
        }
    }

    /// Give back a buffer the writer is done with, emptied, to be swapped in at the next take
    /// (its capacity is kept unless it grew unusually large).
    pub(super) fn recycle(buf: &mut Vec<u8>) {
        buf.clear();
        if buf.capacity() > KEEP_CAPACITY {
            buf.shrink_to(KEEP_CAPACITY);
        }
    }

    /// Wait until a lane may have become non-empty.
    pub(super) async fn ready(&self) {
        self.ready.notified().await
    }

    /// Refuse all frames from now on, drop the queued ones and wake everyone waiting.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for lane in [Lane::Control, Lane::Data] {
            let queue = state.queue(lane);
            queue.bytes = Vec::new();
            queue.frames = 0;
        }
        drop(state);
        self.room.notify_waiters();
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            control_frames: 2,
            data_frames: 3,
            lane_bytes: 64,
            max_frame: 40 + FRAME_OVERHEAD,
        }
    }

    fn bytes(n: usize) -> impl FnMut(&mut Vec<u8>) -> Result<(), String> {
        move |b: &mut Vec<u8>| {
            b.extend(std::iter::repeat_n(7u8, n));
            Ok(())
        }
    }

    /// The sizes of the frames in a taken buffer.
    fn frames(buf: &[u8]) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut rest = buf;
        while rest.len() >= FRAME_PREFIX {
            let len = u32::from_le_bytes(rest[..FRAME_PREFIX].try_into().unwrap()) as usize;
            sizes.push(len);
            rest = &rest[FRAME_PREFIX + len..];
        }
        assert!(rest.is_empty());
        sizes
    }

    #[test]
    fn lanes_are_bounded_in_frames_and_bytes_and_an_empty_lane_takes_one_frame() {
        let out = Outbox::new(limits());
        for _ in 0..3 {
            out.try_push(Lane::Data, bytes(1)).unwrap();
        }
        assert_eq!(out.try_push(Lane::Data, bytes(1)), Err(PushError::Full));
        // The control lane is separate.
        out.try_push(Lane::Control, bytes(40)).unwrap();
        out.try_push(Lane::Control, bytes(40)).unwrap();
        assert_eq!(out.try_push(Lane::Control, bytes(1)), Err(PushError::Full));
        let (mut c, mut d) = (Vec::new(), Vec::new());
        assert!(out.take(&mut c, &mut d));
        assert_eq!(frames(&c), vec![40, 40]);
        assert_eq!(frames(&d), vec![1, 1, 1]);
        // Bytes: a lane over its byte bound is full even below its frame bound.
        out.try_push(Lane::Data, bytes(40)).unwrap();
        out.try_push(Lane::Data, bytes(30)).unwrap();
        assert_eq!(out.try_push(Lane::Data, bytes(1)), Err(PushError::Full));
        let (mut c, mut d) = (Vec::new(), Vec::new());
        assert!(out.take(&mut c, &mut d));
        assert_eq!(frames(&d), vec![40, 30]);
        assert!(!out.take(&mut c, &mut d), "nothing left after a take");
    }

    #[test]
    fn oversized_and_unencodable_frames_are_refused_and_leave_nothing() {
        let out = Outbox::new(limits());
        out.try_push(Lane::Data, bytes(2)).unwrap();
        assert_eq!(
            out.try_push(Lane::Data, bytes(41)),
            Err(PushError::TooLarge {
                size: 41 + FRAME_OVERHEAD,
                max: 40 + FRAME_OVERHEAD
            })
        );
        assert_eq!(
            out.try_push(Lane::Data, |b: &mut Vec<u8>| {
                b.push(1);
                Err("no".to_string())
            }),
            Err(PushError::Codec("no".into()))
        );
        let (mut c, mut d) = (Vec::new(), Vec::new());
        out.take(&mut c, &mut d);
        assert!(c.is_empty());
        assert_eq!(frames(&d), vec![2]);
    }

    #[test]
    fn a_closed_outbox_refuses_and_drops_what_it_held() {
        let out = Outbox::new(limits());
        out.try_push(Lane::Data, bytes(2)).unwrap();
        out.close();
        assert_eq!(
            out.try_push(Lane::Control, bytes(1)),
            Err(PushError::Closed)
        );
        let (mut c, mut d) = (Vec::new(), Vec::new());
        assert!(!out.take(&mut c, &mut d));
        assert!(d.is_empty());
    }

    fn binds(buf: &[u8]) -> Vec<(u32, String)> {
        wire::frames(buf)
            .filter_map(|f| match f.unwrap() {
                wire::FrameRef::Bind { route, to, .. } => Some((route, to.to_owned())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn routes_are_bound_once_in_lane_order_and_replayed_once_taken() {
        let out = Outbox::new(limits());
        assert_eq!(out.bind("a", "T"), Some(0));
        assert_eq!(out.bind("a", "T"), Some(0));
        assert_eq!(out.bind("a", "U"), Some(1), "another type is another route");
        // Nothing taken yet: a new connection has nothing to replay (the binds are queued).
        let mut replay = Vec::new();
        out.rebinds(&mut replay);
        assert!(replay.is_empty());
        let (mut c, mut d) = (Vec::new(), Vec::new());
        out.take(&mut c, &mut d);
        assert_eq!(binds(&d), vec![(0, "a".into()), (1, "a".into())]);
        assert_eq!(out.bind("b", "T"), Some(2));
        out.rebinds(&mut replay);
        assert_eq!(binds(&replay), vec![(0, "a".into()), (1, "a".into())]);
        // Binds go beyond the lane's bounds: a full lane still binds.
        for _ in 0..3 {
            let _ = out.try_push(Lane::Data, bytes(1));
        }
        assert_eq!(out.bind("c", "T"), Some(3));
        out.close();
        assert_eq!(out.bind("d", "T"), None);
    }

    #[test]
    fn a_link_binds_at_most_max_routes() {
        let out = Outbox::new(limits());
        for i in 0..MAX_ROUTES {
            assert_eq!(out.bind(&i.to_string(), "T"), Some(i));
        }
        assert_eq!(out.bind("one more", "T"), None);
        assert_eq!(out.bind("0", "T"), Some(0));
        // A name too long for a frame is not bound (its casts carry it, and fail as too large).
        let small = Outbox::new(limits());
        assert_eq!(small.bind(&"n".repeat(40), "T"), None);
        assert_eq!(small.bind("n", "T"), Some(0));
        // And at most MAX_ROUTE_BYTES of names.
        let out = Outbox::new(Limits {
            max_frame: 1 << 20,
            ..limits()
        });
        let long = "n".repeat(MAX_ROUTE_BYTES / 2);
        assert_eq!(out.bind(&long, ""), Some(0));
        assert_eq!(out.bind(&format!("{long}x"), ""), None);
        assert_eq!(out.bind("short", ""), Some(1));
    }

    /// Fill `lane` of an outbox made with `limits()` to its frame bound.
    fn fill(out: &Outbox, lane: Lane) {
        let bound = match lane {
            Lane::Control => limits().control_frames,
            Lane::Data => limits().data_frames,
        };
        for _ in 0..bound {
            out.try_push(lane, bytes(1)).unwrap();
        }
    }

    /// A sender of an `n`-byte frame on `lane`, once it waits for room (registered as a waiter).
    async fn waiting_sender(
        out: &Arc<Outbox>,
        lane: Lane,
        n: usize,
    ) -> tokio::task::JoinHandle<Result<(), PushError>> {
        let sender = {
            let out = out.clone();
            tokio::spawn(async move { out.push(lane, bytes(n)).await })
        };
        until(|| out.lock().queue(lane).waiters == 1).await;
        assert!(!sender.is_finished());
        sender
    }

    /// The outcome of `sender`, which must finish within 5 s.
    async fn outcome(
        sender: tokio::task::JoinHandle<Result<(), PushError>>,
        what: &str,
    ) -> Result<(), PushError> {
        tokio::time::timeout(Duration::from_secs(5), sender)
            .await
            .unwrap_or_else(|_| panic!("sender not woken by {what}"))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_lane_makes_senders_wait_until_the_writer_takes() {
        let out = Arc::new(Outbox::new(limits()));
        fill(&out, Lane::Data);
        let sender = waiting_sender(&out, Lane::Data, 5).await;
        let (mut c, mut d) = (Vec::new(), Vec::new());
        out.take(&mut c, &mut d);
        outcome(sender, "the take").await.unwrap();
        let mut d2 = Vec::new();
        out.take(&mut c, &mut d2);
        assert_eq!(frames(&d2), vec![5]);
        // A control sender waiting for room is woken by a take of the control lane alone.
        fill(&out, Lane::Control);
        let control = waiting_sender(&out, Lane::Control, 2).await;
        let mut c = Vec::new();
        out.take_control(&mut c);
        outcome(control, "the control take").await.unwrap();
        let mut c2 = Vec::new();
        out.take_control(&mut c2);
        assert_eq!(frames(&c2), vec![2]);
        // Closing wakes a waiting sender with `Closed`.
        fill(&out, Lane::Data);
        let sender = waiting_sender(&out, Lane::Data, 5).await;
        out.close();
        assert_eq!(outcome(sender, "the close").await, Err(PushError::Closed));
    }

    #[test]
    fn a_panicking_encoder_leaves_only_whole_frames() {
        let out = Outbox::new(limits());
        out.try_push(Lane::Data, bytes(2)).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = out.try_push(Lane::Data, |b: &mut Vec<u8>| {
                b.extend_from_slice(&[9; 5]);
                panic!("a Serialize impl that panics");
            });
        }));
        assert!(panicked.is_err());
        out.try_push(Lane::Data, bytes(3)).unwrap();
        let (mut c, mut d) = (Vec::new(), Vec::new());
        out.take(&mut c, &mut d);
        assert_eq!(frames(&d), vec![2, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_waiting_for_room_is_not_overtaken_by_senders_that_do_not_wait() {
        let out = Arc::new(Outbox::new(limits()));
        fill(&out, Lane::Data);
        let waiter = waiting_sender(&out, Lane::Data, 7).await;
        // Room is made, but the waiter has not run yet: a sender that does not wait is refused.
        {
            let mut state = out.lock();
            state.data.bytes.clear();
            state.data.frames = 0;
        }
        assert_eq!(out.try_push(Lane::Data, bytes(1)), Err(PushError::Full));
        out.room.notify_waiters();
        outcome(waiter, "the notification").await.unwrap();
        assert_eq!(out.lock().data.waiters, 0);
        out.try_push(Lane::Data, bytes(1)).unwrap();
        let (mut c, mut d) = (Vec::new(), Vec::new());
        out.take(&mut c, &mut d);
        assert_eq!(frames(&d), vec![7, 1]);
        // A waiter whose future is dropped unregisters.
        fill(&out, Lane::Data);
        let dropped = waiting_sender(&out, Lane::Data, 7).await;
        dropped.abort();
        until(|| out.lock().data.waiters == 0).await;
    }

    /// Wait (≤ 5 s) until `cond` holds.
    async fn until(mut cond: impl FnMut() -> bool) {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < end, "condition not reached");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn the_writer_is_woken_when_a_lane_becomes_non_empty() {
        let out = Arc::new(Outbox::new(limits()));
        let writer = {
            let out = out.clone();
            tokio::spawn(async move {
                out.ready().await;
                let (mut c, mut d) = (Vec::new(), Vec::new());
                out.take(&mut c, &mut d);
                frames(&c)
            })
        };
        tokio::task::yield_now().await;
        out.try_push(Lane::Control, bytes(3)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("writer woken")
            .unwrap();
        assert_eq!(got, vec![3]);
    }
}
