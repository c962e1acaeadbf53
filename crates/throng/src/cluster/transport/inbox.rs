//! A connection's *inbox*: the supervisors' frames (`Start`, `Stop`, `List`, `Dir`) its reader
//! has read and the node's [`Sink`](super::Sink) has not taken yet, handed to the sink in order by a task of
//! their own.
//!
//! Why: the sink waits for room in a supervisor driver's bounded queue. When the reader waited
//! itself, every frame behind a directory message waited too — among them the replies to this
//! node's calls and the peer's requests to this node's children. During a join storm a node that
//! hands off a third of the children has a saturated driver, and its readers were held 10–15 s
//! at a time: its callers' calls timed out with the answer already read into the socket
//! (`throng-bench cluster --scenarios join-storm`). With the inbox, calls, replies, casts,
//! monitors and registry messages go on being delivered while a driver catches up; only the
//! supervisors' frames wait, in their order.
//!
//! Bound: at most [`INBOX_BYTES`] per connection, each frame counted as its payload plus
//! [`FRAME_COST`] (an empty inbox takes one frame of any size the frame limit allows). At the bound the reader
//! waits for room, as it waited for the driver before: backpressure through TCP.
//!
//! Order and loss: frames reach the sink in the order they were read. A connection that ends by
//! the peer closing it (or a read error) first hands over what its inbox holds, so a leaving
//! node's last hand-offs are not lost; a connection the node ends itself (stopped, replaced,
//! reset) drops them, as it drops what is still unread in the socket (the directories reconcile
//! on the next connection). Either way nothing of a connection reaches the sink after the link
//! reports it disconnected.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Peer, Transport};
use crate::cluster::wire::{Frame, FrameRef};

/// Bytes an inbox holds at most, each frame counted as its payload plus [`FRAME_COST`] (an
/// empty inbox takes one frame of any size the frame limit allows).
pub(super) const INBOX_BYTES: usize = 4 << 20;

/// What a queued frame is counted for besides its payload: about what it holds in memory (the
/// owned frame, its allocations' headers, the queue's slot). Directory frames are often small
/// (a join storm's are 100–300 bytes), so a bound in frames alone would be reached long before
/// the one in bytes.
pub(super) const FRAME_COST: usize = 128;

/// Frames an inbox holds at most: as many as its bytes allow.
pub(super) const INBOX_FRAMES: usize = INBOX_BYTES / FRAME_COST;

/// The reader's end of a connection's inbox.
pub(super) struct Inbox {
    tx: mpsc::Sender<(Frame, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
}

/// The task's end: frames to hand to the sink, and what it says when it has handed them all.
pub(super) struct Outlet {
    rx: mpsc::Receiver<(Frame, OwnedSemaphorePermit)>,
    /// Cancelled once every frame queued was handed over and the reader's end is gone.
    drained: CancellationToken,
}

/// A new inbox: the reader's end, the task's end, and a token cancelled when the task has
/// handed over everything queued (once the reader's end is dropped).
pub(super) fn inbox() -> (Inbox, Outlet, CancellationToken) {
    let (tx, rx) = mpsc::channel(INBOX_FRAMES);
    let drained = CancellationToken::new();
    let inbox = Inbox {
        tx,
        room: Arc::new(Semaphore::new(INBOX_BYTES)),
    };
    let outlet = Outlet {
        rx,
        drained: drained.clone(),
    };
    (inbox, outlet, drained)
}

/// Whether the sink takes `frame` through the inbox (a supervisor's frame). The registry's
/// `Names` frames are not among them: the sink handles those at once, without waiting.
pub(super) fn queued(frame: &FrameRef<'_>) -> bool {
    matches!(
        frame,
        FrameRef::Start { .. }
            | FrameRef::Stop { .. }
            | FrameRef::List { .. }
            | FrameRef::Dir { .. }
    )
}

/// What `frame` is counted for against [`INBOX_BYTES`]: its payload plus [`FRAME_COST`].
fn weight(frame: &FrameRef<'_>) -> usize {
    let len = match frame {
        FrameRef::Start { sup, record, .. } => sup.len() + record.len(),
        FrameRef::Stop { sup, key, .. } => sup.len() + key.len(),
        FrameRef::List { sup, .. } => sup.len(),
        FrameRef::Dir { sup, msg } => sup.len() + msg.len(),
        _ => 0,
    };
    (len + FRAME_COST).min(INBOX_BYTES)
}

impl Inbox {
    /// Queue a frame [`queued`] accepts, waiting for room (the caller is the reader: its
    /// waiting is the backpressure on the peer). An error means the task is gone (the
    /// connection is ending).
    pub(super) async fn push(&self, frame: FrameRef<'_>) -> Result<(), String> {
        let permits = u32::try_from(weight(&frame)).unwrap_or(u32::MAX);
        let permit = self
            .room
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| "inbox closed".to_string())?;
        self.tx
            .send((frame.into_owned(), permit))
            .await
            .map_err(|_| "inbox closed".to_string())
    }
}

