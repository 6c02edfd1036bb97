//! Typed keys and their lifecycle hooks.
//!
//! A [`Key`] is usually a plain `static`, built by `const fn`s with `fn` hooks
//! (non-capturing closures coerce). Hooks that capture state go through
//! [`KeyBuilder`]. Either way the hooks end up in one shared `KeyInner`, made
//! on the key's first use, which every stored value points to.

mod builder;
#[cfg(feature = "serde")]
mod json;
mod load;
pub(crate) mod names;
mod slot;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::reason::DeleteContext;
pub use builder::KeyBuilder;
pub use load::{LoadKey, LoadedValue};
pub(crate) use slot::{ErasedSlot, Holder, take_value};

type DynOnDelete<T> = dyn Fn(T, &DeleteContext) + Send + Sync;
type DynOnNoClient<T> = dyn Fn(&T) -> bool + Send + Sync;
type DynSave<T> = dyn Fn(&T, &mut dyn Write) -> io::Result<()> + Send + Sync;
type DynLoad<T> = dyn Fn(&mut dyn Read) -> io::Result<T> + Send + Sync;

static NEXT_KEY_ID: AtomicU64 = AtomicU64::new(1);

/// The hooks as plain `fn`s: what `const` construction can set (it cannot
/// drop anything, and these have nothing to drop).
struct FnHooks<T: 'static> {
    on_delete: Option<fn(T, &DeleteContext)>,
    on_no_client: Option<fn(&T) -> bool>,
    save: Option<SaveFn<T>>,
    load: Option<LoadFn<T>>,
}

type SaveFn<T> = fn(&T, &mut dyn Write) -> io::Result<()>;
type LoadFn<T> = fn(&mut dyn Read) -> io::Result<T>;

impl<T> Clone for FnHooks<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for FnHooks<T> {}

/// The hooks as closures with captured state, set by [`KeyBuilder`]. A hook
/// set both ways runs the `fn` one.
struct DynHooks<T: 'static> {
    on_delete: Option<Arc<DynOnDelete<T>>>,
    on_no_client: Option<Arc<DynOnNoClient<T>>>,
    save: Option<Arc<DynSave<T>>>,
    load: Option<Arc<DynLoad<T>>>,
}

impl<T> Clone for DynHooks<T> {
    fn clone(&self) -> Self {
        DynHooks {
            on_delete: self.on_delete.clone(),
            on_no_client: self.on_no_client.clone(),
            save: self.save.clone(),
            load: self.load.clone(),
        }
    }
}

/// A typed handle to one slot of every session, with the hooks that say what
/// happens to its value when the session ends, when its last client leaves, and
/// across a restart.
///
/// A key is usually a plain `static`, its type written once: [`Key::new`] and
/// the hook setters are `const fn`s taking `fn` pointers, and a closure that
/// captures nothing coerces to one. Hooks that need captured state (a counter,
/// a channel) go through [`Key::builder`]. The static's type is all the
/// compiler needs for the last setter of the chain; a closure in an earlier
/// setter writes its argument type (`|n: &u64, out| ...`), a named `fn` never
/// needs to. Two keys are different keys even
/// when they hold the same type: storage is by key, not by type. Clones are
/// the same key.
///
/// A key's name is its identity wherever values leave the process: in
/// snapshots and in a store shared through Redis. So each name belongs to one
/// key per store: a store that meets a second, different key with a name it
/// has already seen panics at that key's first use (any read or write), in
/// memory as over Redis, instead of letting one key read or erase the other's
/// value. Use one `static` per name (clones are fine).
///
/// `T` needs only `Send + Sync + 'static`: a channel sender, a socket or a
/// `Mutex<Connection>` is a fine value.
///
/// ```
/// use std::sync::mpsc::Sender;
/// use keyed_session::{DeleteContext, Key};
///
/// fn say_goodbye(tx: Sender<String>, ctx: &DeleteContext) {
///     let _ = tx.send(format!("session ended: {:?}", ctx.end_reason()));
/// }
///
/// static VISITS: Key<u64> = Key::new("visits");
/// static OUTBOX: Key<Sender<String>> = Key::new("outbox")
///     .on_delete(say_goodbye)
///     .on_no_client(|_tx| false); // nobody listens any more: drop it
///
/// assert_eq!(VISITS.name(), "visits");
/// assert_ne!(VISITS.id(), OUTBOX.id());
/// assert_eq!(VISITS.id(), VISITS.clone().id());
/// ```
pub struct Key<T: 'static> {
    name: Cow<'static, str>,
    fns: FnHooks<T>,
    dyns: DynHooks<T>,
    /// How many `const` setters have run: a setter on a key already in use
    /// would be silently ignored, so `slot` refuses it (see `inner`).
    edits: u32,
    /// Made from the fields above on first use; its id is the key's identity,
    /// shared by clones.
    inner: OnceLock<Arc<KeyInner<T>>>,
}

