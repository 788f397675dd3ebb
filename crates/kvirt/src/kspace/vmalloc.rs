//! The VMALLOC range allocator: where kernel virtual areas live.
//!
//! A thin, locked wrapper over [`RangeAllocator`] that adds one guard page
//! after every area, so that an overrun of one area faults instead of
//! running into its neighbour:
//!
//! ```text
//!   | area A ........ | guard | area B .... | guard |      free      |
//! ```
//!
//! The guard belongs to the allocation of the area before it and is freed
//! with it.

use core::ops::Range;

use super::range_alloc::{RangeAllocError, RangeAllocStats, RangeAllocator};
use crate::addr::{Vaddr, PAGE_SIZE};

/// The bytes of unmapped guard after every area.
pub const GUARD_SIZE: usize = PAGE_SIZE;

/// Statistics of the VMALLOC region.
pub type VmallocStats = RangeAllocStats;

/// The VMALLOC allocator of one kernel space.
#[derive(Debug)]
pub(crate) struct Vmalloc {
    inner: spin::Mutex<RangeAllocator>,
}

impl Vmalloc {
    pub(crate) fn new(range: Range<Vaddr>) -> Self {
        Self { inner: spin::Mutex::new(RangeAllocator::new(range, PAGE_SIZE)) }
    }

    /// Allocates `size` bytes aligned to `align`, followed by a guard.
    /// Returns the area's range (without the guard).
    pub(crate) fn alloc(&self, size: usize, align: usize) -> Result<Range<Vaddr>, RangeAllocError> {
        let with_guard = size.checked_add(GUARD_SIZE).ok_or(RangeAllocError::Exhausted)?;
        let range = self.inner.lock().alloc(with_guard, align)?;
        Ok(range.start..range.start + size)
    }

    /// Frees `range` (part or all of an allocation).
    pub(crate) fn free(&self, range: Range<Vaddr>) -> Result<(), RangeAllocError> {
        self.inner.lock().free(range)
    }

    pub(crate) fn stats(&self) -> VmallocStats {
        self.inner.lock().stats()
    }

    pub(crate) fn inv(&self) -> bool {
        self.inner.lock().inv()
    }

    /// The allocator itself: for unit tests that corrupt it to see the
    /// invariant checks catch it.
    #[cfg(test)]
    pub(crate) fn lock_allocator(&self) -> spin::MutexGuard<'_, RangeAllocator> {
        self.inner.lock()
    }

    /// Whether no byte of `range` is free (it is allocated). O(log n).
    pub(crate) fn is_allocated(&self, range: Range<Vaddr>) -> bool {
        !self.inner.lock().overlaps_free(range)
    }
}
