//! Session events and their subscribers.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;

use crate::id::SessionId;
use crate::reason::EndReason;

mod iter;
pub use iter::{IntoIter, Iter, TryIter};

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
    /// The subscriber fell behind: this many events were dropped for it
    /// because its buffer was full, at this point of the stream. Receiving
    /// again goes on with the events after them.
    Lagged(u64),
    /// The store is gone (every `Sessions` and `Session` handle dropped) and
    /// every event sent before has been received.
    Closed,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Empty => f.write_str("no session event is waiting"),
            RecvError::Timeout => f.write_str("no session event came in time"),
            RecvError::Lagged(n) => write!(
                f,
                "{n} session events were dropped because the subscriber fell behind; raise `event_capacity` or read faster"
            ),
            RecvError::Closed => f.write_str("the session store is gone: no more events will come"),
        }
    }
}

impl std::error::Error for RecvError {}

/// What a subscriber's channel carries: an event, or how many were dropped
/// for it at this point.
#[derive(Debug, Clone, Copy)]
enum Message {
    Event(Event),
    Lagged(u64),
}

/// What the sender and the receiver of one subscription share.
#[derive(Debug, Default)]
struct Shared {
    /// Events dropped since the last `Lagged` was delivered.
    dropped: AtomicU64,
    /// A task waits in `recv().await`.
    waiting: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Shared {
    fn wake(&self) {
        // Pairs with the fence in `Recv::poll`: either the task's check sees
        // the message just sent, or this sees the task waiting.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            if let Some(waker) = self.waker.lock().take() {
                waker.wake();
            }
        }
    }
}

/// One subscriber of a store's [`Event`]s, from
/// [`Sessions::subscribe`](crate::Sessions::subscribe).
///
/// Each subscription has a buffer of its own (the builder's `event_capacity`);
/// the store never waits for a slow subscriber: it drops the event for it,
/// counts it in [`Stats::events_dropped`](crate::Stats::events_dropped), and
/// the subscriber learns how many it missed, where, as
/// [`RecvError::Lagged`]. Receive with [`recv`](Self::recv)`.await` in async
/// code (any runtime, no thread blocked), or [`blocking_recv`](Self::blocking_recv),
/// [`recv_timeout`](Self::recv_timeout) and [`try_recv`](Self::try_recv).
/// Dropping the subscription unsubscribes at once and frees its buffer.
///
/// ```
/// use keyed_session::{Event, RecvError, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).event_capacity(3).build();
/// let events = sessions.subscribe();
/// let ids: Vec<_> = (0..4).map(|_| sessions.create(None).unwrap().id()).collect();
/// // The fourth Begin found the buffer full: dropped for `events`.
/// assert_eq!(events.try_recv(), Ok(Event::Begin { id: ids[0], peer: None }));
/// assert_eq!(events.try_recv(), Ok(Event::Begin { id: ids[1], peer: None }));
/// let fifth = sessions.create(None).unwrap().id();
/// assert_eq!(events.try_recv(), Ok(Event::Begin { id: ids[2], peer: None }));
/// assert_eq!(events.try_recv(), Err(RecvError::Lagged(1)), "here one was missed");
/// assert_eq!(events.try_recv(), Ok(Event::Begin { id: fifth, peer: None }));
/// assert_eq!(events.try_recv(), Err(RecvError::Empty));
/// assert_eq!(sessions.stats().subscribers, 1);
/// drop(events);
/// assert_eq!(sessions.stats().subscribers, 0);
/// ```
pub struct Subscription {
    rx: Receiver<Message>,
    shared: Arc<Shared>,
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

fn delivered(message: Message) -> Result<Event, RecvError> {
    match message {
        Message::Event(event) => Ok(event),
        Message::Lagged(n) => Err(RecvError::Lagged(n)),
    }
}

impl Subscription {
    /// The next event, as a future: waits without blocking a thread, on any
    /// runtime (or none: any executor that polls it).
    ///
    /// It takes `&mut self`, as tokio's `broadcast::Receiver::recv` does: one
    /// subscription has one waiting task (its wake-up goes to that task). Give
    /// each task that waits for events a subscription of its own.
    ///
    /// ```
    /// # use keyed_session::{Event, Sessions, Sweeper};
    /// # let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    /// let mut events = sessions.subscribe();
    /// let s = sessions.create(None).unwrap();
    /// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let event = runtime.block_on(events.recv()).unwrap();
    /// assert_eq!(event, Event::Begin { id: s.id(), peer: None });
    /// ```
    ///
    /// Two waits on one subscription at once do not compile (one of them
    /// would never be woken):
    ///
    /// ```compile_fail
    /// # use keyed_session::{Sessions, Sweeper};
    /// # let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    /// let mut events = sessions.subscribe();
    /// let first = events.recv();
    /// let second = events.recv(); // error: `events` is already borrowed
    /// # drop((first, second));
    /// ```
    ///
    /// # Errors
    /// [`RecvError::Lagged`] where events were dropped for this subscriber,
    /// [`RecvError::Closed`] once the store is gone and nothing is left.
    pub fn recv(&mut self) -> Recv<'_> {
        Recv { subscription: self }
    }

