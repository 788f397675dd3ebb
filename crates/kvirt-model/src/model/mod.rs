//! The model of one kernel space next to the real one, and the step
//! function that applies an [`Op`] to both and compares them.
//!
//! The model knows the live areas (their ranges, mapped parts, split links
//! and guards), the leaf mappings it expects in VMALLOC (huge pages
//! included, and split the way docs/DESIGN.md section 4 says when part of one is
//! unmapped), the bytes it expects in every page written, the frame handles
//! and segments it holds, and the leaves of its own user page table
//! ([`PtModel`]). [`Model::step`] runs one operation on the real space and
//! checks its result against the model (errors of rejected calls among the
//! violated preconditions and in agreement with `kvirt::spec`'s panic
//! conditions, resource errors only when the resource is short, queries,
//! reads and cursor results as predicted); [`Model::check`] runs the
//! checks between operations and [`Model::finish`] the final leak check.
//! A discrepancy is a [`Failure`], never a panic, so that a driver can
//! shrink the sequence that led to it.

mod areas;
mod checks;
mod frames;
mod session;
mod single;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use kvirt::frame::{Frame, PhysStats, Segment};
use kvirt::kspace::{AreaKind, KVirtArea, KernelLayout, KernelSpace, VmallocStats, X86_64Layout, GUARD_SIZE};
use kvirt::page_table::{PageTable, UserPtConfig};
use kvirt::platform::MemoryRegionKind;
use kvirt::{Paddr, Vaddr};

pub use checks::Checks;
pub use session::SessionView;

use crate::op::{CursorOp, Op};
use crate::pt::PtModel;
use crate::view::View;

/// A deliberately wrong model, to show that the checks catch a
/// discrepancy (used by the drivers' own tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFault {
    /// The model expects tracked frames one page after where `map_frames`
    /// puts them.
    TrackedViewOffByOne,
}

/// A failed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The operation after which it failed (the number of operations for
    /// the final leak check).
    pub step: usize,
    /// Which check.
    pub check: &'static str,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}: {}", self.step, self.check, self.message)
    }
}

/// The result of a step or a check.
pub type Outcome = Result<(), Failure>;

/// Below this many free pages an operation may run out of memory (for
/// page-table nodes, or a frame the model allocates); with more, running
/// out is a failure. Far more than one operation can need.
pub const SLACK_PAGES: usize = 64;

/// Counts passed checks and makes failures, for one step.
#[derive(Clone, Copy)]
struct Checker<'a> {
    step: usize,
    checks: &'a Cell<u64>,
}

impl Checker<'_> {
    fn fail(self, check: &'static str, message: String) -> Failure {
        Failure { step: self.step, check, message }
    }

    fn expect(self, cond: bool, check: &'static str, message: impl FnOnce() -> String) -> Outcome {
        if cond {
            self.checks.set(self.checks.get() + 1);
            Ok(())
        } else {
            Err(self.fail(check, message()))
        }
    }
}

/// A live area and what the model says about it.
#[derive(Debug)]
pub struct Area<L: KernelLayout> {
    area: KVirtArea<L>,
    id: u64,
    range: Range<Vaddr>,
    mapped: Range<Vaddr>,
    /// The mapped part when the area was created (a split keeps it).
    origin: Range<Vaddr>,
    kind: AreaKind,
    label: &'static str,
    /// The split boundary with the area's left neighbour, if it is the
    /// right half of a split.
    left: Option<u64>,
    /// The split boundary with its right neighbour, if it is the left half
    /// of a split.
    right: Option<u64>,
}

impl<L: KernelLayout> Area<L> {
    /// A number no other area of the model had.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its range.
    #[must_use]
    pub fn range(&self) -> Range<Vaddr> {
        self.range.clone()
    }

    /// Its mapped part.
    #[must_use]
    pub fn mapped(&self) -> Range<Vaddr> {
        self.mapped.clone()
    }

    /// The mapped part of the area it was split from, when that was
    /// created.
    #[must_use]
    pub fn origin(&self) -> Range<Vaddr> {
        self.origin.clone()
    }
}

/// What the model knows of the machine under the space.
#[derive(Debug)]
struct Machine {
    /// The RAM regions (`Usable` and `Reserved`): the only memory byte
    /// access may touch.
    ram: Vec<Range<Paddr>>,
    /// The `Reserved` regions: RAM no one uses, which the model may read
    /// and write through untracked areas.
    reserved: Vec<Range<Paddr>>,
    /// The `Usable` regions: every page of them is the frame allocator's or
    /// the frame metadata's.
    usable: Vec<Range<Paddr>>,
    device: Range<Paddr>,
    /// VMALLOC's arenas (an area and its guard lie in one).
    arenas: Vec<Range<Vaddr>>,
}

