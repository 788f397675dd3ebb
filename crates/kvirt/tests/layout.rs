//! Kernel layouts other than the default: what `KernelSpace` checks when it
//! is created with one. Each broken rule is a typed error, found before
//! anything of the space is built.

use std::ops::Range;
use std::sync::Arc;

use kvirt::arch::tiny::Tiny;
use kvirt::arch::{PagingFormat, PteKind};
use kvirt::frame::META_SLOT_SIZE;
use kvirt::kspace::{KernelLayout, KernelSpace, KernelSpaceError, LayoutError, LayoutRange, TinyLayout};
use kvirt::page_prop::PageProperty;
use kvirt::page_table::{KernelPtConfig, PageTable};
use kvirt::platform::hosted::SimPlatform;
use kvirt::sim::{Machine, MachineConfig};
use kvirt::{Paddr, PagingLevel, Vaddr, PAGE_SIZE};

/// The RAM of every test machine: 1024 pages, 64 KiB of frame metadata.
const RAM: usize = 4 << 20;
const METADATA_BYTES: usize = RAM / PAGE_SIZE * META_SLOT_SIZE;

/// Creates a space laid out as `L` over a fresh machine of `ram` bytes.
fn space_with<L: KernelLayout>(ram: usize) -> Result<KernelSpace<L>, KernelSpaceError> {
    space_and_machine::<L>(ram).0
}

/// [`space_with`], and the machine, to see whether a rejected space let go
/// of it.
fn space_and_machine<L: KernelLayout>(
    ram: usize,
) -> (Result<KernelSpace<L>, KernelSpaceError>, Arc<Machine>) {
    let machine = Arc::new(Machine::new(MachineConfig::new(ram)));
    // SAFETY: a new machine, used by this space alone (the test's clone only
    // reads RAM that no space uses once the rejected one is gone).
    let platform = unsafe { SimPlatform::new(machine.clone()) };
    let map = platform.memory_map();
    // SAFETY: the map is the machine's own; its RAM reads as zero.
    (unsafe { KernelSpace::<L>::with_layout(Box::new(platform), &map, true) }, machine)
}

/// The error `L` is rejected with; the rejected space kept nothing (its
/// platform, the only other owner of the machine, is gone) and wrote
/// nothing into the machine's RAM (no page-table node was built there).
fn rejection<L: KernelLayout>() -> KernelSpaceError {
    let (result, machine) = space_and_machine::<L>(RAM);
    let error = result.map(|_| ()).expect_err("the layout was accepted");
    assert_eq!(Arc::strong_count(&machine), 1, "the rejected space kept its platform");
    let mut ram = vec![0xffu8; RAM];
    machine.read_phys(0, &mut ram).expect("RAM");
    assert!(ram.iter().all(|&b| b == 0), "the rejected space wrote into RAM");
    assert!(!error.to_string().is_empty());
    error
}

