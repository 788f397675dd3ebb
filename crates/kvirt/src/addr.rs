//! Addresses, page sizes and alignment.
//!
//! Physical and virtual addresses are plain `usize` aliases, as in the
//! reference API (`Range<Vaddr>` must be an ordinary range so that `len()`
//! and slicing work). The facts that matter more than the integer type —
//! which sizes a page can have and whether a value is aligned to one — live
//! in [`PageSize`] and the `align_*` helpers.

/// A physical address.
pub type Paddr = usize;

/// A virtual address.
pub type Vaddr = usize;

/// A level in a page table: 1 maps base pages, higher levels map larger
/// pages or point to tables one level down.
pub type PagingLevel = u8;

/// The base page size (4 KiB) of every paging format kvirt supports.
pub const PAGE_SIZE: usize = 4096;

/// The size of a page that a leaf entry can map on x86-64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped at level 1.
    Size4K,
    /// 2 MiB, mapped at level 2.
    Size2M,
    /// 1 GiB, mapped at level 3.
    Size1G,
}

impl PageSize {
    /// Every page size, smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

    /// The size in bytes.
    #[must_use]
    pub const fn bytes(self) -> usize {
        match self {
            PageSize::Size4K => 4 << 10,
            PageSize::Size2M => 2 << 20,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// The page-table level whose leaf entries map pages of this size.
    #[must_use]
    pub const fn level(self) -> PagingLevel {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// The page size mapped by a leaf at `level`, if x86-64 has one.
    #[must_use]
    pub const fn from_level(level: PagingLevel) -> Option<PageSize> {
        match level {
            1 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            3 => Some(PageSize::Size1G),
            _ => None,
        }
    }
}

/// Whether `value` is a multiple of `align` (a power of two).
#[must_use]
#[inline]
pub const fn is_aligned(value: usize, align: usize) -> bool {
    debug_assert!(align.is_power_of_two());
    value & (align - 1) == 0
}

/// Whether `value` is a multiple of [`PAGE_SIZE`].
#[must_use]
#[inline]
pub const fn is_page_aligned(value: usize) -> bool {
    is_aligned(value, PAGE_SIZE)
}

/// Rounds `value` down to a multiple of `align` (a power of two).
#[must_use]
#[inline]
pub const fn align_down(value: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    value & !(align - 1)
}

/// Rounds `value` up to a multiple of `align` (a power of two), or `None`
/// if the result does not fit in `usize`.
#[must_use]
#[inline]
pub const fn checked_align_up(value: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
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
    fn page_sizes_match_their_levels() {
        for size in PageSize::ALL {
            assert_eq!(PageSize::from_level(size.level()), Some(size));
            assert_eq!(size.bytes(), PAGE_SIZE << (9 * (size.level() as usize - 1)));
        }
        assert_eq!(PageSize::from_level(0), None);
        assert_eq!(PageSize::from_level(4), None);
    }

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
