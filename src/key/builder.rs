//! Keys whose hooks capture state, built at run time.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::Key;
use crate::reason::DeleteContext;

/// Builds a [`Key`] whose hooks capture state; every hook is optional. Keys
/// whose hooks are plain functions are simpler as a `static` (see [`Key`]).
///
/// ```
/// use std::sync::mpsc;
/// use keyed_session::Key;
/// let (tx, rx) = mpsc::channel();
/// let key: Key<u8> = Key::builder("tab")
///     .on_delete(move |value, _| tx.send(value).unwrap())
///     .build();
/// assert_eq!(key.name(), "tab");
/// # drop(rx);
/// ```
#[must_use = "a key builder does nothing until `build` is called"]
pub struct KeyBuilder<T: 'static> {
    pub(super) key: Key<T>,
}

impl<T> fmt::Debug for KeyBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder")
            .field("name", &self.key.name)
            .finish_non_exhaustive()
    }
}
impl<T: Send + Sync + 'static> KeyBuilder<T> {
    /// Runs when the value leaves the session for good without being handed back
    /// to the application: the session ended (any [`EndReason`](crate::EndReason)),
    /// or the last client left and [`on_no_client`](Self::on_no_client) said
    /// `false`. The value is moved into the hook, which runs exactly once per value,
    /// with no lock of the store held, on the thread that ended the session: the
    /// caller of `delete`, `sweep`, `shutdown` or of a `create` that evicted it,
    /// a request whose lookup found the session expired or from another address,
    /// the thread that dropped the last [`ClientGuard`](crate::ClientGuard) (for
    /// `NoClient`), or the background sweeper thread `keyed-session-sweeper` for
    /// sessions that idled out unasked. That last one is a plain thread: a hook
    /// that needs a tokio runtime (`tokio::spawn`) needs
    /// [`SessionsBuilder::tokio_handle`](crate::SessionsBuilder::tokio_handle).
    /// When the session was ended from inside a value closure of that same
    /// session, the hooks run on that thread as soon as the closure returns.
    /// Values taken out by [`Session::remove`](crate::Session::remove) or
    /// replaced by [`Session::set`](crate::Session::set) go back to the caller
    /// instead.
    pub fn on_delete(mut self, hook: impl Fn(T, &DeleteContext) + Send + Sync + 'static) -> Self {
        self.key.dyns.on_delete = Some(Arc::new(hook));
        self
    }

    /// Runs when the last [`ClientGuard`](crate::ClientGuard) of a session drops:
    /// `true` keeps the value, `false` removes it and runs `on_delete` (cause
    /// [`DeleteCause::NoClient`](crate::DeleteCause::NoClient)). It runs once per
    /// such transition, on the dropping thread, under the session's value lock
    /// held for reading: the value stays in the session while the hook decides
    /// (concurrent reads see it, concurrent writes and an end wait), and the
    /// hook may read the same session but not write it (that panics). A hook
    /// that panics keeps the value.
    pub fn on_no_client(mut self, hook: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.key.dyns.on_no_client = Some(Arc::new(hook));
        self
    }

    /// How to write the value into a snapshot. Keys without it are memory-only.
    /// It runs during [`Sessions::save_to`](crate::Sessions::save_to) (and the
    /// periodic and shutdown snapshots) under the session's value lock held for
    /// reading: it may read the same session, not write it (that panics).
    pub fn save(
        mut self,
        hook: impl Fn(&T, &mut dyn Write) -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.key.dyns.save = Some(Arc::new(hook));
        self
    }

    /// How to read the value back from a snapshot.
    pub fn load(
        mut self,
        hook: impl Fn(&mut dyn Read) -> io::Result<T> + Send + Sync + 'static,
    ) -> Self {
        self.key.dyns.load = Some(Arc::new(hook));
        self
    }

    /// The key, with a fresh process-unique id.
    pub fn build(self) -> Key<T> {
        self.key
    }
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<T> KeyBuilder<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// Sets `save` and `load` to write and read the value as JSON with serde.
    ///
    /// JSON is chosen over a compact binary format because snapshots outlive the
    /// code that wrote them: a field added with `#[serde(default)]` still reads.
    ///
    /// ```
    /// use keyed_session::Key;
    /// let key: Key<Vec<u32>> = Key::new("cart").serde();
    /// let mut bytes = Vec::new();
    /// key.save_value(&vec![1, 2], &mut bytes).unwrap();
    /// assert_eq!(bytes, b"[1,2]");
    /// assert_eq!(key.load_value(&mut &bytes[..]).unwrap(), vec![1, 2]);
    /// ```
    pub fn serde(self) -> Self {
        self.save(|value, out| serde_json::to_writer(out, value).map_err(io::Error::from))
            .load(|input| serde_json::from_reader(input).map_err(io::Error::from))
    }
}
