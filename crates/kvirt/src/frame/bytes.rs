//! Byte copies into and out of untyped physical memory.
//!
//! Untyped frames can be shared (`UFrame` is `Clone`) and written through
//! any clone, and the hosted MMU or a device may touch the same bytes. Plain
//! `memcpy` on such memory would be a data race, which Rust makes undefined
//! behaviour. So every access to untyped frame contents goes through here
//! and is atomic: racing accesses are then merely unordered, never
//! undefined.
//!
//! Racing atomics must also have one size (and overlap exactly), which the
//! memory model requires. The size is that of an aligned 8-byte word, the
//! one access the simulated machine makes to RAM (and the one page-table
//! entries need): whole words are loaded and stored with relaxed
//! `AtomicU64` operations, and a word the copy covers only in part is read
//! whole, or has the copied bytes merged in by a compare-exchange loop, so
//! that bytes of the word outside the copy keep whatever someone else
//! writes to them meanwhile.
//!
//! A copy therefore touches every aligned word that overlaps its range,
//! including bytes just before and after it. Inside one page-aligned run of
//! RAM (a page, a segment) those words are always part of the run.

use core::sync::atomic::{AtomicU64, Ordering};

/// The size of the atomic words every access is made of.
const WORD: usize = 8;

/// How a range of bytes lies on aligned words: a first word it covers only
/// in part (or a range inside one word), whole words, and a last word it
/// covers only in part.
#[derive(Debug, PartialEq, Eq)]
struct Span {
    /// The first word, the range's first byte in it and its byte count,
    /// unless the range starts a word and covers it whole (or is empty).
    head: Option<(*mut u64, usize, usize)>,
    /// The first whole word, and how many whole words follow the head.
    body: *mut u64,
    words: usize,
    /// The last word and the range's byte count in it (from its start),
    /// if the range ends inside a word after the head.
    tail: Option<(*mut u64, usize)>,
}

impl Span {
    fn new(at: *mut u8, len: usize) -> Self {
        let skip = at.addr() % WORD;
        let mut word = at.wrapping_sub(skip).cast::<u64>();
        let mut left = len;
        let mut head = None;
        if len != 0 && (skip != 0 || len < WORD) {
            let n = (WORD - skip).min(len);
            head = Some((word, skip, n));
            left -= n;
            word = word.wrapping_add(1);
        }
        let words = left / WORD;
        let tail = (left % WORD != 0).then(|| (word.wrapping_add(words), left % WORD));
        Span { head, body: word, words, tail }
    }

    /// The bytes of the head.
    fn head_len(&self) -> usize {
        self.head.map_or(0, |(_, _, n)| n)
    }
}

/// The atomic word at `word`.
///
/// # Safety
///
/// `word` is 8-byte aligned and valid for reads and writes for `'a`, and
/// others access it during `'a`, if at all, only through 8-byte atomics.
unsafe fn atomic<'a>(word: *mut u64) -> &'a AtomicU64 {
    // SAFETY: forwarded to the caller; `AtomicU64` has the size and, at
    // that alignment, the layout of `u64`.
    unsafe { AtomicU64::from_ptr(word) }
}

/// Copies `dst.len()` bytes starting at `src` into `dst`.
///
/// # Safety
///
/// Every aligned 8-byte word overlapping `src..src + dst.len()` is valid for
/// reads and writes for the duration of the call (true when the range lies
/// in one page-aligned run of RAM), and others access those words, if at
/// all, only through 8-byte atomics (as this module does).
pub(crate) unsafe fn copy_from(src: *const u8, dst: &mut [u8]) {
    let span = Span::new(src.cast_mut(), dst.len());
    let (head, rest) = dst.split_at_mut(span.head_len());
    if let Some((word, start, n)) = span.head {
        // SAFETY: the word overlaps the range (caller contract).
        let bytes = unsafe { atomic(word) }.load(Ordering::Relaxed).to_ne_bytes();
        head.copy_from_slice(&bytes[start..start + n]);
    }
    let (body, tail) = rest.split_at_mut(span.words * WORD);
    for (i, out) in body.chunks_exact_mut(WORD).enumerate() {
        // SAFETY: as for the head.
        let value = unsafe { atomic(span.body.wrapping_add(i)) }.load(Ordering::Relaxed);
        out.copy_from_slice(&value.to_ne_bytes());
    }
    if let Some((word, n)) = span.tail {
        // SAFETY: as for the head.
        let bytes = unsafe { atomic(word) }.load(Ordering::Relaxed).to_ne_bytes();
        tail.copy_from_slice(&bytes[..n]);
    }
}

