//! The queue of received messages between the actor and the application.
//!
//! The actor hands over each step's messages under one lock and wakes a
//! reader once, instead of one channel operation per message; readers take
//! as many as they want under one lock too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::Message;

/// Capacity (in messages) an empty queue may keep.
const SHRINK_ABOVE: usize = 1024;

#[derive(Debug)]
struct State {
    messages: VecDeque<Message>,
    closed: bool,
}

/// A bounded queue of messages (see [`crate::DEFAULT_RECV_QUEUE_CAP`]).
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    notify: Notify,
    cap: usize,
}

impl Inbox {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Inbox {
            state: Mutex::new(State { messages: VecDeque::new(), closed: false }),
            notify: Notify::new(),
            cap,
        })
    }

    /// Gives back what a burst grew once the queue has drained (an idle
    /// node should not keep room for 65,536 messages).
    fn release_if_drained(st: &mut State) {
        if st.messages.is_empty() && st.messages.capacity() > SHRINK_ABOVE {
            st.messages = VecDeque::new();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned queue is still
        // a valid queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages queued right now.
    pub(crate) fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Room left right now. Only readers take messages out, so the room
    /// can only grow until the next [`Inbox::push`].
    pub(crate) fn room(&self) -> usize {
        self.cap.saturating_sub(self.lock().messages.len())
    }

    /// Appends `batch` (emptying it); what does not fit is dropped and
    /// counted in the return value.
    pub(crate) fn push(&self, batch: &mut Vec<Message>) -> usize {
        if batch.is_empty() {
            return 0;
        }
        let mut st = self.lock();
        let fit = batch.len().min(self.cap.saturating_sub(st.messages.len()));
        let dropped = batch.len() - fit;
        st.messages.extend(batch.drain(..fit));
        drop(st);
        batch.clear();
        if fit > 0 {
            self.notify.notify_one();
        }
        dropped
    }

    /// Takes up to `n` messages without waiting.
    pub(crate) fn take(&self, n: usize) -> Vec<Message> {
        let mut st = self.lock();
        let k = n.min(st.messages.len());
        let out = st.messages.drain(..k).collect();
        Self::release_if_drained(&mut st);
        out
    }

    /// Waits for the next message; `None` once closed and empty. Cancel
    /// safe: a message is only taken when it is returned.
    pub(crate) async fn next(&self) -> Option<Message> {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if let Some(m) = st.messages.pop_front() {
                    Self::release_if_drained(&mut st);
                    let more = !st.messages.is_empty();
                    drop(st);
                    if more {
                        // One wake per batch: pass it on to another reader.
                        self.notify.notify_one();
                    }
                    return Some(m);
                }
                if st.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

/// The actor's end: closes the queue when dropped (the node stopped, or its
/// task ended in any other way), so readers see `None` after the last
/// message.
#[derive(Debug)]
pub(crate) struct InboxSender(pub(crate) Arc<Inbox>);

impl Drop for InboxSender {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rs2p_proto::id::PeerId;
    use rs2p_proto::wire::{Frame, Limits, MsgType, Packet};
    use tokio::sync::mpsc;

    use super::*;

    fn msgs(n: u64) -> Vec<Message> {
        let (tx, _rx) = mpsc::channel(1);
        let weak = tx.downgrade();
        let me = PeerId::random(b"inbox-test");
        (0..n)
            .map(|i| {
                let f = Frame::build(MsgType::Broadcast, &me, i, 0u64, &[]);
                Message::new(Packet::parse(f, &Limits::default()).unwrap(), None, false, &weak)
            })
            .collect()
    }

    #[tokio::test]
    async fn one_batch_wakes_every_waiting_reader() {
        let inbox = Inbox::new(10);
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let i = inbox.clone();
                tokio::spawn(async move { i.next().await.is_some() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(inbox.push(&mut msgs(3)), 0);
        for r in readers {
            assert!(tokio::time::timeout(Duration::from_secs(5), r).await.expect("reader woken").unwrap());
        }
    }

    #[tokio::test]
    async fn overflow_is_dropped_and_cancelled_waits_take_nothing() {
        let inbox = Inbox::new(4);
        // A wait cancelled before anything arrives takes nothing.
        assert!(tokio::time::timeout(Duration::from_millis(10), inbox.next()).await.is_err());
        assert_eq!(inbox.push(&mut msgs(6)), 2);
        assert_eq!(inbox.room(), 0);
        assert_eq!(inbox.take(3).len(), 3);
        // A drained queue gives back what a burst grew.
        let big = Inbox::new(10_000);
        assert_eq!(big.push(&mut msgs(5_000)), 0);
        assert_eq!(big.take(10_000).len(), 5_000);
        assert_eq!(big.lock().messages.capacity(), 0);
        InboxSender(inbox.clone()); // dropped at once: closes
        assert!(inbox.next().await.is_some(), "queued messages outlive the close");
        assert!(inbox.next().await.is_none());
    }
}
