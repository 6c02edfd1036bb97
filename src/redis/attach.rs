//! Keeping a shared session in use while a client is attached: a task that
//! touches it every `touch_every`, following renews, until its guard drops.

use std::sync::Arc;

use crate::redis::session::RedisSession;

impl RedisSession {
    /// Keeps the session in use while the returned guard lives (a websocket,
    /// an event stream): a task touches it every `touch_every`, following a
    /// renew, until the guard drops or the session ends. If this process
    /// dies, the touching stops and the session idles out normally.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn attach(&self) -> RedisClientGuard {
        let engine = Arc::clone(&self.engine);
        let mut id = self.id();
        let every = engine
            .config
            .touch_every()
            .max(std::time::Duration::from_millis(10));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(every) => {}
                }
                match engine.touch(&id).await {
                    Ok(answer) if crate::redis::reply::tag(&answer) == "ok" => {}
                    Ok(answer) => match crate::redis::reply::gone_to(&answer) {
                        Some(new) => id = new,
                        None => return,
                    },
                    // Redis away: try again at the next tick.
                    Err(_) => {}
                }
            }
        });
        RedisClientGuard { _stop: stop }
    }
}

/// Keeps a session in use while it lives; see [`RedisSession::attach`].
///
/// ```no_run
/// # async fn run(session: keyed_session::redis::RedisSession) {
/// let guard = session.attach(); // move it into the websocket's task
/// drop(guard); // the connection closed: the session may idle out again
/// # }
/// ```
#[derive(Debug)]
pub struct RedisClientGuard {
    _stop: tokio::sync::oneshot::Sender<()>,
}
