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
use crate::arch::PagingFormat;

/// The shape and address range of one kind of page table.
///
/// A safe trait: kvirt checks its constants at compile time wherever a
/// table of the configuration is made or its addresses are computed, and
/// nothing else about it can break memory safety: a table is its own tree,
/// and only
/// [`create_user_page_table`](super::PageTable::create_user_page_table),
/// defined for kvirt's own configurations, shares nodes between two tables.
///
/// The checks: the root entries are a non-empty part of a node, and, in a
/// format that sign-extends addresses ([`PagingFormat::SIGN_EXTEND`]), they
/// lie in one half of it. The addresses between the halves are not
/// canonical, and an index taken from one of them would select a root
/// entry outside the configuration, which no cursor locks:
///
/// ```compile_fail,E0080
/// use core::ops::Range;
/// use kvirt::arch::x86_64::X86_64;
/// use kvirt::page_table::{vaddr_bounds, PageTableConfig};
///
/// #[derive(Debug)]
/// struct AcrossTheHalves;
/// impl PageTableConfig for AcrossTheHalves {
///     type F = X86_64;
///     const TOP_LEVEL_INDEX_RANGE: Range<usize> = 255..257;
///     const TOP_LEVEL_CAN_UNMAP: bool = true;
/// }
/// let _ = vaddr_bounds::<AcrossTheHalves>(); // does not compile
/// ```
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
    Bounds::<C>::VALUE
}

/// [`vaddr_bounds`] of `C`, evaluated once, at compile time: every walk
/// asks for it.
struct Bounds<C>(PhantomData<C>);

impl<C: PageTableConfig> Bounds<C> {
    const VALUE: (Vaddr, Vaddr) = {
        let range = C::TOP_LEVEL_INDEX_RANGE;
        // The proven function's precondition, and no root entry whose
        // addresses would include non-canonical ones.
        check_config::<C>();
        kvirt_core::paging::root_entries_bounds(
            C::F::ENTRY_BITS,
            C::F::NR_LEVELS,
            range.start,
            range.end,
            C::F::SIGN_EXTEND,
        )
    };
}

/// Checks the constants of `C` (see [`PageTableConfig`]); evaluated at
/// compile time wherever a table of `C` is made or its bounds are used.
pub(crate) const fn check_config<C: PageTableConfig>() {
    crate::arch::check_shape::<C::F>();
    let r = C::TOP_LEVEL_INDEX_RANGE;
    assert!(
        r.start < r.end && r.end <= C::F::NR_ENTRIES,
        "PageTableConfig: TOP_LEVEL_INDEX_RANGE must be a non-empty range of the root's entries"
    );
    let half = C::F::NR_ENTRIES / 2;
    assert!(
        !C::F::SIGN_EXTEND || r.end <= half || r.start >= half,
        "PageTableConfig: in a format that sign-extends addresses, TOP_LEVEL_INDEX_RANGE must lie in one half of \
         the root's entries (the addresses between the halves are not canonical)"
    );
}

/// `va` in canonical form: its top bits copy bit `F::VA_BITS - 1` if the
/// format sign-extends addresses.
pub(crate) fn sign_extend<F: PagingFormat>(va: Vaddr) -> Vaddr {
    kvirt_core::paging::sign_extend(va, F::VA_BITS, F::SIGN_EXTEND)
}

/// Checks a cursor range against configuration `C`.
pub(crate) fn check_range<C: PageTableConfig>(range: &Range<Vaddr>) -> Result<(), RangeError> {
    use kvirt_core::paging::RangeCheck;
    let (first, last) = vaddr_bounds::<C>();
    match kvirt_core::paging::check_range(range.start, range.end, first, last) {
        RangeCheck::Ok => Ok(()),
        RangeCheck::Empty => Err(RangeError::Empty),
        RangeCheck::Reversed => Err(RangeError::Reversed),
        RangeCheck::Misaligned => Err(RangeError::Misaligned),
        RangeCheck::OutOfBounds => Err(RangeError::OutOfBounds),
    }
}

/// The greedy split of `len` bytes at `va -> pa` into the largest aligned
/// pages: yields `(pa, level)` for each page in order. The plan is
/// `kvirt_core::pages::PagePlan`, proven to tile the range exactly with the
/// largest leaf that fits and is aligned at both addresses.
///
/// # Panics
///
/// Panics if `va`, `pa` or `len` is not page aligned, or if the range runs
/// past the end of the address space, virtually or physically.
pub fn largest_pages<F: PagingFormat>(
    va: Vaddr,
    pa: Paddr,
    len: usize,
) -> impl Iterator<Item = (Paddr, PagingLevel)> {
    assert!(
        is_page_aligned(va) && is_page_aligned(pa) && is_page_aligned(len),
        "largest_pages: va {va:#x}, pa {pa:#x} and len {len:#x} must be page aligned"
    );
    // At most up to the top of the address space: the plan's last piece
    // may end exactly at 2^64.
    let fits = |start: usize| len == 0 || start.checked_add(len - 1).is_some();
    assert!(
        fits(va) && fits(pa),
        "largest_pages: {len:#x} bytes at {va:#x} -> {pa:#x} run past the address space"
    );
    let mut plan = kvirt_core::pages::PagePlan::new(va, pa, len, F::ENTRY_BITS, F::HIGHEST_LEAF_LEVEL);
    core::iter::from_fn(move || plan.next_piece())
}
