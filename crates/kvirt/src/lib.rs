//! # kvirt: kernel virtual memory for Rust kernels
//!
//! kvirt gives an operating-system kernel its kernel virtual memory:
//!
//! * **frames** ([`frame`]): a metadata slot with a reference count for
//!   every physical page, typed frame handles, contiguous segments and a
//!   buddy allocator;
//! * **a multi-level page table** (`page_table`) with cursors that lock only
//!   the sub-tree they cover, and single pages mapped or taken without one
//!   (locking only their leaf node);
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
//! ## A first area
//!
//! On the hosted machine (feature `std`), the whole life of a kernel
//! virtual area: allocate frames, map them, write and read through the
//! mapping, look a page up, and drop the area.
//!
//! ```
//! # #[cfg(feature = "std")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kvirt::frame::FrameAllocOptions;
//! use kvirt::kspace::{KernelSpace, MappedItemRef};
//! use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
//! use kvirt::sim::MachineConfig;
//! use kvirt::PAGE_SIZE;
//!
//! // A kernel space over a simulated machine with 64 MiB of RAM. A kernel
//! // builds its own with `KernelSpace::new`, from its memory map and its
//! // `Platform` (docs/PORTING.md).
//! let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20));
//!
//! // Four frames, mapped into an eight-page area from its second page.
//! let frames = (0..4)
//!     .map(|_| FrameAllocOptions::new_in(&space).alloc_frame())
//!     .collect::<Result<Vec<_>, _>>()?;
//! let first = frames[0].paddr();
//! let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
//! let area = space.try_map_frames(8 * PAGE_SIZE, PAGE_SIZE, frames, prop)?;
//! assert_eq!(area.size(), 8 * PAGE_SIZE);
//! assert_eq!(area.mapped_range(), area.start() + PAGE_SIZE..area.start() + 5 * PAGE_SIZE);
//!
//! // Bytes go through the mapping.
//! area.write_bytes(PAGE_SIZE + 10, b"hello")?;
//! let mut buf = [0; 5];
//! area.read_bytes(PAGE_SIZE + 10, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//!
//! // A query finds the frame and the property it is mapped with.
//! match area.query(area.start() + PAGE_SIZE) {
//!     Some(MappedItemRef::Tracked(frame, p)) => assert_eq!((frame.paddr(), p), (first, prop)),
//!     other => panic!("expected the first frame, found {other:?}"),
//! }
//! assert!(area.query(area.start()).is_none(), "the page before the map offset is unmapped");
//!
//! // Dropping the area unmaps it, flushes the TLBs and releases the frames.
//! let used = space.phys_stats().used_pages;
//! drop(area);
//! space.synchronize();
//! assert!(space.phys_stats().used_pages <= used - 4, "the four frames are free again");
//! # Ok(()) }
//! # #[cfg(not(feature = "std"))] fn main() {}
//! ```
//!
//! ## Decisions where the specification is silent
//!
//! * **Addresses are `usize` aliases** ([`Paddr`], [`Vaddr`]), as in the
//!   specification's signatures (`Range<Vaddr>` must have `len()`); page
//!   sizes come from the paging format ([`arch::page_size`]) and alignment
//!   has checked helpers.
//! * **Kernel spaces are values.** The specification's calls use the process-wide
//!   default ([`kspace::KernelSpace::global`]); every other call has a form
//!   on an explicit space, so tests run many isolated machines in parallel.
//!   An area holds a counted handle to its space, so a space lives until
//!   its last handle or area is gone; frames stay one word and count
//!   nothing, and a space torn down while frames of it live is leaked
//!   (with a warning) rather than left dangling (`kspace`, "Lifetime").
//! * **Trust is explicit.** Whatever kvirt's memory safety rests on and
//!   cannot check is behind `unsafe`: the [`Platform`](platform::Platform)
//!   and [`PagingFormat`](arch::PagingFormat) traits, the memory map given
//!   to [`KernelSpace::new`](kspace::KernelSpace::new), untracked
//!   mappings, and the hosted machine under a space. Everything else a
//!   caller supplies (layouts, page-table configurations, frame metadata,
//!   iterators, closures) is checked or cannot break it.
//! * **Only kvirt changes the kernel page table.** A kernel space hands out
//!   read-only cursors, so the entries of an area change only through the
//!   area, and [`kspace::KVirtArea::query`] can lend a frame for the
//!   area's lifetime.
//! * **Tracked frames are 4 KiB; huge pages are untracked.** Unmapping or
//!   protecting part of a huge page splits it; mapping over any part of an
//!   existing mapping is refused without splitting anything.
//! * **Emptied page-table nodes are reclaimed** when the cursor that
//!   emptied them is dropped: their span is flushed from every TLB (the
//!   hardware's paging-structure caches may hold them) and they are freed
//!   after an RCU grace period.
//! * **Untracked byte access is atomic.** Untyped frame contents may be
//!   shared and written through any clone, so byte copies use relaxed
//!   atomic operations on aligned 8-byte words (the access size of the
//!   simulated machine and of page-table entries; partial words are merged
//!   with a compare-exchange): racing copies are unordered, never
//!   undefined.
//! * **Errors:** every constructor that can fail has a `try_` form with one
//!   error enum; the panicking form panics in exactly those cases with the
//!   error's message. `largest_pages` of zero bytes yields nothing.
//! * **Running out of memory while splitting a huge page changes nothing.**
//!   Every node a split needs is allocated before any entry changes:
//!   `CursorMut::try_take_next`, `try_protect_next` and
//!   [`kspace::KVirtArea::try_split`] report it (the area comes back
//!   unchanged); the plain forms panic, as documented.
//! * **Drops flush eagerly by default; lazy purge is a setting.** The
//!   specification's drop gives the range back before it returns, so
//!   [`kspace::PurgeMode::Eager`] is the default. A kernel on many CPUs
//!   sets [`kspace::PurgeMode::Lazy`] (Linux's threshold through
//!   `PurgeMode::lazy_for_cpus`): drops then unmap at once and share one
//!   shoot-down per purge. The guarantee is the same either way: nothing
//!   is reused before a flush covers it (`kspace::purge`). Set it after
//!   mapping the kernel image: a space that has been lazy counts as in
//!   use there.
//! * **One layout type parameter, defaulting to x86-64.** A kernel space
//!   and its areas are generic over a [`kspace::KernelLayout`] (paging
//!   format plus address ranges); every generic type defaults to
//!   [`kspace::X86_64Layout`], so x86-64 code never names it. The tiny test
//!   format ([`kspace::TinyLayout`], 3 levels × 4 entries) runs the same
//!   code for `kvirt check --exhaustive`.
//!
//! ## Dependencies, and why
//!
//! * `kvirt-core`: the proven core (paging arithmetic, the page sizes of
//!   untracked ranges, the x86-64 entry encoding, the argument checks of
//!   areas, the reference-count transitions), Verus code that plain cargo
//!   compiles with the proofs erased; `cargo xtask verus` checks them.
//! * `bitflags`: page-property flag sets.
//! * `spin`: locks and `Once` without an operating system.
//! * `log`: diagnostics a kernel routes to its console.
//! * `crossbeam-utils` (no_std): `CachePadded`, so that the per-CPU free-page
//!   lists, VMALLOC arenas, registry shards and purge queues do not share
//!   cache lines.
//! * `smallvec` (no_std): the first few frames an unmap takes are kept
//!   inline, so that unmapping a small area allocates nothing.
//! * `hashbrown` (no_std, default features off): the area registry's
//!   shards, std's own hash map. A B-tree frees its last node when it
//!   empties, so a shard holding one area at a time would allocate and free
//!   heap memory at every create and drop; a hash map keeps its table.
//! * `kvirt-sim`, `libc` (feature `std` only): the hosted machine, and the
//!   `membarrier` system call behind the hosted platform's RCU (a reader
//!   then needs no locked instruction; see `platform::hosted`).

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

/// The hosted machine (feature `std`), re-exported for tests and tools.
#[cfg(feature = "std")]
pub use kvirt_sim as sim;

mod abort;
mod addr;
pub mod arch;
pub mod frame;
mod inv;
pub mod kspace;
pub mod page_prop;
pub mod page_table;
pub mod platform;
pub mod spec;

pub use addr::{
    align_down, align_up, checked_align_up, is_aligned, is_page_aligned, Paddr, PagingLevel, Vaddr, PAGE_SIZE,
};

/// The crate README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

/// `docs/PORTING.md`: every snippet of the porting guide is a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/PORTING.md")]
struct PortingGuide;
