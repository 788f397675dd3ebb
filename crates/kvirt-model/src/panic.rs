//! Documented panics: running code that must panic, without the panic hook
//! reporting it.
//!
//! libFuzzer's panic hook aborts the process on any panic, and the test
//! harness prints every panic; so the first call installs, on top of
//! whatever hook is there, one that stays silent while an expected panic
//! unwinds on this thread and defers to the previous hook otherwise.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static EXPECTING_PANIC: Cell<bool> = const { Cell::new(false) };
}

/// The message of a panic payload.
#[must_use]
pub fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

/// Runs `f`, which may panic without the panic being reported; returns its
/// result or the panic's message.
///
/// # Errors
///
/// The panic's message, if `f` panicked.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = EXPECTING_PANIC.with(|e| e.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    EXPECTING_PANIC.with(|e| e.set(was));
    result.map_err(|payload| message(payload.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_gives_its_message_and_a_value_passes_through() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| -> u8 { panic!("documented: {}", 1) }), Err("documented: 1".to_owned()));
    }
}
