//! Typed keys and their lifecycle hooks.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reason::DeleteContext;

type OnDelete<T> = Box<dyn Fn(T, &DeleteContext) + Send + Sync>;
type OnNoClient<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;
type SaveFn<T> = Box<dyn Fn(&T, &mut dyn Write) -> io::Result<()> + Send + Sync>;
type LoadFn<T> = Box<dyn Fn(&mut dyn Read) -> io::Result<T> + Send + Sync>;

static NEXT_KEY_ID: AtomicU64 = AtomicU64::new(1);

/// A typed handle to one slot of every session, with the hooks that say what
/// happens to its value when the session ends, when its last client leaves, and
/// across a restart.
///
/// A key is made once, usually in a `static` with [`std::sync::LazyLock`], and
/// cloned cheaply (an `Arc` inside). Two keys are different keys even when they
/// hold the same type: storage is by key, not by type.
///
/// `T` needs only `Send + Sync + 'static`: a channel sender, a socket or a
/// `Mutex<Connection>` is a fine value.
///
/// ```
/// use std::sync::LazyLock;
/// use std::sync::mpsc::Sender;
/// use keyed_session::Key;
///
/// static VISITS: LazyLock<Key<u64>> = LazyLock::new(|| Key::new("visits"));
/// static OUTBOX: LazyLock<Key<Sender<String>>> = LazyLock::new(|| {
///     Key::builder("outbox")
///         .on_delete(|tx: Sender<String>, ctx| {
///             let _ = tx.send(format!("session ended: {:?}", ctx.end_reason()));
///         })
///         .on_no_client(|_tx| false) // nobody listens any more: drop it
///         .build()
/// });
/// assert_eq!(VISITS.name(), "visits");
/// assert_ne!(VISITS.id(), OUTBOX.id());
/// ```
pub struct Key<T> {
    inner: Arc<KeyInner<T>>,
}

pub(crate) struct KeyInner<T> {
    id: u64,
    name: Cow<'static, str>,
    on_delete: Option<OnDelete<T>>,
    on_no_client: Option<OnNoClient<T>>,
    save: Option<SaveFn<T>>,
    load: Option<LoadFn<T>>,
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        Key {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id)
            .field("on_delete", &self.inner.on_delete.is_some())
            .field("on_no_client", &self.inner.on_no_client.is_some())
            .field("save", &self.inner.save.is_some())
            .field("load", &self.inner.load.is_some())
            .finish()
    }
}

impl<T: Send + Sync + 'static> Key<T> {
    /// A key with no hooks: its value is dropped when the session ends and is
    /// never saved.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self::builder(name).build()
    }

    /// Starts a key with hooks. The name is used in snapshots, events and `Debug`
    /// output; keep it unique among the keys saved to one snapshot.
    pub fn builder(name: impl Into<Cow<'static, str>>) -> KeyBuilder<T> {
        KeyBuilder {
            name: name.into(),
            on_delete: None,
            on_no_client: None,
            save: None,
            load: None,
            _t: PhantomData,
        }
    }

    /// The key's process-unique number.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether values of this key are written to snapshots.
    pub fn can_save(&self) -> bool {
        self.inner.save.is_some()
    }

    /// Whether values of this key can be read back from snapshots.
    pub fn can_load(&self) -> bool {
        self.inner.load.is_some()
    }

    /// Writes `value` with the key's `save` hook.
    ///
    /// # Errors
    /// The hook's own error, or [`io::ErrorKind::Unsupported`] when the key has no
    /// `save` hook.
    pub fn save_value(&self, value: &T, out: &mut dyn Write) -> io::Result<()> {
        match &self.inner.save {
            Some(save) => save(value, out),
            None => Err(no_hook("save", &self.inner.name)),
        }
    }

    /// Reads a value with the key's `load` hook.
    ///
    /// # Errors
    /// The hook's own error, or [`io::ErrorKind::Unsupported`] when the key has no
    /// `load` hook.
    pub fn load_value(&self, input: &mut dyn Read) -> io::Result<T> {
        match &self.inner.load {
            Some(load) => load(input),
            None => Err(no_hook("load", &self.inner.name)),
        }
    }

    pub(crate) fn slot(&self, value: T) -> Box<dyn ErasedSlot> {
        Box::new(TypedSlot {
            key: Arc::clone(&self.inner),
            value,
        })
    }
}

fn no_hook(which: &str, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("key `{name}` has no {which} hook"),
    )
}

/// A key as [`Sessions::restore_from`](crate::Sessions::restore_from) sees it:
/// a name, and the means to load a value of its type. Implemented by every
/// [`Key`]; pass keys as `&[&KEY_A, &KEY_B]`.
pub trait LoadKey: Send + Sync + sealed::Sealed {
    /// The key's name, as written in snapshots.
    fn name(&self) -> &str;
    /// Loads a value with the key's `load` hook, ready to go into a session.
    ///
    /// # Errors
    /// The hook's error, or [`io::ErrorKind::Unsupported`] without a hook.
    fn load_value_erased(&self, input: &mut dyn Read) -> io::Result<LoadedValue>;
}

/// A value loaded by a [`LoadKey`], not yet in a session.
pub struct LoadedValue(pub(crate) Box<dyn ErasedSlot>);

impl fmt::Debug for LoadedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LoadedValue")
            .field(&self.0.key_name())
            .finish()
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for super::Key<T> {}
}

