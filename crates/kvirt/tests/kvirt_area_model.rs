//! Model-based test of kernel virtual areas (DESIGN.md section 6).
//!
//! Random sequences of area operations run on an isolated 16 MiB kernel
//! space and on a model that knows, for every live area, which 4 KiB pages
//! are mapped to what. After every step the test checks:
//!
//! * every invariant: each area's `inv()` and the space's `inv()`;
//! * refinement: the abstract page-table view of each area equals the
//!   model, and `query` agrees with both (and with the seed's ensures);
//! * reference counts: a tracked frame's count is the handles the test
//!   holds plus the entries that map it;
//! * the registry lists exactly the model's areas, with guards after them;
//! * a rejected call is predicted by the spec's panic condition, and by the
//!   model's own, independent statement of the preconditions.
//!
//! At the end everything is dropped and the frame allocator, the page-table
//! frame count and VMALLOC are back where they started: nothing leaked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use kvirt::arch::x86_64::X86_64;
use kvirt::frame::{Frame, FrameAllocOptions, PhysStats};
use kvirt::kspace::{
    AreaAccessError, AreaInfo, AreaKind, KVirtArea, KernelSpace, MappedItemRef, GUARD_SIZE,
    VMALLOC_VADDR_RANGE,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::page_table::largest_pages;
use kvirt::platform::MemoryRegionKind;
use kvirt::sim::MachineConfig;
use kvirt::spec::{self, kernel_view, Inv};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};
use proptest::prelude::*;

const P: usize = PAGE_SIZE;
const SIZE_2M: usize = 2 << 20;
/// RAM below this is reserved on every simulated machine: the only RAM that
/// may be mapped untracked. Everything from here to `max_paddr` is tracked
/// (the metadata array and the allocator's pages).
const LOW_MEMORY_END: Paddr = 0x10_0000;
/// Frames the test holds for the whole run.
const POOL: usize = 6;

/// The properties the test maps with; the last one is user accessible.
fn props() -> [PageProperty; 7] {
    let k = PageProperty::new_kernel;
    [
        k(PageFlags::RW, CachePolicy::Writeback),
        k(PageFlags::R, CachePolicy::Writeback),
        k(PageFlags::RWX, CachePolicy::Uncacheable),
        k(PageFlags::RW, CachePolicy::WriteCombining),
        k(PageFlags::R | PageFlags::ACCESSED | PageFlags::DIRTY, CachePolicy::Writethrough),
        PageProperty {
            priv_flags: PrivilegedPageFlags::empty(),
            ..k(PageFlags::empty(), CachePolicy::WriteProtected)
        },
        PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback),
    ]
}

// ---- Operations -------------------------------------------------------------

/// Where the size and offset of a new area come from: pages around what is
/// mapped, sometimes made invalid.
#[derive(Clone, Debug)]
struct Shape {
    /// Offset of the mapping, in pages (or in 2 MiB units plus the physical
    /// range's shift, for huge device ranges).
    offset: usize,
    /// Pages after the mapping: below 0 the mapping does not fit.
    extra: i8,
    /// Bytes added to the area size (0 most of the time).
    size_misalign: usize,
    /// Bytes added to the offset (0 most of the time).
    offset_misalign: usize,
    /// Which of [`props`].
    prop: usize,
}

#[derive(Clone, Debug)]
enum FramePick {
    /// A clone of a frame of the pool.
    Held(usize),
    /// A new frame, owned only by the area.
    Fresh,
}

#[derive(Clone, Debug)]
enum PaPick {
    /// `0..0`.
    Empty,
    /// Pages of the reserved low memory; may run past it (rejected).
    Low { start: usize, pages: usize },
    /// The device window, possibly with 2 MiB pieces.
    Device { start_2m: usize, shift: usize, len_2m: usize, pages: usize },
    /// Reversed.
    Reversed { start: usize },
    /// A bound not page aligned.
    Misaligned { start: usize, by: usize },
    /// A frame of the pool (tracked: rejected).
    HeldFrame(usize),
    /// Beyond 2^52.
    TooLarge,
}