/// Copies `src` to `dst..dst + src.len()`.
///
/// # Safety
///
/// As for [`copy_from`], over `dst..dst + src.len()`.
pub(crate) unsafe fn copy_to(src: &[u8], dst: *mut u8) {
    let span = Span::new(dst, src.len());
    let (head, rest) = src.split_at(span.head_len());
    if let Some((word, start, _)) = span.head {
        // SAFETY: the word overlaps the range (caller contract).
        merge(unsafe { atomic(word) }, start, head);
    }
    let (body, tail) = rest.split_at(span.words * WORD);
    for (i, piece) in body.chunks_exact(WORD).enumerate() {
        let value = u64::from_ne_bytes(piece.try_into().expect("a whole word"));
        // SAFETY: as for the head.
        unsafe { atomic(span.body.wrapping_add(i)) }.store(value, Ordering::Relaxed);
    }
    if let Some((word, _)) = span.tail {
        // SAFETY: as for the head.
        merge(unsafe { atomic(word) }, 0, tail);
    }
}

/// Fills `dst..dst + len` with `value`.
///
/// # Safety
///
/// As for [`copy_from`], over `dst..dst + len`.
pub(crate) unsafe fn fill(dst: *mut u8, value: u8, len: usize) {
    let span = Span::new(dst, len);
    let bytes = [value; WORD];
    if let Some((word, start, n)) = span.head {
        // SAFETY: the word overlaps the range (caller contract).
        merge(unsafe { atomic(word) }, start, &bytes[..n]);
    }
    for i in 0..span.words {
        // SAFETY: as for the head.
        unsafe { atomic(span.body.wrapping_add(i)) }.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
    }
    if let Some((word, n)) = span.tail {
        // SAFETY: as for the head.
        merge(unsafe { atomic(word) }, 0, &bytes[..n]);
    }
}

/// Writes `piece` at byte `start` of `word`, keeping its other bytes as they
/// are at the moment of the write.
fn merge(word: &AtomicU64, start: usize, piece: &[u8]) {
    let with_piece = |old: u64| {
        let mut bytes = old.to_ne_bytes();
        bytes[start..start + piece.len()].copy_from_slice(piece);
        Some(u64::from_ne_bytes(bytes))
    };
    // The closure always returns `Some`, so this cannot fail.
    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, with_piece);
}

/// Copies at every start and length around word boundaries, checked
/// against plain slices, with the bytes around each copy left alone.
#[cfg(test)]
mod tests {
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    use super::*;
    use crate::addr::PAGE_SIZE;

    /// A page-aligned page, as the callers' RAM is.
    #[repr(C, align(4096))]
    struct Page([u8; PAGE_SIZE]);

