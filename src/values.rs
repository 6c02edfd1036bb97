//! Several keys of one session in one step: the view an `edit` closure gets.
//!
//! In memory the view works on the session's values themselves, under the
//! session's value lock. Over Redis it works on the shared values as the
//! handle last read them, and records what the closure read and wrote: the
//! store then writes every changed key in one compare-and-set that checks
//! every key the closure read or wrote, and runs the closure again on fresh
//! values when another writer came first.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;

use crate::key::names::KeyNames;
use crate::key::{Key, take_value};
use crate::slots::Slots;

/// The session's values, for a closure that reads and changes several keys
/// in one step: [`Session::edit`](crate::Session::edit),
/// `RedisSession::edit` and `RequestSession::edit` (features `redis` and
/// `axum`) hand it out.
///
/// ```
/// use keyed_session::{Key, Sessions, Sweeper};
/// static USER: Key<String> = Key::new("user");
/// static CART: Key<Vec<String>> = Key::new("cart");
///
/// let sessions = Sessions::builder().sweeper(Sweeper::Manual).build();
/// let s = sessions.create(None).unwrap();
/// s.set(&USER, "ada".into()).unwrap();
/// // The cart is filled from the user, in one step: no other change of
/// // the session comes between the read and the write.
/// let items = s
///     .edit(|v| {
///         let user = v.get(&USER).unwrap_or_default();
///         let cart = v.get_or_insert_with(&CART, Vec::new);
///         cart.push(format!("{user}'s book"));
///         cart.len()
///     })
///     .unwrap();
/// assert_eq!(items, 1);
/// assert_eq!(s.get(&CART).unwrap(), ["ada's book"]);
/// ```
pub struct Values<'a>(Inner<'a>);

enum Inner<'a> {
    Local {
        slots: &'a mut Slots,
        names: &'a KeyNames,
    },
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Shared(&'a mut Shared),
}

impl fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Values").finish_non_exhaustive()
    }
}

/// Writes a touched value with its key's `save` hook.
type Encode = Box<dyn Fn(&dyn Any) -> io::Result<Vec<u8>>>;

/// A shared value the closure touched: decoded, possibly changed.
struct Touched {
    /// `None`: removed (or absent and not set).
    value: Option<Box<dyn Any + Send>>,
    written: bool,
    encode: Encode,
}

/// What a shared edit reads from: the shared values as a handle last read
/// them, and the store's key registry.
pub(crate) trait Base {
    /// A shared key's bytes as last read (`None`: absent).
    fn bytes(&self, name: &str) -> Option<&[u8]>;
    fn names(&self) -> &KeyNames;
}

/// A store shared by many processes' side of [`Values`]: what the closure
/// read and wrote, over the bytes the handle last read.
pub(crate) struct Shared {
    base: Box<dyn Base>,
    touched: HashMap<String, Touched>,
    read: RefCell<Vec<String>>,
    /// The first error: a local key, or a value its `load` refused.
    failed: RefCell<Option<EditError>>,
}

/// Why a shared store's `edit` wrote nothing.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum EditError {
    /// The closure used a key that is not shared (named).
    NotShared(String),
    /// A value's `load` or `save` failed.
    Value(io::Error),
}

/// What a shared edit wants written: each touched key read or written, and
/// the new bytes (`None`: removed) of each written one.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Changes {
    pub(crate) read: Vec<String>,
    pub(crate) written: Vec<(String, Option<Vec<u8>>)>,
}

impl<'a> Values<'a> {
    pub(crate) fn local(slots: &'a mut Slots, names: &'a KeyNames) -> Self {
        Values(Inner::Local { slots, names })
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn shared(shared: &'a mut Shared) -> Self {
        Values(Inner::Shared(shared))
    }

    /// A clone of the value under `key`.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        match &self.0 {
            Inner::Local { slots, names } => slots.value::<T>(key.id_in(names)).cloned(),
            Inner::Shared(shared) => shared.get(key),
        }
    }

    /// Whether there is a value under `key`.
    pub fn contains<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        match &self.0 {
            Inner::Local { slots, names } => slots.position(key.id_in(names)).is_some(),
            Inner::Shared(shared) => shared.contains(key),
        }
    }

    /// The value under `key`, to change in place.
    pub fn get_mut<T: Send + Sync + 'static>(&mut self, key: &Key<T>) -> Option<&mut T> {
        match &mut self.0 {
            Inner::Local { slots, names } => slots.value_mut::<T>(key.id_in(names)),
            Inner::Shared(shared) => shared.get_mut(key),
        }
    }

    /// The value under `key`, inserting `init()` first when there is none.
    pub fn get_or_insert_with<T: Send + Sync + 'static>(
        &mut self,
        key: &Key<T>,
        init: impl FnOnce() -> T,
    ) -> &mut T {
        if !self.contains(key) {
            self.set(key, init());
        }
        self.get_mut(key)
            .expect("a value was just stored under this key")
    }

    /// Stores `value` under `key` and returns the value it replaces (no
    /// hook runs for it: it is yours, as with
    /// [`Session::set`](crate::Session::set)).
    pub fn set<T: Send + Sync + 'static>(&mut self, key: &Key<T>, value: T) -> Option<T> {
        match &mut self.0 {
            Inner::Local { slots, names } => {
                key.id_in(names);
                match slots.put(key.slot(value)) {
                    Ok(old) => old.and_then(take_value),
                    // The place `put` finds always takes the slot.
                    Err(_) => None,
                }
            }
            Inner::Shared(shared) => shared.set(key, Some(value)),
        }
    }

    /// Takes the value under `key` out and returns it (no hook runs).
    pub fn remove<T: Send + Sync + 'static>(&mut self, key: &Key<T>) -> Option<T> {
        match &mut self.0 {
            Inner::Local { slots, names } => slots.remove(key.id_in(names)).and_then(take_value),
            Inner::Shared(shared) => shared.set(key, None),
        }
    }
}

