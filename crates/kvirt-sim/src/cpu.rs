//! CPUs: a CR3 and a TLB each, and virtual memory accesses through them.

use core::fmt;
use core::ops::Range;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::machine::{Bus, BusError};
use crate::mmu::{self, Access, FaultKind, PageFault, Paging, Translation};
use crate::PhysAddr;

/// The page sizes a TLB entry can have, smallest first.
const PAGE_SIZES: [usize; 3] = [1 << 12, 1 << 21, 1 << 30];

/// The CR3 bits that hold the root table address (51:12).
const CR3_ADDRESS: PhysAddr = 0x000F_FFFF_FFFF_F000;

/// A TLB: translations of whole pages keyed by (page-aligned virtual
/// address, page size). Each value's `pa` is the page's base. Unbounded: no
/// entry is ever evicted, only flushed.
type Tlb = HashMap<(usize, usize), Translation>;

/// One CPU of a [`Machine`](crate::Machine): a CR3 (the root table's
/// physical address) and its own TLB.
///
/// The TLB caches every successful translation and answers later
/// translations of the same page from the cache, even if the page table in
/// RAM has changed since: a missing TLB flush shows up as a stale
/// translation, exactly as on hardware. Paging-structure caches are not
/// emulated, so a TLB miss always walks the tables in RAM.
///
/// Every method takes `&self`; the TLB lock is held across a miss's walk, so
/// a flush issued from another thread (emulating a shootdown) is ordered
/// entirely before or after each translation.
pub struct Cpu {
    index: usize,
    bus: Arc<Bus>,
    paging: Paging,
    root: AtomicU64,
    tlb: Mutex<Tlb>,
    /// Flush requests this CPU has carried out (a shoot-down received).
    invalidations: AtomicU64,
}

impl Cpu {
    pub(crate) fn new(index: usize, bus: Arc<Bus>, paging: Paging) -> Self {
        Cpu {
            index,
            bus,
            paging,
            root: AtomicU64::new(0),
            tlb: Mutex::new(Tlb::new()),
            invalidations: AtomicU64::new(0),
        }
    }

    /// This CPU's index in its machine.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Loads CR3 with `root`, the physical address of a PML4: like `mov cr3`
    /// with PCIDs off, this flushes every non-global TLB entry.
    ///
    /// # Panics
    /// If `root` is not a 4 KiB-aligned address below 2^52: the CR3 flag bits
    /// (PWT, PCD) and PCIDs are not emulated.
    pub fn set_root(&self, root: PhysAddr) {
        assert!(
            root & !CR3_ADDRESS == 0,
            "CR3 value {root:#x} is not a 4 KiB aligned address below 2^52 \
             (PCID, PWT and PCD are not emulated)"
        );
        let mut tlb = self.lock_tlb();
        self.root.store(root, Ordering::SeqCst);
        tlb.retain(|_, entry| entry.global);
    }

    /// The current CR3: the root table's physical address (0 at reset).
    pub fn root(&self) -> PhysAddr {
        self.root.load(Ordering::SeqCst)
    }

    /// Translates `va` for `access` through this CPU's TLB.
    ///
    /// A hit returns the cached translation even if the page table in RAM
    /// has changed since. A miss walks the table from [`root`](Cpu::root)
    /// (see [`walk`](crate::walk)) and caches the result if it succeeds.
    ///
    /// A hit whose cached rights do not allow `access` faults with
    /// [`FaultKind::Protection`] and drops the TLB entries for `va`, as a
    /// page fault does on hardware; so raising a page's rights without a
    /// flush gives one spurious fault, after which a retry walks the new
    /// entry. (The SDM allows either outcome; faulting makes missing flushes
    /// visible.)
    ///
    /// # Errors
    /// The [`PageFault`] of a TLB hit without the rights, or of the walk.
    pub fn translate(&self, va: usize, access: Access) -> Result<Translation, PageFault> {
        if !self.paging.is_canonical(va) {
            return Err(PageFault { va, access, kind: FaultKind::NonCanonical });
        }
        let mut tlb = self.lock_tlb();
        let hit = PAGE_SIZES.iter().find_map(|&size| tlb.get(&(va & !(size - 1), size)));
        if let Some(&entry) = hit {
            if !entry.permits(access) {
                drop_page(&mut tlb, va);
                return Err(PageFault { va, access, kind: FaultKind::Protection });
            }
            let offset = va & (entry.page_size - 1);
            return Ok(Translation { pa: entry.pa + offset as PhysAddr, ..entry });
        }
        let translation = mmu::walk_bus(&self.bus, self.paging, self.root(), va, access)?;
        let size = translation.page_size;
        let entry = Translation { pa: translation.pa & !(size as PhysAddr - 1), ..translation };
        tlb.insert((va & !(size - 1), size), entry);
        Ok(translation)
    }

