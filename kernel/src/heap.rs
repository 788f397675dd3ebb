//! The kernel heap: `linked_list_allocator` over a static array in `.bss`.
//!
//! Why this allocator: it is small, `no_std`, needs nothing but a byte range
//! to manage, and is the long-standing allocator of the rust-osdev
//! ecosystem, used by many hobby kernels. Its first-fit free list is O(n)
//! in the number of free blocks, which does not matter for a demo kernel's
//! few thousand live objects; a kernel that cared would pick `talc` or a
//! slab allocator. The heap lives in the image's `.bss`, so kvirt's mapping
//! of the kernel image covers it after the switch to kvirt's page table.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;

/// Heap size. kvirt's frame allocator keeps about 2.3 KiB of bookkeeping per
/// MiB of RAM on the heap (4.6 MiB for the 2 GiB a 3 GiB q35 machine has
/// below 4 GiB), and the churn test's thousands of areas need about 1 MiB:
/// 16 MiB covers every RAM size the kernel accepts (below 4 GiB).
pub const HEAP_SIZE: usize = 16 << 20;

#[repr(C, align(4096))]
struct HeapArea(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the array is only ever accessed through the allocator, which
// serialises access with its lock.
unsafe impl Sync for HeapArea {}

static HEAP_AREA: HeapArea = HeapArea(UnsafeCell::new([0; HEAP_SIZE]));

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Hands the heap array to the allocator. Call once, before any allocation.
///
/// # Panics
///
/// Panics if called twice.
pub fn init() {
    static DONE: AtomicBool = AtomicBool::new(false);
    assert!(!DONE.swap(true, Ordering::SeqCst), "heap::init called twice");
    // SAFETY: the array is static, unused by anything else, and handed to
    // the allocator exactly once (checked above).
    unsafe { ALLOCATOR.lock().init(HEAP_AREA.0.get().cast::<u8>(), HEAP_SIZE) };
}

/// Bytes of the heap in use.
pub fn used() -> usize {
    ALLOCATOR.lock().used()
}
