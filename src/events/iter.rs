//! Iterating over a [`Subscription`]'s events, blocking or not, skipping the
//! lag reports.

use super::{Event, RecvError, Subscription};

impl Subscription {
    /// Blocking iteration over events (skipping the lag reports), ending when
    /// the store is gone.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self)
    }

    /// The events waiting now, without blocking (skipping the lag reports).
    pub fn try_iter(&self) -> TryIter<'_> {
        TryIter(self)
    }
}

/// Blocking iteration over a subscription's events; see [`Subscription::iter`].
///
/// ```
/// use keyed_session::{Event, Sessions};
/// let sessions = Sessions::default();
/// let events = sessions.subscribe();
/// let s = sessions.create(None).unwrap();
/// sessions.delete(&s.id());
/// let mut it = events.iter();
/// assert!(matches!(it.next(), Some(Event::Begin { .. })));
/// assert!(matches!(it.next(), Some(Event::End { .. })));
/// ```
#[derive(Debug)]
pub struct Iter<'a>(&'a Subscription);

/// The next event from `recv`, passing over lag reports; `None` at the end.
fn skip_lags(mut recv: impl FnMut() -> Result<Event, RecvError>) -> Option<Event> {
    loop {
        match recv() {
            Ok(event) => return Some(event),
            Err(RecvError::Lagged(_)) => continue,
            Err(_) => return None,
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        skip_lags(|| self.0.blocking_recv())
    }
}

/// The events waiting now; see [`Subscription::try_iter`].
///
/// ```
/// use keyed_session::Sessions;
/// let sessions = Sessions::default();
/// let events = sessions.subscribe();
/// sessions.create(None).unwrap();
/// assert_eq!(events.try_iter().count(), 1); // the Begin; it never waits
/// assert_eq!(events.try_iter().count(), 0);
/// ```
#[derive(Debug)]
pub struct TryIter<'a>(&'a Subscription);

impl Iterator for TryIter<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        skip_lags(|| self.0.try_recv())
    }
}

/// Blocking iteration over a subscription's events, ending when the store is
/// gone; from `for event in subscription`.
///
/// ```
/// use keyed_session::Sessions;
/// let sessions = Sessions::default();
/// let events = sessions.subscribe();
/// sessions.create(None).unwrap();
/// drop(sessions); // the store is gone: the loop ends after what is queued
/// let seen: Vec<_> = events.into_iter().collect();
/// assert!(!seen.is_empty());
/// ```
#[derive(Debug)]
pub struct IntoIter(Subscription);

impl Iterator for IntoIter {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        Iter(&self.0).next()
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
