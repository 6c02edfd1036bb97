//! Running a user hook: the one place that catches a panic and reports it,
//! with the key's name, the hook and the panic's message (through `tracing`
//! when that feature is on). Every hook runner of both stores goes through
//! [`run`]; the callers count what panicked.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `hook` (the `what` hook of key `key`: `on_delete`, `on_no_client`,
/// `save`, `load`), catching a panic: `None` when it panicked, after
/// reporting it.
pub(crate) fn run<R>(key: &str, what: &'static str, hook: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(hook)) {
        Ok(r) => Some(r),
        Err(payload) => {
            report(key, what, payload.as_ref());
            None
        }
    }
}

/// A panic's message: its `&str` or `String` payload.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

#[cfg(feature = "tracing")]
fn report(key: &str, what: &'static str, payload: &(dyn Any + Send)) {
    tracing::error!(
        key,
        hook = what,
        panic = message(payload),
        "a session hook panicked (caught; the other hooks still ran)"
    );
}

#[cfg(not(feature = "tracing"))]
fn report(_key: &str, _what: &'static str, _payload: &(dyn Any + Send)) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_and_its_message_read() {
        assert_eq!(run("k", "on_delete", || 7), Some(7));
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let caught = run("k", "on_delete", || -> u8 { panic!("boom {}", 1) });
        std::panic::set_hook(prev);
        assert_eq!(caught, None);
        let payload = catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(message(payload.as_ref()), "static");
        let payload = catch_unwind(|| panic!("formatted {}", 2)).unwrap_err();
        assert_eq!(message(payload.as_ref()), "formatted 2");
    }

    /// With `tracing`, a caught panic is an error event naming the key, the
    /// hook and the message.
    #[cfg(feature = "tracing")]
    #[test]
    fn a_panic_is_reported_with_its_key_and_message() {
        use std::sync::{Arc, Mutex};
        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Metadata, Subscriber};

        #[derive(Default)]
        struct Seen(Arc<Mutex<Vec<String>>>);
        struct Fields(String);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
        }
        impl Subscriber for Seen {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut fields = Fields(format!("{} ", event.metadata().level()));
                event.record(&mut fields);
                self.0.lock().unwrap().push(fields.0);
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }

        let seen = Seen::default();
        let log = Arc::clone(&seen.0);
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        tracing::subscriber::with_default(seen, || {
            run("cart", "on_delete", || panic!("the cart was {}", "full"));
        });
        std::panic::set_hook(prev);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(log[0].starts_with("ERROR"), "{log:?}");
        for part in [
            "key=\"cart\"",
            "hook=\"on_delete\"",
            "panic=\"the cart was full\"",
        ] {
            assert!(log[0].contains(part), "{part} in {log:?}");
        }
    }
}
