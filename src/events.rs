//! Session events and their subscribers.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::id::SessionId;
use crate::reason::EndReason;

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

/// Why no event was received from a [`Subscription`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecvError {
    /// [`Subscription::try_recv`]: no event is waiting now.
    Empty,
    /// [`Subscription::recv_timeout`]: no event came within the time.
    Timeout,
    /// The store is gone (every `Sessions` and `Session` handle dropped) and
    /// every event sent before has been received.
    Closed,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvError::Empty => "no session event is waiting",
            RecvError::Timeout => "no session event came in time",
            RecvError::Closed => "the session store is gone: no more events will come",
        })
    }
}

impl std::error::Error for RecvError {}

/// One subscriber of a store's [`Event`]s, from
/// [`Sessions::subscribe`](crate::Sessions::subscribe).
///
/// Each subscription has a buffer of its own (the builder's `event_capacity`);
/// the store never waits for a slow subscriber, it drops the event for it and
/// counts it in [`Stats::events_dropped`](crate::Stats::events_dropped).
/// Dropping the subscription unsubscribes at once and frees its buffer.
///
/// ```
/// use keyed_session::{Event, RecvError, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let events = sessions.subscribe();
/// let session = sessions.create(None).unwrap();
/// assert_eq!(events.try_recv(), Ok(Event::Begin { id: session.id(), peer: None }));
/// assert_eq!(events.try_recv(), Err(RecvError::Empty));
/// assert_eq!(sessions.stats().subscribers, 1);
/// drop(events);
/// assert_eq!(sessions.stats().subscribers, 0);
/// ```
pub struct Subscription {
    rx: Receiver<Event>,
    id: u64,
    hub: Weak<Broadcaster>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("waiting", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Waits for the next event, blocking this thread.
    ///
    /// # Errors
    /// [`RecvError::Closed`] once the store is gone and nothing is left.
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.rx.recv().map_err(|_| RecvError::Closed)
    }

    /// The next event if one is waiting, without blocking.
    ///
    /// # Errors
    /// [`RecvError::Empty`] when none is waiting, [`RecvError::Closed`] once the
    /// store is gone and nothing is left.
    pub fn try_recv(&self) -> Result<Event, RecvError> {
        self.rx.try_recv().map_err(|e| match e {
            crossbeam_channel::TryRecvError::Empty => RecvError::Empty,
            crossbeam_channel::TryRecvError::Disconnected => RecvError::Closed,
        })
    }

    /// Waits at most `timeout` for the next event, blocking this thread.
    ///
    /// # Errors
    /// [`RecvError::Timeout`] when none came, [`RecvError::Closed`] once the store
    /// is gone and nothing is left.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => RecvError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => RecvError::Closed,
        })
    }

    /// Blocking iteration over events, ending when the store is gone.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self)
    }

    /// The events waiting now, without blocking.
    pub fn try_iter(&self) -> TryIter<'_> {
        TryIter(self)
    }

    /// How many events are waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id);
        }
    }
}

/// Blocking iteration over a subscription's events, ending when the store is
/// gone; from `for event in subscription`.
#[derive(Debug)]
pub struct IntoIter(Subscription);

impl Iterator for IntoIter {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.0.recv().ok()
    }
}

impl IntoIterator for Subscription {
    type Item = Event;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(self)
    }
}

impl<'a> IntoIterator for &'a Subscription {
    type Item = Event;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        Iter(self)
    }
}

/// Blocking iteration over a subscription's events; see [`Subscription::iter`].
#[derive(Debug)]
pub struct Iter<'a>(&'a Subscription);

impl Iterator for Iter<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.0.recv().ok()
    }
}

/// The events waiting now; see [`Subscription::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a>(&'a Subscription);

impl Iterator for TryIter<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

/// The subscriber list: each subscriber has a bounded channel of its own.
pub(crate) struct Broadcaster {
    capacity: usize,
    /// How many subscribers there are, read without the lock so that a store
    /// nobody listens to pays one atomic load per event.
    count: AtomicUsize,
    senders: Mutex<Vec<(u64, Sender<Event>)>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

impl Broadcaster {
    pub(crate) fn new(capacity: usize) -> Self {
        Broadcaster {
            capacity: capacity.max(1),
            count: AtomicUsize::new(0),
            senders: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(this: &Arc<Self>) -> Subscription {
        let (tx, rx) = crossbeam_channel::bounded(this.capacity);
        let id = this.next_id.fetch_add(1, Ordering::Relaxed);
        let mut senders = this.senders.lock();
        senders.push((id, tx));
        this.count.store(senders.len(), Ordering::Release);
        Subscription {
            rx,
            id,
            hub: Arc::downgrade(this),
        }
    }

    /// Drops the sender of subscription `id`, freeing its channel.
    fn unsubscribe(&self, id: u64) {
        let removed = {
            let mut senders = self.senders.lock();
            let at = senders.iter().position(|(i, _)| *i == id);
            let removed = at.map(|at| senders.swap_remove(at));
            self.count.store(senders.len(), Ordering::Release);
            removed
        };
        // The channel's buffer is freed here, outside the lock.
        drop(removed);
    }

    /// Sends `event` to every subscriber without ever blocking: a full channel
    /// loses the event (counted), a closed one is pruned. Takes the subscriber
    /// lock, never calls user code.
    pub(crate) fn send(&self, event: Event) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut senders = self.senders.lock();
        senders.retain(|(_, tx)| match tx.try_send(event) {
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
