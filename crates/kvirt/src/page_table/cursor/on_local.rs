//! Working on a value through a local copy of it.
//!
//! A loop that advances an iterator it reaches through a `&mut` and also
//! makes atomic stores (a leaf node's fill) keeps the iterator's position
//! in memory: the compiler must assume each store may write wherever the
//! iterator lives, so it reloads the position after every one, a
//! store-to-load round trip per entry. Mapping from a `Vec`'s `Drain` ran
//! at half the speed of mapping from its `IntoIter` because of it.
//! [`on_local`] moves the value into a local of the loop's own, whose
//! address nothing else has, and moves it back afterwards, on unwinding
//! too.

use core::mem::ManuallyDrop;
use core::ptr;

/// Runs `f` on `*place` moved into a local, then moves it back to `place`,
/// also if `f` panics.
#[inline(always)]
pub(super) fn on_local<T, R>(place: &mut T, f: impl FnOnce(&mut T) -> R) -> R {
    /// Moves `local` back to `home` when dropped.
    struct Home<'a, T> {
        home: &'a mut T,
        local: ManuallyDrop<T>,
    }
    impl<T> Drop for Home<'_, T> {
        #[inline(always)]
        fn drop(&mut self) {
            // SAFETY: `local` holds the value moved out of `*home` (below),
            // and nothing uses it after this drop.
            let value = unsafe { ManuallyDrop::take(&mut self.local) };
            // SAFETY: `*home` is the place the value was moved out of,
            // neither read nor dropped since: writing over it without a drop
            // moves the value back.
            unsafe { ptr::write(self.home, value) }
        }
    }
    // SAFETY: the copy becomes the value and `*place` a moved-from place,
    // which nothing reads or drops until `Home`'s drop writes the value
    // back when this function returns or unwinds: `place`, its only
    // access, moves into `Home`.
    let local = ManuallyDrop::new(unsafe { ptr::read(place) });
    let mut home = Home { home: place, local };
    f(&mut home.local)
}

#[cfg(test)]
mod tests {
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    use super::on_local;

    #[test]
    fn the_value_goes_back_with_what_was_done_to_it() {
        let mut it = vec![1, 2, 3].into_iter();
        assert_eq!(on_local(&mut it, |it| it.next()), Some(1));
        assert_eq!(it.collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn the_value_goes_back_when_the_work_panics() {
        let mut v = vec![String::from("a")];
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_local(&mut v, |v| {
                v.push(String::from("b"));
                panic!("in the middle");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(v, ["a", "b"]);
    }
}