#[derive(Clone, Debug)]
enum Op {
    Tracked {
        frames: Vec<FramePick>,
        shape: Shape,
    },
    Untracked {
        pa: PaPick,
        shape: Shape,
    },
    /// At a page strictly inside the area, or (`raw`) at any of the first
    /// pages, plus `misalign` bytes.
    Split {
        area: usize,
        at: usize,
        raw: bool,
        misalign: usize,
    },
    Query {
        area: usize,
        at: usize,
    },
    Write {
        area: usize,
        at: usize,
        len: usize,
        byte: u8,
    },
    Read {
        area: usize,
        at: usize,
        len: usize,
    },
    Drop {
        area: usize,
    },
}

fn shape() -> impl Strategy<Value = Shape> {
    let misalign = prop_oneof![8 => Just(0usize), 1 => 1..P];
    let extra = prop_oneof![1 => -2..0i8, 6 => 0..3i8];
    (0..4usize, extra, misalign.clone(), misalign, prop_oneof![10 => 0..6usize, 1 => Just(6usize)]).prop_map(
        |(offset, extra, size_misalign, offset_misalign, prop)| Shape {
            offset,
            extra,
            size_misalign,
            offset_misalign,
            prop,
        },
    )
}

fn frame_pick() -> impl Strategy<Value = FramePick> {
    prop_oneof![3 => (0..POOL).prop_map(FramePick::Held), 1 => Just(FramePick::Fresh)]
}

fn pa_pick() -> impl Strategy<Value = PaPick> {
    prop_oneof![
        1 => Just(PaPick::Empty),
        4 => (0..256usize, 1..9usize).prop_map(|(start, pages)| PaPick::Low { start, pages }),
        4 => (0..3usize, prop_oneof![3 => Just(0usize), 1 => 1..3usize], 0..3usize, 0..3usize)
            .prop_map(|(start_2m, shift, len_2m, pages)| PaPick::Device { start_2m, shift, len_2m, pages }),
        1 => (1..256usize).prop_map(|start| PaPick::Reversed { start }),
        1 => (0..250usize, 1..P).prop_map(|(start, by)| PaPick::Misaligned { start, by }),
        1 => (0..POOL).prop_map(PaPick::HeldFrame),
        1 => Just(PaPick::TooLarge),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::collection::vec(frame_pick(), 0..6), shape())
            .prop_map(|(frames, shape)| Op::Tracked { frames, shape }),
        4 => (pa_pick(), shape()).prop_map(|(pa, shape)| Op::Untracked { pa, shape }),
        2 => (any::<usize>(), any::<usize>(), prop::bool::weighted(0.3), prop_oneof![6 => Just(0usize), 1 => 1..P])
            .prop_map(|(area, at, raw, misalign)| Op::Split { area, at, raw, misalign }),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(area, at)| Op::Query { area, at }),
        2 => (any::<usize>(), any::<usize>(), 0..3 * P, any::<u8>())
            .prop_map(|(area, at, len, byte)| Op::Write { area, at, len, byte }),
        2 => (any::<usize>(), any::<usize>(), 0..3 * P).prop_map(|(area, at, len)| Op::Read { area, at, len }),
        3 => any::<usize>().prop_map(|area| Op::Drop { area }),
    ]
}

// ---- The model ----------------------------------------------------------------

/// What a 4 KiB page of an area maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    pa: Paddr,
    prop: PageProperty,
    tracked: bool,
}

/// A live area: the real handle and what the model says about it.
struct Area {
    area: KVirtArea,
    kind: AreaKind,
    mapped: Range<Vaddr>,
    /// The mapped pages, by virtual address.
    pages: BTreeMap<Vaddr, Page>,
    /// The split boundaries with its left and right neighbours (ids; a
    /// boundary is live while both halves are).
    left: Option<u64>,
    right: Option<u64>,
}

struct Model {
    space: KernelSpace,
    /// The frames the test holds, one handle each.
    pool: Vec<Frame<()>>,
    /// Frames owned only by the entries mapping them.
    fresh: BTreeSet<Paddr>,
    areas: Vec<Area>,
    /// What the bytes of RAM pages written through areas should be.
    memory: HashMap<Paddr, Vec<u8>>,
    device: Range<Paddr>,
    max_paddr: Paddr,
    /// The RAM regions of the machine's memory map (`Usable` and
    /// `Reserved`): the only memory byte access may touch.
    ram: Vec<Range<Paddr>>,
    next_link: u64,
    /// Physical memory usage before the test took any frame.
    baseline: PhysStats,
}

