//! The values of one session, in 16 bytes: nothing, the one value's slot
//! itself, or (from two values on) a container holding a short vector that is
//! scanned linearly (sessions hold a handful of values; a scan beats hashing and
//! costs less memory). The common one-value session thus needs no allocation
//! besides the value's own, and a lookup follows one pointer less.

use std::any::Any;

use crate::key::{ErasedSlot, Holder};

/// A session's values.
#[derive(Default)]
pub(crate) struct Slots(Option<Box<dyn Holder>>);

/// The container of two or more values; never seen outside [`Slots`].
struct Many(Vec<Box<dyn ErasedSlot>>);

impl Holder for Many {
    fn many(&self) -> &[Box<dyn ErasedSlot>] {
        &self.0
    }

    fn many_mut(&mut self) -> Option<&mut Vec<Box<dyn ErasedSlot>>> {
        Some(&mut self.0)
    }

    fn find(&self, key_id: u64) -> Option<&dyn Any> {
        let slot = self.0.iter().find(|s| s.key_id() == key_id)?;
        Some(slot.value())
    }

    fn find_mut(&mut self, key_id: u64) -> Option<&mut dyn Any> {
        let slot = self.0.iter_mut().find(|s| s.key_id() == key_id)?;
        Some(slot.value_mut())
    }

    fn split(self: Box<Self>) -> Result<Box<dyn ErasedSlot>, Vec<Box<dyn ErasedSlot>>> {
        Err(self.0)
    }
}

impl Slots {
    /// Builds the slot holder for `values` (none, one, or a container).
    fn hold(mut values: Vec<Box<dyn ErasedSlot>>) -> Option<Box<dyn Holder>> {
        match values.len() {
            0 => None,
            1 => values.pop().map(ErasedSlot::into_holder),
            _ => Some(Box::new(Many(values))),
        }
    }

