//! The area operations of the step function: creation (tracked and
//! untracked, every argument checked against the model's own statement of
//! the preconditions and against the specification's panic conditions),
//! split, query, byte access and drop.
//!
//! Longer than most files because each operation's expected outcome is
//! stated here in full, rule by rule, beside the comparison with the real
//! space; splitting it would separate a rule from where it is checked.

use std::ops::Range;

use kvirt::arch::{effective_property, page_size, PagingFormat};
use kvirt::frame::{Frame, FrameAllocOptions, PhysStats};
use kvirt::kspace::{
    AreaAccessError, AreaInfo, AreaKind, KVirtArea, KVirtAreaError, KernelLayout, MappedItemRef, SplitError,
    VmallocStats, GUARD_SIZE,
};
use kvirt::page_prop::{PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::spec::{self, Inv};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use super::{Area, Model, Outcome};
use crate::op::{Data, FramePick, Frames, Offset, PaChoice, QueryAt, SplitAt};
use crate::pt::Leaf;
use crate::rng::Rng;
use crate::view::{as_spec_view, describe_diff, greedy_pages, page_at, reshape};
use crate::{panic, Failure};

/// What a rejected call must leave as it was.
type Snapshot = (PhysStats, VmallocStats, Vec<AreaInfo>);

/// The preconditions both constructors share that `size`, `offset`, a
/// mapping of `len` bytes and `prop` violate, in the model's own words.
fn common_violations(size: usize, offset: usize, len: usize, prop: &PageProperty) -> Vec<KVirtAreaError> {
    let mut v = Vec::new();
    if size == 0 {
        v.push(KVirtAreaError::ZeroSize);
    }
    if size % PAGE_SIZE != 0 {
        v.push(KVirtAreaError::MisalignedSize(size));
    }
    if offset % PAGE_SIZE != 0 {
        v.push(KVirtAreaError::MisalignedOffset(offset));
    }
    if offset >= size {
        v.push(KVirtAreaError::OffsetOutOfArea { map_offset: offset, area_size: size });
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        v.push(KVirtAreaError::MappingExceedsArea { map_offset: offset, len, area_size: size });
    }
    if prop.priv_flags.contains(PrivilegedPageFlags::USER) {
        v.push(KVirtAreaError::UserAccessible);
    }
    v
}

/// Physical addresses of format `L::Format` are below this.
fn pa_limit<L: KernelLayout>() -> usize {
    1usize.checked_shl(L::Format::PA_BITS).unwrap_or(usize::MAX)
}

impl<L: KernelLayout> Model<'_, L> {
    /// The counters and the registry, once deferred frees have happened.
    fn snapshot(&self) -> Snapshot {
        self.space.synchronize();
        (self.space.phys_stats(), self.space.vmalloc_stats(), self.space.areas())
    }

    /// A zeroed frame of the space; `None` if there is none left (only
    /// allowed with no free page).
    pub(super) fn fresh_frame(&mut self) -> Result<Option<Frame<()>>, Failure> {
        match FrameAllocOptions::new_in(self.space).alloc_frame() {
            Ok(f) => {
                self.bytes.remove(&f.paddr());
                Ok(Some(f))
            }
            Err(e) => {
                let free = self.space.phys_stats().free_pages;
                self.expect(free == 0, "a single frame fails only with no free page", || {
                    format!("alloc_frame failed ({e:?}) with {free} free pages")
                })?;
                Ok(None)
            }
        }
    }

    /// A frame of the foreign space, held until the end; `None` if there is
    /// no foreign space or it has no free page.
    pub(super) fn foreign_frame(&mut self) -> Result<Option<Frame<()>>, Failure> {
        let Some(foreign) = self.foreign else { return Ok(None) };
        match FrameAllocOptions::new_in(foreign).alloc_frame() {
            Ok(f) => {
                self.foreign_frames.push(f.clone());
                Ok(Some(f))
            }
            Err(e) => {
                let free = foreign.phys_stats().free_pages;
                self.expect(free == 0, "a single frame fails only with no free page", || {
                    format!("alloc_frame of the foreign space failed ({e:?}) with {free} free pages")
                })?;
                Ok(None)
            }
        }
    }

    pub(super) fn create_tracked(
        &mut self,
        frames: &Frames,
        size: usize,
        offset: usize,
        keep: bool,
        prop: PageProperty,
    ) -> Outcome {
        // The frames handed in, and how many of them only the call holds.
        let mut handed: Vec<Frame<()>> = Vec::new();
        let mut fresh = 0;
        let mut foreign = Vec::new();
        match frames {
            Frames::Fresh(n) => {
                for _ in 0..*n {
                    let Some(f) = self.fresh_frame()? else { return Ok(()) };
                    handed.push(f);
                }
                fresh = *n;
            }
            Frames::Staged => {
                handed = std::mem::take(&mut self.staged);
                fresh = handed.len();
                for f in &handed {
                    self.drop_ref(f.paddr());
                }
            }
            Frames::Picks(picks) => {
                for pick in picks {
                    match pick {
                        FramePick::Fresh => {
                            let Some(f) = self.fresh_frame()? else { return Ok(()) };
                            handed.push(f);
                            fresh += 1;
                        }
                        FramePick::Held(i) => {
                            if !self.held.is_empty() {
                                handed.push(self.held[i % self.held.len()].clone());
                            }
                        }
                        FramePick::Foreign => {
                            if let Some(f) = self.foreign_frame()? {
                                foreign.push(f.paddr());
                                handed.push(f);
                            }
                        }
                    }
                }
            }
        }
        let n = handed.len();
        let pas: Vec<Paddr> = handed.iter().map(Frame::paddr).collect();
        if keep {
            for f in handed.iter().filter(|f| !foreign.contains(&f.paddr())) {
                self.add_ref(f.paddr());
                self.held.push(f.clone());
            }
        }
        let len = n * PAGE_SIZE;
        let mut violated = common_violations(size, offset, len, &prop);
        let spec_panics = spec::map_frames_panic_condition(size, offset, n, &prop);
        let model_panics = !violated.is_empty();
        self.expect(spec_panics == model_panics, "spec agrees with the model on map_frames", || {
            format!("spec::map_frames_panic_condition = {spec_panics}, model violations = {violated:?}")
        })?;
        let spec_foreign = spec::map_frames_foreign_frame_condition(self.space, &handed);
        let model_foreign = !foreign.is_empty();
        self.expect(spec_foreign == model_foreign, "spec agrees with the model on foreign frames", || {
            format!("spec::map_frames_foreign_frame_condition = {spec_foreign}, model: {foreign:x?}")
        })?;
        // The panic conditions come first, then the frames' space.
        if violated.is_empty() {
            violated.extend(foreign.iter().map(|&pa| KVirtAreaError::ForeignFrame(pa)));
        }
        let room = self.vmalloc_room(size, PAGE_SIZE);
        let scarce = self.scarce();
        let before = self.snapshot();
        let released = if keep { 0 } else { fresh };
        self.areas_changed = true;
        let result = self.space.try_map_frames(size, offset, handed, prop);
        let Some(area) =
            self.check_creation(result, &violated, room, scarce, &before, released, "map_frames")?
        else {
            return Ok(());
        };
        let start = area.start().wrapping_add(offset);
        let shift = if self.fault == Some(super::ModelFault::TrackedViewOffByOne) { PAGE_SIZE } else { 0 };
        // What the format stores of `prop` (status flags it sets itself,
        // the nearest cache policy it has).
        let effective = effective_property::<L::Format>(prop);
        for (i, pa) in pas.into_iter().enumerate() {
            self.view.insert(
                start + shift + i * PAGE_SIZE,
                Leaf { pa, size: PAGE_SIZE, prop: effective, tracked: true },
            );
            self.add_ref(pa);
        }
        self.add_area(area, size, offset, len, AreaKind::Tracked, "kvirt-model: tracked")
    }

    /// The physical range `choice` stands for.
    fn pa_range(&self, choice: &PaChoice) -> Range<Paddr> {
        match choice {
            PaChoice::Abs(r) => r.clone(),
            PaChoice::Device { offset, len } => {
                let s = self.machine.device.start.wrapping_add(*offset);
                s..s.wrapping_add(*len)
            }
            PaChoice::FormatLimit { below, len } => {
                let s = pa_limit::<L>().wrapping_sub(*below);
                s..s.wrapping_add(*len)
            }
            PaChoice::Held { which, len } => match self.held.is_empty() {
                true => 0..0,
                false => {
                    let s = self.held[which % self.held.len()].paddr();
                    s..s.wrapping_add(*len)
                }
            },
        }
    }

    pub(super) fn create_untracked(
        &mut self,
        choice: &PaChoice,
        size: usize,
        offset: usize,
        prop: PageProperty,
    ) -> Outcome {
        let pa = self.pa_range(choice);
        let mut violated = Vec::new();
        if pa.start > pa.end {
            violated.push(KVirtAreaError::ReversedPaddrRange(pa.clone()));
        }
        let len = pa.end.saturating_sub(pa.start);
        violated.extend(common_violations(size, offset, len, &prop));
        if pa.start % PAGE_SIZE != 0 || pa.end % PAGE_SIZE != 0 {
            violated.push(KVirtAreaError::MisalignedPaddr(pa.clone()));
        }
        if pa.end > pa_limit::<L>() {
            violated.push(KVirtAreaError::PaddrTooLarge(pa.clone()));
        }
        // Every page of the usable RAM is the frame allocator's or the
        // frame metadata's. An empty range maps nothing: whether one lying
        // inside tracked memory counts as tracked is the specification's
        // choice (it does), not the model's.
        let spec_panics = spec::map_untracked_frames_panic_condition(self.space, size, offset, &pa, &prop);
        let tracked = if pa.start < pa.end {
            self.machine.usable.iter().any(|r| r.start < pa.end && pa.start < r.end)
        } else {
            spec_panics && violated.is_empty()
        };
        if tracked {
            violated.push(KVirtAreaError::TrackedPaddr(pa.clone()));
        }
        let model_panics = !violated.is_empty();
        self.expect(spec_panics == model_panics, "spec agrees with the model on map_untracked_frames", || {
            format!("spec::map_untracked_frames_panic_condition = {spec_panics}, model violations = {violated:?}")
        })?;
        // The alignment the area gets so that the mapping can use huge
        // pages: the largest page of which the physical range holds an
        // aligned piece at the same offset modulo the page.
        let huge = (2..=L::Format::HIGHEST_LEAF_LEVEL).rev().map(page_size::<L::Format>).find(|&a| {
            pa.start % a == offset % a
                && pa
                    .start
                    .checked_next_multiple_of(a)
                    .and_then(|s| s.checked_add(a))
                    .is_some_and(|e| e <= pa.end)
        });
        let room = self.vmalloc_room(size, PAGE_SIZE);
        let huge_room = huge.is_some_and(|a| self.vmalloc_room(size, a));
        let scarce = self.scarce();
        let before = self.snapshot();
        self.areas_changed = true;
        // SAFETY: creating the mapping accesses nothing. The range holds no
        // page the frame allocator can hand out (or the call is rejected):
        // it is reserved low memory that nothing else in this space uses,
        // the frame metadata, the simulated device window, or no RAM at
        // all. The model accesses none of it through the area but bytes of
        // reserved low memory, and the simulated CPUs run no code there.
        let result = unsafe { self.space.try_map_untracked_frames(size, offset, pa.clone(), prop) };
        let Some(area) =
            self.check_creation(result, &violated, room, scarce, &before, 0, "map_untracked_frames")?
        else {
            return Ok(());
        };
        if let (Some(a), true) = (huge, huge_room) {
            self.expect(area.start() % a == 0, "huge-page placement", || {
                format!("an area that can use {a:#x}-byte pages was placed at {:#x}", area.start())
            })?;
        }
        let start = area.start() + offset;
        for (va, page) in
            greedy_pages::<L::Format>(start, pa.start, len, effective_property::<L::Format>(prop))
        {
            self.view.insert(va, page);
        }
        self.add_area(area, size, offset, len, AreaKind::Untracked, "kvirt-model: untracked")
    }

    /// Checks a constructor's result against the violated preconditions
    /// and, for valid arguments, whether VMALLOC had `room` and memory was
    /// `scarce`. A rejected call must leave the space as `before`, less the
    /// `released` frames that only the call held.
    #[allow(clippy::too_many_arguments, reason = "the facts of one creation, gathered by its caller")]
    fn check_creation(
        &mut self,
        result: Result<KVirtArea<L>, KVirtAreaError>,
        violated: &[KVirtAreaError],
        room: bool,
        scarce: bool,
        before: &Snapshot,
        released: usize,
        what: &'static str,
    ) -> Result<Option<KVirtArea<L>>, Failure> {
        let e = match result {
            Ok(area) => {
                self.expect(violated.is_empty(), "rejection of invalid arguments", || {
                    format!("{what} accepted arguments violating {violated:?}")
                })?;
                return Ok(Some(area));
            }
            Err(e) => e,
        };
        match &e {
            KVirtAreaError::VmallocExhausted(size) if violated.is_empty() => {
                self.expect(!room, "VMALLOC exhaustion only without room", || {
                    format!("{what} reported VMALLOC exhausted for {size:#x} bytes, but a free block fits it")
                })?;
            }
            KVirtAreaError::OutOfMemory if violated.is_empty() => {
                self.expect(scarce, "out of memory only when memory is short", || {
                    format!("{what} ran out of memory with {} free pages", before.0.free_pages)
                })?;
            }
            _ => {
                self.expect(violated.contains(&e), "error names a violated precondition", || {
                    if violated.is_empty() {
                        format!("{what} rejected valid arguments: {e:?}")
                    } else {
                        format!("{what} returned {e:?}, expected one of {violated:?}")
                    }
                })?;
            }
        }
        let (mut phys, vm, areas) = before.clone();
        phys.used_pages -= released;
        phys.free_pages += released;
        let after = self.snapshot();
        self.expect(after == (phys, vm, areas), "a rejected call changes nothing", || {
            format!("{what} rejected ({e}) but changed the space:\nexpected {:?}\ngot      {after:?}", before)
        })?;
        Ok(None)
    }

    /// Checks a new area against what was asked, and keeps it.
    fn add_area(
        &mut self,
        area: KVirtArea<L>,
        size: usize,
        offset: usize,
        len: usize,
        kind: AreaKind,
        label: &'static str,
    ) -> Outcome {
        let range = area.range();
        let mapped = area.mapped_range();
        self.expect(
            range.len() == size
                && area.size() == size
                && range == (area.start()..area.end())
                && mapped.start == range.start + offset
                && mapped.len() == len,
            "area geometry",
            || format!("asked size {size:#x}, offset {offset:#x}, len {len:#x}; got {range:#x?}, mapped {mapped:#x?}"),
        )?;
        let vmalloc = L::VMALLOC_VADDR_RANGE;
        self.expect(
            vmalloc.start <= range.start && range.end <= vmalloc.end,
            "an area lies in VMALLOC",
            || format!("{range:#x?}"),
        )?;
        let inv = area.check();
        self.expect(inv.is_ok(), "Inv of a new area", || format!("{inv:?}"))?;
        area.set_label(label);
        self.check_range(&(range.start..range.end + GUARD_SIZE))?;
        let id = self.new_id();
        let origin = mapped.clone();
        self.areas.push(Area { area, id, range, mapped, origin, kind, label, left: None, right: None });
        Ok(())
    }

    /// Refinement over `range` alone (its part in VMALLOC): what the kernel
    /// page table maps there equals the model.
    pub(super) fn check_range(&self, range: &Range<Vaddr>) -> Outcome {
        let vmalloc = L::VMALLOC_VADDR_RANGE;
        let range = &(range.start.max(vmalloc.start)..range.end.min(vmalloc.end));
        if range.is_empty() {
            return Ok(());
        }
        let actual = spec::kernel_view(self.space, range);
        let first = page_at(&self.view, range.start).map_or(range.start, |(base, _)| base);
        let model: crate::view::View = self.view.range(first..range.end).map(|(&va, &p)| (va, p)).collect();
        let model = as_spec_view::<L::Format>(&model);
        self.expect(actual == model, "refinement: kernel_view equals the model", || {
            describe_diff(&actual, &model)
        })
    }

    pub(super) fn split(&mut self, i: usize, at: SplitAt, fallible: bool) -> Outcome {
        let size = self.areas[i].range.len();
        let offset = match at {
            SplitAt::Inside { at, misalign } => {
                let pages = size / PAGE_SIZE;
                if pages < 2 {
                    return Ok(());
                }
                ((1 + at % (pages - 1)) * PAGE_SIZE).wrapping_add(misalign)
            }
            SplitAt::Offset(offset) => offset,
        };
        let valid = offset % PAGE_SIZE == 0 && 0 < offset && offset < size;
        let scarce = self.scarce();
        let before = self.snapshot();
        self.areas_changed = true;
        let old = self.areas.remove(i);
        let Area { area, id, range, mapped, origin, kind, label, left, right } = old;
        let (l, r) = if fallible {
            match area.try_split(offset) {
                Ok(halves) => halves,
                Err((area, e)) => {
                    let expected =
                        if valid { SplitError::OutOfMemory } else { SplitError::BadOffset { offset, size } };
                    let unchanged = area.range() == range && area.mapped_range() == mapped;
                    self.areas.insert(i, Area { area, id, range, mapped, origin, kind, label, left, right });
                    self.expect(e == expected && (!valid || scarce), "try_split refuses as the model says", || {
                        format!("try_split at {offset:#x} of {size:#x} refused with {e:?}, the model expects {expected:?} (memory short: {scarce})")
                    })?;
                    let after = self.snapshot();
                    return self.expect(
                        unchanged && after == before,
                        "a refused split changes nothing",
                        || format!("try_split refused ({e}) but changed the space"),
                    );
                }
            }
        } else {
            match panic::catch(|| area.split(offset)) {
                Ok(halves) => halves,
                Err(msg) => {
                    // The unwinding dropped the area.
                    self.expect(
                        !valid || scarce,
                        "split panics only for a bad offset or without memory",
                        || format!("split at {offset:#x} of {size:#x} panicked: {msg}"),
                    )?;
                    self.expect(msg.starts_with("KVirtArea::split:"), "split's panic names itself", || {
                        msg.clone()
                    })?;
                    self.forget_area(&mapped, left, right);
                    return Ok(());
                }
            }
        };
        self.expect(valid, "split accepts only a valid offset", || {
            format!("split at {offset:#x} of an area of {size:#x} bytes was accepted")
        })?;
        let mid = range.start + offset;
        let clamp = |r: &Range<Vaddr>| {
            let s = mapped.start.clamp(r.start, r.end);
            let e = mapped.end.clamp(r.start, r.end).max(s);
            s..e
        };
        let (lr, rr) = (range.start..mid, mid..range.end);
        let (lm, rm) = (clamp(&lr), clamp(&rr));
        self.expect(
            l.range() == lr && r.range() == rr && l.mapped_range() == lm && r.mapped_range() == rm,
            "split geometry",
            || {
                format!(
                    "split at {offset:#x}: got {:#x?}/{:#x?} mapped {:#x?}/{:#x?}",
                    l.range(),
                    r.range(),
                    l.mapped_range(),
                    r.mapped_range()
                )
            },
        )?;
        for half in [&l, &r] {
            let inv = half.check();
            self.expect(inv.is_ok(), "Inv of a split half", || format!("{:#x?}: {inv:?}", half.range()))?;
        }
        // A huge page straddling the split point is split (down to 4 KiB
        // at it), so that each half owns whole pages.
        if page_at(&self.view, mid).is_some_and(|(base, _)| base < mid) {
            reshape(&mut self.view, &(mid..mid + PAGE_SIZE), L::Format::NR_ENTRIES, Some);
        }
        let link = self.links.len() as u64;
        self.links.insert(link, false);
        let (lid, rid) = (self.new_id(), self.new_id());
        let left_half = Area {
            area: l,
            id: lid,
            range: lr,
            mapped: lm,
            origin: origin.clone(),
            kind,
            label,
            left,
            right: Some(link),
        };
        let right_half =
            Area { area: r, id: rid, range: rr, mapped: rm, origin, kind, label, left: Some(link), right };
        self.areas.insert(i, right_half);
        self.areas.insert(i, left_half);
        self.check_range(
            &(mid.saturating_sub(page_size::<L::Format>(L::Format::HIGHEST_LEAF_LEVEL))..mid + PAGE_SIZE),
        )
    }

    /// The model's side of an area going away: its mappings go (huge pages
    /// straddling it split), and its split links break.
    fn forget_area(&mut self, mapped: &Range<Vaddr>, left: Option<u64>, right: Option<u64>) {
        let frames: Vec<Paddr> =
            self.view.range(mapped.clone()).filter(|(_, p)| p.tracked).map(|(_, p)| p.pa).collect();
        for pa in frames {
            self.drop_ref(pa);
        }
        reshape(&mut self.view, mapped, L::Format::NR_ENTRIES, |_| None);
        for link in [left, right].into_iter().flatten() {
            self.links.insert(link, true);
        }
    }

    pub(super) fn drop_area(&mut self, i: usize) -> Outcome {
        self.areas_changed = true;
        let a = self.areas.remove(i);
        self.forget_area(&a.mapped, a.left, a.right);
        let range = a.range.clone();
        drop(a);
        self.check_range(&(range.start..range.end + GUARD_SIZE))
    }

    pub(super) fn query(&mut self, i: usize, at: QueryAt) -> Outcome {
        let a = &self.areas[i];
        let pages = a.range.len() / PAGE_SIZE;
        let (va, probe_end) = match at {
            QueryAt::Page { page, byte } => {
                (a.range.start + (page % pages) * PAGE_SIZE + byte % PAGE_SIZE, true)
            }
            QueryAt::Offset(offset) => (a.range.start + offset % a.range.len(), true),
            QueryAt::Addr(va) => (va, false),
        };
        if !a.range.contains(&va) {
            let r = panic::catch(|| a.area.query(va).is_some());
            return self.expect(
                matches!(&r, Err(msg) if msg.contains("outside the area")),
                "query outside the area panics",
                || format!("query({va:#x}) outside {:#x?}: {r:?}", a.range),
            );
        }
        self.check_query(a, va)?;
        if probe_end {
            // `start <= addr < end` is required: the end is rejected (a
            // panic), unlike upstream's off-by-one.
            let end = a.range.end;
            let at_end = panic::catch(|| a.area.query(end).is_some());
            self.expect(at_end.is_err(), "query at end() panics", || {
                format!("query({end:#x}) at the end returned")
            })?;
        }
        Ok(())
    }

    /// `query` at `va` inside area `a` agrees with the model and with the
    /// specification's ensures.
    pub(super) fn check_query(&self, a: &Area<L>, va: Vaddr) -> Outcome {
        let result = a.area.query(va);
        let got = result.as_ref().map(|item| match item {
            MappedItemRef::Tracked(f, p) => (f.paddr(), PAGE_SIZE, *p, true),
            MappedItemRef::Untracked(pa, level, p) => (*pa, page_size::<L::Format>(*level), *p, false),
        });
        let want = page_at(&self.view, va).map(|(_, p)| (p.pa, p.size, p.prop, p.tracked));
        self.expect(got == want, "query agrees with the model", || {
            format!("query({va:#x}) returned {got:x?}, the model expects {want:x?}")
        })?;
        let page = va & !(PAGE_SIZE - 1);
        let view = spec::kernel_view(self.space, &(page..page + PAGE_SIZE));
        let spec_ok = if spec::query_some_condition(&view, va) {
            spec::query_some_ensures(&view, va, &result)
        } else {
            spec::query_none_ensures(&result)
        };
        self.expect(spec_ok, "query meets the spec's ensures", || {
            format!("query({va:#x}) breaks query_*_ensures")
        })
    }

    /// The error the model expects for a byte access (by the first page
    /// that is unmapped, lacks the right the access needs, `W` to write or
    /// `R` to read, or is not RAM), or the physical pieces it touches;
    /// `None` if it would touch untracked RAM that is not reserved (the
    /// frame metadata), which the model never does.
    fn access_plan(
        &self,
        a: &Area<L>,
        offset: usize,
        len: usize,
        write: bool,
    ) -> Option<Result<Vec<(Paddr, usize)>, AreaAccessError>> {
        let size = a.range.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Some(Err(AreaAccessError::OutOfBounds { offset, len, size }));
        }
        let mut pieces = Vec::new();
        let (mut va, end) = (a.range.start + offset, a.range.start + offset + len);
        let mut ours = true;
        while va < end {
            let n = (PAGE_SIZE - va % PAGE_SIZE).min(end - va);
            let Some((base, p)) = page_at(&self.view, va) else {
                return Some(Err(AreaAccessError::Unmapped(va)));
            };
            let pa = p.pa + (va - base);
            if write && !p.prop.flags.contains(PageFlags::RW) {
                return Some(Err(AreaAccessError::NotWritable(va)));
            }
            if !write && !p.prop.flags.contains(PageFlags::R) {
                return Some(Err(AreaAccessError::NotReadable(va)));
            }
            if !self.machine.ram.iter().any(|r| r.start <= pa && pa + n <= r.end) {
                return Some(Err(AreaAccessError::NotRam(va)));
            }
            ours &= p.tracked || self.machine.reserved.iter().any(|r| r.start <= pa && pa + n <= r.end);
            pieces.push((pa, n));
            va += n;
        }
        ours.then_some(Ok(pieces))
    }

    fn resolve(&self, i: usize, offset: Offset) -> usize {
        match offset {
            Offset::Abs(o) => o,
            Offset::Wrap { offset, extra } => offset % (self.areas[i].range.len() + extra),
        }
    }

    pub(super) fn write(&mut self, i: usize, offset: Offset, len: usize, data: Data) -> Outcome {
        let offset = self.resolve(i, offset);
        let data: Vec<u8> = match data {
            Data::Seed(seed) => {
                let mut rng = Rng::new(seed);
                (0..len).map(|_| rng.next_u64() as u8).collect()
            }
            Data::Ramp(b) => (0..len).map(|k| b.wrapping_add(k as u8)).collect(),
        };
        let a = &self.areas[i];
        let Some(plan) = self.access_plan(a, offset, len, true) else { return Ok(()) };
        let got = a.area.write_bytes(offset, &data);
        let pieces = match plan {
            Ok(pieces) => pieces,
            Err(e) => {
                return self.expect(got.as_ref() == Err(&e), "write_bytes fails as the model says", || {
                    format!("write_bytes({offset:#x}, {len}) returned {got:?}, the model expects {e:?}")
                })
            }
        };
        self.expect(got.is_ok(), "write_bytes succeeds where the model allows it", || {
            format!("write_bytes({offset:#x}, {len}) failed: {got:?}")
        })?;
        let mut done = 0;
        for (pa, n) in pieces {
            let page = self.bytes.entry(pa & !(PAGE_SIZE - 1)).or_insert_with(|| vec![0; PAGE_SIZE]);
            let at = pa % PAGE_SIZE;
            page[at..at + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        // Read back, if the area is readable.
        self.read(i, Offset::Abs(offset), len)
    }

    pub(super) fn read(&mut self, i: usize, offset: Offset, len: usize) -> Outcome {
        let offset = self.resolve(i, offset);
        let a = &self.areas[i];
        let Some(plan) = self.access_plan(a, offset, len, false) else { return Ok(()) };
        let mut buf = vec![0xa5; len];
        let got = a.area.read_bytes(offset, &mut buf);
        let pieces = match plan {
            Ok(pieces) => pieces,
            Err(e) => {
                return self.expect(got.as_ref() == Err(&e), "read_bytes fails as the model says", || {
                    format!("read_bytes({offset:#x}, {len}) returned {got:?}, the model expects {e:?}")
                })
            }
        };
        self.expect(got.is_ok(), "read_bytes succeeds where the model allows it", || {
            format!("read_bytes({offset:#x}, {len}) failed: {got:?}")
        })?;
        let mut expected = Vec::with_capacity(len);
        for (pa, n) in pieces {
            let at = pa % PAGE_SIZE;
            match self.bytes.get(&(pa & !(PAGE_SIZE - 1))) {
                Some(page) => expected.extend_from_slice(&page[at..at + n]),
                None => expected.resize(expected.len() + n, 0),
            }
        }
        let first = buf.iter().zip(&expected).position(|(a, b)| a != b);
        self.expect(first.is_none(), "read_bytes returns the model's bytes", || {
            let j = first.unwrap_or(0);
            format!(
                "read_bytes({offset:#x}, {len}): byte {j} is {:#x}, the model says {:#x}",
                buf[j], expected[j]
            )
        })
    }
}