fn page_contents(memory: &HashMap<Paddr, Vec<u8>>, pa: Paddr) -> u8 {
    memory.get(&(pa / P * P)).map_or(0, |page| page[pa % P])
}

impl Model {
    fn new() -> Self {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        let baseline = space.phys_stats();
        let pool = (0..POOL).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap()).collect();
        let device = space
            .memory_map()
            .iter()
            .find(|r| r.kind == kvirt::platform::MemoryRegionKind::Device)
            .expect("the hosted machine has a device window")
            .range
            .clone();
        let max_paddr = space.max_paddr();
        let ram = space
            .memory_map()
            .iter()
            .filter(|r| r.kind != MemoryRegionKind::Device)
            .map(|r| r.range.clone())
            .collect();
        Model {
            space,
            pool,
            fresh: BTreeSet::new(),
            areas: Vec::new(),
            memory: HashMap::new(),
            device,
            max_paddr,
            ram,
            next_link: 0,
            baseline,
        }
    }

    fn pick(&self, area: usize) -> Option<usize> {
        (!self.areas.is_empty()).then(|| area % self.areas.len())
    }

    /// The model's own statement of what `map_frames` accepts.
    fn tracked_ok(area_size: usize, map_offset: usize, n: usize, prop: &PageProperty) -> bool {
        area_size > 0
            && area_size % P == 0
            && map_offset % P == 0
            && map_offset < area_size
            && n * P <= area_size - map_offset
            && !prop.priv_flags.contains(PrivilegedPageFlags::USER)
    }

    /// The model's own statement of what `map_untracked_frames` accepts:
    /// only RAM below `LOW_MEMORY_END` or memory that is not RAM.
    fn untracked_ok(
        &self,
        area_size: usize,
        map_offset: usize,
        pa: &Range<Paddr>,
        prop: &PageProperty,
    ) -> bool {
        pa.start <= pa.end
            && area_size > 0
            && area_size % P == 0
            && map_offset % P == 0
            && map_offset < area_size
            && pa.start % P == 0
            && pa.end % P == 0
            && pa.len() <= area_size - map_offset
            && pa.end <= 1 << 52
            && (pa.is_empty() || pa.end <= LOW_MEMORY_END || pa.start >= self.max_paddr)
            && !prop.priv_flags.contains(PrivilegedPageFlags::USER)
    }

    fn sizes(shape: &Shape, len: usize, offset: usize) -> (usize, usize) {
        let size = (offset + len).saturating_add_signed(shape.extra as isize * P as isize);
        (size + shape.size_misalign, offset + shape.offset_misalign)
    }

    fn create_tracked(&mut self, picks: Vec<FramePick>, shape: Shape) {
        let prop = props()[shape.prop];
        let before = snapshot(&self.space);
        let frames: Vec<Frame<()>> = picks
            .iter()
            .map(|p| match p {
                FramePick::Held(i) => self.pool[*i].clone(),
                FramePick::Fresh => FrameAllocOptions::new_in(&self.space).alloc_frame().unwrap(),
            })
            .collect();
        let pas: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
        let n = frames.len();
        let (area_size, map_offset) = Self::sizes(&shape, n * P, shape.offset * P);
        let panics = spec::map_frames_panic_condition(area_size, map_offset, n, &prop);
        assert_eq!(panics, !Self::tracked_ok(area_size, map_offset, n, &prop), "spec and model disagree");
        let result = self.space.try_map_frames(area_size, map_offset, frames, prop);
        match result {
            Ok(area) => {
                assert!(!panics, "accepted although the panic condition holds");
                let start = area.start() + map_offset;
                let pages = pas
                    .iter()
                    .enumerate()
                    .map(|(i, &pa)| (start + i * P, Page { pa, prop, tracked: true }))
                    .collect();
                for (p, &pa) in picks.iter().zip(&pas) {
                    if matches!(p, FramePick::Fresh) {
                        self.fresh.insert(pa);
                        self.memory.remove(&pa);
                    }
                }
                let mapped = start..start + n * P;
                self.areas.push(Area {
                    area,
                    kind: AreaKind::Tracked,
                    mapped,
                    pages,
                    left: None,
                    right: None,
                });
            }
            Err(e) => {
                assert!(panics, "rejected ({e}) although no panic condition holds");
                // The fresh frames handed in are freed again; nothing else moved.
                assert_eq!(snapshot(&self.space), before, "a rejected call changed the space");
            }
        }
    }

    fn pa_range(&self, pick: &PaPick, shape: &mut Shape) -> Range<Paddr> {
        match *pick {
            PaPick::Empty => 0..0,
            PaPick::Low { start, pages } => start * P..(start + pages) * P,
            PaPick::Device { start_2m, shift, len_2m, pages } => {
                let start = self.device.start + start_2m * SIZE_2M + shift * P;
                // Make the offset agree with the physical start modulo 2 MiB
                // (most of the time), so that huge pages can be used.
                shape.offset = if shape.offset < 3 { shape.offset * SIZE_2M / P + shift } else { 1 };
                start..start + len_2m * SIZE_2M + pages * P
            }
            #[allow(clippy::reversed_empty_ranges)]
            PaPick::Reversed { start } => start * P..(start - 1) * P,
            PaPick::Misaligned { start, by } => start * P + by..(start + 2) * P,
            PaPick::HeldFrame(i) => self.pool[i].paddr()..self.pool[i].paddr() + P,
            PaPick::TooLarge => (1 << 52) - P..(1 << 52) + P,
        }
    }

    fn create_untracked(&mut self, pick: PaPick, mut shape: Shape) {
        let prop = props()[shape.prop];
        let pa = self.pa_range(&pick, &mut shape);
        let len = pa.end.saturating_sub(pa.start);
        let (area_size, map_offset) = Self::sizes(&shape, len, shape.offset * P);
        let panics =
            spec::map_untracked_frames_panic_condition(&self.space, area_size, map_offset, &pa, &prop);
        assert_eq!(panics, !self.untracked_ok(area_size, map_offset, &pa, &prop), "spec and model disagree");
        let before = snapshot(&self.space);
        // SAFETY: the physical ranges are reserved low memory and the
        // simulated device window, which no Rust object owns; everything
        // else is rejected.
        let result = unsafe { self.space.try_map_untracked_frames(area_size, map_offset, pa.clone(), prop) };
        match result {
            Ok(area) => {
                assert!(!panics, "accepted although the panic condition holds");
                let start = area.start() + map_offset;
                let pages = (0..len / P)
                    .map(|i| (start + i * P, Page { pa: pa.start + i * P, prop, tracked: false }))
                    .collect();
                // The largest pages the addresses allow, and huge ones when
                // the offset and the physical start agree modulo 2 MiB.
                let view = kernel_view(&self.space, &area.range());
                let sizes: Vec<usize> = view.values().map(|m| m.size).collect();
                let expect: Vec<usize> = largest_pages::<X86_64>(start, pa.start, len)
                    .map(|(_, level)| P << (9 * (level as usize - 1)))
                    .collect();
                assert_eq!(sizes, expect, "not the largest pages");
                let huge_fits = pa.start % SIZE_2M == map_offset % SIZE_2M
                    && pa.start.next_multiple_of(SIZE_2M) + SIZE_2M <= pa.end;
                if huge_fits {
                    assert!(sizes.iter().any(|&s| s >= SIZE_2M), "a 2 MiB piece was mapped with small pages");
                }
                let mapped = start..start + len;
                self.areas.push(Area {
                    area,
                    kind: AreaKind::Untracked,
                    mapped,
                    pages,
                    left: None,
                    right: None,
                });
            }
            Err(e) => {
                assert!(
                    panics || spec::is_resource_error(&e),
                    "rejected ({e}) although no panic condition holds"
                );
                assert!(panics, "ran out of resources in a 16 MiB space: {e}");
                assert_eq!(snapshot(&self.space), before, "a rejected call changed the space");
            }
        }
    }

    fn split(&mut self, i: usize, at: usize, raw: bool, misalign: usize) {
        let Some(i) = self.pick(i) else { return };
        let a = self.areas.swap_remove(i);
        let size = a.area.size();
        let pages = size / P;
        let offset = if raw { at % 12 * P } else { (1 + at % pages.saturating_sub(1).max(1)) * P } + misalign;
        let valid = offset % P == 0 && 0 < offset && offset < size;
        let Area { area, kind, mapped, pages, left: outer_left, right: outer_right } = a;
        let result = catch_unwind(AssertUnwindSafe(|| area.split(offset)));
        let Ok((left, right)) = result else {
            assert!(!valid, "a valid split panicked");
            // The area was dropped by the unwinding.
            return;
        };
        assert!(valid, "split at {offset:#x} of an area of {size:#x} bytes was accepted");
        let mid = left.end();
        let clamp = |r: Range<Vaddr>| {
            let s = mapped.start.clamp(r.start, r.end);
            let e = mapped.end.clamp(r.start, r.end);
            s..e.max(s)
        };
        let (lm, rm) = (clamp(left.range()), clamp(right.range()));
        let mut lp = pages;
        let rp = lp.split_off(&mid);
        let link = Some(self.next_link);
        self.next_link += 1;
        self.areas.push(Area { area: left, kind, mapped: lm, pages: lp, left: outer_left, right: link });
        self.areas.push(Area { area: right, kind, mapped: rm, pages: rp, left: link, right: outer_right });
    }

    fn query(&self, i: usize, at: usize) {
        let Some(i) = self.pick(i) else { return };
        let a = &self.areas[i];
        let va = a.area.start() + at % a.area.size();
        check_query(&self.space, a, va);
    }

    /// What an access of `len` bytes at `at` should give, by the first
    /// page that is unmapped, lacks the rights the access needs (`W` for a
    /// write, `R` for a read) or is not RAM.
    fn expect_access(
        &self,
        a: &Area,
        at: usize,
        len: usize,
        write: bool,
    ) -> Result<Vec<(Paddr, usize)>, AreaAccessError> {
        let size = a.area.size();
        if at.checked_add(len).is_none_or(|end| end > size) {
            return Err(AreaAccessError::OutOfBounds { offset: at, len, size });
        }
        let mut pieces = Vec::new();
        let (mut va, end) = (a.area.start() + at, a.area.start() + at + len);
        while va < end {
            let n = (P - va % P).min(end - va);
            let page = a.pages.get(&(va / P * P)).ok_or(AreaAccessError::Unmapped(va))?;
            if write && !page.prop.flags.contains(PageFlags::RW) {
                return Err(AreaAccessError::NotWritable(va));
            }
            if !write && !page.prop.flags.contains(PageFlags::R) {
                return Err(AreaAccessError::NotReadable(va));
            }
            if !self.ram.iter().any(|r| r.contains(&page.pa)) {
                return Err(AreaAccessError::NotRam(va));
            }
            pieces.push((page.pa + va % P, n));
            va += n;
        }
        Ok(pieces)
    }

    fn write(&mut self, i: usize, at: usize, len: usize, byte: u8) {
        let Some(i) = self.pick(i) else { return };
        let a = &self.areas[i];
        let at = at % (a.area.size() + 2);
        let data: Vec<u8> = (0..len).map(|k| byte.wrapping_add(k as u8)).collect();
        let expect = self.expect_access(a, at, len, true);
        let result = a.area.write_bytes(at, &data);
        match expect {
            Err(e) => assert_eq!(result, Err(e)),
            Ok(pieces) => {
                assert_eq!(result, Ok(()));
                let mut done = 0;
                for (pa, n) in pieces {
                    let page = self.memory.entry(pa / P * P).or_insert_with(|| vec![0; P]);
                    page[pa % P..pa % P + n].copy_from_slice(&data[done..done + n]);
                    done += n;
                }
            }
        }
    }

    fn read(&self, i: usize, at: usize, len: usize) {
        let Some(i) = self.pick(i) else { return };
        let a = &self.areas[i];
        let at = at % (a.area.size() + 2);
        let mut buf = vec![0xee; len];
        let result = a.area.read_bytes(at, &mut buf);
        match self.expect_access(a, at, len, false) {
            Err(e) => assert_eq!(result, Err(e)),
            Ok(pieces) => {
                assert_eq!(result, Ok(()));
                let expect: Vec<u8> = pieces
                    .into_iter()
                    .flat_map(|(pa, n)| (pa..pa + n).map(|b| page_contents(&self.memory, b)))
                    .collect();
                assert_eq!(buf, expect, "read back something else");
            }
        }
    }

    fn drop_area(&mut self, i: usize) {
        let Some(i) = self.pick(i) else { return };
        drop(self.areas.swap_remove(i));
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Tracked { frames, shape } => self.create_tracked(frames, shape),
            Op::Untracked { pa, shape } => self.create_untracked(pa, shape),
            Op::Split { area, at, raw, misalign } => self.split(area, at, raw, misalign),
            Op::Query { area, at } => self.query(area, at),
            Op::Write { area, at, len, byte } => self.write(area, at, len, byte),
            Op::Read { area, at, len } => self.read(area, at, len),
            Op::Drop { area } => self.drop_area(area),
        }
    }

    /// Every check of the module documentation.
    fn check(&mut self) {
        let space = &self.space;
        space.synchronize();
        if let Err(clause) = space.check() {
            panic!("space invariant: {clause}");
        }
        for a in &self.areas {
            if let Err(clause) = a.area.check() {
                panic!("area invariant: {clause}");
            }
            assert_eq!(a.area.mapped_range(), a.mapped);
            assert_eq!(view_pages(space, &a.area.range()), a.pages, "the page table differs from the model");
            for va in [a.area.start(), a.area.start() + a.area.size() / 2, a.area.end() - 1] {
                check_query(space, a, va);
            }
        }
        let mut sorted: Vec<&Area> = self.areas.iter().collect();
        sorted.sort_by_key(|a| a.area.start());
        let expect: Vec<AreaInfo> = sorted
            .iter()
            .map(|a| AreaInfo { range: a.area.range(), mapped: a.mapped.clone(), kind: a.kind, label: None })
            .collect();
        assert_eq!(space.areas(), expect, "the registry differs from the model");
        // Areas touch only where a split boundary is live; every other
        // area has an unmapped guard page after it, allocated in VMALLOC.
        for pair in sorted.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.area.end() == b.area.start() {
                assert!(a.right.is_some() && a.right == b.left, "areas touch without being split halves");
            } else {
                assert!(b.area.start() >= a.area.end() + GUARD_SIZE, "no guard page between areas");
            }
        }
        let live_right = |a: &Area| a.right.is_some() && self.areas.iter().any(|b| b.left == a.right);
        let mut guards = 0;
        for a in self.areas.iter().filter(|a| !live_right(a)) {
            assert!(space.kernel_translate(a.area.end()).is_none(), "a guard page is mapped");
            guards += 1;
        }
        let used: usize = self.areas.iter().map(|a| a.area.size()).sum::<usize>() + guards * GUARD_SIZE;
        let vmalloc = space.vmalloc_stats();
        assert_eq!(
            vmalloc.free_bytes,
            vmalloc.total_bytes - used,
            "VMALLOC holds other than areas and guards"
        );
        // Reference counts: handles held plus entries mapping the frame.
        let mut entries: BTreeMap<Paddr, u64> = BTreeMap::new();
        for page in self.areas.iter().flat_map(|a| a.pages.values()).filter(|p| p.tracked) {
            *entries.entry(page.pa).or_default() += 1;
        }
        for f in &self.pool {
            let expect = 1 + entries.get(&f.paddr()).copied().unwrap_or(0);
            assert_eq!(f.reference_count(), expect, "frame {:#x}", f.paddr());
            assert_eq!(spec::frame_ref_count(space, f.paddr()), expect);
        }
        let fresh = std::mem::take(&mut self.fresh);
        for pa in fresh {
            let expect = entries.get(&pa).copied().unwrap_or(0);
            assert_eq!(spec::frame_ref_count(space, pa), expect, "fresh frame {pa:#x}");
            if expect > 0 {
                self.fresh.insert(pa);
            } else {
                self.memory.remove(&pa);
            }
        }
    }
}

