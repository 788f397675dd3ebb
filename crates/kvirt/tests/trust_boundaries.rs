//! What kvirt does with values it cannot trust: answers of a platform that
//! its contract leaves free (docs/VERIFICATION.md, "Trust boundaries").

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::MachineConfig;
use kvirt::spec::Inv;
use kvirt::PAGE_SIZE;

mod support;

use support::hooked::{hooked_space, Hooks};

/// The hosted platform, but claiming to run on CPU `cpu`, whatever the
/// machine has: `Platform` says nothing of the range of `current_cpu`.
#[derive(Debug)]
struct FarCpu(usize);

// SAFETY: no hook unwinds or touches RAM.
unsafe impl Hooks for FarCpu {
    fn current_cpu(&self) -> Option<usize> {
        Some(self.0)
    }
}

fn space_on_cpu(cpu: usize) -> KernelSpace {
    // SAFETY: neither the hooks nor this function touch the machine.
    unsafe { hooked_space(MachineConfig::new(16 << 20), |_| FarCpu(cpu)) }.1
}

mod platform_answers {
    use super::*;

    #[test]
    fn any_cpu_index_works_for_frames_areas_and_reclamation() {
        for cpu in [8, 1000, usize::MAX] {
            let space = space_on_cpu(cpu);
            let before = space.phys_stats();
            let frames = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
            let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
            let area = space.try_map_frames(4 * PAGE_SIZE, PAGE_SIZE, frames, prop).unwrap();
            area.write_bytes(PAGE_SIZE, b"cpu").unwrap();
            let (left, right) = area.split(2 * PAGE_SIZE);
            assert!(space.check().is_ok(), "CPU {cpu}: {:?}", space.check());
            drop((left, right));
            space.synchronize();
            assert_eq!(space.phys_stats(), before, "CPU {cpu}: nothing leaks");
            assert!(space.check().is_ok(), "CPU {cpu}: {:?}", space.check());
        }
    }
}
