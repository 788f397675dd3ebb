//! The hosted machine driven through the library: the simulated MMU walks
//! the page tables kvirt builds, and the simulated per-CPU TLBs keep stale
//! translations until the platform flushes them.

use kvirt::frame::{FrameAllocOptions, UFrame};
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable, PageTableFrag};
use kvirt::platform::hosted::set_current_cpu;
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::{Paddr, PagingLevel, Vaddr, PAGE_SIZE};
use kvirt_sim::{Access, FaultKind, MachineConfig, MemError, PhysAddr};

const P: usize = PAGE_SIZE;
const SIZE_2M: usize = 2 << 20;
const SIZE_1G: usize = 1 << 30;
/// The start of VMALLOC: 1 GiB aligned.
const VA: Vaddr = 0xffff_c000_0000_0000;
/// A user-half address, 1 GiB aligned.
const USER_VA: Vaddr = 0x0000_0040_0000_0000;

const USER_READ: Access = Access { write: false, execute: false, user: true };
const USER_WRITE: Access = Access { write: true, execute: false, user: true };

fn space() -> KernelSpace {
    KernelSpace::new_hosted(MachineConfig::new(64 << 20).cpus(2))
}

/// The machine under `space`.
fn machine(space: &KernelSpace) -> std::sync::Arc<kvirt_sim::Machine> {
    // SAFETY: every test in this file maps, into the tables it loads into a
    // CPU, only frames it holds (alive while a CPU may use them, stale TLB
    // entries included), device memory and Reserved RAM, and reads and
    // writes only those.
    unsafe { space.machine() }.expect("a hosted space has a machine").clone()
}

fn kernel(flags: PageFlags) -> PageProperty {
    PageProperty::new_kernel(flags, CachePolicy::Writeback)
}

fn pa(p: Paddr) -> PhysAddr {
    p as PhysAddr
}

/// A zeroed untyped frame filled with `byte`.
fn frame_filled(space: &KernelSpace, byte: u8) -> UFrame {
    let frame: UFrame = FrameAllocOptions::new_in(space).alloc_frame().unwrap().into();
    frame.fill(byte);
    frame
}

fn map_tracked(pt: &PageTable<KernelPtConfig>, va: Vaddr, frame: &UFrame, prop: PageProperty) {
    let mut c = pt.cursor_mut(&(va..va + P)).unwrap();
    c.map(MappedItem::Tracked(frame.clone().into(), prop));
}

/// Maps a frame a few pages after `VA` so that the last-level node under
/// `VA` never becomes empty. Otherwise unmapping the only page would detach
/// the node, and detaching a node flushes its whole span from every TLB
/// (paging-structure caches may hold it), hiding the stale entry these
/// tests look for.
fn anchor(space: &KernelSpace, pt: &PageTable<KernelPtConfig>) -> UFrame {
    let frame = frame_filled(space, 0xee);
    map_tracked(pt, VA + 8 * P, &frame, kernel(PageFlags::R));
    frame
}

/// Unmaps the page at `va`; the fragment still owns what was mapped.
fn unmap(pt: &PageTable<KernelPtConfig>, va: Vaddr) -> PageTableFrag {
    let mut c = pt.cursor_mut(&(va..va + P)).unwrap();
    c.take_next(P).expect("something is mapped")
}

fn read_byte(cpu: &kvirt_sim::Cpu, va: Vaddr) -> u8 {
    let mut b = [0u8; 1];
    cpu.read(va, &mut b).unwrap();
    b[0]
}

/// TLB behaviour.
mod tlb_behaviour {
    use super::*;

