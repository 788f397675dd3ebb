use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable};

#[test]
fn smoke() {
    let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20));
    let before = space.phys_stats();
    let f = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
    assert_eq!(f.reference_count(), 1);
    let g = f.clone();
    assert_eq!(f.reference_count(), 2);
    drop(g);
    let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
    let va = 0xffff_c000_0000_0000usize;
    let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
    {
        let mut c = pt.cursor_mut(&(va..va + 0x4000)).unwrap();
        c.map(MappedItem::Tracked(f.clone().into_dyn(), prop));
        c.jump(va).unwrap();
        let (r, item) = c.query().unwrap();
        assert_eq!(r, va..va + 4096);
        assert_eq!(item.unwrap().paddr(), f.paddr());
    }
    assert_eq!(pt.translate(va + 5).unwrap().0, f.paddr() + 5);
    {
        let mut c = pt.cursor_mut(&(va..va + 0x4000)).unwrap();
        let frag = c.take_next(0x4000).unwrap();
        drop(c);
        drop(frag);
    }
    space.synchronize();
    assert_eq!(f.reference_count(), 1);
    drop(f);
    drop(pt);
    space.synchronize();
    let after = space.phys_stats();
    assert_eq!(before, after);
}
