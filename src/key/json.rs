//! The serde shortcut: `save` and `load` as JSON (feature `serde`).

use std::io::{self, Read, Write};

use super::Key;

#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<T> Key<T>
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
    /// static CART: Key<Vec<u32>> = Key::new("cart").serde();
    /// let mut bytes = Vec::new();
    /// CART.save_value(&vec![1, 2], &mut bytes).unwrap();
    /// assert_eq!(bytes, b"[1,2]");
    /// assert_eq!(CART.load_value(&mut &bytes[..]).unwrap(), vec![1, 2]);
    /// ```
    #[must_use = "the setters return the key with the hook; the original is unchanged"]
    pub const fn serde(self) -> Self {
        self.save(save_json::<T>).load(load_json::<T>)
    }
}

fn save_json<T: serde::Serialize>(value: &T, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer(out, value).map_err(io::Error::from)
}

fn load_json<T: serde::de::DeserializeOwned>(input: &mut dyn Read) -> io::Result<T> {
    serde_json::from_reader(input).map_err(io::Error::from)
}
