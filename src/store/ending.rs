//! Ending sessions' values: `on_delete` hooks run with no lock held (caught
//! and counted if they panic), `on_no_client` hooks under the value lock, and
//! `Event::End` sent after every `on_delete` of the session, those of values an
//! `on_no_client` hook dropped included.

use std::sync::{Arc, Weak};

use crate::borrow;
use crate::events::{Broadcaster, Event};
use crate::key::ErasedSlot;
use crate::reason::{DeleteCause, DeleteContext, EndReason};
use crate::store::notify::{InFlight, Waiters};
use crate::store::record::Record;
use crate::store::stats::{Counters, bump};

/// What ending a session's values needs; shared by the store and the work it
/// defers until a borrow of the session ends.
pub(crate) struct Ending {
    /// Itself, for work deferred until a borrow ends.
    me: Weak<Ending>,
    pub(crate) events: Arc<Broadcaster>,
    pub(crate) counters: Arc<Counters>,
    /// `on_delete` calls of values dropped by `on_no_client` still running.
    in_flight: InFlight,
    /// Tasks waiting for a session to end.
    pub(crate) waiters: Waiters,
}

impl Ending {
    pub(crate) fn new(events: Arc<Broadcaster>, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new_cyclic(|me| Ending {
            me: me.clone(),
            events,
            counters,
            in_flight: InFlight::default(),
            waiters: Waiters::default(),
        })
    }

    /// Runs the `what` hook of key `key`, catching, reporting and counting a
    /// panic; `None` when it panicked.
    pub(crate) fn run_hook<R>(
        &self,
        key: &str,
        what: &'static str,
        hook: impl FnOnce() -> R,
    ) -> Option<R> {
        let r = crate::hooks::run(key, what, hook);
        if r.is_none() {
            bump(&self.counters.hook_panics);
        }
        r
    }

    /// Hands `slot` to its `on_delete`, catching, reporting and counting a
    /// panic.
    pub(crate) fn delete(&self, slot: Box<dyn ErasedSlot>, ctx: &DeleteContext) {
        if !slot.delete_caught(ctx) {
            bump(&self.counters.hook_panics);
        }
    }

    /// The values' part of an end, once the session was claimed, marked ended
    /// and uncounted: wakes whoever waits for it, then releases the values.
    /// When this thread holds the session's value lock (the end was called
    /// from inside a value closure or a `save` hook of that session), the
    /// values are released when that borrow ends, on this thread.
    pub(crate) fn finish(&self, rec: &Arc<Record>, reason: EndReason) {
        self.waiters.wake(rec);
        if borrow::held(&rec.slots).is_some() {
            if let Some(me) = self.me.upgrade() {
                let owned = Arc::clone(rec);
                borrow::defer(&rec.slots, move || me.release_values(&owned, reason));
                return;
            }
        }
        self.release_values(rec, reason);
    }

    /// Takes the values of an ended session, runs their `on_delete` hooks and
    /// sends [`Event::End`], or leaves the event to a `NoClient` deletion of the
    /// same session that is still running.
    pub(crate) fn release_values(&self, rec: &Arc<Record>, reason: EndReason) {
        let slots = borrow::write(&rec.slots, "end it").take_all();
        let ctx = DeleteContext {
            id: rec.id(),
            peer: rec.peer(),
            cause: DeleteCause::SessionEnded(reason),
        };
        self.delete_values(slots, &ctx);
        let end = Event::End {
            id: ctx.id,
            peer: ctx.peer,
            reason,
        };
        if !self.in_flight.park_end(rec, end) {
            self.events.send(end);
        }
    }

    fn delete_values(&self, slots: Vec<Box<dyn ErasedSlot>>, ctx: &DeleteContext) {
        for slot in slots {
            self.delete(slot, ctx);
        }
    }

    /// Runs after the last client of a session left: asks each value whose key
    /// has an `on_no_client` hook whether to keep it. The hooks run under the
    /// session's value lock held for reading (upgradable), so the values stay in
    /// the session, readable, while they decide: a concurrent write waits, a
    /// concurrent end takes them only afterwards. Values to drop are then taken
    /// out under the write lock and handed to `on_delete` (cause `NoClient`)
    /// with no lock held; the session's `End`, should it end meanwhile, is sent
    /// after those calls returned.
    pub(crate) fn last_client_left(&self, rec: &Arc<Record>, now: u32) {
        if borrow::held(&rec.slots).is_some() {
            // Dropped inside a value closure of this session: ask when it ends.
            if let Some(store) = self.me.upgrade() {
                let owned = Arc::clone(rec);
                borrow::defer(&rec.slots, move || store.last_client_left(&owned, now));
            }
            return;
        }
        rec.touch(now);
        let slots = borrow::upgradable(&rec.slots);
        if rec.ended().is_some() || rec.clients() > 0 {
            return;
        }
        let (dropped_keys, panics) = slots.unwanted_without_client();
        self.counters
            .hook_panics
            .fetch_add(panics, std::sync::atomic::Ordering::Relaxed);
        if dropped_keys.is_empty() {
            return;
        }
        // Even when a hook ended the session meanwhile (its end waits for
        // this borrow, or for the write lock), the values the hooks dropped
        // leave now and reach `on_delete` as `NoClient`, as documented; the
        // end takes the rest, and its `End` waits for these calls.
        let mut slots = slots.upgrade();
        let dropped = slots.take_keys(dropped_keys);
        self.in_flight.start(rec);
        drop(slots);
        let ctx = DeleteContext {
            id: rec.id(),
            peer: rec.peer(),
            cause: DeleteCause::NoClient,
        };
        self.delete_values(dropped, &ctx);
        if let Some(end) = self.in_flight.finish(rec) {
            self.events.send(end);
        }
    }
}
