//! Model-based property test of frame and segment reference counting.
//!
//! Random sequences of allocations, clones, drops, splits, slices,
//! iterations and conversions run against an isolated 16 MiB kernel space.
//! A model tracks, for every page, how many live handles refer to it, and
//! the physical range each handle should cover. After every step:
//!
//! * every handle covers the range the model predicts, and each page's
//!   metadata is the one it was allocated with;
//! * every page's `reference_count()` equals its number of live handles;
//! * the allocator's used-page count equals the number of pages the model
//!   holds (pages with no handle were returned at once);
//! * the drop hooks that ran are exactly those of the pages whose last
//!   handle went away, each once.
//!
//! At the end every handle is dropped and the space's counters must be back
//! to their initial values.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocOptions, Segment};
use kvirt::kspace::KernelSpace;
use kvirt::{Paddr, PAGE_SIZE};
use kvirt_sim::MachineConfig;
use proptest::prelude::*;
use proptest::sample::Index;

const P: usize = PAGE_SIZE;

/// Metadata carrying a serial number unique to its allocation, so a mix-up
/// of slots (or a stale slot on a reused page) is caught. Its drop hook
/// records the serial, so the test knows exactly which pages were freed.
#[derive(Debug)]
struct Tag {
    serial: u64,
    freed: Arc<Mutex<Vec<u64>>>,
}

impl AnyFrameMeta for Tag {
    fn on_drop(&mut self, _paddr: Paddr) {
        self.freed.lock().unwrap().push(self.serial);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Debug)]
enum Handle {
    Frame(Frame<Tag>),
    Seg(Segment<Tag>),
}

impl Handle {
    fn range(&self) -> Range<Paddr> {
        match self {
            Handle::Frame(f) => f.paddr()..f.paddr() + f.size(),
            Handle::Seg(s) => s.paddr()..s.end_paddr(),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    AllocFrame,
    AllocSegment(usize),
    Clone(Index),
    Drop(Index),
    /// Split a segment at page `.1` (modulo its length + 1, so 0 and the
    /// end, which must be rejected, come up too); `.2` adds a misalignment.
    Split(Index, usize, bool),
    /// Slice a segment over pages `.1 .. .2` (modulo its length + 1, so
    /// empty and reversed ranges come up too); `.3` adds a misalignment.
    Slice(Index, usize, usize, bool),
    IntoIter(Index),
    FrameToSegment(Index),
    RawRoundTrip(Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::AllocFrame),
        3 => (1usize..8).prop_map(Op::AllocSegment),
        3 => any::<Index>().prop_map(Op::Clone),
        3 => any::<Index>().prop_map(Op::Drop),
        2 => (any::<Index>(), 0usize..9, prop::bool::weighted(0.1)).prop_map(|(i, at, mis)| Op::Split(i, at, mis)),
        2 => (any::<Index>(), 0usize..9, 0usize..9, prop::bool::weighted(0.1))
            .prop_map(|(i, a, b, mis)| Op::Slice(i, a, b, mis)),
        1 => any::<Index>().prop_map(Op::IntoIter),
        1 => any::<Index>().prop_map(Op::FrameToSegment),
        1 => any::<Index>().prop_map(Op::RawRoundTrip),
    ]
}

/// The model: expected ranges of the handles (same order as the real ones),
/// the number of handles on each page and the serial of each live page.
#[derive(Default)]
struct Model {
    ranges: Vec<Range<Paddr>>,
    counts: BTreeMap<Paddr, u64>,
    serials: BTreeMap<Paddr, u64>,
    next_serial: u64,
    /// Serials of the pages whose last handle was dropped.
    freed: BTreeSet<u64>,
}

impl Model {
    fn add(&mut self, range: Range<Paddr>) {
        for pa in range.clone().step_by(P) {
            *self.counts.entry(pa).or_insert(0) += 1;
        }
        self.ranges.push(range);
    }

    fn remove(&mut self, i: usize) -> Range<Paddr> {
        let range = self.ranges.remove(i);
        for pa in range.clone().step_by(P) {
            let count = self.counts.get_mut(&pa).expect("page in the model");
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&pa);
                let serial = self.serials.remove(&pa).expect("live page has a serial");
                assert!(self.freed.insert(serial));
            }
        }
        range
    }
}

