//! One key per name in a store: a name is a key's identity wherever values
//! leave the process (snapshots, a store shared through Redis), so two
//! different keys of one name used with one store are a set-up mistake,
//! refused with a panic at the second one's first use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Tokens of the stores' registries; 0 is no store.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The keys a store has seen, by name.
pub(crate) struct KeyNames {
    token: u64,
    names: Mutex<HashMap<String, u64>>,
}

impl Default for KeyNames {
    fn default() -> Self {
        KeyNames {
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            names: Mutex::new(HashMap::new()),
        }
    }
}

impl KeyNames {
    /// This registry's token (never 0).
    #[inline]
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// Admits the key `id` under `name`.
    ///
    /// # Panics
    /// When another key of this name was admitted before.
    pub(crate) fn admit(&self, name: &str, id: u64) {
        let mut names = self.names.lock();
        match names.get(name) {
            Some(&known) if known != id => {
                drop(names);
                panic!(
                    "keyed-session: two different keys are named `{name}` in one store. \
                     A name is a key's identity wherever values leave the process \
                     (snapshots, a store shared through Redis), so each name must \
                     belong to one key: use one `static` (or clones of one key) per \
                     name, or give the keys different names."
                );
            }
            Some(_) => {}
            None => {
                names.insert(name.to_owned(), id);
            }
        }
    }
}
