//! What a `Session` hands out: `ClientGuard`, a client attached while it
//! lives, and `Ended`, the future of the session's end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::outcome::SessionEnded;
use crate::reason::EndReason;
use crate::store::session::Session;

impl Session {
    /// Attaches a client (a websocket, a stream, a long poll) for as long as the
    /// guard lives. While any client is attached the idle timeout does not run
    /// out (the absolute one still does). When the last guard drops, each value's
    /// `on_no_client` hook runs once, on the dropping thread, under the session's
    /// value lock held for reading (see *Locking*).
    ///
    /// # Errors
    /// [`SessionEnded`] when the session has ended, or has expired (it is ended
    /// now: expiry is final, whether or not a sweep has reclaimed it yet).
    pub fn attach(&self) -> Result<ClientGuard, SessionEnded> {
        if self.store.attach(&self.rec) {
            Ok(ClientGuard {
                session: self.clone(),
            })
        } else {
            Err(SessionEnded(()))
        }
    }

    /// A future that resolves with the reason once the session ends, for
    /// whatever reason: a long-lived response (a server-sent event stream, a
    /// websocket loop) selects on it to finish when its session does, so that a
    /// graceful shutdown that calls [`Sessions::shutdown`](crate::Sessions::shutdown)
    /// is not kept waiting by open streams. It needs no particular runtime, and
    /// resolves at once for a session that has already ended.
    ///
    /// ```
    /// # use keyed_session::{EndReason, Sessions, Sweeper};
    /// # use std::future::Future;
    /// # use std::pin::pin;
    /// # use std::task::{Context, Poll, Waker};
    /// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
    /// let session = sessions.create(None).unwrap();
    /// let mut ended = pin!(session.ended());
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert!(ended.as_mut().poll(&mut cx).is_pending());
    /// sessions.delete(&session.id());
    /// assert_eq!(ended.poll(&mut cx), Poll::Ready(EndReason::Deleted));
    /// ```
    pub fn ended(&self) -> Ended {
        Ended {
            session: self.clone(),
            token: None,
        }
    }
}

/// Keeps a client attached to a session; see [`Session::attach`].
///
/// ```
/// use std::time::Duration;
/// use keyed_session::{ManualClock, Sessions};
/// let clock = ManualClock::new();
/// let idle = Duration::from_secs(60);
/// let sessions = Sessions::builder().idle_timeout(idle).clock(clock.clone()).build();
/// let session = sessions.create(None).unwrap();
/// let guard = session.attach().unwrap(); // a websocket opened
/// clock.advance(Duration::from_secs(600));
/// assert!(session.is_valid(), "no idle expiry while a client is attached");
/// drop(guard);
/// assert_eq!(session.clients(), 0);
/// ```
#[must_use = "the client is detached as soon as the guard is dropped"]
pub struct ClientGuard {
    pub(crate) session: Session,
}

impl ClientGuard {
    /// The session this client is attached to.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl fmt::Debug for ClientGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientGuard").field(&self.session).finish()
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.session.rec.remove_client() {
            self.session.store.last_client_left(&self.session.rec);
        }
    }
}

/// Resolves when its session ends; see [`Session::ended`].
///
/// ```
/// use keyed_session::{EndReason, Sessions, Sweeper};
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let session = sessions.create(None).unwrap();
/// let ended = session.ended();
/// sessions.shutdown();
/// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert_eq!(runtime.block_on(ended), EndReason::Shutdown);
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Ended {
    pub(crate) session: Session,
    pub(crate) token: Option<u64>,
}

impl fmt::Debug for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ended")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Future for Ended {
    type Output = EndReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<EndReason> {
        if let Some(reason) = self.session.rec.ended() {
            return Poll::Ready(reason);
        }
        let this = &mut *self;
        let token =
            this.session
                .store
                .ending()
                .waiters
                .register(&this.session.rec, this.token, cx.waker());
        this.token = Some(token);
        // Checked again after registering, so an end in between is not missed.
        match this.session.rec.ended() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            self.session
                .store
                .ending()
                .waiters
                .unregister(&self.session.rec, token);
        }
    }
}
