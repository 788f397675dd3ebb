//! Kernel spaces on every paging format: the same scenario, written once and
//! instantiated per layout (x86-64, RISC-V Sv39 and Sv48, AArch64).
//!
//! Each instance sets a space up on the hosted machine with the layout,
//! checks that the linear and metadata mappings use the format's leaves,
//! then creates tracked areas (written and read back, queried, split,
//! dropped), an untracked area over the device window with the largest
//! pages the format allows, a lazily dropped one, and checks that every
//! counter comes back and every invariant holds.

use kvirt::arch::{effective_property, page_size, PagingFormat};
use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{
    Aarch64Layout, KernelLayout, KernelSpace, MappedItemRef, PurgeMode, Sv39Layout, Sv48Layout, X86_64Layout,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::platform::MemoryRegionKind;
use kvirt::sim::{Access, FaultKind, MachineConfig, Paging};
use kvirt::spec::Inv;
use kvirt::PAGE_SIZE;

const P: usize = PAGE_SIZE;

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

fn space<L: KernelLayout>() -> KernelSpace<L> {
    KernelSpace::<L>::hosted_with_layout(MachineConfig::new(64 << 20))
}

/// The linear mapping holds RAM at `start + pa`, with leaves of the format.
fn linear_mapping_maps_ram<L: KernelLayout>() {
    let space = space::<L>();
    let linear = L::LINEAR_MAPPING_VADDR_RANGE.expect("every real layout has a linear mapping");
    let ram =
        space.memory_map().iter().find(|r| r.kind == MemoryRegionKind::Usable).expect("RAM").range.clone();
    let va = linear.start + ram.start;
    let mut cursor = space.kernel_cursor(&(va..va + P)).unwrap();
    let (pa, level) = match cursor.query().unwrap().1 {
        Some(MappedItemRef::Untracked(pa, level, prop)) => {
            assert_eq!(prop.flags & PageFlags::RWX, PageFlags::RW);
            (pa, level)
        }
        other => panic!("the linear mapping at {va:#x} is {other:?}"),
    };
    assert!(level <= L::Format::HIGHEST_LEAF_LEVEL);
    assert_eq!(pa, ram.start & !(page_size::<L::Format>(level) - 1));
    drop(cursor);
    assert!(space.inv());
}

/// Tracked areas: bytes round-trip, queries report the frames with the
/// format's effective property, split keeps both halves, drop gives
/// everything back.
fn tracked_areas_round_trip<L: KernelLayout>() {
    let space = space::<L>();
    space.synchronize();
    let before = (space.phys_stats(), space.vmalloc_stats());
    let frames = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
    let paddrs: Vec<_> = (0..4).map(|i| frames.paddr() + i * P).collect();
    let area = space.try_map_frames(6 * P, P, frames, rw()).unwrap();
    assert!(L::VMALLOC_VADDR_RANGE.start <= area.start() && area.end() <= L::VMALLOC_VADDR_RANGE.end);
    let data: Vec<u8> = (0..4 * P).map(|i| (i * 7 % 251) as u8).collect();
    area.write_bytes(P, &data).unwrap();
    let mut back = vec![0; 4 * P];
    area.read_bytes(P, &mut back).unwrap();
    assert_eq!(back, data);
    for (i, pa) in paddrs.iter().enumerate() {
        match area.query(area.start() + (i + 1) * P) {
            Some(MappedItemRef::Tracked(f, prop)) => {
                assert_eq!(f.paddr(), *pa);
                assert_eq!(prop, effective_property::<L::Format>(rw()));
            }
            other => panic!("page {i} is {other:?}"),
        }
    }
    assert!(area.query(area.start()).is_none());
    let (left, right) = area.split(3 * P);
    let mut half = vec![0; 2 * P];
    left.read_bytes(P, &mut half).unwrap();
    assert_eq!(half, data[..2 * P]);
    right.read_bytes(0, &mut half).unwrap();
    assert_eq!(half, data[2 * P..]);
    assert!(space.inv());
    drop((left, right));
    space.synchronize();
    assert_eq!((space.phys_stats(), space.vmalloc_stats()), before);
    assert!(space.inv());
}

/// An untracked area over the device window uses the largest leaves the
/// format has.
fn untracked_area_uses_the_largest_leaves<L: KernelLayout>() {
    let space = space::<L>();
    let device =
        space.memory_map().iter().find(|r| r.kind == MemoryRegionKind::Device).unwrap().range.clone();
    let top = L::Format::HIGHEST_LEAF_LEVEL;
    let huge = page_size::<L::Format>(top);
    let pa = device.start.next_multiple_of(huge);
    assert!(pa + huge <= device.end, "the device window holds a largest page");
    let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable);
    // SAFETY: the simulated device window, never touched.
    let area = unsafe { space.try_map_untracked_frames(huge, 0, pa..pa + huge, prop) }.unwrap();
    match area.query(area.start() + P) {
        Some(MappedItemRef::Untracked(got, level, got_prop)) => {
            assert_eq!((got, level), (pa, top));
            assert_eq!(got_prop, effective_property::<L::Format>(prop));
        }
        other => panic!("{other:?}"),
    }
    drop(area);
    assert!(space.inv());
}