/// The [`LayoutError`] `L` is rejected with, and its message.
fn layout_rejection<L: KernelLayout>() -> (LayoutError, String) {
    match rejection::<L>() {
        KernelSpaceError::Layout(e) => {
            let message = KernelSpaceError::Layout(e.clone()).to_string();
            assert!(message.starts_with("bad kernel layout: "), "{message}");
            (e, message)
        }
        other => panic!("expected a layout error, got {other:?}"),
    }
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

/// The frame metadata range is one page; a 4 MiB machine's array needs 16.
/// VMALLOC follows it, so the array would spill into VMALLOC.
#[derive(Clone, Copy, Debug)]
struct OnePageOfMetadata;

impl KernelLayout for OnePageOfMetadata {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_1000..0x3_0000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = Some(0x2_0000..0x2_1000);
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x4_0000;
}

/// The frame metadata range holds a 4 MiB machine's array exactly.
#[derive(Clone, Copy, Debug)]
struct ExactMetadataRange;

impl KernelLayout for ExactMetadataRange {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x3_8000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = Some(0x2_0000..0x2_0000 + METADATA_BYTES);
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_8000..0x4_0000;
}

/// The kernel-code range reaches past kernel space.
#[derive(Clone, Copy, Debug)]
struct CodeBeyondKernelSpace;

impl KernelLayout for CodeBeyondKernelSpace {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x3_8000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x3_0000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x4_0000;
}

/// VMALLOC ends in the middle of a page.
#[derive(Clone, Copy, Debug)]
struct MisalignedVmalloc;

impl KernelLayout for MisalignedVmalloc {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x2_f800;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x4_0000;
}

/// VMALLOC is empty.
#[derive(Clone, Copy, Debug)]
struct EmptyVmalloc;

impl KernelLayout for EmptyVmalloc {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x2_0000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x4_0000;
}

/// The metadata range lies inside the linear mapping.
#[derive(Clone, Copy, Debug)]
struct MetadataInsideLinearMapping;

impl KernelLayout for MetadataInsideLinearMapping {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x3_8000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = Some(0x2_0000..0x3_0000);
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = Some(0x2_8000..0x2_9000);
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_8000..0x4_0000;
}

/// The tiny format, but with entries that hold physical addresses below
/// 1 MiB only: less than the RAM of every test machine.
#[derive(Clone, Copy, Debug)]
struct NarrowTiny;

// SAFETY: `Tiny`'s encodings, which keep every promise for addresses below
// 2^52, so below 2^20 too; every other item is `Tiny`'s.
unsafe impl PagingFormat for NarrowTiny {
    const NR_LEVELS: PagingLevel = Tiny::NR_LEVELS;
    const ENTRY_BITS: u32 = Tiny::ENTRY_BITS;
    const HIGHEST_LEAF_LEVEL: PagingLevel = Tiny::HIGHEST_LEAF_LEVEL;
    const PA_BITS: u32 = 20;
    const SIGN_EXTEND: bool = Tiny::SIGN_EXTEND;

    fn encode_page(pa: Paddr, level: PagingLevel, prop: PageProperty, tracked: bool) -> u64 {
        Tiny::encode_page(pa, level, prop, tracked)
    }

    fn encode_table(pa: Paddr) -> u64 {
        Tiny::encode_table(pa)
    }

    fn decode(raw: u64, level: PagingLevel) -> PteKind {
        Tiny::decode(raw, level)
    }
}

/// [`TinyLayout`]'s ranges over [`NarrowTiny`].
#[derive(Clone, Copy, Debug)]
struct NarrowPhysicalAddresses;

impl KernelLayout for NarrowPhysicalAddresses {
    type Format = NarrowTiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = TinyLayout::KERNEL_VADDR_RANGE;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = TinyLayout::VMALLOC_VADDR_RANGE;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = TinyLayout::LINEAR_MAPPING_VADDR_RANGE;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = TinyLayout::FRAME_METADATA_VADDR_RANGE;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = TinyLayout::KERNEL_CODE_VADDR_RANGE;
}

/// RAM a paging format cannot put in its entries.
mod ram_beyond_the_format {
    use super::*;

    #[test]
    fn a_space_is_refused_before_anything_is_built() {
        match rejection::<NarrowPhysicalAddresses>() {
            KernelSpaceError::RamBeyondFormat(end) => assert_eq!(end, RAM),
            other => panic!("expected RamBeyondFormat, got {other:?}"),
        }
    }

    #[test]
    #[should_panic(
        expected = "PageTable: RAM reaches 0x400000, past the physical addresses the paging format can express"
    )]
    fn a_page_table_of_that_format_in_another_space_panics() {
        let space = space_with::<TinyLayout>(RAM).expect("the tiny layout");
        let _ = PageTable::<KernelPtConfig<NarrowTiny>>::empty_in(&space);
    }
}

/// Each rule of `KernelLayout` a layout breaks, as a typed error.
mod broken_rules {
    use super::*;

