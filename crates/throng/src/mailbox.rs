//! The bounded mailbox of one actor.
//!
//! Why not a channel crate: an idle actor must cost well under a kilobyte, and the mailbox is most of
//! that. `tokio::sync::mpsc` allocates a 32-slot block up front (over 1 KB with its cache-padded
//! state), and flume allocates a waiter hook per idle receiver. This mailbox is one allocation that
//! stays empty while idle. Owning it also gives the runtime what handoff needs: close it atomically and
//! take every queued message, and wake the actor for out-of-band signals without a second channel.
//!
//! Single consumer (the actor's run loop), many producers. Senders wait for room when it is full
//! (backpressure); the receiver wakes waiting senders when it makes room.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

struct Inner<T> {
    queue: VecDeque<T>,
    receiver: Option<Waker>,
    /// Senders waiting for room; woken all at once when room appears (rare: only under
    /// backpressure), so a sender that gives up cannot strand the others.
    senders: Vec<Waker>,
    /// Set by [`Mailbox::signal`]; makes a waiting `recv` return [`Recv::Signal`].
    signalled: bool,
    closed: bool,
}

/// What [`Mailbox::recv`] returns.
pub(crate) enum Recv<T> {
    Msg(T),
    Signal,
    Closed,
}

/// Why a send failed; the item is handed back.
pub(crate) enum SendFailure<T> {
    Full(T),
    Closed(T),
}

pub(crate) struct Mailbox<T> {
    capacity: usize,
    inner: Mutex<Inner<T>>,
}

impl<T> Mailbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                receiver: None,
                senders: Vec::new(),
                signalled: false,
                closed: false,
            }),
        }
    }

    /// No user code runs under this lock (items are moved, never dropped, inside it), so a poisoned
    /// lock still guards a consistent queue.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub(crate) fn try_send(&self, item: T) -> Result<(), SendFailure<T>> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(SendFailure::Closed(item));
        }
        if inner.queue.len() >= self.capacity {
            return Err(SendFailure::Full(item));
        }
        inner.queue.push_back(item);
        let waker = inner.receiver.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Send, waiting for room. Err hands the item back if the mailbox is (or gets) closed.
    pub(crate) async fn send(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        poll_fn(|cx| {
            let mut inner = self.lock();
            let Some(it) = item.take() else {
                return Poll::Ready(Ok(()));
            };
            if inner.closed {
                return Poll::Ready(Err(it));
            }
            if inner.queue.len() < self.capacity {
                inner.queue.push_back(it);
                let waker = inner.receiver.take();
                drop(inner);
                if let Some(w) = waker {
                    w.wake();
                }
                return Poll::Ready(Ok(()));
            }
            item = Some(it);
            if !inner.senders.iter().any(|w| w.will_wake(cx.waker())) {
                inner.senders.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Receive the next item, or a pending signal, or learn that the mailbox is closed.
    pub(crate) async fn recv(&self) -> Recv<T> {
        poll_fn(|cx| {
            let mut inner = self.lock();
            if std::mem::take(&mut inner.signalled) {
                return Poll::Ready(Recv::Signal);
            }
            if let Some(item) = inner.queue.pop_front() {
                let senders = std::mem::take(&mut inner.senders);
                drop(inner);
                senders.into_iter().for_each(Waker::wake);
                return Poll::Ready(Recv::Msg(item));
            }
            if inner.closed {
                return Poll::Ready(Recv::Closed);
            }
            match &inner.receiver {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inner.receiver = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Make a waiting (or the next) `recv` return [`Recv::Signal`].
    pub(crate) fn signal(&self) {
        let mut inner = self.lock();
        inner.signalled = true;
        let waker = inner.receiver.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Close the mailbox and take what was queued. Later sends fail; waiting senders are woken to
    /// learn it.
    /// Refuse new items but keep the queued ones: the receiver gets them, then `Closed`. This is
    /// how an actor is drained before it moves: everything accepted is handled, nothing after.
    pub(crate) fn seal(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let senders = std::mem::take(&mut inner.senders);
        let waker = inner.receiver.take();
        drop(inner);
        senders.into_iter().for_each(Waker::wake);
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn close(&self) -> VecDeque<T> {
        let mut inner = self.lock();
        inner.closed = true;
        let queued = std::mem::take(&mut inner.queue);
        let senders = std::mem::take(&mut inner.senders);
        drop(inner);
        senders.into_iter().for_each(Waker::wake);
        queued
    }
}

/// The type-erased part of a mailbox that the actor's cell needs: waking it for a signal.
pub(crate) trait Signal: Send + Sync {
    fn signal(&self);
    /// See [`Mailbox::seal`].
    fn seal(&self);
}

impl<T: Send> Signal for Mailbox<T> {
    fn signal(&self) {
        Mailbox::signal(self)
    }
    fn seal(&self) {
        Mailbox::seal(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn fifo_backpressure_and_close() {
        let mb = Arc::new(Mailbox::new(2));
        mb.try_send(1).ok().unwrap();
        mb.send(2).await.unwrap();
        assert!(matches!(mb.try_send(3), Err(SendFailure::Full(3))));
        let waiting = {
            let mb = mb.clone();
            tokio::spawn(async move { mb.send(3).await })
        };
        tokio::task::yield_now().await;
        assert!(matches!(mb.recv().await, Recv::Msg(1)));
        waiting.await.unwrap().unwrap();
        assert!(matches!(mb.recv().await, Recv::Msg(2)));
        assert!(matches!(mb.recv().await, Recv::Msg(3)));
        mb.signal();
        assert!(matches!(mb.recv().await, Recv::Signal));
        mb.try_send(4).ok().unwrap();
        assert_eq!(mb.close().into_iter().collect::<Vec<_>>(), vec![4]);
        assert!(matches!(mb.recv().await, Recv::Closed));
        assert!(matches!(mb.try_send(5), Err(SendFailure::Closed(5))));
        assert_eq!(mb.send(6).await, Err(6));
    }

    #[tokio::test]
    async fn a_sealed_mailbox_hands_out_what_it_holds_then_closes() {
        let mb = Mailbox::new(4);
        mb.try_send(1).ok().unwrap();
        mb.try_send(2).ok().unwrap();
        mb.seal();
        assert!(matches!(mb.try_send(3), Err(SendFailure::Closed(3))));
        assert_eq!(mb.send(4).await, Err(4));
        assert!(matches!(mb.recv().await, Recv::Msg(1)));
        assert!(matches!(mb.recv().await, Recv::Msg(2)));
        assert!(matches!(mb.recv().await, Recv::Closed));
    }

    #[tokio::test]
    async fn close_wakes_a_blocked_sender() {
        let mb = Arc::new(Mailbox::new(1));
        mb.try_send(1).ok().unwrap();
        let waiting = {
            let mb = mb.clone();
            tokio::spawn(async move { mb.send(2).await })
        };
        tokio::task::yield_now().await;
        mb.close();
        assert_eq!(waiting.await.unwrap(), Err(2));
    }
}