struct Harness {
    space: KernelSpace,
    initial: kvirt::frame::PhysStats,
    handles: Vec<Handle>,
    model: Model,
    freed: Arc<Mutex<Vec<u64>>>,
}

impl Harness {
    fn new() -> Self {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        let initial = space.phys_stats();
        Self { space, initial, handles: Vec::new(), model: Model::default(), freed: Arc::default() }
    }

    fn push(&mut self, handle: Handle, expected: Range<Paddr>) {
        self.model.add(expected);
        self.handles.push(handle);
    }

    fn fresh(&self, range: &Range<Paddr>) -> bool {
        range.clone().step_by(P).all(|pa| !self.model.counts.contains_key(&pa))
    }

    fn apply(&mut self, op: &Op) {
        let opts = FrameAllocOptions::new_in(&self.space);
        match *op {
            Op::AllocFrame => {
                let serial = self.model.next_serial;
                self.model.next_serial += 1;
                let frame = opts
                    .alloc_frame_with(Tag { serial, freed: self.freed.clone() })
                    .expect("16 MiB is enough for these sequences");
                let range = frame.paddr()..frame.paddr() + P;
                assert!(self.fresh(&range), "a live page was handed out again: {range:#x?}");
                self.model.serials.insert(range.start, serial);
                self.push(Handle::Frame(frame), range);
            }
            Op::AllocSegment(n) => {
                let first = self.model.next_serial;
                self.model.next_serial += n as u64;
                let mut serial = first;
                let seg = opts
                    .alloc_segment_with(n, |_| {
                        serial += 1;
                        Tag { serial: serial - 1, freed: self.freed.clone() }
                    })
                    .expect("16 MiB is enough for these sequences");
                let range = seg.paddr()..seg.paddr() + n * P;
                assert!(self.fresh(&range), "a live page was handed out again: {range:#x?}");
                for (k, pa) in range.clone().step_by(P).enumerate() {
                    self.model.serials.insert(pa, first + k as u64);
                }
                self.push(Handle::Seg(seg), range);
            }
            Op::Clone(i) => {
                if self.handles.is_empty() {
                    return;
                }
                let i = i.index(self.handles.len());
                let clone = match &self.handles[i] {
                    Handle::Frame(f) => Handle::Frame(f.clone()),
                    Handle::Seg(s) => Handle::Seg(s.clone()),
                };
                let range = self.model.ranges[i].clone();
                self.push(clone, range);
            }
            Op::Drop(i) => {
                if self.handles.is_empty() {
                    return;
                }
                let i = i.index(self.handles.len());
                drop(self.handles.remove(i));
                self.model.remove(i);
            }
            Op::Split(i, at, misaligned) => {
                if self.handles.is_empty() {
                    return;
                }
                let i = i.index(self.handles.len());
                let Handle::Seg(_) = &self.handles[i] else { return };
                let Handle::Seg(seg) = self.handles.remove(i) else { unreachable!() };
                let range = self.model.ranges[i].clone();
                let n = range.len() / P;
                let offset = (at % (n + 1)) * P + usize::from(misaligned) * 8;
                match seg.try_split(offset) {
                    Ok((a, b)) => {
                        assert!(
                            !misaligned && offset > 0 && offset < range.len(),
                            "bad split {offset:#x} accepted"
                        );
                        // The pages keep their counts: replace one handle by two.
                        self.model.ranges.remove(i);
                        self.model.ranges.push(range.start..range.start + offset);
                        self.model.ranges.push(range.start + offset..range.end);
                        self.handles.push(Handle::Seg(a));
                        self.handles.push(Handle::Seg(b));
                    }
                    Err((back, _)) => {
                        assert!(
                            misaligned || offset == 0 || offset >= range.len(),
                            "split at {offset:#x} rejected"
                        );
                        self.handles.insert(i, Handle::Seg(back));
                    }
                }
            }
            Op::Slice(i, a, b, misaligned) => {
                if self.handles.is_empty() {
                    return;
                }
                let i = i.index(self.handles.len());
                let Handle::Seg(seg) = &self.handles[i] else { return };
                let range = self.model.ranges[i].clone();
                let n = range.len() / P;
                let (a, b) = (a % (n + 1), b % (n + 1));
                let slice = a * P + usize::from(misaligned)..b * P;
                match seg.try_slice(&slice) {
                    Ok(s) => {
                        assert!(!misaligned && a < b, "bad slice {slice:#x?} accepted");
                        self.push(Handle::Seg(s), range.start + a * P..range.start + b * P);
                    }
                    Err(_) => assert!(misaligned || a >= b, "slice {slice:#x?} rejected"),
                }
            }
            Op::IntoIter(i) => {
                if self.handles.is_empty() {
                    return;
                }
                let i = i.index(self.handles.len());
                let Handle::Seg(_) = &self.handles[i] else { return };
                let Handle::Seg(seg) = self.handles.remove(i) else { unreachable!() };
                let range = self.model.ranges.remove(i);
                for (frame, pa) in seg.into_iter().zip(range.clone().step_by(P)) {
                    self.handles.push(Handle::Frame(frame));
                    self.model.ranges.push(pa..pa + P);
                }
            }
            Op::FrameToSegment(i) => {
                if self.handles.is_empty() {
                    return;
                }
                let i = i.index(self.handles.len());
                let Handle::Frame(_) = &self.handles[i] else { return };
                let Handle::Frame(frame) = self.handles.remove(i) else { unreachable!() };
                self.handles.insert(i, Handle::Seg(Segment::from(frame)));
            }
            Op::RawRoundTrip(i) => {
                if self.handles.is_empty() {
                    return;
                }
                let i = i.index(self.handles.len());
                let Handle::Frame(_) = &self.handles[i] else { return };
                let Handle::Frame(frame) = self.handles.remove(i) else { unreachable!() };
                let pa = frame.into_raw();
                // SAFETY: `pa` came from `into_raw` on a `Frame<Tag>` of this
                // space just now, and is taken back once.
                let back = unsafe { self.space.frame_from_raw::<Tag>(pa) };
                self.handles.insert(i, Handle::Frame(back));
            }
        }
    }

