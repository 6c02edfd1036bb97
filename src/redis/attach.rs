//! Keeping a shared session in use while a client is attached: a task that
//! touches it every `touch_every`, following renews, until its guard drops.

use std::sync::Arc;

use crate::id::SessionId;
use crate::redis::engine::Engine;
use crate::redis::error::SharedError;
use crate::redis::scripts;
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
                match touch(&engine, &id).await {
                    Ok(true) => {}
                    Ok(false) => match renewed_to(&engine, &id).await {
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

/// Marks session `id` used now; `false` when it is gone or expired.
pub(crate) async fn touch(engine: &Engine, id: &SessionId) -> Result<bool, SharedError> {
    let k = engine.keys(id);
    let mut call = scripts::TOUCH.prepare_invoke();
    call.key(&k.hash)
        .key(&k.due)
        .arg(engine.now_arg())
        .arg(id.to_string())
        .arg(Engine::millis(crate::redis::config::Config::SLACK));
    let mut conn = engine.conn.clone();
    let touched: i64 =
        tokio::time::timeout(engine.config.response_timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| crate::redis::engine::timeout_error())??;
    Ok(touched == 1)
}

/// The id session `id` was renewed to, by its tombstone.
async fn renewed_to(engine: &Engine, id: &SessionId) -> Option<SessionId> {
    let mut conn = engine.conn.clone();
    let tomb: Option<String> = redis::cmd("GET")
        .arg(engine.keys(id).tomb)
        .query_async(&mut conn)
        .await
        .ok()?;
    tomb?.strip_prefix("renewed:")?.parse().ok()
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