/// Lazy purge works the same on every format.
fn lazy_drop_then_purge<L: KernelLayout>() {
    let space = space::<L>();
    space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
    space.synchronize();
    let before = (space.phys_stats(), space.vmalloc_stats());
    let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
    drop(space.try_map_frames(P, 0, [frame], rw()).unwrap());
    assert_eq!(space.purge_stats().pending_areas, 1);
    assert!(space.inv());
    space.purge();
    space.synchronize();
    assert_eq!((space.phys_stats(), space.vmalloc_stats()), before);
}

/// The machine's MMU, walking the format with the simulator's own walker
/// (written from the architecture's specification), reads what kvirt
/// mapped, is refused what the rights forbid, and faults at a dropped area
/// once kvirt's flush has removed the translation it had cached.
fn the_mmu_walks_what_kvirt_encodes<L: KernelLayout>(paging: Paging) {
    let space = space::<L>();
    // SAFETY: the CPU runs the space's kernel table and reads and writes
    // only through areas this test holds, faults apart.
    let machine = unsafe { space.machine() }.expect("a hosted space");
    assert_eq!(machine.paging(), paging, "the machine walks the layout's format");
    let cpu = machine.cpu(0);
    cpu.set_root(space.kernel_root_paddr() as u64);
    let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
    let pa = frames.paddr();
    let area = space.try_map_frames(2 * P, 0, frames, rw()).unwrap();
    cpu.write(area.start() + P + 8, &0x1234_5678_u64.to_le_bytes()).expect("the MMU writes a writable page");
    let mut word = [0; 8];
    area.read_bytes(P + 8, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x1234_5678);
    let t = cpu.translate(area.start(), Access::READ).expect("the MMU reads a mapped page");
    assert_eq!((t.pa, t.page_size), (pa as u64, P));
    assert!(cpu.translate(area.start(), Access::EXECUTE).is_err(), "RW is not executable");
    let user = Access { user: true, ..Access::READ };
    assert!(cpu.translate(area.start(), user).is_err(), "kernel pages are not user-accessible");
    // Read-only memory refuses writes.
    let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
    let ro = PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback);
    let read_only = space.try_map_frames(P, 0, [frame], ro).unwrap();
    cpu.translate(read_only.start(), Access::READ).expect("readable");
    assert!(cpu.translate(read_only.start(), Access::WRITE).is_err(), "read-only refuses writes");
    // The linear mapping reads RAM as the machine has it.
    let linear = L::LINEAR_MAPPING_VADDR_RANGE.unwrap().start;
    cpu.read(linear + pa + P + 8, &mut word).expect("the linear mapping is walkable");
    assert_eq!(u64::from_le_bytes(word), 0x1234_5678);
    // A dropped area's cached translation goes with kvirt's flush.
    let va = area.start();
    drop(area);
    let fault = cpu.translate(va, Access::READ).expect_err("a dropped area faults");
    assert!(matches!(fault.kind, FaultKind::NotPresent { .. }), "{fault}");
    drop(read_only);
    assert!(space.inv());
}

/// Instantiates every scenario for each layout.
macro_rules! on_every_format {
    ($($module:ident: $layout:ty => $paging:expr,)*) => {$(
        mod $module {
            use super::*;

            #[test]
            fn linear_mapping_maps_ram() {
                super::linear_mapping_maps_ram::<$layout>();
            }

            #[test]
            fn tracked_areas_round_trip() {
                super::tracked_areas_round_trip::<$layout>();
            }

            #[test]
            fn untracked_area_uses_the_largest_leaves() {
                super::untracked_area_uses_the_largest_leaves::<$layout>();
            }

            #[test]
            fn the_mmu_walks_what_kvirt_encodes() {
                super::the_mmu_walks_what_kvirt_encodes::<$layout>($paging);
            }

            #[test]
            fn lazy_drop_then_purge() {
                super::lazy_drop_then_purge::<$layout>();
            }
        }
    )*};
}

on_every_format! {
    x86_64: X86_64Layout => Paging::X86_64,
    sv39: Sv39Layout => Paging::Sv39,
    sv48: Sv48Layout => Paging::Sv48,
    aarch64: Aarch64Layout => Paging::Aarch64,
}
