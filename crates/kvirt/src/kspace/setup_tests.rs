//! What `KernelSpace::new` maps before anything else: every RAM run in the
//! linear mapping and the frame metadata array at its own range, each with
//! the largest pages that fit.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::addr::PagingLevel;
use crate::arch::x86_64::X86_64;
use crate::page_prop::{CachePolicy, PageFlags};
use crate::page_table::largest_pages;
use crate::platform::hosted::{memory_map_of, SimPlatform};
use crate::platform::MemoryRegionKind;
use crate::spec::kernel_view;

const K4: usize = 4 << 10;
const M2: usize = 2 << 20;
const G1: usize = 1 << 30;

/// The RAM runs the test space gets: one that starts at 0 and ends with
/// 2 MiB and 4 KiB pages, a hole, and one that starts 4 KiB below 1 GiB and
/// holds a 4 KiB, a 1 GiB, a 2 MiB and a 4 KiB page.
fn runs() -> [Range<Paddr>; 2] {
    [0..3 * M2 + 3 * K4, G1 - K4..2 * G1 + M2 + K4]
}

/// A space over a simulated machine whose RAM the memory map hands over as
/// [`runs`] (the low MiB reserved, the rest usable).
fn space() -> KernelSpace {
    let [low, high] = runs();
    let machine = Arc::new(kvirt_sim::Machine::new(kvirt_sim::MachineConfig::new(high.end)));
    let mut map: Vec<MemoryRegion> =
        memory_map_of(&machine).into_iter().filter(|r| r.kind == MemoryRegionKind::Device).collect();
    map.extend([
        MemoryRegion { range: 0..1 << 20, kind: MemoryRegionKind::Reserved },
        MemoryRegion { range: 1 << 20..low.end, kind: MemoryRegionKind::Usable },
        MemoryRegion { range: high, kind: MemoryRegionKind::Usable },
    ]);
    // SAFETY: a new machine, used by this space alone.
    let platform = unsafe { SimPlatform::new(machine) };
    // SAFETY: the map describes the machine's RAM (a part left out is only
    // unused), which reads as zero.
    unsafe { KernelSpace::new(Box::new(platform), &map, true) }.unwrap()
}

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// The leaves of `va..va + len`, as `(va, pa, level)`, after checking that
/// each is an untracked read-write kernel mapping.
fn leaves(space: &KernelSpace, va: Vaddr, len: usize) -> Vec<(Vaddr, Paddr, PagingLevel)> {
    let view = kernel_view(space, &(va..va + len));
    assert!(view.values().all(|m| !m.tracked && m.prop == rw()), "{view:#x?}");
    view.values().map(|m| (m.va, m.pa, m.level)).collect()
}

/// `largest_pages` as `(va, pa, level)`.
fn expected(va: Vaddr, pa: Paddr, len: usize) -> Vec<(Vaddr, Paddr, PagingLevel)> {
    let mut at = va;
    largest_pages::<X86_64>(va, pa, len)
        .map(|(pa, level)| {
            let leaf = (at, pa, level);
            at += crate::arch::page_size::<X86_64>(level);
            leaf
        })
        .collect()
}

#[test]
fn linear_mapping_maps_each_ram_run_with_the_largest_pages() {
    let space = space();
    let base = LINEAR_MAPPING_VADDR_RANGE.start;
    let [low, high] = runs();
    for run in [&low, &high] {
        let found = leaves(&space, base + run.start, run.len());
        assert_eq!(found, expected(base + run.start, run.start, run.len()), "run {run:#x?}");
    }
    // Every page size occurs: the runs were chosen for it.
    let levels: Vec<PagingLevel> =
        leaves(&space, base + high.start, high.len()).iter().map(|l| l.2).collect();
    assert_eq!(levels, vec![1, 3, 2, 1]);
    // Nothing between the runs nor after them.
    assert_eq!(leaves(&space, base + low.end, high.start - low.end), vec![]);
    assert_eq!(space.kernel_translate(base + high.end), None);
}

#[test]
fn frame_metadata_array_is_mapped_whole_at_its_range() {
    let space = space();
    let meta = space.phys().meta_range();
    let va = FRAME_METADATA_VADDR_RANGE.start;
    // The array does not fit in the low run, so it starts the high one,
    // 4 KiB below a 1 GiB boundary.
    assert_eq!(meta.start, runs()[1].start);
    assert_eq!(space.kernel_translate(va), Some((meta.start, rw())));
    assert_eq!(space.kernel_translate(va + meta.len() - 1), Some((meta.end - 1, rw())));
    let found = leaves(&space, va, meta.len());
    assert_eq!(found, expected(va, meta.start, meta.len()));
    let mapped: usize = found.iter().map(|l| crate::arch::page_size::<X86_64>(l.2)).sum();
    assert_eq!(mapped, meta.len(), "the leaves cover the array exactly");
    assert_eq!(space.kernel_translate(va + meta.len()), None);
}
