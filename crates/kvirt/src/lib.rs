//! # kvirt: kernel virtual memory for Rust kernels
//!
//! kvirt gives an operating-system kernel its kernel virtual memory:
//!
//! * **frames** ([`frame`]): a metadata slot with a reference count for
//!   every physical page, typed frame handles, contiguous segments and a
//!   buddy allocator;
//! * **a multi-level page table** (`page_table`) with cursors that lock only
//!   the sub-tree they cover;
//! * **kernel virtual areas** ([`kspace`]): ranges of the VMALLOC region that
//!   own what they map, following Asterinas OSTD's `KVirtArea` as specified
//!   by its formally verified port;
//! * **an executable specification** (`spec`).
//!
//! The crate is `#![no_std]` + `alloc`. A kernel supplies a
//! [`Platform`](platform::Platform) (physical window, TLB flushes, current
//! CPU, deferred reclamation). With the `std` feature, a process-wide default
//! kernel space runs over a simulated machine (`kvirt-sim`) whose software
//! MMU and per-CPU TLBs walk the page tables kvirt builds.
//!
//! ## Dependencies, and why
//!
//! * `bitflags`: page-property flag sets.
//! * `spin`: locks and `Once` without an operating system.
//! * `log`: diagnostics a kernel routes to its console.
//! * `kvirt-sim`, `crossbeam-epoch` (feature `std` only): the hosted machine
//!   and epoch-based reclamation for hosted builds.

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

/// The hosted machine (feature `std`), re-exported for tests and tools.
#[cfg(feature = "std")]
pub use kvirt_sim as sim;

mod addr;
pub mod arch;
pub mod frame;
pub mod kspace;
pub mod page_prop;
pub mod page_table;
pub mod platform;
pub mod spec;

pub use addr::{
    align_down, align_up, checked_align_up, is_aligned, is_page_aligned, Paddr, PageSize, PagingLevel, Vaddr,
    PAGE_SIZE,
};
