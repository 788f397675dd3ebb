//! A page table of your own, driven with a cursor: map, query, protect and
//! unmap, with the TLB flushes the cursor asks for.
//!
//! Kernel virtual areas are built on this. A kernel uses it directly for
//! what areas do not cover, such as a user address space
//! (`PageTable::create_user_page_table`).
//!
//! ```sh
//! cargo run -p kvirt --example raw_page_table
//! ```

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable, PageTableFrag};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::sim::MachineConfig;
use kvirt::PAGE_SIZE;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20));
    let pt = PageTable::<KernelPtConfig>::empty_in(&space)?;
    let range = 0xffff_c000_0000_0000..0xffff_c000_0000_0000 + 4 * PAGE_SIZE;
    let rw = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);

    // Map four frames. The cursor locks only the part of the tree that
    // covers its range, so cursors on other ranges run in parallel.
    let mut cursor = pt.cursor_mut(&range)?;
    for _ in 0..4 {
        let frame = FrameAllocOptions::new_in(&space).alloc_frame()?.into_dyn();
        cursor.try_map(MappedItem::Tracked(frame, rw))?;
    }
    drop(cursor);

    // Query every page.
    let mut cursor = pt.cursor(&range)?;
    while let Ok((va, item)) = cursor.query() {
        let item = item.ok_or("a page of the range is unmapped")?;
        println!("{:#x?} -> {:#x} ({:?})", va, item.paddr(), item.prop().flags);
        if cursor.jump(va.end).is_err() {
            break;
        }
    }
    drop(cursor);

    // Make the whole range read-only. Protecting returns the range whose
    // translations changed: it must be flushed before the change counts.
    let mut cursor = pt.cursor_mut(&range)?;
    while let Some(changed) =
        cursor.protect_next(range.end - cursor.virt_addr(), &mut |p| p.flags = PageFlags::R)
    {
        space.platform().flush_tlb(TlbFlushOp::Range(changed), TlbScope::AllCpus);
    }
    drop(cursor);
    println!("read-only: {:?}", pt.translate(range.start).map(|(_, p)| p.flags));

    // Unmap. Each fragment holds what was mapped: flush first, then drop it,
    // so that no CPU can reach a frame after it is freed.
    let mut cursor = pt.cursor_mut(&range)?;
    cursor.jump(range.start)?;
    while let Some(frag) = cursor.take_next(range.end - cursor.virt_addr()) {
        if let PageTableFrag::Mapped { va, .. } = &frag {
            space.platform().flush_tlb(TlbFlushOp::Range(*va..*va + PAGE_SIZE), TlbScope::AllCpus);
        }
        drop(frag);
    }
    drop(cursor);
    assert!(pt.translate(range.start).is_none());
    println!("unmapped");
    Ok(())
}
