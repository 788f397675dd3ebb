//! Kernel layouts other than the default: what `KernelSpace` checks when it
//! is created with one.

use std::ops::Range;
use std::sync::Arc;

use kvirt::arch::tiny::Tiny;
use kvirt::kspace::{KernelLayout, KernelSpace, KernelSpaceError};
use kvirt::platform::hosted::SimPlatform;
use kvirt::sim::{Machine, MachineConfig};
use kvirt::Vaddr;

/// Creates a space laid out as `L` over a fresh machine of `ram` bytes.
fn space_with<L: KernelLayout>(ram: usize) -> Result<KernelSpace<L>, KernelSpaceError> {
    // SAFETY: a new machine, used by this space alone.
    let platform = unsafe { SimPlatform::new(Arc::new(Machine::new(MachineConfig::new(ram)))) };
    let map = platform.memory_map();
    // SAFETY: the map is the machine's own; its RAM reads as zero.
    unsafe { KernelSpace::<L>::with_layout(Box::new(platform), &map, true) }
}

/// The tiny format with a 32 KiB linear mapping: far too small for any RAM.
#[derive(Clone, Copy, Debug)]
struct SmallLinearMapping;

impl KernelLayout for SmallLinearMapping {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x3_0000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = Some(0x3_0000..0x3_8000);
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_8000..0x4_0000;
}

/// VMALLOC overlaps the kernel-code range.
#[derive(Clone, Copy, Debug)]
struct Overlapping;

impl KernelLayout for Overlapping {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x3_1000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x4_0000;
}

/// Kernel space reaching into the format's user half.
#[derive(Clone, Copy, Debug)]
struct IntoUserHalf;

impl KernelLayout for IntoUserHalf {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x1_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x3_0000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x4_0000;
}

#[test]
fn ram_beyond_the_linear_mapping_is_a_typed_error() {
    let ram = 4 << 20;
    match space_with::<SmallLinearMapping>(ram) {
        Err(KernelSpaceError::RamBeyondLinearMapping(end)) => assert!(end > 0x8000, "RAM end {end:#x}"),
        other => panic!("expected RamBeyondLinearMapping, got {:?}", other.map(|_| ())),
    }
}

#[test]
#[should_panic(expected = "overlap")]
fn a_layout_with_overlapping_ranges_is_refused() {
    let _ = space_with::<Overlapping>(4 << 20);
}

#[test]
#[should_panic(expected = "kernel half")]
fn a_layout_reaching_into_the_user_half_is_refused() {
    let _ = space_with::<IntoUserHalf>(4 << 20);
}