/// The model of one kernel space, and the real space.
pub struct Model<'s, L: KernelLayout = X86_64Layout> {
    space: &'s KernelSpace<L>,
    /// Another space, for frames that must be rejected as foreign.
    foreign: Option<&'s KernelSpace>,
    fault: Option<ModelFault>,
    machine: Machine,
    areas: Vec<Area<L>>,
    next_id: u64,
    /// Expected leaves of VMALLOC.
    view: View,
    /// Expected contents of RAM pages written (absent: zero).
    bytes: HashMap<Paddr, Vec<u8>>,
    /// Frame handles the model holds (possibly several of one frame).
    held: Vec<Frame<()>>,
    /// Segments held to run the allocator dry.
    hogs: Vec<Segment<()>>,
    /// Fresh frames for the next `Frames::Staged` creation.
    staged: Vec<Frame<()>>,
    /// Frames of the foreign space, held until the end.
    foreign_frames: Vec<Frame<()>>,
    /// A user page table of the space, for raw cursor sessions.
    pt: Option<PageTable<UserPtConfig<L::Format>>>,
    /// The model of `pt`.
    pt_model: PtModel<L::Format>,
    /// Split boundaries: whether one of the two halves was dropped.
    links: HashMap<u64, bool>,
    /// The expected reference count of every live frame: one per handle
    /// the model holds and per entry that maps it, kept up to date by every
    /// operation (and recounted from scratch by the full checks).
    refs: BTreeMap<Paddr, u64>,
    /// The frames whose count changed since the last check.
    touched: Vec<Paddr>,
    /// Whether an operation since the last check created, split or dropped
    /// an area (or tried to).
    areas_changed: bool,
    start: (PhysStats, VmallocStats),
    foreign_start: Option<PhysStats>,
    /// `used_pages - page_table_pages` at the start.
    base_data_pages: usize,
    steps: usize,
    checks: Cell<u64>,
}