/// The model-relevant state of a space.
fn snapshot(space: &KernelSpace) -> impl PartialEq + std::fmt::Debug {
    space.synchronize();
    (space.phys_stats(), space.vmalloc_stats(), space.areas(), kernel_view(space, &VMALLOC_VADDR_RANGE))
}

/// The abstract view of `range`, page by page (huge pages cut into 4 KiB
/// pieces and clipped to the range).
fn view_pages(space: &KernelSpace, range: &Range<Vaddr>) -> BTreeMap<Vaddr, Page> {
    let mut pages = BTreeMap::new();
    for m in kernel_view(space, range).values() {
        let (s, e) = (m.va.max(range.start), (m.va + m.size).min(range.end));
        for va in (s..e).step_by(P) {
            pages.insert(va, Page { pa: m.pa + (va - m.va), prop: m.prop, tracked: m.tracked });
        }
    }
    pages
}

/// `query` at `va` agrees with the model and with the seed's ensures.
fn check_query(space: &KernelSpace, a: &Area, va: Vaddr) {
    let r = a.area.query(va);
    let page = va / P * P;
    let view = kernel_view(space, &(page..page + P));
    match (a.pages.get(&page), &r) {
        (None, None) => {}
        (Some(expect), Some(item)) => {
            let pa = match item {
                MappedItemRef::Tracked(frame, _) => frame.paddr(),
                MappedItemRef::Untracked(pa, level, _) => {
                    let size = P << (9 * (*level as usize - 1));
                    pa + (page % size)
                }
            };
            let got = Page { pa, prop: item.prop(), tracked: matches!(item, MappedItemRef::Tracked(..)) };
            assert_eq!(&got, expect, "query at {va:#x}");
        }
        (expect, got) => panic!("query at {va:#x}: expected {expect:?}, got {got:?}"),
    }
    if spec::query_some_condition(&view, va) {
        assert!(spec::query_some_ensures(&view, va, &r));
    } else {
        assert!(spec::query_none_ensures(&r));
    }
}