    /// Reads `buf.len()` bytes at virtual `va` as supervisor data reads,
    /// translating page by page.
    ///
    /// # Errors
    /// The first page fault or bus error; `buf` may be partly filled.
    pub fn read(&self, va: usize, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0;
        while done < buf.len() {
            let at = va.wrapping_add(done);
            let translation = self.translate(at, Access::READ)?;
            let n = chunk(at, &translation, buf.len() - done);
            self.bus.read(translation.pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at virtual `va` as supervisor data writes, translating
    /// page by page.
    ///
    /// # Errors
    /// The first page fault or bus error; the pages before the failing one
    /// have been written.
    pub fn write(&self, va: usize, data: &[u8]) -> Result<(), MemError> {
        let mut done = 0;
        while done < data.len() {
            let at = va.wrapping_add(done);
            let translation = self.translate(at, Access::WRITE)?;
            let n = chunk(at, &translation, data.len() - done);
            self.bus.write(translation.pa, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Like `invlpg`: drops the TLB entry covering `va`, whatever its page
    /// size (global or not).
    pub fn flush_page(&self, va: usize) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        drop_page(&mut self.lock_tlb(), va);
    }

    /// Drops every TLB entry whose page intersects `range` (global or not).
    pub fn flush_range(&self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let last = range.end - 1;
        self.lock_tlb().retain(|&(base, size), _| {
            let page_last = base + (size - 1);
            page_last < range.start || base > last
        });
    }

    /// Drops every TLB entry, global ones included (like toggling CR4.PGE).
    pub fn flush_all(&self) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.lock_tlb().clear();
    }

    /// How many flushes (`flush_page`, a non-empty `flush_range`,
    /// `flush_all`) this CPU has carried out: on a machine whose kernel
    /// shoots down every CPU, the shoot-downs it received.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }

    /// The number of entries in the TLB.
    pub fn tlb_entries(&self) -> usize {
        self.lock_tlb().len()
    }

    /// What the TLB caches: each entry's virtual page (base and size) and
    /// the physical base it translates to. Tests use it to check that
    /// nothing freed is still reachable.
    pub fn tlb_snapshot(&self) -> Vec<(Range<usize>, PhysAddr)> {
        self.lock_tlb().iter().map(|(&(base, size), t)| (base..base + size, t.pa)).collect()
    }

    fn lock_tlb(&self) -> MutexGuard<'_, Tlb> {
        // A panic while the lock was held cannot leave the map half updated
        // in a way that matters: every entry is a complete translation.
        self.tlb.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cpu")
            .field("index", &self.index)
            .field("root", &format_args!("{:#x}", self.root()))
            .field("tlb_entries", &self.tlb_entries())
            .finish_non_exhaustive()
    }
}

/// Drops the TLB entries of every page size that cover `va`.
fn drop_page(tlb: &mut Tlb, va: usize) {
    for size in PAGE_SIZES {
        tlb.remove(&(va & !(size - 1), size));
    }
}

/// How many of `remaining` bytes starting at `va` lie in `translation`'s
/// page.
fn chunk(va: usize, translation: &Translation, remaining: usize) -> usize {
    let to_page_end = translation.page_size - (va & (translation.page_size - 1));
    to_page_end.min(remaining)
}

/// A failed virtual memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The translation faulted.
    Fault(PageFault),
    /// The translation succeeded but the physical access failed.
    Bus(BusError),
}

impl From<PageFault> for MemError {
    fn from(fault: PageFault) -> Self {
        MemError::Fault(fault)
    }
}

impl From<BusError> for MemError {
    fn from(error: BusError) -> Self {
        MemError::Bus(error)
    }
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Fault(fault) => fault.fmt(f),
            MemError::Bus(error) => error.fmt(f),
        }
    }
}

/// Transparent: the message is the inner error's, so the inner error is not
/// also reported as the source.
impl std::error::Error for MemError {}
