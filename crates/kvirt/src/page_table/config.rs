//! Kinds of page tables, and the address arithmetic that follows from them.
//!
//! A [`PageTableConfig`] names a paging format and the root entries a table
//! may use; [`KernelPtConfig`] and [`UserPtConfig`] are the two halves of an
//! address space. From a configuration follow the addresses it covers
//! ([`vaddr_bounds`]), which cursor ranges are valid (`check_range`), and,
//! from its format alone, the split of a range into the largest pages
//! ([`largest_pages`]).

use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;

use super::error::RangeError;
use crate::addr::{is_page_aligned, Paddr, PagingLevel, Vaddr};
use crate::arch::x86_64::X86_64;
use crate::arch::{page_size, PagingFormat};

/// The shape and address range of one kind of page table.
///
/// A safe trait: kvirt checks its constants at compile time wherever a
/// table of the configuration is made (the root entries must be a
/// non-empty part of a node), and nothing else about it can break memory
/// safety: a table is its own tree, and only
/// [`create_user_page_table`](super::PageTable::create_user_page_table),
/// defined for kvirt's own configurations, shares nodes between two tables.
pub trait PageTableConfig: fmt::Debug + Send + Sync + 'static {
    /// The paging format.
    type F: PagingFormat;
    /// The root entries this kind of table may use.
    const TOP_LEVEL_INDEX_RANGE: Range<usize>;
    /// Whether the children of the root may be detached. Kernel tables keep
    /// them for ever, so that user tables can share them.
    const TOP_LEVEL_CAN_UNMAP: bool;
}

/// The kernel (upper) half of an address space in format `F`: the upper
/// half of the root's entries.
#[derive(Clone, Copy, Debug)]
pub struct KernelPtConfig<F: PagingFormat = X86_64>(PhantomData<F>);

impl<F: PagingFormat> PageTableConfig for KernelPtConfig<F> {
    type F = F;
    const TOP_LEVEL_INDEX_RANGE: Range<usize> = F::NR_ENTRIES / 2..F::NR_ENTRIES;
    const TOP_LEVEL_CAN_UNMAP: bool = false;
}

/// The user (lower) half of an address space in format `F`.
#[derive(Clone, Copy, Debug)]
pub struct UserPtConfig<F: PagingFormat = X86_64>(PhantomData<F>);

impl<F: PagingFormat> PageTableConfig for UserPtConfig<F> {
    type F = F;
    const TOP_LEVEL_INDEX_RANGE: Range<usize> = 0..F::NR_ENTRIES / 2;
    const TOP_LEVEL_CAN_UNMAP: bool = true;
}

/// The first and last virtual address a configuration covers.
#[must_use]
pub fn vaddr_bounds<C: PageTableConfig>() -> (Vaddr, Vaddr) {
    let top = page_size::<C::F>(C::F::NR_LEVELS);
    let first = C::TOP_LEVEL_INDEX_RANGE.start * top;
    let last = C::TOP_LEVEL_INDEX_RANGE.end * top - 1;
    (sign_extend::<C::F>(first), sign_extend::<C::F>(last))
}

/// `va` in canonical form: its top bits copy bit `F::VA_BITS - 1` if the
/// format sign-extends addresses.
pub(crate) fn sign_extend<F: PagingFormat>(va: Vaddr) -> Vaddr {
    let bits = F::VA_BITS;
    if F::SIGN_EXTEND && bits < usize::BITS && va & (1 << (bits - 1)) != 0 {
        va | !((1usize << bits) - 1)
    } else {
        va
    }
}

/// Checks a cursor range against configuration `C`.
pub(crate) fn check_range<C: PageTableConfig>(range: &Range<Vaddr>) -> Result<(), RangeError> {
    if range.start == range.end {
        return Err(RangeError::Empty);
    }
    if range.start > range.end {
        return Err(RangeError::Reversed);
    }
    if !is_page_aligned(range.start) || !is_page_aligned(range.end) {
        return Err(RangeError::Misaligned);
    }
    let (first, last) = vaddr_bounds::<C>();
    if range.start < first || range.end - 1 > last {
        return Err(RangeError::OutOfBounds);
    }
    Ok(())
}

/// The greedy split of `len` bytes at `va -> pa` into the largest aligned
/// pages: yields `(pa, level)` for each page in order.
///
/// # Panics
///
/// Panics if `va`, `pa` or `len` is not page aligned.
pub fn largest_pages<F: PagingFormat>(
    mut va: Vaddr,
    mut pa: Paddr,
    mut len: usize,
) -> impl Iterator<Item = (Paddr, PagingLevel)> {
    assert!(
        is_page_aligned(va) && is_page_aligned(pa) && is_page_aligned(len),
        "largest_pages: va {va:#x}, pa {pa:#x} and len {len:#x} must be page aligned"
    );
    core::iter::from_fn(move || {
        if len == 0 {
            return None;
        }
        let level = (1..=F::HIGHEST_LEAF_LEVEL)
            .rev()
            .find(|&l| {
                let size = page_size::<F>(l);
                size <= len && va % size == 0 && pa % size == 0
            })
            .expect("level 1 always fits");
        let size = page_size::<F>(level);
        let item = (pa, level);
        va = va.wrapping_add(size);
        pa += size;
        len -= size;
        Some(item)
    })
}
