//! Where an area's queries start their walks (`KVirtArea::walk_start`):
//! the lowest node on the path of every mapped page, which stays on it
//! through splits and the drop of a split half.

use super::*;
use crate::frame::FrameAllocOptions;
use crate::page_prop::{CachePolicy, PageFlags};
use crate::platform::MemoryRegionKind;
use crate::spec::Inv;

const P: usize = PAGE_SIZE;
const SIZE_2M: usize = 512 * P;

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

fn space() -> KernelSpace {
    KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20))
}

/// An area of `pages` tracked pages, the first mapped at `offset` pages
/// into the area.
fn tracked(space: &KernelSpace, pages: usize, offset: usize) -> KVirtArea {
    let frames = FrameAllocOptions::new_in(space).alloc_segment(pages).unwrap();
    space.try_map_frames((offset + pages) * P, offset * P, frames, rw()).unwrap()
}

/// Every mapped page of `area` queries what the kernel table translates
/// it to, and the area's invariant (the start on the path of its first
/// and last mapped page) holds.
fn assert_queries_agree(space: &KernelSpace, area: &KVirtArea) {
    assert_eq!(area.check(), Ok(()));
    for va in area.mapped_range().step_by(P) {
        let queried = area.query(va + 5).map(|item| {
            let size = P << (9 * (usize::from(item.level()) - 1));
            (item.paddr() + va % size, item.prop())
        });
        let translated = space.kernel_translate(va).map(|(pa, prop)| (pa - pa % P, prop));
        assert_eq!(queried, translated, "{va:#x}");
        assert!(area.space().kernel_pt.is_on_path(area.walk_start, va), "{va:#x}");
    }
}

#[test]
fn an_area_inside_one_leaf_node_starts_its_queries_there() {
    let space = space();
    let area = tracked(&space, 16, 1);
    assert_eq!(area.walk_start.level(), 1);
    assert_queries_agree(&space, &area);
}

#[test]
fn an_area_across_two_leaf_nodes_starts_its_queries_one_level_up() {
    let space = space();
    // VMALLOC starts 2 MiB aligned: 300 pages in, 300 more reach into the
    // second leaf node's span.
    let area = tracked(&space, 300, 300);
    assert_eq!(area.mapped_range().start / SIZE_2M + 1, (area.mapped_range().end - 1) / SIZE_2M);
    assert_eq!(area.walk_start.level(), 2);
    assert_queries_agree(&space, &area);
}

#[test]
fn a_huge_page_area_starts_its_queries_at_the_node_holding_the_huge_page() {
    let space = space();
    let memory_map = space.memory_map();
    let device = memory_map.iter().find(|r| r.kind == MemoryRegionKind::Device).unwrap();
    let dev = device.range.start;
    // SAFETY: the device window of a simulated machine, which no Rust
    // object owns.
    let area = unsafe { space.try_map_untracked_frames(SIZE_2M, 0, dev..dev + SIZE_2M, rw()) }.unwrap();
    assert!(matches!(area.query(area.start()), Some(MappedItemRef::Untracked(_, 2, _))));
    assert_eq!(area.walk_start.level(), 2);
    assert_queries_agree(&space, &area);
    // Splitting the huge page under the start keeps the start.
    let (left, right) = area.split(7 * P);
    assert!(matches!(right.query(right.start()), Some(MappedItemRef::Untracked(_, 1, _))));
    assert_queries_agree(&space, &left);
    assert_queries_agree(&space, &right);
}

#[test]
fn each_half_of_a_split_keeps_a_start_on_its_path_when_the_other_goes() {
    for drop_left in [true, false] {
        let space = space();
        let area = tracked(&space, 4, 0);
        let start = area.walk_start;
        let (left, right) = area.split(2 * P);
        assert_eq!((left.walk_start, right.walk_start), (start, start));
        let kept = if drop_left {
            drop(left);
            right
        } else {
            drop(right);
            left
        };
        assert_queries_agree(&space, &kept);
    }
}

#[test]
fn an_area_with_nothing_mapped_keeps_the_root() {
    let space = space();
    let area = space.try_map_frames(2 * P, 0, Vec::<Frame<()>>::new(), rw()).unwrap();
    assert_eq!(area.walk_start, area.space().kernel_pt.root_walk_start());
    assert_eq!(area.query(area.start()).map(|item| item.paddr()), None);
    assert_eq!(area.check(), Ok(()));
}

#[test]
fn a_start_off_the_path_of_a_mapped_page_is_reported() {
    let space = space();
    let mut area = tracked(&space, 2, 0);
    // A leaf node 2 MiB further on: on the path of no page of the area.
    let other = tracked(&space, 1, 511);
    assert_eq!(other.walk_start.level(), 1);
    assert_ne!(other.walk_start, area.walk_start);
    let kept = core::mem::replace(&mut area.walk_start, other.walk_start);
    assert_eq!(area.check(), Err("queries would start their walks off the path of a mapped page"));
    area.walk_start = kept;
    assert_eq!(area.check(), Ok(()));
}
