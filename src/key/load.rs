//! Keys as snapshot loading sees them: a name and a typed `load`, erased.

use std::fmt;
use std::io::{self, Read};

use super::{ErasedSlot, Key};

/// A key as [`Sessions::restore_from`](crate::Sessions::restore_from) sees it:
/// a name, and the means to load a value of its type. Implemented by every
/// [`Key`]; pass keys as `&[&KEY_A, &KEY_B]`.
///
/// ```
/// use keyed_session::{Key, LoadKey};
/// static CART: Key<Vec<u32>> = Key::new("cart").serde();
/// static NAME: Key<String> = Key::new("name").serde();
/// let keys: &[&dyn LoadKey] = &[&CART, &NAME];
/// assert_eq!(keys[1].name(), "name");
/// ```
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
///
/// ```
/// use keyed_session::{Key, LoadKey};
/// static CART: Key<Vec<u32>> = Key::new("cart").serde();
/// let loaded = CART.load_value_erased(&mut &b"[1]"[..]).unwrap();
/// assert!(format!("{loaded:?}").contains("cart"));
/// ```
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
        &self.name
    }

    fn load_value_erased(&self, input: &mut dyn Read) -> io::Result<LoadedValue> {
        self.load_value(input).map(|v| LoadedValue(self.slot(v)))
    }
}