/// What a key is once used: its id, name and hooks, shared by every value
/// stored under it.
pub(crate) struct KeyInner<T: 'static> {
    id: u64,
    name: Cow<'static, str>,
    /// The token of the store registry that last admitted this key (see
    /// `names`): the check costs one load while a key is used with one store.
    admitted_by: AtomicU64,
    fns: FnHooks<T>,
    dyns: DynHooks<T>,
    edits: u32,
}

impl<T> KeyInner<T> {
    /// Hands the value to `on_delete`, or drops it when there is none.
    fn delete(&self, value: T, ctx: &DeleteContext) {
        match (self.fns.on_delete, &self.dyns.on_delete) {
            (Some(hook), _) => hook(value, ctx),
            (None, Some(hook)) => hook(value, ctx),
            (None, None) => drop(value),
        }
    }

    fn has_no_client_hook(&self) -> bool {
        self.fns.on_no_client.is_some() || self.dyns.on_no_client.is_some()
    }

    /// `on_no_client`'s answer; `true` (keep) without a hook.
    fn keep_without_client(&self, value: &T) -> bool {
        match (self.fns.on_no_client, &self.dyns.on_no_client) {
            (Some(hook), _) => hook(value),
            (None, Some(hook)) => hook(value),
            (None, None) => true,
        }
    }

    fn save(&self, value: &T, out: &mut dyn Write) -> Option<io::Result<()>> {
        match (self.fns.save, &self.dyns.save) {
            (Some(hook), _) => Some(hook(value, out)),
            (None, Some(hook)) => Some(hook(value, out)),
            (None, None) => None,
        }
    }

    fn load(&self, input: &mut dyn Read) -> Option<io::Result<T>> {
        match (self.fns.load, &self.dyns.load) {
            (Some(hook), _) => Some(hook(input)),
            (None, Some(hook)) => Some(hook(input)),
            (None, None) => None,
        }
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        Key {
            name: self.name.clone(),
            fns: self.fns,
            dyns: self.dyns.clone(),
            edits: self.edits,
            inner: OnceLock::from(Arc::clone(self.inner())),
        }
    }
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("id", &self.inner().id)
            .field(
                "on_delete",
                &(self.fns.on_delete.is_some() || self.dyns.on_delete.is_some()),
            )
            .field(
                "on_no_client",
                &(self.fns.on_no_client.is_some() || self.dyns.on_no_client.is_some()),
            )
            .field("save", &self.can_save())
            .field("load", &self.can_load())
            .finish()
    }
}

impl<T> Key<T> {
    /// The shared part, made on first use (one atomic load once made).
    #[inline]
    fn inner(&self) -> &Arc<KeyInner<T>> {
        self.inner.get_or_init(|| {
            Arc::new(KeyInner {
                id: NEXT_KEY_ID.fetch_add(1, Ordering::Relaxed),
                name: self.name.clone(),
                admitted_by: AtomicU64::new(0),
                fns: self.fns,
                dyns: self.dyns.clone(),
                edits: self.edits,
            })
        })
    }

    /// Whether values of this key are written to snapshots.
    ///
    /// ```
    /// use keyed_session::Key;
    /// assert!(!Key::<u8>::new("socket").can_save());
    /// ```
    pub fn can_save(&self) -> bool {
        self.fns.save.is_some() || self.dyns.save.is_some()
    }

