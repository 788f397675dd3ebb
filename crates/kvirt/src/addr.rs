//! Addresses and alignment.
//!
//! Physical and virtual addresses are plain `usize` aliases, as in the
//! reference API (`Range<Vaddr>` must be an ordinary range so that `len()`
//! and slicing work). Which sizes a page can have depends on the paging
//! format (`arch::page_size` of a level); whether a value is aligned to one
//! is what the `align_*` and `is_*aligned` helpers tell. They are the
//! proven functions of `kvirt_core::paging`, with a debug assertion of
//! their precondition (the alignment is a power of two).

/// A physical address.
pub type Paddr = usize;

/// A virtual address.
pub type Vaddr = usize;

/// A level in a page table: 1 maps base pages, higher levels map larger
/// pages or point to tables one level down.
pub type PagingLevel = u8;

/// The base page size (4 KiB) of every paging format kvirt supports.
pub const PAGE_SIZE: usize = kvirt_core::paging::PAGE_SIZE;

/// Whether `value` is a multiple of `align` (a power of two).
#[must_use]
#[inline]
pub const fn is_aligned(value: usize, align: usize) -> bool {
    debug_assert!(align.is_power_of_two());
    kvirt_core::paging::is_aligned(value, align)
}

/// Whether `value` is a multiple of [`PAGE_SIZE`].
#[must_use]
#[inline]
pub const fn is_page_aligned(value: usize) -> bool {
    kvirt_core::paging::is_page_aligned(value)
}

/// Rounds `value` down to a multiple of `align` (a power of two).
#[must_use]
#[inline]
pub const fn align_down(value: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    kvirt_core::paging::align_down(value, align)
}

/// Rounds `value` up to a multiple of `align` (a power of two), or `None`
/// if the result does not fit in `usize`.
#[must_use]
#[inline]
pub const fn checked_align_up(value: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    kvirt_core::paging::checked_align_up(value, align)
}

/// Rounds `value` up to a multiple of `align` (a power of two).
///
/// # Panics
///
/// Panics if the result does not fit in `usize`; use [`checked_align_up`]
/// where that can happen.
#[must_use]
#[inline]
pub const fn align_up(value: usize, align: usize) -> usize {
    match checked_align_up(value, align) {
        Some(v) => v,
        None => panic!("align_up overflows usize"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers_round_correctly() {
        assert!(is_page_aligned(0));
        assert!(is_page_aligned(0x3000));
        assert!(!is_page_aligned(0x3001));
        assert_eq!(align_down(0x3fff, PAGE_SIZE), 0x3000);
        assert_eq!(align_up(0x3001, PAGE_SIZE), 0x4000);
        assert_eq!(align_up(0x4000, PAGE_SIZE), 0x4000);
        assert_eq!(checked_align_up(usize::MAX, PAGE_SIZE), None);
        assert_eq!(checked_align_up(usize::MAX - 4095, PAGE_SIZE), Some(usize::MAX - 4095));
    }
}