impl Shared {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn new(base: Box<dyn Base>) -> Self {
        Shared {
            base,
            touched: HashMap::new(),
            read: RefCell::new(Vec::new()),
            failed: RefCell::new(None),
        }
    }

    /// Whether `key` may take part (a shared key: else it is local to a
    /// process and cannot be part of one compare-and-set); records the
    /// first refusal.
    fn admits<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        key.id_in(self.base.names());
        if key.can_save() && key.can_load() {
            return true;
        }
        self.fail(EditError::NotShared(key.name().to_owned()));
        false
    }

    fn fail(&self, e: EditError) {
        self.failed.borrow_mut().get_or_insert(e);
    }

    /// Records that the closure read key `name` (its revision is checked).
    fn note_read(&self, name: &str) {
        let mut read = self.read.borrow_mut();
        if !read.iter().any(|n| n == name) {
            read.push(name.to_owned());
        }
    }

    /// `key`'s value as last read, decoded, and the read recorded.
    fn decode<T: Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        let name = key.name();
        self.note_read(name);
        let bytes = self.base.bytes(name)?;
        match key.load_value(&mut &bytes[..]) {
            Ok(value) => Some(value),
            Err(e) => {
                self.fail(EditError::Value(e));
                None
            }
        }
    }

    fn get<T: Clone + Send + Sync + 'static>(&self, key: &Key<T>) -> Option<T> {
        if !self.admits(key) {
            return None;
        }
        match self.touched.get(key.name()) {
            Some(t) => t.value.as_ref()?.downcast_ref::<T>().cloned(),
            None => self.decode(key),
        }
    }

    fn contains<T: Send + Sync + 'static>(&self, key: &Key<T>) -> bool {
        if !self.admits(key) {
            return false;
        }
        match self.touched.get(key.name()) {
            Some(t) => t.value.is_some(),
            None => {
                self.note_read(key.name());
                self.base.bytes(key.name()).is_some()
            }
        }
    }

    /// `key`'s entry among the touched ones, decoded on first use.
    fn touch<T: Send + Sync + 'static>(&mut self, key: &Key<T>) -> &mut Touched {
        if !self.touched.contains_key(key.name()) {
            let value = self.decode(key).map(|v| Box::new(v) as Box<dyn Any + Send>);
            let encoder = key.clone();
            let encode = Box::new(move |value: &dyn Any| {
                let mut out = Vec::new();
                if let Some(value) = value.downcast_ref::<T>() {
                    encoder.save_value(value, &mut out)?;
                }
                Ok(out)
            });
            self.touched.insert(
                key.name().to_owned(),
                Touched {
                    value,
                    written: false,
                    encode,
                },
            );
        }
        self.touched
            .get_mut(key.name())
            .expect("inserted just above")
    }

    fn get_mut<T: Send + Sync + 'static>(&mut self, key: &Key<T>) -> Option<&mut T> {
        if !self.admits(key) {
            return None;
        }
        let touched = self.touch(key);
        let value = touched.value.as_mut()?.downcast_mut::<T>()?;
        touched.written = true;
        Some(value)
    }

    fn set<T: Send + Sync + 'static>(&mut self, key: &Key<T>, value: Option<T>) -> Option<T> {
        if !self.admits(key) {
            return None;
        }
        let touched = self.touch(key);
        touched.written = true;
        let old = std::mem::replace(
            &mut touched.value,
            value.map(|v| Box::new(v) as Box<dyn Any + Send>),
        );
        old.and_then(|b| b.downcast::<T>().ok()).map(|b| *b)
    }

    /// What the closure read and wrote, encoded; or why nothing may be
    /// written.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn finish(self) -> Result<Changes, EditError> {
        if let Some(e) = self.failed.into_inner() {
            return Err(e);
        }
        let mut written = Vec::new();
        for (name, touched) in self.touched {
            if !touched.written {
                continue;
            }
            let bytes = match &touched.value {
                Some(value) => Some((touched.encode)(value.as_ref()).map_err(EditError::Value)?),
                None => None,
            };
            written.push((name, bytes));
        }
        Ok(Changes {
            read: self.read.into_inner(),
            written,
        })
    }
}
