//! The invariants of kernel spaces and areas, as predicates.

use crate::addr::PAGE_SIZE;
use crate::frame::{REF_COUNT_MAX, REF_COUNT_UNUSED};
use crate::inv::Inv;
use crate::kspace::{KVirtArea, KernelLayout, KernelSpace};

impl<L: KernelLayout> Inv for KVirtArea<L> {
    /// The specification's `KERNEL_BASE_VADDR <= start && end <= KERNEL_END_VADDR`
    /// (the layout's kernel space),
    /// strengthened: a non-empty, page-aligned range inside VMALLOC, with
    /// its mapped part inside it; registered, allocated in VMALLOC, and with
    /// nothing mapped in the area or its guard outside the mapped part.
    fn check(&self) -> Result<(), &'static str> {
        let r = self.range();
        let (kernel, vmalloc) = (L::KERNEL_VADDR_RANGE, L::VMALLOC_VADDR_RANGE);
        if !(kernel.start <= r.start && r.end <= kernel.end) {
            return Err("the area is outside kernel space");
        }
        if !(vmalloc.start <= r.start && r.end <= vmalloc.end) {
            return Err("the area is outside VMALLOC");
        }
        if r.start >= r.end || r.start % PAGE_SIZE != 0 || r.end % PAGE_SIZE != 0 {
            return Err("the area is empty or misaligned");
        }
        let m = self.mapped_range();
        if m.start < r.start
            || m.end > r.end
            || m.start > m.end
            || m.start % PAGE_SIZE != 0
            || m.end % PAGE_SIZE != 0
        {
            return Err("the mapped part is not a page-aligned part of the area");
        }
        self.check_with_space()
    }
}

impl<L: KernelLayout> Inv for KernelSpace<L> {
    /// The kernel page table's structure (`PageTable::check_inv`), the frame
    /// metadata (every allocatable page is free in the allocator exactly
    /// when its slot is `UNUSED`; used slots count `1..=MAX`), the
    /// allocator's (its per-CPU free-page lists' too) and VMALLOC's internal
    /// invariants, and the registry
    /// (areas disjoint, inside VMALLOC, allocated there), and the lazily
    /// dropped areas waiting for a purge (ranges still allocated, apart
    /// from everything else, unmapped).
    ///
    /// O(physical pages): use it on small spaces.
    ///
    /// It first waits for the space's deferred reclamation (as
    /// [`KernelSpace::synchronize`] does, without purging): a freed page-table node goes back to
    /// the allocator in a callback that may run on any thread at any time,
    /// and while it runs the node's slot and the allocator disagree. So do
    /// not call it inside a read-side section (for example while a cursor
    /// of the space is alive).
    fn check(&self) -> Result<(), &'static str> {
        self.settle();
        self.kernel_pt().check_inv()?;
        self.check_pending()?;
        let phys = self.phys();
        phys.with_free_pages(|allocator, is_free| {
            allocator?;
            for range in phys.allocatable() {
                for pa in range.clone().step_by(PAGE_SIZE) {
                    let rc = phys.slot(pa).ref_count();
                    let free = is_free(pa);
                    if free != (rc == REF_COUNT_UNUSED) {
                        return Err("a page is free in the allocator but its slot is in use, or the reverse");
                    }
                    if !free && rc > REF_COUNT_MAX && rc != crate::frame::REF_COUNT_UNIQUE {
                        return Err("a used slot is neither shared nor unique");
                    }
                }
            }
            Ok(())
        })?;
        if !self.vmalloc().inv() {
            return Err("the VMALLOC allocator's invariant is broken");
        }
        let areas = self.areas();
        for pair in areas.windows(2) {
            if pair[0].range.end > pair[1].range.start {
                return Err("two areas overlap");
            }
        }
        for a in &areas {
            if a.range.start < L::VMALLOC_VADDR_RANGE.start || a.range.end > L::VMALLOC_VADDR_RANGE.end {
                return Err("an area is outside VMALLOC");
            }
            if !self.vmalloc().is_allocated(a.range.clone()) {
                return Err("an area's range is free in VMALLOC");
            }
        }
        Ok(())
    }
}