    /// Whether values of this key can be read back from snapshots.
    ///
    /// ```
    /// use keyed_session::Key;
    /// assert!(!Key::<u8>::new("socket").can_load());
    /// ```
    pub fn can_load(&self) -> bool {
        self.fns.load.is_some() || self.dyns.load.is_some()
    }
}

impl<T: Send + Sync + 'static> Key<T> {
    /// A key with no hooks: its value is dropped when the session ends and is
    /// never saved. Add hooks with the `const` setters below, where the key is
    /// made: a key is fixed once used, and storing a value under a key whose
    /// hooks changed after its first use panics.
    ///
    /// ```
    /// use keyed_session::Key;
    /// static VISITS: Key<u64> = Key::new("visits");
    /// assert_eq!(VISITS.name(), "visits");
    /// assert!(!VISITS.can_save());
    /// ```
    pub const fn new(name: &'static str) -> Self {
        Key {
            name: Cow::Borrowed(name),
            fns: FnHooks {
                on_delete: None,
                on_no_client: None,
                save: None,
                load: None,
            },
            dyns: DynHooks {
                on_delete: None,
                on_no_client: None,
                save: None,
                load: None,
            },
            edits: 0,
            inner: OnceLock::new(),
        }
    }

    /// Runs when the value leaves the session for good without being handed
    /// back to the application. See [`KeyBuilder::on_delete`] for when and on
    /// which thread; this is the same hook as a plain `fn` (a closure that
    /// captures nothing coerces), so the key can be a `static`.
    ///
    /// ```
    /// use keyed_session::{DeleteContext, Key};
    /// static SOCKET: Key<u32> = Key::new("socket")
    ///     .on_delete(|fd, ctx| println!("closing {fd}: {:?}", ctx.cause));
    /// assert!(format!("{SOCKET:?}").contains("on_delete: true"));
    /// ```
    #[must_use = "the setters return the key with the hook; the original is unchanged"]
    pub const fn on_delete(mut self, hook: fn(T, &DeleteContext)) -> Self {
        self.fns.on_delete = Some(hook);
        self.edits = self.edits.wrapping_add(1);
        self
    }

    /// Decides, when the last [`ClientGuard`](crate::ClientGuard) of a session
    /// drops, whether the value stays (`true`) or goes to `on_delete`
    /// (`false`). See [`KeyBuilder::on_no_client`] for the locking.
    ///
    /// ```
    /// use keyed_session::Key;
    /// static TAB: Key<u32> = Key::new("tab").on_no_client(|_| false);
    /// assert!(format!("{TAB:?}").contains("on_no_client: true"));
    /// ```
    #[must_use = "the setters return the key with the hook; the original is unchanged"]
    pub const fn on_no_client(mut self, hook: fn(&T) -> bool) -> Self {
        self.fns.on_no_client = Some(hook);
        self.edits = self.edits.wrapping_add(1);
        self
    }

    /// How to write the value into a snapshot. Keys without it are
    /// memory-only. See [`KeyBuilder::save`] for the locking.
    ///
    /// ```
    /// use keyed_session::Key;
    /// static HITS: Key<u64> = Key::new("hits")
    ///     // Inference reaches only the last setter: closures before it name
    ///     // their argument's type.
    ///     .save(|n: &u64, out| out.write_all(&n.to_le_bytes()))
    ///     .load(|input| {
    ///         let mut bytes = [0; 8];
    ///         input.read_exact(&mut bytes)?;
    ///         Ok(u64::from_le_bytes(bytes))
    ///     });
    /// let mut image = Vec::new();
    /// HITS.save_value(&7, &mut image).unwrap();
    /// assert_eq!(HITS.load_value(&mut &image[..]).unwrap(), 7);
    /// ```
    #[must_use = "the setters return the key with the hook; the original is unchanged"]
    pub const fn save(mut self, hook: fn(&T, &mut dyn Write) -> io::Result<()>) -> Self {
        self.fns.save = Some(hook);
        self.edits = self.edits.wrapping_add(1);
        self
    }

    /// How to read the value back from a snapshot (see [`save`](Self::save)
    /// for an example).
    #[must_use = "the setters return the key with the hook; the original is unchanged"]
    pub const fn load(mut self, hook: fn(&mut dyn Read) -> io::Result<T>) -> Self {
        self.fns.load = Some(hook);
        self.edits = self.edits.wrapping_add(1);
        self
    }

    /// Starts a key whose hooks capture state (closures that are not plain
    /// `fn`s), or whose name is made at run time. The name is used in
    /// snapshots, events and `Debug` output; keep it unique among the keys
    /// saved to one snapshot.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use keyed_session::Key;
    ///
    /// let ended = Arc::new(AtomicUsize::new(0));
    /// let counted = Arc::clone(&ended);
    /// let key: Key<u8> = Key::builder(format!("tab-{}", 3))
    ///     .on_delete(move |_, _| { counted.fetch_add(1, Ordering::Relaxed); })
    ///     .build();
    /// assert_eq!(key.name(), "tab-3");
    /// ```
    pub fn builder(name: impl Into<Cow<'static, str>>) -> KeyBuilder<T> {
        KeyBuilder {
            key: Key {
                name: name.into(),
                ..Key::new("")
            },
        }
    }

    /// The key's process-unique number (clones share it).
    ///
    /// ```
    /// use keyed_session::Key;
    /// let (a, b): (Key<u8>, Key<u8>) = (Key::new("same"), Key::new("same"));
    /// assert_ne!(a.id(), b.id());
    /// assert_eq!(a.id(), a.clone().id());
    /// ```
    pub fn id(&self) -> u64 {
        self.inner().id
    }

    /// The key's id, once `names` (a store's registry) admitted it: the
    /// first use of the key with that store checks that no other key there
    /// has its name.
    ///
    /// # Panics
    /// When another key of the same name was used with that store.
    #[inline]
    pub(crate) fn id_in(&self, names: &names::KeyNames) -> u64 {
        let inner = self.inner();
        if inner.admitted_by.load(Ordering::Relaxed) != names.token() {
            names.admit(&inner.name, inner.id);
            inner.admitted_by.store(names.token(), Ordering::Relaxed);
        }
        inner.id
    }

    /// The key's name: its identity in snapshots and shared stores (one key
    /// per name in a store; see [`Key`]).
    ///
    /// ```
    /// use keyed_session::Key;
    /// assert_eq!(Key::<u8>::new("cart").name(), "cart");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `value` with the key's `save` hook.
    ///
    /// # Errors
    /// The hook's own error, or [`io::ErrorKind::Unsupported`] when the key has no
    /// `save` hook.
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use keyed_session::Key;
    /// let err = Key::<u8>::new("socket").save_value(&1, &mut Vec::new()).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Unsupported);
    /// ```
    pub fn save_value(&self, value: &T, out: &mut dyn Write) -> io::Result<()> {
        self.inner()
            .save(value, out)
            .unwrap_or_else(|| Err(no_hook("save", &self.name)))
    }

    /// Reads a value with the key's `load` hook.
    ///
    /// # Errors
    /// The hook's own error, or [`io::ErrorKind::Unsupported`] when the key has no
    /// `load` hook.
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use keyed_session::Key;
    /// let err = Key::<u8>::new("socket").load_value(&mut &b""[..]).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Unsupported);
    /// ```
    pub fn load_value(&self, input: &mut dyn Read) -> io::Result<T> {
        self.inner()
            .load(input)
            .unwrap_or_else(|| Err(no_hook("load", &self.name)))
    }

    /// Hands `value` to the key's `on_delete`, or drops it without one (for a
    /// value that was never in a local slot: a shared value's last bytes).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn run_on_delete(&self, value: T, ctx: &DeleteContext) {
        self.inner().delete(value, ctx);
    }

    /// `value` in a slot of this key.
    ///
    /// # Panics
    /// When a `const` setter ran on this key after its first use (the new hook
    /// would be ignored for values already stored, and silently so).
    #[inline]
    pub(crate) fn slot(&self, value: T) -> Box<dyn ErasedSlot> {
        let inner = self.inner();
        assert!(
            inner.edits == self.edits,
            "key `{}`: a hook was set after the key was first used; set hooks where the key is made",
            self.name
        );
        slot::new_slot(Arc::clone(inner), value)
    }
}

fn no_hook(which: &str, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("key `{name}` has no {which} hook"),
    )
}