/// Keeps the expected panics of invalid splits out of the test output.
fn quiet_split_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !msg.starts_with("KVirtArea::split:") {
                default(info);
            }
        }));
    });
}

fn run(ops: Vec<Op>) {
    quiet_split_panics();
    let mut model = Model::new();
    for op in ops {
        model.apply(op);
        model.check();
    }
    let Model { space, pool, areas, baseline, .. } = model;
    drop(areas);
    drop(pool);
    space.synchronize();
    assert_eq!(space.phys_stats(), baseline, "frames or page-table frames leaked");
    let vmalloc = space.vmalloc_stats();
    assert_eq!((vmalloc.free_bytes, vmalloc.fragments), (VMALLOC_VADDR_RANGE.len(), 1), "VMALLOC leaked");
    assert!(space.areas().is_empty());
    assert!(kernel_view(&space, &VMALLOC_VADDR_RANGE).is_empty());
    assert!(space.inv());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_area_operations_refine_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

/// A fixed sequence through the interesting paths, so that a plain run
/// always covers them whatever the random cases draw.
#[test]
fn a_fixed_sequence_refines_the_model() {
    let shape = |offset, extra, prop| Shape { offset, extra, size_misalign: 0, offset_misalign: 0, prop };
    run(vec![
        Op::Tracked {
            frames: vec![FramePick::Held(0), FramePick::Fresh, FramePick::Held(0)],
            shape: shape(1, 0, 0),
        },
        Op::Untracked {
            pa: PaPick::Device { start_2m: 1, shift: 0, len_2m: 2, pages: 1 },
            shape: shape(1, 1, 2),
        },
        Op::Untracked { pa: PaPick::Low { start: 8, pages: 4 }, shape: shape(2, 0, 0) },
        Op::Write { area: 2, at: 2 * P + 100, len: 5000, byte: 7 },
        Op::Read { area: 2, at: 2 * P, len: 3 * P },
        Op::Split { area: 1, at: 699, raw: false, misalign: 0 },
        Op::Query { area: 1, at: 3 * P },
        Op::Split { area: 0, at: 2, raw: true, misalign: 0 },
        Op::Split { area: 0, at: 0, raw: true, misalign: 0 },
        Op::Write { area: 0, at: P - 3, len: 10, byte: 1 },
        Op::Tracked { frames: vec![FramePick::Held(1)], shape: shape(0, -2, 0) },
        Op::Untracked { pa: PaPick::HeldFrame(2), shape: shape(0, 0, 0) },
        Op::Drop { area: 1 },
        Op::Drop { area: 0 },
        Op::Read { area: 0, at: 0, len: 10 },
        Op::Drop { area: 2 },
    ]);
}
