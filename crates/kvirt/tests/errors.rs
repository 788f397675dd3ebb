//! Every error type kvirt returns is a `core::error::Error` with a message,
//! and wrapping errors name their cause as `source()`.

use core::error::Error;

use kvirt::frame::{FrameAccessError, FrameAllocError, PhysMemError, SegmentError};
use kvirt::kspace::{
    AreaAccessError, KVirtAreaError, KernelImageError, KernelSpaceError, LayoutError, RangeAllocError,
    SplitError,
};
use kvirt::page_table::{MapErrorKind, OutOfCursorRange, PageTableAllocError, RangeError};

fn is_error<E: Error + Send + Sync + 'static>() {}

#[test]
fn every_error_type_is_an_error() {
    is_error::<FrameAllocError>();
    is_error::<FrameAccessError>();
    is_error::<PhysMemError>();
    is_error::<SegmentError>();
    is_error::<KernelSpaceError>();
    is_error::<KernelImageError>();
    is_error::<LayoutError>();
    is_error::<KVirtAreaError>();
    is_error::<SplitError>();
    is_error::<AreaAccessError>();
    is_error::<RangeAllocError>();
    is_error::<RangeError>();
    is_error::<OutOfCursorRange>();
    is_error::<MapErrorKind>();
    is_error::<PageTableAllocError>();
    is_error::<kvirt::page_table::MapError>();
}

#[test]
fn a_kernel_space_error_names_its_cause() {
    let cause = PhysMemError::NoRam;
    let e = KernelSpaceError::PhysMem(cause.clone());
    let source = e.source().expect("a bad memory map is the cause");
    assert_eq!(source.to_string(), cause.to_string());
    assert!(KernelSpaceError::OutOfMemory.source().is_none());
}