    /// Every value, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &dyn ErasedSlot> {
        let holder = self.0.as_deref();
        let one = holder.and_then(Holder::one);
        let many = holder.map_or(&[][..], Holder::many);
        one.into_iter().chain(many.iter().map(|s| &**s))
    }

    pub(crate) fn len(&self) -> usize {
        match self.0.as_deref() {
            None => 0,
            Some(h) if h.one().is_some() => 1,
            Some(h) => h.many().len(),
        }
    }

    pub(crate) fn position(&self, key_id: u64) -> Option<usize> {
        self.iter().position(|s| s.key_id() == key_id)
    }

    /// The value under key `key_id`, as a `T` (one pass over the values).
    #[inline]
    pub(crate) fn value<T: 'static>(&self, key_id: u64) -> Option<&T> {
        self.0.as_deref()?.find(key_id)?.downcast_ref()
    }

    /// The value under key `key_id`, as a mutable `T` (one pass).
    #[inline]
    pub(crate) fn value_mut<T: 'static>(&mut self, key_id: u64) -> Option<&mut T> {
        self.0.as_deref_mut()?.find_mut(key_id)?.downcast_mut()
    }

    /// Puts `slot` under its key: the slot it replaces (`Ok(Some)`), or
    /// pushed as a new one (`Ok(None)`); `slot` back if the place found
    /// could not take it.
    pub(crate) fn put(
        &mut self,
        slot: Box<dyn ErasedSlot>,
    ) -> Result<Option<Box<dyn ErasedSlot>>, Box<dyn ErasedSlot>> {
        match self.position(slot.key_id()) {
            Some(i) => self.replace(i, slot).map(Some),
            None => {
                self.push(slot);
                Ok(None)
            }
        }
    }

    /// Takes out the value under key `key_id`.
    pub(crate) fn remove(&mut self, key_id: u64) -> Option<Box<dyn ErasedSlot>> {
        let i = self.position(key_id)?;
        self.swap_remove(i)
    }

    pub(crate) fn push(&mut self, slot: Box<dyn ErasedSlot>) {
        self.0 = Some(match self.0.take().map(Holder::split) {
            None => slot.into_holder(),
            Some(Ok(single)) => Box::new(Many(vec![single, slot])),
            Some(Err(mut many)) => {
                many.push(slot);
                Box::new(Many(many))
            }
        });
    }

    /// Puts `slot` at `i` (as given by [`position`](Self::position)) and hands
    /// back the value it replaces; `slot` itself when there is no such place.
    pub(crate) fn replace(
        &mut self,
        i: usize,
        slot: Box<dyn ErasedSlot>,
    ) -> Result<Box<dyn ErasedSlot>, Box<dyn ErasedSlot>> {
        let single = self.0.as_deref().is_some_and(|h| h.one().is_some());
        if single {
            if i != 0 {
                return Err(slot);
            }
            return match self.0.take().map(Holder::split) {
                Some(Ok(old)) => {
                    self.0 = Some(slot.into_holder());
                    Ok(old)
                }
                Some(Err(values)) => {
                    self.0 = Self::hold(values);
                    Err(slot)
                }
                None => Err(slot),
            };
        }
        match self.0.as_deref_mut().and_then(Holder::many_mut) {
            Some(many) => match many.get_mut(i) {
                Some(old) => Ok(std::mem::replace(old, slot)),
                None => Err(slot),
            },
            None => Err(slot),
        }
    }

    /// Asks each value whose key has an `on_no_client` hook whether it stays
    /// now that the session's last client left (each hook caught and reported
    /// by [`hooks::run`](crate::hooks::run); one that panics keeps its value:
    /// nothing is lost by a bug). The keys of the values to drop, and how many
    /// hooks panicked.
    pub(crate) fn unwanted_without_client(&self) -> (Vec<u64>, u64) {
        let mut dropped = Vec::new();
        let mut panics = 0;
        for slot in self.iter().filter(|s| s.has_no_client_hook()) {
            match crate::hooks::run(slot.key_name(), "on_no_client", || {
                slot.keep_without_client()
            }) {
                Some(true) => {}
                Some(false) => dropped.push(slot.key_id()),
                None => panics += 1,
            }
        }
        (dropped, panics)
    }

    /// Takes out the values under `keys` (those still there).
    pub(crate) fn take_keys(&mut self, keys: Vec<u64>) -> Vec<Box<dyn ErasedSlot>> {
        keys.into_iter()
            .filter_map(|k| self.position(k).and_then(|i| self.swap_remove(i)))
            .collect()
    }

    /// Takes out the value at `i` (as given by [`position`](Self::position)).
    /// Allocates nothing: a container left with one value gives way to it.
    pub(crate) fn swap_remove(&mut self, i: usize) -> Option<Box<dyn ErasedSlot>> {
        let single = self.0.as_deref().is_some_and(|h| h.one().is_some());
        if single {
            return if i == 0 {
                self.0.take().and_then(|h| h.split().ok())
            } else {
                None
            };
        }
        let many = self.0.as_deref_mut()?.many_mut()?;
        let taken = (i < many.len()).then(|| many.swap_remove(i));
        if many.len() < 2 {
            let left = self.take_all();
            self.0 = Self::hold(left);
        }
        taken
    }

    /// Takes every value out, leaving the session empty.
    pub(crate) fn take_all(&mut self) -> Vec<Box<dyn ErasedSlot>> {
        match self.0.take().map(Holder::split) {
            None => Vec::new(),
            Some(Ok(single)) => vec![single],
            Some(Err(many)) => many,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, take_value};

    #[test]
    fn slots_move_between_one_and_many() {
        let keys: Vec<Key<u32>> = (0..3)
            .map(|i| Key::builder(format!("k{i}")).build())
            .collect();
        let mut slots = Slots::default();
        assert_eq!(slots.len(), 0);
        for (i, key) in keys.iter().enumerate() {
            slots.push(key.slot(i as u32));
            assert_eq!(slots.len(), i + 1);
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(slots.value::<u32>(key.id()), Some(&(i as u32)));
        }
        // Replacing hands the old value back, in a container and alone.
        let at = slots.position(keys[1].id()).unwrap();
        let old = slots.replace(at, keys[1].slot(10)).ok().unwrap();
        assert_eq!(take_value::<u32>(old), Some(1));
        // Back down to one value (no container) and to none.
        let at = slots.position(keys[0].id()).unwrap();
        assert!(slots.swap_remove(at).is_some());
        let at = slots.position(keys[2].id()).unwrap();
        assert!(slots.swap_remove(at).is_some());
        assert_eq!(slots.len(), 1);
        assert!(
            slots.0.as_deref().unwrap().one().is_some(),
            "one value is held directly"
        );
        let old = slots.replace(0, keys[1].slot(11)).ok().unwrap();
        assert_eq!(take_value::<u32>(old), Some(10));
        assert!(slots.replace(3, keys[1].slot(12)).is_err());
        assert!(slots.swap_remove(5).is_none());
        assert_eq!(slots.len(), 1, "an index past the end takes nothing");
        *slots.value_mut::<u32>(keys[1].id()).unwrap() += 1;
        assert_eq!(slots.value::<u32>(keys[1].id()), Some(&12));
        assert!(slots.value_mut::<u32>(keys[0].id()).is_none());
        assert!(slots.value_mut::<u64>(keys[1].id()).is_none(), "wrong type");
        assert!(slots.swap_remove(0).is_some());
        assert!(slots.0.is_none());
        assert!(slots.take_all().is_empty());
        slots.push(keys[0].slot(7));
        slots.push(keys[1].slot(8));
        assert_eq!(slots.take_all().len(), 2);
        assert_eq!(slots.len(), 0);
    }
}