impl<T: Send + Sync + 'static> LoadKey for Key<T> {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn load_value_erased(&self, input: &mut dyn Read) -> io::Result<LoadedValue> {
        self.load_value(input).map(|v| LoadedValue(self.slot(v)))
    }
}

/// Builds a [`Key`]; every hook is optional.
#[must_use = "a key builder does nothing until `build` is called"]
pub struct KeyBuilder<T> {
    name: Cow<'static, str>,
    on_delete: Option<OnDelete<T>>,
    on_no_client: Option<OnNoClient<T>>,
    save: Option<SaveFn<T>>,
    load: Option<LoadFn<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for KeyBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder")
            .field("name", &self.name)
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
        self.on_delete = Some(Box::new(hook));
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
        self.on_no_client = Some(Box::new(hook));
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
        self.save = Some(Box::new(hook));
        self
    }

    /// How to read the value back from a snapshot.
    pub fn load(
        mut self,
        hook: impl Fn(&mut dyn Read) -> io::Result<T> + Send + Sync + 'static,
    ) -> Self {
        self.load = Some(Box::new(hook));
        self
    }

    /// The key, with a fresh process-unique id.
    pub fn build(self) -> Key<T> {
        Key {
            inner: Arc::new(KeyInner {
                id: NEXT_KEY_ID.fetch_add(1, Ordering::Relaxed),
                name: self.name,
                on_delete: self.on_delete,
                on_no_client: self.on_no_client,
                save: self.save,
                load: self.load,
            }),
        }
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
    /// let key: Key<Vec<u32>> = Key::builder("cart").serde().build();
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

/// One value in a session together with its key: the type-erased face the
/// session and the store work with.
pub(crate) trait ErasedSlot: Send + Sync {
    fn key_id(&self) -> u64;
    fn key_name(&self) -> &str;
    fn value(&self) -> &dyn Any;
    fn value_mut(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn has_no_client_hook(&self) -> bool;
    /// Runs `on_no_client`; `true` when the value stays (also when there is no hook).
    fn keep_without_client(&self) -> bool;
    /// Hands the value to `on_delete`, or drops it when there is none.
    fn delete(self: Box<Self>, ctx: &DeleteContext);
    /// Writes the value with the key's `save` hook; `None` when it has none.
    fn save(&self, out: &mut dyn Write) -> Option<io::Result<()>>;
    /// The value as what a session's value slot holds (no allocation).
    fn into_holder(self: Box<Self>) -> Box<dyn Holder>;
}

/// What a session's value slot holds: one value (a key's typed slot), or the
/// container of two or more (see `slots`). Values and the container are
/// different things: only a value has a key.
pub(crate) trait Holder: Send + Sync {
    /// The value, when this holds exactly one.
    fn one(&self) -> Option<&dyn ErasedSlot> {
        None
    }
    /// Mutable [`one`](Self::one).
    fn one_mut(&mut self) -> Option<&mut (dyn ErasedSlot + 'static)> {
        None
    }
    /// The values, when this is the container (empty otherwise).
    fn many(&self) -> &[Box<dyn ErasedSlot>] {
        &[]
    }
    /// The container's vector, when this is the container.
    fn many_mut(&mut self) -> Option<&mut Vec<Box<dyn ErasedSlot>>> {
        None
    }
    /// The one value, or the container's values.
    fn split(self: Box<Self>) -> Result<Box<dyn ErasedSlot>, Vec<Box<dyn ErasedSlot>>>;
}

/// Takes the value out of a slot of key type `T` (no allocation).
pub(crate) fn take_value<T: Send + Sync + 'static>(slot: Box<dyn ErasedSlot>) -> Option<T> {
    slot.into_any()
        .downcast::<TypedSlot<T>>()
        .ok()
        .map(|typed| typed.value)
}

struct TypedSlot<T> {
    key: Arc<KeyInner<T>>,
    value: T,
}

impl<T: Send + Sync + 'static> Holder for TypedSlot<T> {
    fn one(&self) -> Option<&dyn ErasedSlot> {
        Some(self)
    }

    fn one_mut(&mut self) -> Option<&mut (dyn ErasedSlot + 'static)> {
        Some(self)
    }

    fn split(self: Box<Self>) -> Result<Box<dyn ErasedSlot>, Vec<Box<dyn ErasedSlot>>> {
        Ok(self)
    }
}

impl<T: Send + Sync + 'static> ErasedSlot for TypedSlot<T> {
    fn key_id(&self) -> u64 {
        self.key.id
    }

    fn key_name(&self) -> &str {
        &self.key.name
    }

    fn value(&self) -> &dyn Any {
        &self.value
    }

    fn value_mut(&mut self) -> &mut dyn Any {
        &mut self.value
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn has_no_client_hook(&self) -> bool {
        self.key.on_no_client.is_some()
    }

    fn keep_without_client(&self) -> bool {
        match &self.key.on_no_client {
            Some(hook) => hook(&self.value),
            None => true,
        }
    }

    fn save(&self, out: &mut dyn Write) -> Option<io::Result<()>> {
        self.key.save.as_ref().map(|save| save(&self.value, out))
    }

    fn into_holder(self: Box<Self>) -> Box<dyn Holder> {
        self
    }

    fn delete(self: Box<Self>, ctx: &DeleteContext) {
        let TypedSlot { key, value } = *self;
        if let Some(hook) = &key.on_delete {
            hook(value, ctx);
        }
    }
}
