//! The multi-level page table.
//!
//! A [`PageTable<C>`] is a tree of 4 KiB nodes in the shape its paging
//! format `C::F` prescribes. All access goes through cursors:
//! [`Cursor`] (query, find, jump) and [`CursorMut`] (also map, take, protect),
//! each created over a page-aligned range that it locks for its lifetime.
//! One 4 KiB page, the commonest case, may also be mapped or taken without
//! one ([`PageTable::try_map_frame`], [`PageTable::try_take_page`]), and a
//! range inside one leaf node taken ([`PageTable::try_take_range`], which
//! goes through a cursor for any other range): under the same locks, with
//! the same results (a range taken in place reports all of itself for the
//! flush), for less than a cursor's fixed cost.
//!
//! ## Locking (CortenMM)
//!
//! A cursor walks down from the root **without locks** (inside an RCU
//! read-side section) to the lowest node that covers its whole range, locks
//! that *guard node*, re-checks that it is still attached (not `stray`),
//! and then locks, top-down, every existing node below it that intersects
//! the range. Locks are always taken parent before child, so cursors on
//! different threads never deadlock.
//!
//! One thread holding two cursors is another matter: a lock is not
//! re-entrant, and a node's lock stands for the range beneath it. Creating
//! a cursor whose nodes a cursor of the same thread holds (overlapping
//! ranges, or disjoint ones that share a guard node), or dropping a cursor
//! that emptied its guard node, whose reclamation then locks the parent,
//! while the same thread holds a cursor with that parent as its guard,
//! waits for ever. Hold one cursor per thread at a time, as kvirt itself
//! does.
//!
//! A node is the unit of locking. Cursors over disjoint ranges lock
//! disjoint nodes, and run in parallel, when their guards differ: ranges
//! under one upper node, each inside its own existing lower node (say two
//! 2 MiB regions with level-1 nodes, in one 1 GiB region), lock only those
//! lower nodes and pass the shared upper one without locking it. Two
//! disjoint ranges inside one leaf node (one 2 MiB region on x86-64), or
//! inside one absent entry (a region whose nodes do not exist yet), share
//! their guard and take turns.
//!
//! The walk descends into an entry only if the range lies strictly inside
//! it: a range that covers a whole entry keeps the lock of the node holding
//! that entry, because the cursor may need to replace it (map a huge page,
//! detach a sub-tree).
//!
//! ```text
//!   root (L4)            walk without locks
//!     └─ L3 node             │
//!          └─ L2 node  <── guard: locked, re-checked not stray
//!               ├─ L1 node  <── locked (intersects the range)
//!               └─ L1 node  <── locked (intersects the range)
//! ```
//!
//! The protocol itself is written once, over an abstract tree, in
//! `locking.rs`; the loom test runs the same code.
//!
//! A lock is a value: locking a node gives a `NodeGuard`, which alone can
//! write the node's entries, count its children or mark it stray, and which
//! unlocks the node when dropped. An unlocked `NodeRef` can only read
//! entries, as lock-free walkers do. A cursor holds a whole locked sub-tree
//! at once: it keeps guards for the nodes on its path and the other locks
//! without guards, until it releases the sub-tree as the protocol locked it
//! (see the `cursor` module).
//!
//! ## Reclamation
//!
//! A node detached from the tree (a sub-tree taken whole, or a node emptied
//! by unmapping) is marked `stray` under its lock and freed only after the
//! TLB flush covering its span and an RCU grace period
//! ([`Platform::call_rcu`](crate::platform::Platform::call_rcu)), since
//! lock-free walkers and hardware paging-structure caches may still see it.
//! Nodes emptied by unmapping are reclaimed as soon as the cursor that
//! emptied them is dropped (or, for a kernel space's table, in batches:
//! the node waits in its CPU's queue, once however often it is emptied),
//! so the number of page-table frames in use returns to its old value once
//! everything mapped is unmapped.
//!
//! ## Files
//!
//! This file declares the parts and re-exports what is public; each part
//! imports only from parts below it, never from this file:
//!
//! * `error`, `item`, `config`: errors, what entries map, kinds of tables;
//! * `node`: nodes, their lock (`node/guard.rs`) and their life
//!   (`node/lifecycle.rs`);
//! * `locking`: the lock protocol over an abstract tree;
//! * `table`: [`PageTable`] itself;
//! * `walk`, `inv`: lock-free walks and the invariant check;
//! * `cursor`: cursors, with mapping, taking and reclamation in
//!   `cursor/{map,take,reclaim}.rs`, and one page mapped or taken without
//!   a cursor in `cursor/one.rs`.
//!
//! ## Ownership
//!
//! An entry mapping a tracked frame owns one reference to it; an entry
//! pointing to a node owns the node. Untracked entries own nothing.
//!
//! ## Safety model
//!
//! Changing a page table is safe; *using* one is not. `map` may put any
//! untracked physical address in a table, and a fragment from `take_next`
//! releases its frames when dropped, flushed or not. Neither can cause
//! undefined behaviour by itself: a table affects memory only once a CPU
//! walks it, and making a CPU walk a table (loading CR3) and dereferencing
//! addresses it maps are `unsafe` acts outside kvirt, whose callers take on
//! the duty to flush before frames are reused. The kernel's own table, which
//! safe code runs on, is never exposed mutably: a kernel space hands out
//! read-only cursors only, and its areas flush before they release
//! anything.

mod config;
mod cursor;
mod error;
mod inv;
mod item;
// The lock protocol over an abstract tree. Public only to the loom model
// (`tests/loom_locking.rs`, built with `--cfg loom`), which runs this very
// code over a tree of loom atomics.
#[cfg(loom)]
pub mod locking;
#[cfg(not(loom))]
mod locking;
mod node;
mod table;
mod walk;

pub use config::{largest_pages, vaddr_bounds, KernelPtConfig, PageTableConfig, UserPtConfig};
pub use cursor::{Cursor, CursorMut, PageTableFrag, TakenRange};
pub use error::{
    MapError, MapErrorKind, OutOfCursorRange, PageTableAllocError, RangeError, TakePageError, TakeRangeError,
};
pub use item::{MappedItem, MappedItemRef};
pub use table::PageTable;
pub use walk::ReadSection;
pub(crate) use walk::WalkStart;