    fn check(&self) {
        assert_eq!(self.handles.len(), self.model.ranges.len());
        let mut observed: BTreeMap<Paddr, u64> = BTreeMap::new();
        let mut observe = |pa: Paddr, count: u64| {
            if let Some(old) = observed.insert(pa, count) {
                assert_eq!(old, count, "page {pa:#x} reports two different counts");
            }
        };
        for (handle, expected) in self.handles.iter().zip(&self.model.ranges) {
            assert_eq!(&handle.range(), expected, "handle covers the wrong pages");
            match handle {
                Handle::Frame(f) => {
                    assert_eq!(
                        f.meta().serial,
                        self.model.serials[&f.paddr()],
                        "frame metadata of another page"
                    );
                    observe(f.paddr(), f.reference_count());
                }
                Handle::Seg(s) => {
                    for off in (0..s.size()).step_by(P) {
                        let serial = self.model.serials[&(s.paddr() + off)];
                        assert_eq!(s.meta_at(off).serial, serial, "segment metadata of another page");
                    }
                    // A clone adds one reference to every page while it lives.
                    for frame in s.clone() {
                        observe(frame.paddr(), frame.reference_count() - 1);
                    }
                }
            }
        }
        assert_eq!(observed, self.model.counts, "reference counts differ from the live handles");
        let freed = self.freed.lock().unwrap();
        assert_eq!(freed.len(), self.model.freed.len(), "a drop hook ran twice or not at all");
        assert_eq!(
            freed.iter().copied().collect::<BTreeSet<_>>(),
            self.model.freed,
            "drop hooks of the wrong pages"
        );
        drop(freed);
        let stats = self.space.phys_stats();
        assert_eq!(stats.used_pages, self.initial.used_pages + self.model.counts.len(), "pages in use");
        assert_eq!(stats.total_pages, self.initial.total_pages);
    }

    fn finish(mut self) {
        // Drop in a scrambled order: every other handle first.
        let mut i = 0;
        while i < self.handles.len() {
            drop(self.handles.remove(i));
            self.model.remove(i);
            i += 1;
        }
        self.check();
        while let Some(handle) = self.handles.pop() {
            drop(handle);
            self.model.remove(self.handles.len());
        }
        self.check();
        self.space.synchronize();
        assert_eq!(self.space.phys_stats(), self.initial, "not all memory came back");
        assert_eq!(self.freed.lock().unwrap().len() as u64, self.model.next_serial, "every page's hook ran");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reference_counts_equal_live_handles(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new();
        h.check();
        for op in &ops {
            h.apply(op);
            h.check();
        }
        h.finish();
    }
}