    #[test]
    fn tlb_returns_a_stale_translation_until_the_platform_flushes_it() {
        let space = space();
        let machine = machine(&space);
        let a = frame_filled(&space, 0xaa);
        let b = frame_filled(&space, 0xbb);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        let prop = kernel(PageFlags::RW);
        map_tracked(&pt, VA, &a, prop);

        let cpu = machine.cpu(0);
        cpu.set_root(pa(pt.root_paddr()));
        assert_eq!(cpu.translate(VA, Access::READ).unwrap().pa, pa(a.paddr()));
        assert_eq!(read_byte(cpu, VA + 17), 0xaa);
        assert_eq!(cpu.tlb_entries(), 1);

        // Unmap A and map B at the same address, without a flush.
        let frag = {
            let mut c = pt.cursor_mut(&(VA..VA + P)).unwrap();
            let frag = c.take_next(P).unwrap();
            c.jump(VA).unwrap();
            c.map(MappedItem::Tracked(b.clone().into(), prop));
            frag
        };
        match &frag {
            PageTableFrag::Mapped { va, item: MappedItem::Tracked(f, _) } => {
                assert_eq!(*va, VA);
                assert_eq!(f.paddr(), a.paddr());
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        assert_eq!(pt.translate(VA).unwrap().0, b.paddr(), "the page table already says B");
        assert_eq!(cpu.translate(VA, Access::READ).unwrap().pa, pa(a.paddr()), "the TLB still says A");
        assert_eq!(read_byte(cpu, VA), 0xaa);

        space.platform().flush_tlb(TlbFlushOp::Page(VA), TlbScope::AllCpus);
        assert_eq!(cpu.translate(VA, Access::READ).unwrap().pa, pa(b.paddr()));
        assert_eq!(read_byte(cpu, VA + 17), 0xbb);

        // Only after the flush may A's page go back to the allocator.
        drop(frag);
        space.synchronize();
        assert_eq!(a.reference_count(), 1);
        assert_eq!(b.reference_count(), 2);
    }

    #[test]
    fn unmapped_page_faults_only_after_the_flush() {
        let space = space();
        let machine = machine(&space);
        let a = frame_filled(&space, 1);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        let _anchor = anchor(&space, &pt);
        map_tracked(&pt, VA, &a, kernel(PageFlags::RW));
        let cpu = machine.cpu(0);
        cpu.set_root(pa(pt.root_paddr()));
        cpu.translate(VA, Access::READ).unwrap();

        let frag = unmap(&pt, VA);
        assert!(pt.translate(VA).is_none());
        assert_eq!(cpu.translate(VA, Access::READ).unwrap().pa, pa(a.paddr()), "stale until flushed");
        space.platform().flush_tlb(TlbFlushOp::Page(VA), TlbScope::AllCpus);
        let fault = cpu.translate(VA, Access::READ).unwrap_err();
        assert!(matches!(fault.kind, FaultKind::NotPresent { .. }), "{fault:?}");
        drop(frag);
    }

    #[test]
    fn local_flush_on_another_cpu_does_not_cure_this_one() {
        let space = space();
        let machine = machine(&space);
        let a = frame_filled(&space, 0xaa);
        let b = frame_filled(&space, 0xbb);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        let _anchor = anchor(&space, &pt);
        let prop = kernel(PageFlags::RW);
        map_tracked(&pt, VA, &a, prop);
        let (cpu0, cpu1) = (machine.cpu(0), machine.cpu(1));
        for cpu in [cpu0, cpu1] {
            cpu.set_root(pa(pt.root_paddr()));
            assert_eq!(cpu.translate(VA, Access::READ).unwrap().pa, pa(a.paddr()));
        }

        let frag = unmap(&pt, VA);
        map_tracked(&pt, VA, &b, prop);

        set_current_cpu(1);
        space.platform().flush_tlb(TlbFlushOp::Page(VA), TlbScope::Local);
        assert_eq!(cpu1.translate(VA, Access::READ).unwrap().pa, pa(b.paddr()), "CPU 1 flushed itself");
        assert_eq!(cpu0.translate(VA, Access::READ).unwrap().pa, pa(a.paddr()), "CPU 0 is still stale");

        set_current_cpu(0);
        space.platform().flush_tlb(TlbFlushOp::Page(VA), TlbScope::Local);
        assert_eq!(cpu0.translate(VA, Access::READ).unwrap().pa, pa(b.paddr()));
        drop(frag);
    }

    #[test]
    fn detaching_an_emptied_node_flushes_its_span_on_every_cpu() {
        let space = space();
        let machine = machine(&space);
        let a = frame_filled(&space, 1);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        map_tracked(&pt, VA, &a, kernel(PageFlags::RW));
        for i in 0..2 {
            machine.cpu(i).set_root(pa(pt.root_paddr()));
            machine.cpu(i).translate(VA, Access::READ).unwrap();
        }
        // The only page of its node: unmapping it empties and detaches the node,
        // which the library flushes itself.
        let frag = unmap(&pt, VA);
        for i in 0..2 {
            assert!(machine.cpu(i).translate(VA, Access::READ).is_err(), "CPU {i} kept a translation");
        }
        drop(frag);
        space.synchronize();
        assert_eq!(a.reference_count(), 1);
    }

    #[test]
    fn all_cpu_flush_reaches_every_cpu() {
        let space = space();
        let machine = machine(&space);
        let a = frame_filled(&space, 0xaa);
        let b = frame_filled(&space, 0xbb);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        let _anchor = anchor(&space, &pt);
        let prop = kernel(PageFlags::RW);
        map_tracked(&pt, VA, &a, prop);
        for i in 0..2 {
            machine.cpu(i).set_root(pa(pt.root_paddr()));
            machine.cpu(i).translate(VA, Access::READ).unwrap();
        }
        let frag = unmap(&pt, VA);
        map_tracked(&pt, VA, &b, prop);
        set_current_cpu(1);
        space.platform().flush_tlb(TlbFlushOp::Page(VA), TlbScope::AllCpus);
        set_current_cpu(0);
        for i in 0..2 {
            assert_eq!(machine.cpu(i).translate(VA, Access::READ).unwrap().pa, pa(b.paddr()), "CPU {i}");
        }
        drop(frag);
    }

    #[test]
    fn range_and_full_flushes_drop_exactly_what_they_cover() {
        let space = space();
        let machine = machine(&space);
        let frames: Vec<_> = (0..4u8).map(|i| frame_filled(&space, i)).collect();
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        for (i, f) in frames.iter().enumerate() {
            map_tracked(&pt, VA + i * P, f, kernel(PageFlags::RW));
        }
        let cpu = machine.cpu(0);
        cpu.set_root(pa(pt.root_paddr()));
        for i in 0..4 {
            cpu.translate(VA + i * P, Access::READ).unwrap();
        }
        assert_eq!(cpu.tlb_entries(), 4);
        space.platform().flush_tlb(TlbFlushOp::Range(VA + P..VA + 3 * P), TlbScope::Local);
        assert_eq!(cpu.tlb_entries(), 2);
        space.platform().flush_tlb(TlbFlushOp::All, TlbScope::AllCpus);
        assert_eq!(cpu.tlb_entries(), 0);
    }
}

/// The MMU agrees with the page table.
mod the_mmu_agrees_with_the_page_table {
    use super::*;

    /// Checks that the CPU and `pt.translate` agree at several offsets of the
    /// page of `size` bytes mapped at `va` to `expected_pa`.
    fn assert_agree(
        pt: &PageTable<KernelPtConfig>,
        cpu: &kvirt_sim::Cpu,
        va: Vaddr,
        size: usize,
        expected_pa: Paddr,
    ) {
        for off in [0, 1, P - 1, P, size / 2 + 7, size - 8, size - 1].into_iter().filter(|&off| off < size) {
            let (sw_pa, _) =
                pt.translate(va + off).unwrap_or_else(|| panic!("no mapping at {:#x}", va + off));
            let hw = cpu.translate(va + off, Access::READ).unwrap();
            assert_eq!(sw_pa, expected_pa + off, "page table at offset {off:#x}");
            assert_eq!(pt.translate_addr(va + off), Some(sw_pa), "translate_addr at offset {off:#x}");
            assert_eq!(hw.pa, pa(sw_pa), "MMU vs page table at offset {off:#x}");
            assert_eq!(hw.page_size, size, "MMU page size at offset {off:#x}");
        }
        // One TLB entry covers the whole page.
        assert!(cpu.tlb_entries() >= 1);
    }

    #[test]
    fn mmu_agrees_with_the_page_table_for_4k_2m_and_1g_pages() {
        let space = space();
        let machine = machine(&space);
        let window = machine.device_window().start as Paddr;
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        let prop = kernel(PageFlags::RW);

        // 1 GiB: the device window.
        let va_1g = VA;
        // 2 MiB: the second 2 MiB of the device window, at the next 1 GiB.
        let va_2m = VA + SIZE_1G + SIZE_2M;
        // 4 KiB untracked: a page of reserved low memory.
        let va_4k = VA + 2 * SIZE_1G + 3 * P;
        let low_pa: Paddr = 0x5000;
        // 4 KiB tracked.
        let va_tracked = VA + 2 * SIZE_1G + 8 * P;
        let frame = frame_filled(&space, 0x42);

        let items: [(Vaddr, usize, Paddr, PagingLevel); 3] =
            [(va_1g, SIZE_1G, window, 3), (va_2m, SIZE_2M, window + SIZE_2M, 2), (va_4k, P, low_pa, 1)];
        for (va, size, p, level) in items {
            let mut c = pt.cursor_mut(&(va..va + size)).unwrap();
            c.map(MappedItem::Untracked(p, level, prop));
        }
        map_tracked(&pt, va_tracked, &frame, prop);

        let cpu = machine.cpu(0);
        cpu.set_root(pa(pt.root_paddr()));
        for (va, size, p, _) in items {
            assert_agree(&pt, cpu, va, size, p);
        }
        assert_agree(&pt, cpu, va_tracked, P, frame.paddr());
        assert_eq!(read_byte(cpu, va_tracked + 100), 0x42);

        // The 1 GiB page reaches the sim device's id register.
        let mut id = [0u8; 4];
        cpu.read(va_1g, &mut id).unwrap();
        assert_eq!(u32::from_le_bytes(id), kvirt_sim::SIM_DEVICE_ID);
        // And the 2 MiB page the open bus behind it.
        let mut open = [0u8; 4];
        cpu.read(va_2m + 64, &mut open).unwrap();
        assert_eq!(open, [0xff; 4]);

        // Writes through the MMU land in the frame.
        cpu.write(va_tracked + 8, b"kvirt").unwrap();
        let mut back = [0u8; 5];
        frame.read_bytes(8, &mut back).unwrap();
        assert_eq!(&back, b"kvirt");

        // Addresses next to the mappings are not mapped.
        for va in [va_4k - P, va_4k + P, va_2m - P, va_2m + SIZE_2M] {
            assert!(pt.translate(va).is_none(), "{va:#x}");
            assert_eq!(pt.translate_addr(va), None, "{va:#x}");
            assert!(cpu.translate(va, Access::READ).is_err(), "{va:#x}");
        }
    }

    #[test]
    fn mmu_and_page_table_agree_on_every_page_of_a_mapped_run() {
        let space = space();
        let machine = machine(&space);
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(16).unwrap();
        let base = seg.paddr();
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        {
            let mut c = pt.cursor_mut(&(VA..VA + 16 * P)).unwrap();
            for frame in seg {
                c.map(MappedItem::Tracked(frame.into(), kernel(PageFlags::RW)));
            }
        }
        let cpu = machine.cpu(1);
        cpu.set_root(pa(pt.root_paddr()));
        for i in 0..16 {
            assert_agree(&pt, cpu, VA + i * P, P, base + i * P);
        }
        assert_eq!(cpu.tlb_entries(), 16);
    }
}

/// Permissions.
mod permissions {
    use super::*;

    /// Maps `flags` at `VA` in a fresh kernel table and returns what the MMU
    /// says for a read, a write and an instruction fetch.
    fn kernel_access(flags: PageFlags) -> [Result<(), FaultKind>; 3] {
        let space = space();
        let machine = machine(&space);
        let frame = frame_filled(&space, 0);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        map_tracked(&pt, VA, &frame, kernel(flags));
        let cpu = machine.cpu(0);
        cpu.set_root(pa(pt.root_paddr()));
        let result = [Access::READ, Access::WRITE, Access::EXECUTE]
            .map(|access| cpu.translate(VA, access).map(|_| ()).map_err(|f| f.kind));
        cpu.flush_all();
        result
    }

    #[test]
    fn read_only_kernel_page_rejects_writes() {
        assert_eq!(
            kernel_access(PageFlags::R),
            [Ok(()), Err(FaultKind::Protection), Err(FaultKind::Protection)]
        );
    }

    #[test]
    fn writable_kernel_page_accepts_writes() {
        assert_eq!(kernel_access(PageFlags::RW), [Ok(()), Ok(()), Err(FaultKind::Protection)]);
    }

    #[test]
    fn executable_kernel_page_accepts_instruction_fetches() {
        assert_eq!(kernel_access(PageFlags::RX), [Ok(()), Err(FaultKind::Protection), Ok(())]);
        assert_eq!(kernel_access(PageFlags::RWX), [Ok(()), Ok(()), Ok(())]);
    }

    #[test]
    fn page_without_read_permission_is_not_present() {
        let [r, w, x] = kernel_access(PageFlags::empty());
        for result in [r, w, x] {
            assert!(matches!(result, Err(FaultKind::NotPresent { level: 1 })), "{result:?}");
        }
    }

    #[test]
    fn write_through_the_mmu_to_a_read_only_page_faults_and_writes_nothing() {
        let space = space();
        let machine = machine(&space);
        let frame = frame_filled(&space, 0x77);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        map_tracked(&pt, VA, &frame, kernel(PageFlags::R));
        let cpu = machine.cpu(0);
        cpu.set_root(pa(pt.root_paddr()));
        let err = cpu.write(VA, &[1, 2, 3]).unwrap_err();
        assert!(matches!(err, MemError::Fault(f) if f.kind == FaultKind::Protection), "{err:?}");
        let mut buf = [0u8; 3];
        frame.read_bytes(0, &mut buf).unwrap();
        assert_eq!(buf, [0x77; 3]);
    }

    #[test]
    fn kernel_mappings_are_global_and_supervisor_only() {
        let space = space();
        let machine = machine(&space);
        let frame = frame_filled(&space, 0);
        let kpt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        map_tracked(&kpt, VA, &frame, kernel(PageFlags::RW));
        let upt = kpt.create_user_page_table().unwrap();
        let cpu = machine.cpu(0);
        cpu.set_root(pa(upt.root_paddr()));
        let t = cpu.translate(VA, Access::READ).unwrap();
        assert!(t.global && !t.user, "{t:?}");
        assert_eq!(t.pa, pa(frame.paddr()), "the user table sees the shared kernel half");
        assert_eq!(cpu.translate(VA, USER_READ).unwrap_err().kind, FaultKind::Protection);
    }

    #[test]
    fn user_mappings_are_enforced_by_the_mmu() {
        let space = space();
        let machine = machine(&space);
        let ro = frame_filled(&space, 1);
        let rw = frame_filled(&space, 2);
        let kpt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        let upt = kpt.create_user_page_table().unwrap();
        {
            let mut c = upt.cursor_mut(&(USER_VA..USER_VA + 2 * P)).unwrap();
            c.map(MappedItem::Tracked(
                ro.clone().into(),
                PageProperty::new_user(PageFlags::R, CachePolicy::Writeback),
            ));
            c.map(MappedItem::Tracked(
                rw.clone().into(),
                PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback),
            ));
        }
        let (_, prop) = upt.translate(USER_VA).unwrap();
        assert!(prop.priv_flags.contains(PrivilegedPageFlags::USER));

        let cpu = machine.cpu(0);
        cpu.set_root(pa(upt.root_paddr()));
        let t = cpu.translate(USER_VA, USER_READ).unwrap();
        assert!(t.user && !t.global && !t.executable, "{t:?}");
        assert_eq!(t.pa, pa(ro.paddr()));
        assert_eq!(cpu.translate(USER_VA, USER_WRITE).unwrap_err().kind, FaultKind::Protection);
        assert_eq!(cpu.translate(USER_VA + P, USER_WRITE).unwrap().pa, pa(rw.paddr()));
        let user_exec = Access { write: false, execute: true, user: true };
        assert_eq!(cpu.translate(USER_VA + P, user_exec).unwrap_err().kind, FaultKind::Protection);
        // A kernel table alone does not reach the user half.
        cpu.set_root(pa(kpt.root_paddr()));
        assert!(matches!(cpu.translate(USER_VA, USER_READ).unwrap_err().kind, FaultKind::NotPresent { .. }));
    }

    #[test]
    fn lowering_rights_without_a_flush_leaves_the_old_rights_cached() {
        let space = space();
        let machine = machine(&space);
        let frame = frame_filled(&space, 0);
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
        map_tracked(&pt, VA, &frame, kernel(PageFlags::RW));
        let cpu = machine.cpu(0);
        cpu.set_root(pa(pt.root_paddr()));
        assert!(cpu.translate(VA, Access::WRITE).is_ok());
        {
            let mut c = pt.cursor_mut(&(VA..VA + P)).unwrap();
            let changed = c.protect_next(P, &mut |p: &mut PageProperty| p.flags -= PageFlags::W);
            assert_eq!(changed, Some(VA..VA + P));
        }
        assert!(!pt.translate(VA).unwrap().1.flags.contains(PageFlags::W));
        assert!(cpu.translate(VA, Access::WRITE).is_ok(), "the TLB still allows writes");
        space.platform().flush_tlb(TlbFlushOp::Page(VA), TlbScope::AllCpus);
        assert_eq!(cpu.translate(VA, Access::WRITE).unwrap_err().kind, FaultKind::Protection);
    }
}
