//! Session events and their subscribers.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::{EndReason, SessionId};

/// Something that happened to a session, as broadcast to every subscriber of
/// [`Sessions::subscribe`](crate::Sessions::subscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session was created.
    Begin {
        /// Its id.
        id: SessionId,
        /// The client address it was created for.
        peer: Option<IpAddr>,
    },
    /// A session came back from a snapshot (see
    /// [`Sessions::restore_from`](crate::Sessions::restore_from)); it stands in
    /// for the [`Event::Begin`] sent when the session was first created, and is
    /// paired with an [`Event::End`] like it.
    Restored {
        /// Its id (the same as before the restart).
        id: SessionId,
        /// The client address it was created for.
        peer: Option<IpAddr>,
    },
    /// A session ended. Sent after the `on_delete` hooks of all its values ran,
    /// so a listener sees a session that is completely gone.
    End {
        /// Its id at the time it ended.
        id: SessionId,
        /// The client address it was created for.
        peer: Option<IpAddr>,
        /// Why it ended.
        reason: EndReason,
    },
    /// A session got a new id (same values, same clients); the old id is dead.
    Renewed {
        /// The id it had.
        old: SessionId,
        /// The id it has now.
        new: SessionId,
    },
}

impl Event {
    /// The id the event is about (the new one for [`Event::Renewed`]).
    pub fn id(&self) -> SessionId {
        match *self {
            Event::Begin { id, .. } | Event::Restored { id, .. } | Event::End { id, .. } => id,
            Event::Renewed { new, .. } => new,
        }
    }
}

/// The subscriber list: each subscriber has a bounded channel of its own.
pub(crate) struct Broadcaster {
    capacity: usize,
    /// How many subscribers there are, read without the lock so that a store
    /// nobody listens to pays one atomic load per event.
    count: AtomicUsize,
    senders: Mutex<Vec<Sender<Event>>>,
    dropped: AtomicU64,
}

impl Broadcaster {
    pub(crate) fn new(capacity: usize) -> Self {
        Broadcaster {
            capacity: capacity.max(1),
            count: AtomicUsize::new(0),
            senders: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = crossbeam_channel::bounded(self.capacity);
        let mut senders = self.senders.lock();
        senders.push(tx);
        self.count.store(senders.len(), Ordering::Release);
        rx
    }

    /// Sends `event` to every subscriber without ever blocking: a full channel
    /// loses the event (counted), a closed one is pruned. Takes the subscriber
    /// lock, never calls user code.
    pub(crate) fn send(&self, event: Event) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut senders = self.senders.lock();
        senders.retain(|tx| match tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.count.store(senders.len(), Ordering::Release);
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}
