//! The heap: `linked_list_allocator` over a 16 MiB array in `.bss`, as in
//! the x86-64 demo kernel.

use linked_list_allocator::LockedHeap;

const HEAP_SIZE: usize = 16 << 20;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The heap's memory (reached through a raw pointer only).
#[repr(align(4096))]
struct Arena(#[allow(dead_code, reason = "the heap uses the bytes through a pointer")] [u8; HEAP_SIZE]);

static mut ARENA: Arena = Arena([0; HEAP_SIZE]);

/// Sets the heap up; called once, first thing.
pub fn init() {
    // SAFETY: called once before any allocation; the arena is used only by
    // the heap from now on.
    unsafe { HEAP.lock().init(core::ptr::addr_of_mut!(ARENA).cast(), HEAP_SIZE) };
}