impl<L: KernelLayout> fmt::Debug for Model<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("areas", &self.areas.len())
            .field("view", &self.view.len())
            .field("held", &self.held.len())
            .field("hogs", &self.hogs.len())
            .field("pt_leaves", &self.pt_model.map.len())
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl<'s, L: KernelLayout> Model<'s, L> {
    /// A model of `space` in its current state, which must have no area
    /// (and no frame in use but what it started with): the model takes the
    /// counters now as the baseline [`finish`](Self::finish) compares with.
    ///
    /// # Panics
    ///
    /// If the space has no device window, no memory for the root of a user
    /// page table, or VMALLOC arenas of unequal size.
    #[must_use]
    pub fn new(space: &'s KernelSpace<L>, fault: Option<ModelFault>) -> Self {
        space.synchronize();
        let start = (space.phys_stats(), space.vmalloc_stats());
        let regions = |kinds: &[MemoryRegionKind]| -> Vec<Range<Paddr>> {
            space.memory_map().iter().filter(|r| kinds.contains(&r.kind)).map(|r| r.range.clone()).collect()
        };
        let device = regions(&[MemoryRegionKind::Device]);
        let device = device.first().expect("a hosted space has a device window").clone();
        let machine = Machine {
            ram: regions(&[MemoryRegionKind::Usable, MemoryRegionKind::Reserved]),
            reserved: regions(&[MemoryRegionKind::Reserved]),
            usable: regions(&[MemoryRegionKind::Usable]),
            device,
            arenas: arenas::<L>(space),
        };
        Self {
            space,
            foreign: None,
            fault,
            machine,
            areas: Vec::new(),
            next_id: 0,
            view: View::new(),
            bytes: HashMap::new(),
            held: Vec::new(),
            hogs: Vec::new(),
            staged: Vec::new(),
            foreign_frames: Vec::new(),
            pt: Some(PageTable::empty_in(space).expect("memory for the root of a user page table")),
            pt_model: PtModel::user(),
            links: HashMap::new(),
            refs: BTreeMap::new(),
            touched: Vec::new(),
            areas_changed: true,
            start,
            foreign_start: None,
            base_data_pages: start.0.used_pages - start.0.page_table_pages,
            steps: 0,
            checks: Cell::new(0),
        }
    }

    /// The same, with `foreign` as the space that [`FramePick::Foreign`]
    /// and [`Item::Foreign`] take frames from; it must not be used by
    /// anything else until [`finish`](Self::finish).
    ///
    /// [`FramePick::Foreign`]: crate::FramePick::Foreign
    /// [`Item::Foreign`]: crate::Item::Foreign
    #[must_use]
    pub fn with_foreign(mut self, foreign: &'s KernelSpace) -> Self {
        foreign.synchronize();
        self.foreign_start = Some(foreign.phys_stats());
        self.foreign = Some(foreign);
        self
    }

    fn checker(&self) -> Checker<'_> {
        Checker { step: self.steps, checks: &self.checks }
    }

    fn expect(&self, cond: bool, check: &'static str, message: impl FnOnce() -> String) -> Outcome {
        self.checker().expect(cond, check, message)
    }

    fn fail(&self, check: &'static str, message: String) -> Failure {
        self.checker().fail(check, message)
    }

    /// Applies `op` to the space and to the model, and checks the results.
    ///
    /// # Errors
    ///
    /// The first check that failed.
    pub fn step(&mut self, op: &Op) -> Outcome {
        let result = self.apply(op);
        self.steps += 1;
        result
    }

    /// A raw cursor session over `range` whose operations `next` gives one
    /// by one, seeing where the cursor is and the model of the table (the
    /// fuzz target decodes them as the session goes); [`Op::PtSession`]
    /// with the operations given up front is the same. Returns the
    /// operations run (none if no cursor could be made over `range`).
    ///
    /// # Errors
    ///
    /// The first check that failed.
    pub fn step_session(
        &mut self,
        range: Range<Vaddr>,
        next: &mut dyn FnMut(&SessionView<'_, L::Format>) -> Option<CursorOp>,
    ) -> Result<Vec<CursorOp>, Failure> {
        let result = self.session(range, next);
        self.steps += 1;
        result
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Alloc { frames } => self.alloc(*frames),
            Op::Hog { pages } => self.hog(*pages),
            Op::Stage { pages } => self.stage(*pages),
            Op::CreateTracked { frames, size, offset, keep, prop } => {
                self.create_tracked(frames, *size, *offset, *keep, *prop)
            }
            Op::CreateUntracked { pa, size, offset, prop } => {
                self.create_untracked(pa, *size, *offset, *prop)
            }
            Op::Split { area, at, fallible } => match self.pick_area(*area) {
                Some(i) => self.split(i, *at, *fallible),
                None => Ok(()),
            },
            Op::Query { area, at } => match self.pick_area(*area) {
                Some(i) => self.query(i, *at),
                None => Ok(()),
            },
            Op::Write { area, offset, len, data } => match self.pick_area(*area) {
                Some(i) => self.write(i, *offset, *len, *data),
                None => Ok(()),
            },
            Op::Read { area, offset, len } => match self.pick_area(*area) {
                Some(i) => self.read(i, *offset, *len),
                None => Ok(()),
            },
            Op::Drop { area } => match self.pick_area(*area) {
                Some(i) => self.drop_area(i),
                None => Ok(()),
            },
            Op::DropHeld { which } => {
                if !self.held.is_empty() {
                    let i = which % self.held.len();
                    let f = self.held.swap_remove(i);
                    self.drop_ref(f.paddr());
                }
                Ok(())
            }
            Op::DropHog { which } => {
                if !self.hogs.is_empty() {
                    let i = which % self.hogs.len();
                    self.hogs.swap_remove(i);
                }
                Ok(())
            }
            Op::PtSession { range, ops } => {
                let mut ops = ops.iter().cloned();
                self.session(range.clone(), &mut |_| ops.next()).map(drop)
            }
            Op::PtMap { page, level, tracked } => self.pt_map(*page, *level, *tracked),
            Op::PtUnmap { page, pages } => self.pt_unmap(*page, *pages, false),
            Op::PtMapFrame { page, misalign } => self.pt_map_frame(*page, *misalign),
            Op::PtTakePage { page, misalign } => self.pt_take_page(*page, *misalign),
            Op::PtTakeRange { page, pages } => self.pt_take_range(*page, *pages),
            Op::PtProtect { page, pages } => self.pt_unmap(*page, *pages, true),
            Op::PtQuery { page } => self.pt_query(*page),
        }
    }

    fn pick_area(&self, raw: usize) -> Option<usize> {
        (!self.areas.is_empty()).then(|| raw % self.areas.len())
    }

    /// The real space.
    #[must_use]
    pub fn space(&self) -> &'s KernelSpace<L> {
        self.space
    }

    /// The live areas, in the order area indices of operations refer to:
    /// a new area goes last, a dropped one leaves a gap that closes, and
    /// the halves of a split take the place of the area they came from.
    #[must_use]
    pub fn areas(&self) -> &[Area<L>] {
        &self.areas
    }

    /// The frame handles the model holds, in the order handle indices refer
    /// to (a dropped handle's place goes to the last one).
    #[must_use]
    pub fn held(&self) -> &[Frame<()>] {
        &self.held
    }

    /// The segments [`Op::Hog`] holds, in the order indices refer to.
    #[must_use]
    pub fn hogs(&self) -> &[Segment<()>] {
        &self.hogs
    }

    /// The frames [`Op::Stage`] staged for the next creation.
    #[must_use]
    pub fn staged(&self) -> &[Frame<()>] {
        &self.staged
    }

    /// The model of the user page table.
    #[must_use]
    pub fn pt_model(&self) -> &PtModel<L::Format> {
        &self.pt_model
    }

    /// The free pages of the foreign space, if there is one.
    #[must_use]
    pub fn foreign_free_pages(&self) -> Option<usize> {
        self.foreign.map(|s| s.phys_stats().free_pages)
    }

    /// The device window of the machine.
    #[must_use]
    pub fn device(&self) -> Range<Paddr> {
        self.machine.device.clone()
    }

    /// Checks that passed so far.
    #[must_use]
    pub fn checks_passed(&self) -> u64 {
        self.checks.get()
    }

    /// Operations applied so far.
    #[must_use]
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Whether memory is short enough that an operation may run out.
    fn scarce(&self) -> bool {
        self.space.phys_stats().free_pages < SLACK_PAGES
    }

    /// One more reference to the frame at `pa`: a handle or an entry.
    fn add_ref(&mut self, pa: Paddr) {
        *self.refs.entry(pa).or_default() += 1;
        self.touched.push(pa);
    }

    /// One reference fewer to the frame at `pa`.
    fn drop_ref(&mut self, pa: Paddr) {
        if let Some(n) = self.refs.get_mut(&pa) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&pa);
            }
        }
        self.touched.push(pa);
    }

    /// A new area id.
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The VMALLOC bytes after an area that are its guard: none while the
    /// right half of a split of it is alive there.
    fn guard(&self, a: &Area<L>) -> usize {
        match a.right {
            Some(link) if !self.links[&link] => 0,
            _ => GUARD_SIZE,
        }
    }

    /// Whether VMALLOC has room for an area of `size` bytes and its guard
    /// at alignment `align`: a free block of one arena (all of VMALLOC but
    /// the live areas and their guards) holds it.
    fn vmalloc_room(&self, size: usize, align: usize) -> bool {
        let Some(need) = size.checked_add(GUARD_SIZE) else { return false };
        self.machine.arenas.iter().any(|arena| {
            let mut used: Vec<Range<Vaddr>> = self
                .areas
                .iter()
                .filter(|a| arena.contains(&a.range.start))
                .map(|a| a.range.start..a.range.end + self.guard(a))
                .collect();
            used.sort_by_key(|r| r.start);
            let (mut gaps, mut next) = (Vec::new(), arena.start);
            for r in &used {
                if r.start > next {
                    gaps.push(next..r.start);
                }
                next = next.max(r.end);
            }
            gaps.push(next..arena.end);
            gaps.iter().any(|g| {
                let start = g.start.div_ceil(align) * align;
                start.checked_add(need).is_some_and(|end| end <= g.end)
            })
        })
    }
}

/// VMALLOC's arenas in a space laid out as `L`: equal, contiguous pieces,
/// each as large as the largest area plus its guard.
fn arenas<L: KernelLayout>(space: &KernelSpace<L>) -> Vec<Range<Vaddr>> {
    let all = L::VMALLOC_VADDR_RANGE;
    let len = space.max_area_size() + GUARD_SIZE;
    assert!(all.len() % len == 0, "the model expects VMALLOC arenas of one size ({len:#x} into {all:#x?})");
    (0..all.len() / len).map(|i| all.start + i * len..all.start + (i + 1) * len).collect()
}
