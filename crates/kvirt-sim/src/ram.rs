//! Lazily committed, zero-initialised emulated RAM.
//!
//! This is the crate's only `unsafe` code. [`Ram`] owns one heap allocation
//! and hands out nothing but safe, bounds-checked operations on it, plus the
//! raw base pointer that [`crate::Machine::ram_base`] exposes.
//!
//! Every access this module makes to the bytes is an atomic operation on an
//! aligned 8-byte word: the page walker loads page-table entries that other
//! threads update with `AtomicU64` operations, and using the same kind of
//! access everywhere means this crate's own copies can never form a data race
//! (nor a racy mixed-size access) with them. Byte copies that cover only part
//! of a word merge their bytes with a compare-exchange loop.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// The base page size, in bytes.
pub(crate) const PAGE_SIZE: usize = 4096;

/// The size of the atomic words every access is made of.
const WORD: usize = 8;

/// The alignment asked of the allocator.
///
/// Kept at 16 (glibc's `MALLOC_ALIGNMENT`), so the standard library's
/// `alloc_zeroed` becomes `calloc`, which for a large size maps fresh
/// anonymous pages that the kernel commits on first touch instead of writing
/// zeros over them. Page alignment is obtained by over-allocating one page and
/// rounding the pointer up.
const ALLOC_ALIGN: usize = 16;

/// Zero-initialised, page-aligned RAM of a fixed size.
pub(crate) struct Ram {
    /// What the allocator returned; freed in `Drop` with `layout`.
    alloc: NonNull<u8>,
    /// `alloc` rounded up to a page boundary: physical address 0.
    base: NonNull<u8>,
    /// Usable bytes from `base`, a multiple of [`PAGE_SIZE`].
    size: usize,
    /// The layout `alloc` was allocated with.
    layout: Layout,
}

// SAFETY: `Ram` exclusively owns its allocation (only its `Drop` frees it),
// has no thread-affine state, and every access it makes to the bytes is
// atomic, so moving it to another thread is sound.
unsafe impl Send for Ram {}

// SAFETY: all methods taking `&self` reach the bytes only through atomic
// operations on aligned words, which are sound to perform from any number of
// threads at once.
unsafe impl Sync for Ram {}

impl Ram {
    /// Allocates `size` bytes of zeroed RAM; `size` must be a multiple of
    /// [`PAGE_SIZE`] (it may be 0).
    ///
    /// # Panics
    /// If the allocator cannot provide the address space.
    pub(crate) fn new(size: usize) -> Self {
        assert!(size % PAGE_SIZE == 0, "RAM size {size:#x} is not page aligned");
        let total = size.checked_add(PAGE_SIZE).unwrap_or_else(|| panic!("RAM size {size:#x} is too large"));
        let layout = Layout::from_size_align(total, ALLOC_ALIGN)
            .unwrap_or_else(|_| panic!("RAM size {size:#x} is too large"));
        // SAFETY: `layout` has a non-zero size (at least one page).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(alloc) = NonNull::new(ptr) else {
            panic!("kvirt-sim: could not allocate {size:#x} bytes of emulated RAM");
        };
        let addr = alloc.as_ptr().addr();
        let pad = addr.next_multiple_of(PAGE_SIZE) - addr;
        // `pad < PAGE_SIZE`, so `base..base + size` lies inside the allocation
        // of `size + PAGE_SIZE` bytes; `wrapping_add` keeps the provenance.
        let base = NonNull::new(alloc.as_ptr().wrapping_add(pad))
            .expect("an in-bounds offset of a non-null pointer is non-null");
        Ram { alloc, base, size, layout }
    }

    /// Physical address 0: page aligned, valid while `self` lives.
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The size in bytes.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The atomic word at `offset`.
    ///
    /// # Panics
    /// If `offset` is not 8-aligned or not inside RAM.
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % WORD == 0 && offset < self.size,
            "RAM word offset {offset:#x} is misaligned or out of bounds (size {:#x})",
            self.size
        );
        let ptr = self.base.as_ptr().wrapping_add(offset).cast::<u64>();
        // SAFETY: `ptr` is 8-aligned (`base` is page aligned and `offset` is a
        // multiple of 8), and `ptr..ptr + 8` lies inside the allocation
        // (`offset < size` and `size` is a multiple of 8). The allocation is
        // freed only in `Drop`, so it outlives the returned borrow of `self`.
        // Every access this crate makes to RAM is atomic; `Machine::ram_base`
        // documents that other code must not race non-atomic accesses with
        // them.
        unsafe { AtomicU64::from_ptr(ptr) }
    }

    /// Checks that `offset..offset + len` lies inside RAM.
    fn check_range(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.size),
            "RAM range {offset:#x}+{len:#x} is out of bounds (size {:#x})",
            self.size
        );
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    ///
    /// # Panics
    /// If the range is not inside RAM.
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check_range(offset, buf.len());
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done;
            let word_offset = at - at % WORD;
            let start = at - word_offset;
            let n = (WORD - start).min(buf.len() - done);
            let bytes = self.word(word_offset).load(Ordering::Acquire).to_ne_bytes();
            buf[done..done + n].copy_from_slice(&bytes[start..start + n]);
            done += n;
        }
    }

    /// Copies `data` to `offset`.
    ///
    /// # Panics
    /// If the range is not inside RAM.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        self.check_range(offset, data.len());
        let mut done = 0;
        while done < data.len() {
            let at = offset + done;
            let word_offset = at - at % WORD;
            let start = at - word_offset;
            let n = (WORD - start).min(data.len() - done);
            let src = &data[done..done + n];
            let word = self.word(word_offset);
            if n == WORD {
                let value = u64::from_ne_bytes(src.try_into().expect("a whole word"));
                word.store(value, Ordering::Release);
            } else {
                let merge = |old: u64| {
                    let mut bytes = old.to_ne_bytes();
                    bytes[start..start + n].copy_from_slice(src);
                    Some(u64::from_ne_bytes(bytes))
                };
                // The closure always returns `Some`, so this cannot fail.
                let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, merge);
            }
            done += n;
        }
    }

    /// Atomically loads the 8-aligned word at `offset` (host byte order).
    ///
    /// # Panics
    /// If `offset` is misaligned or out of bounds.
    pub(crate) fn load_u64(&self, offset: usize) -> u64 {
        self.word(offset).load(Ordering::SeqCst)
    }

    /// Atomically stores the 8-aligned word at `offset` (host byte order).
    ///
    /// # Panics
    /// If `offset` is misaligned or out of bounds.
    pub(crate) fn store_u64(&self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::SeqCst);
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: `alloc` was returned by `alloc_zeroed` with exactly
        // `self.layout`, and this is the only place that frees it, once.
        unsafe { alloc::dealloc(self.alloc.as_ptr(), self.layout) }
    }
}