/// The inbox's task: hand each frame to the sink, in order; cancel `drained` once the reader's
/// end is gone and every frame was handed over.
pub(super) async fn run(shared: std::sync::Weak<Transport>, peer: Arc<Peer>, outlet: Outlet) {
    let Outlet { mut rx, drained } = outlet;
    while let Some((frame, permit)) = rx.recv().await {
        let sink = shared.upgrade().and_then(|s| s.sink());
        if let (Some(sink), Some(f)) = (sink, borrowed(&frame)) {
            sink.frame(&peer, f).await;
        }
        drop(permit);
    }
    drained.cancel();
}

/// `frame` as the sink takes it (the frames [`queued`] accepts; `None` for any other).
fn borrowed(frame: &Frame) -> Option<FrameRef<'_>> {
    Some(match frame {
        Frame::Start { id, sup, record } => FrameRef::Start {
            id: *id,
            sup,
            record,
        },
        Frame::Stop { id, sup, key } => FrameRef::Stop { id: *id, sup, key },
        Frame::List { id, sup } => FrameRef::List { id: *id, sup },
        Frame::Dir { sup, msg } => FrameRef::Dir { sup, msg },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Sink;
    use super::*;
    use std::time::Duration;
    use throng_core::{Incarnation, NodeId, RingConfig};

    #[test]
    fn supervisor_frames_go_through_the_inbox_and_come_back_as_they_were() {
        let frames = [
            Frame::Start {
                id: 1,
                sup: "s".into(),
                record: vec![1, 2],
            },
            Frame::Stop {
                id: 2,
                sup: "s".into(),
                key: "k".into(),
            },
            Frame::List {
                id: 3,
                sup: "s".into(),
            },
            Frame::Dir {
                sup: "s".into(),
                msg: vec![9; 10],
            },
        ];
        for f in &frames {
            let r = borrowed(f).expect("a supervisor's frame");
            assert!(queued(&r));
            assert_eq!(&r.into_owned(), f);
        }
        assert_eq!(weight(&borrowed(&frames[3]).unwrap()), 11 + FRAME_COST);
        let names = Frame::Names { msg: vec![1] };
        assert!(borrowed(&names).is_none());
        assert!(!queued(&FrameRef::Names { msg: &[1] }));
    }

    #[tokio::test]
    async fn the_inbox_holds_at_most_its_bytes_and_hands_frames_over_in_order() {
        let (inbox, mut outlet, _drained) = inbox();
        let big = vec![0u8; INBOX_BYTES - FRAME_COST - 1];
        inbox
            .push(FrameRef::Dir {
                sup: "s",
                msg: &big,
            })
            .await
            .unwrap();
        // Full in bytes: the next frame waits until the first is taken.
        let next = inbox.push(FrameRef::Dir {
            sup: "s",
            msg: &[7],
        });
        tokio::pin!(next);
        assert!(futures_util::poll!(&mut next).is_pending());
        let (first, permit) = outlet.rx.recv().await.unwrap();
        assert!(matches!(first, Frame::Dir { ref msg, .. } if msg.len() == big.len()));
        drop(permit);
        next.await.unwrap();
        let (second, _) = outlet.rx.recv().await.unwrap();
        assert!(matches!(second, Frame::Dir { ref msg, .. } if msg == &[7]));
    }

    /// A sink that records what it is handed and holds every `Dir` frame until released, as
    /// a supervisor's driver whose queue is full holds it.
    struct HeldSink {
        got: std::sync::Mutex<Vec<Frame>>,
        release: Semaphore,
    }

    impl Sink for HeldSink {
        fn frame<'a>(
            &'a self,
            _peer: &'a Arc<Peer>,
            frame: FrameRef<'a>,
        ) -> super::super::BoxFuture<'a, ()> {
            Box::pin(async move {
                let held = matches!(frame, FrameRef::Dir { .. });
                self.got.lock().unwrap().push(frame.into_owned());
                if held {
                    let _ = self.release.acquire().await.map(|p| p.forget());
                }
            })
        }
        fn reconnected<'a>(&'a self, _: &'a NodeId) -> super::super::BoxFuture<'a, ()> {
            Box::pin(async {})
        }
        fn disconnected<'a>(&'a self, _: &'a NodeId) -> super::super::BoxFuture<'a, ()> {
            Box::pin(async {})
        }
    }

    struct Echo;

    impl crate::Actor for Echo {
        type Msg = u32;
        type Reply = u32;
        async fn handle(
            &mut self,
            n: u32,
            _ctx: &mut crate::Context<Self>,
        ) -> crate::ActorResult<u32> {
            Ok(n + 1)
        }
    }

    impl crate::cluster::RemoteActor for Echo {
        const TYPE: &'static str = "test.Echo";
    }

    async fn transport(name: &str) -> Arc<Transport> {
        let opts = super::super::TransportOptions {
            max_frame: 1 << 20,
            data_queue: 64,
            control_queue: 64,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 8,
            backoff: (Duration::from_millis(20), Duration::from_millis(200)),
            security: crate::cluster::tls::Security::SharedSecret,
            backlog_frames: 64,
            backlog_bytes: 1 << 20,
        };
        let (t, listener) = Transport::bind(
            NodeId::new(name).unwrap(),
            Incarnation(1),
            "127.0.0.1:0".parse().unwrap(),
            b"inbox-test-secret",
            opts,
            RingConfig::default(),
        )
        .await
        .unwrap();
        t.listen(listener);
        t
    }

    fn dir(n: u8) -> Frame {
        Frame::Dir {
            sup: "s".into(),
            msg: vec![n],
        }
    }

    /// The join storm's timeouts: a node whose driver is behind holds a directory frame from a
    /// peer; the reply to this node's call, and the peer's call to this node, come behind it on
    /// the same connection. Both are answered while the frame is held, and the supervisors'
    /// frames still reach the sink in their order once it takes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_and_replies_are_not_held_behind_a_busy_supervisor() {
        let a = transport("a").await;
        let b = transport("b").await;
        let sink = Arc::new(HeldSink {
            got: std::sync::Mutex::new(Vec::new()),
            release: Semaphore::new(0),
        });
        let weak: std::sync::Weak<dyn Sink> = Arc::downgrade(&(sink.clone() as Arc<dyn Sink>));
        b.set_sink(weak);
        a.add_peer(b.id.clone(), b.rpc_addr);
        let on_a = crate::spawn(Echo);
        a.export_typed("echo", &on_a, false).unwrap();
        let on_b = crate::spawn(Echo);
        b.export_typed("echo", &on_b, false).unwrap();

        let to_b = a.peer(&b.id).unwrap();
        for n in 0..3 {
            to_b.send(&dir(n)).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sink.got.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no frame reached b");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // b's sink now holds the first directory frame (and will until released).
        let timeout = Duration::from_secs(3);
        let reply = b
            .remote::<Echo>(&a.id, "echo")
            .call_timeout(1, timeout)
            .await;
        assert_eq!(
            reply.ok(),
            Some(2),
            "the reply from a waited behind a held frame"
        );
        let answer = a
            .remote::<Echo>(&b.id, "echo")
            .call_timeout(5, timeout)
            .await;
        assert_eq!(
            answer.ok(),
            Some(6),
            "a's call to b waited behind a held frame"
        );

        sink.release.add_permits(3);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sink.got.lock().unwrap().len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "frames lost");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*sink.got.lock().unwrap(), vec![dir(0), dir(1), dir(2)]);
        a.stop.cancel();
        b.stop.cancel();
    }
}