    /// Waits for the next event, blocking this thread (not in async code: use
    /// [`recv`](Self::recv)`.await` there).
    ///
    /// # Errors
    /// [`RecvError::Lagged`] where events were dropped for this subscriber,
    /// [`RecvError::Closed`] once the store is gone and nothing is left.
    pub fn blocking_recv(&self) -> Result<Event, RecvError> {
        match self.try_recv() {
            Err(RecvError::Empty) => {}
            done => return done,
        }
        self.rx
            .recv()
            .map_err(|_| RecvError::Closed)
            .and_then(delivered)
    }

    /// The next event if one is waiting, without blocking.
    ///
    /// # Errors
    /// [`RecvError::Empty`] when none is waiting, [`RecvError::Lagged`] where
    /// events were dropped for this subscriber, [`RecvError::Closed`] once the
    /// store is gone and nothing is left.
    pub fn try_recv(&self) -> Result<Event, RecvError> {
        match self.rx.try_recv() {
            Ok(message) => delivered(message),
            // Events dropped after the last one delivered, and none sent
            // since to carry the report: reported now, so that a subscriber
            // never waits for an event it already lost.
            Err(TryRecvError::Empty) => match self.shared.dropped.swap(0, Ordering::AcqRel) {
                0 => Err(RecvError::Empty),
                n => Err(RecvError::Lagged(n)),
            },
            Err(TryRecvError::Disconnected) => Err(RecvError::Closed),
        }
    }

    /// Waits at most `timeout` for the next event, blocking this thread.
    ///
    /// # Errors
    /// [`RecvError::Timeout`] when none came, [`RecvError::Lagged`] where
    /// events were dropped, [`RecvError::Closed`] once the store is gone and
    /// nothing is left.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvError> {
        match self.try_recv() {
            Err(RecvError::Empty) => {}
            done => return done,
        }
        match self.rx.recv_timeout(timeout) {
            Ok(message) => delivered(message),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(RecvError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(RecvError::Closed),
        }
    }

    /// How many events (and lag reports) are waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// The future of [`Subscription::recv`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Recv<'a> {
    subscription: &'a Subscription,
}

impl Future for Recv<'_> {
    type Output = Result<Event, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let sub = self.subscription;
        match sub.try_recv() {
            Err(RecvError::Empty) => {}
            done => return Poll::Ready(done),
        }
        *sub.shared.waker.lock() = Some(cx.waker().clone());
        sub.shared.waiting.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        // Checked again after registering, so a send in between is not missed.
        match sub.try_recv() {
            Err(RecvError::Empty) => Poll::Pending,
            done => {
                sub.shared.waiting.store(false, Ordering::Release);
                Poll::Ready(done)
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id);
        }
    }
}

/// One subscriber as the broadcaster sees it.
struct Subscriber {
    id: u64,
    tx: Sender<Message>,
    shared: Arc<Shared>,
}

/// The subscriber list: each subscriber has a bounded channel of its own.
pub(crate) struct Broadcaster {
    capacity: usize,
    /// How many subscribers there are, read without the lock so that a store
    /// nobody listens to pays one atomic load per event.
    count: AtomicUsize,
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

impl Broadcaster {
    pub(crate) fn new(capacity: usize) -> Self {
        Broadcaster {
            capacity: capacity.max(1),
            count: AtomicUsize::new(0),
            subscribers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(this: &Arc<Self>) -> Subscription {
        let (tx, rx) = crossbeam_channel::bounded(this.capacity);
        let id = this.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared::default());
        let mut subscribers = this.subscribers.lock();
        subscribers.push(Subscriber {
            id,
            tx,
            shared: Arc::clone(&shared),
        });
        this.count.store(subscribers.len(), Ordering::Release);
        Subscription {
            rx,
            shared,
            id,
            hub: Arc::downgrade(this),
        }
    }

    /// Drops the sender of subscription `id`, freeing its channel.
    fn unsubscribe(&self, id: u64) {
        let removed = {
            let mut subscribers = self.subscribers.lock();
            let at = subscribers.iter().position(|s| s.id == id);
            let removed = at.map(|at| subscribers.swap_remove(at));
            self.count.store(subscribers.len(), Ordering::Release);
            removed
        };
        // The channel's buffer is freed here, outside the lock.
        drop(removed);
    }

    /// Sends `event` to every subscriber without ever blocking: a full channel
    /// loses the event (counted, and reported to that subscriber as a lag at
    /// this point once it has room again), a closed one is pruned. Takes the
    /// subscriber lock and may wake a task waiting in `recv().await` (a
    /// waker only schedules its task); calls no other user code.
    pub(crate) fn send(&self, event: Event) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut subscribers = self.subscribers.lock();
        subscribers.retain(|sub| {
            // Taken with a swap, as the receiver takes it when it finds its
            // channel empty: each drop is reported once.
            let lagged = sub.shared.dropped.swap(0, Ordering::AcqRel);
            if lagged > 0 {
                match sub.tx.try_send(Message::Lagged(lagged)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        sub.shared.dropped.fetch_add(lagged + 1, Ordering::AcqRel);
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            match sub.tx.try_send(Message::Event(event)) {
                Ok(()) => {
                    sub.shared.wake();
                    true
                }
                Err(TrySendError::Full(_)) => {
                    sub.shared.dropped.fetch_add(1, Ordering::AcqRel);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    sub.shared.wake();
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        self.count.store(subscribers.len(), Ordering::Release);
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for Broadcaster {
    fn drop(&mut self) {
        // The senders go with the store: wake whoever waits, to see it closed.
        for sub in self.subscribers.get_mut().drain(..) {
            drop(sub.tx);
            sub.shared.wake();
        }
    }
}
