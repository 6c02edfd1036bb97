//! One value together with its key, type-erased: what sessions store.

use std::any::Any;
use std::io::{self, Write};
use std::sync::Arc;

use super::KeyInner;
use crate::reason::DeleteContext;

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
    /// [`delete`](Self::delete) under [`hooks::run`](crate::hooks::run):
    /// `false` when the hook panicked (reported).
    fn delete_caught(self: Box<Self>, ctx: &DeleteContext) -> bool;
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
    /// The values, when this is the container (empty otherwise).
    fn many(&self) -> &[Box<dyn ErasedSlot>] {
        &[]
    }
    /// The container's vector, when this is the container.
    fn many_mut(&mut self) -> Option<&mut Vec<Box<dyn ErasedSlot>>> {
        None
    }
    /// The value under key `key_id`, in one virtual call (the request path).
    fn find(&self, key_id: u64) -> Option<&dyn Any>;
    /// Mutable [`find`](Self::find).
    fn find_mut(&mut self, key_id: u64) -> Option<&mut dyn Any>;
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

/// A value of `key`'s type in its slot, boxed as the sessions keep it.
pub(super) fn new_slot<T: Send + Sync + 'static>(
    key: Arc<KeyInner<T>>,
    value: T,
) -> Box<dyn ErasedSlot> {
    Box::new(TypedSlot { key, value })
}

struct TypedSlot<T: 'static> {
    key: Arc<KeyInner<T>>,
    value: T,
}

impl<T: Send + Sync + 'static> Holder for TypedSlot<T> {
    fn one(&self) -> Option<&dyn ErasedSlot> {
        Some(self)
    }

    #[inline]
    fn find(&self, key_id: u64) -> Option<&dyn Any> {
        (self.key.id == key_id).then_some(&self.value)
    }

    #[inline]
    fn find_mut(&mut self, key_id: u64) -> Option<&mut dyn Any> {
        (self.key.id == key_id).then_some(&mut self.value)
    }

    fn split(self: Box<Self>) -> Result<Box<dyn ErasedSlot>, Vec<Box<dyn ErasedSlot>>> {
        Ok(self)
    }
}

impl<T: Send + Sync + 'static> ErasedSlot for TypedSlot<T> {
    fn key_id(&self) -> u64 {
        self.key.id
    }

    fn delete_caught(self: Box<Self>, ctx: &DeleteContext) -> bool {
        let key = std::sync::Arc::clone(&self.key);
        crate::hooks::run(&key.name, "on_delete", || self.delete(ctx)).is_some()
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
        self.key.has_no_client_hook()
    }

    fn keep_without_client(&self) -> bool {
        self.key.keep_without_client(&self.value)
    }

    fn save(&self, out: &mut dyn Write) -> Option<io::Result<()>> {
        self.key.save(&self.value, out)
    }

    fn into_holder(self: Box<Self>) -> Box<dyn Holder> {
        self
    }

    fn delete(self: Box<Self>, ctx: &DeleteContext) {
        let TypedSlot { key, value } = *self;
        key.delete(value, ctx);
    }
}