    #[test]
    fn ram_beyond_the_linear_mapping_is_refused_before_anything_is_built() {
        match rejection::<SmallLinearMapping>() {
            KernelSpaceError::RamBeyondLinearMapping(end) => assert_eq!(end, RAM),
            other => panic!("expected RamBeyondLinearMapping, got {other:?}"),
        }
    }

    #[test]
    fn a_metadata_array_larger_than_its_range_is_refused_before_anything_is_built() {
        let (e, message) = layout_rejection::<OnePageOfMetadata>();
        assert_eq!(e, LayoutError::MetadataBeyondRange { needed: METADATA_BYTES, available: PAGE_SIZE });
        assert!(message.contains("needs 0x10000 bytes, FRAME_METADATA_VADDR_RANGE has 0x1000"), "{message}");
    }

    #[test]
    fn a_metadata_range_that_holds_the_array_exactly_is_accepted_and_filled() {
        let space = space_with::<ExactMetadataRange>(RAM).expect("the array fits");
        let range = ExactMetadataRange::FRAME_METADATA_VADDR_RANGE.unwrap();
        assert!(space.kernel_translate(range.start).is_some());
        assert!(space.kernel_translate(range.end - 1).is_some());
        let vmalloc = ExactMetadataRange::VMALLOC_VADDR_RANGE;
        assert_eq!(space.kernel_translate(vmalloc.start), None, "VMALLOC is empty");
    }

    #[test]
    fn a_layout_with_overlapping_ranges_is_refused() {
        let (e, message) = layout_rejection::<Overlapping>();
        let first = (LayoutRange::Vmalloc, Overlapping::VMALLOC_VADDR_RANGE);
        let second = (LayoutRange::KernelCode, Overlapping::KERNEL_CODE_VADDR_RANGE);
        assert_eq!(e, LayoutError::Overlapping { first, second });
        assert!(
            message.contains("VMALLOC_VADDR_RANGE 0x20000..0x31000 and KERNEL_CODE_VADDR_RANGE"),
            "{message}"
        );
    }

    #[test]
    fn a_range_inside_another_one_is_an_overlap() {
        let (e, _) = layout_rejection::<MetadataInsideLinearMapping>();
        let first = (LayoutRange::LinearMapping, 0x2_0000..0x3_0000);
        let second = (LayoutRange::FrameMetadata, 0x2_8000..0x2_9000);
        assert_eq!(e, LayoutError::Overlapping { first, second });
    }

    #[test]
    fn a_layout_reaching_into_the_user_half_is_refused() {
        let (e, message) = layout_rejection::<IntoUserHalf>();
        assert_eq!(e, LayoutError::KernelRangeOutsideKernelHalf(IntoUserHalf::KERNEL_VADDR_RANGE));
        assert!(message.contains("kernel half"), "{message}");
    }

    #[test]
    fn a_range_outside_kernel_space_or_misaligned_is_refused() {
        let (e, message) = layout_rejection::<CodeBeyondKernelSpace>();
        assert_eq!(
            e,
            LayoutError::OutsideKernelSpace(
                LayoutRange::KernelCode,
                CodeBeyondKernelSpace::KERNEL_CODE_VADDR_RANGE
            )
        );
        assert!(message.contains("KERNEL_CODE_VADDR_RANGE 0x30000..0x40000 is not"), "{message}");
        let (e, _) = layout_rejection::<MisalignedVmalloc>();
        assert_eq!(e, LayoutError::OutsideKernelSpace(LayoutRange::Vmalloc, 0x2_0000..0x2_f800));
    }

    #[test]
    fn an_empty_vmalloc_is_refused() {
        let (e, message) = layout_rejection::<EmptyVmalloc>();
        assert_eq!(e, LayoutError::EmptyVmalloc);
        assert!(message.contains("VMALLOC_VADDR_RANGE is empty"), "{message}");
    }

    #[test]
    fn layout_errors_are_errors() {
        let e: Box<dyn std::error::Error> = Box::new(LayoutError::EmptyVmalloc);
        assert_eq!(e.to_string(), "VMALLOC_VADDR_RANGE is empty");
    }
}