    /// A page whose byte `i` is `i * 7 + 3` (never the values written).
    fn patterned() -> Box<Page> {
        let mut page = Box::new(Page([0; PAGE_SIZE]));
        page.0.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7 + 3) as u8);
        page
    }

    /// Runs `f` on a pointer to the page's first byte, with the page
    /// accessed only through that pointer meanwhile.
    fn with_ptr<R>(page: &mut Page, f: impl FnOnce(*mut u8) -> R) -> R {
        f(page.0.as_mut_ptr())
    }

    /// Offsets across the first words and around a word boundary inside
    /// the page, and lengths 0..=17 from each.
    fn cases() -> impl Iterator<Item = (usize, usize)> {
        let starts = (0..=17).chain(PAGE_SIZE / 2 - 9..PAGE_SIZE / 2 + 9).chain(PAGE_SIZE - 17..PAGE_SIZE);
        starts.flat_map(|at| (0..=17).filter(move |len| at + len <= PAGE_SIZE).map(move |len| (at, len)))
    }

    #[test]
    fn copy_to_writes_exactly_the_range_at_any_start_and_length() {
        for (at, len) in cases() {
            let mut page = patterned();
            let expected_outside = patterned();
            let data: Vec<u8> = (0..len).map(|i| 0x80 | i as u8).collect();
            // SAFETY: `at + len <= PAGE_SIZE`, so every word overlapping the
            // range is in the page, which only this pointer accesses.
            with_ptr(&mut page, |p| unsafe { copy_to(&data, p.wrapping_add(at)) });
            assert_eq!(page.0[at..at + len], data[..], "copy_to at {at}, {len} bytes");
            assert_eq!(page.0[..at], expected_outside.0[..at], "before {at}, {len}");
            assert_eq!(page.0[at + len..], expected_outside.0[at + len..], "after {at}, {len}");
        }
    }

    #[test]
    fn copy_from_reads_exactly_the_range_at_any_start_and_length() {
        for (at, len) in cases() {
            let mut page = patterned();
            let mut buf = [0xeeu8; 20];
            // SAFETY: as in `copy_to_writes_exactly_the_range_at_any_start_and_length`.
            with_ptr(&mut page, |p| unsafe { copy_from(p.wrapping_add(at), &mut buf[..len]) });
            assert_eq!(buf[..len], patterned().0[at..at + len], "copy_from at {at}, {len} bytes");
            assert!(buf[len..].iter().all(|&b| b == 0xee), "copy_from at {at} wrote past {len} bytes");
        }
    }

    #[test]
    fn fill_sets_exactly_the_range_at_any_start_and_length() {
        for (at, len) in cases() {
            let mut page = patterned();
            // SAFETY: as in `copy_to_writes_exactly_the_range_at_any_start_and_length`.
            with_ptr(&mut page, |p| unsafe { fill(p.wrapping_add(at), 0x5a, len) });
            let expected = patterned();
            for (i, (&got, &old)) in page.0.iter().zip(&expected.0).enumerate() {
                let want = if (at..at + len).contains(&i) { 0x5a } else { old };
                assert_eq!(got, want, "fill at {at}, {len} bytes: byte {i}");
            }
        }
    }

    #[test]
    fn whole_pages_round_trip() {
        let mut page = Box::new(Page([0; PAGE_SIZE]));
        let data: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 13 + i / 256) as u8).collect();
        let mut back = alloc::vec![0u8; PAGE_SIZE];
        with_ptr(&mut page, |p| {
            // SAFETY: the range is the whole page, which only this pointer
            // accesses.
            unsafe { copy_to(&data, p) };
            // SAFETY: as above.
            unsafe { copy_from(p, &mut back) };
        });
        assert_eq!(back, data);
        assert_eq!(page.0[..], data[..]);
        // SAFETY: as above.
        with_ptr(&mut page, |p| unsafe { fill(p, 0xc3, PAGE_SIZE) });
        assert!(page.0.iter().all(|&b| b == 0xc3));
    }

    #[test]
    fn a_span_splits_a_range_into_head_whole_words_and_tail() {
        let at = |offset: usize| core::ptr::without_provenance_mut::<u8>(0x1000 + offset);
        let word = |offset: usize| at(offset).cast::<u64>();
        let span = |offset, len| Span::new(at(offset), len);
        let s = |head, body, words, tail| Span { head, body, words, tail };
        assert_eq!(span(5, 12), s(Some((word(0), 5, 3)), word(8), 1, Some((word(16), 1))));
        assert_eq!(span(8, 16), s(None, word(8), 2, None));
        assert_eq!(span(8, 3), s(Some((word(8), 0, 3)), word(16), 0, None));
        assert_eq!(span(3, 2), s(Some((word(0), 3, 2)), word(8), 0, None));
        assert_eq!(span(3, 5), s(Some((word(0), 3, 5)), word(8), 0, None));
        assert_eq!(span(3, 0), s(None, word(0), 0, None));
    }
}
