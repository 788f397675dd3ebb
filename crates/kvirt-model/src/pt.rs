//! The model of a page table's leaves: what a cursor's `try_map`,
//! `take_next`, `protect_next`, `find_next` and `query` must do, and which
//! nodes must exist.
//!
//! Generic over the paging format, for a kernel table (the root's children
//! exist for ever: `TOP_LEVEL_CAN_UNMAP == false`) or a user table (they
//! come and go like every other node). The model-based test of the cursor
//! (`crates/kvirt/tests/page_table_model.rs`), the page-table stress test
//! and the raw cursor sessions of [`Model`](crate::Model) all use it.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::ops::Range;

use kvirt::arch::x86_64::X86_64;
use kvirt::arch::{page_size, PagingFormat};
use kvirt::page_prop::PageProperty;
use kvirt::page_table::PageTableConfig;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

/// 2 MiB, an x86-64 level-2 page.
pub const SZ_2M: usize = 2 << 20;
/// 1 GiB, an x86-64 level-3 page.
pub const SZ_1G: usize = 1 << 30;

/// One leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// The physical address it maps.
    pub pa: Paddr,
    /// Its page size.
    pub size: usize,
    /// Its property.
    pub prop: PageProperty,
    /// A tracked frame (always 4 KiB) rather than untracked memory.
    pub tracked: bool,
}

impl Leaf {
    /// The leaf as the spec's view has it, at `va`, in format `F`.
    ///
    /// # Panics
    ///
    /// If `size` is not a leaf size of `F`.
    #[must_use]
    pub fn to_spec_in<F: PagingFormat>(self, va: Vaddr) -> kvirt::spec::Mapping {
        let level = kvirt::spec::level_of_size::<F>(self.size).expect("a leaf size of the format");
        kvirt::spec::Mapping {
            va,
            pa: self.pa,
            level,
            size: self.size,
            prop: self.prop,
            tracked: self.tracked,
        }
    }

    /// The leaf as the spec's view has it, at `va`, on x86-64.
    ///
    /// # Panics
    ///
    /// If `size` is not an x86-64 leaf size.
    #[must_use]
    pub fn to_spec(self, va: Vaddr) -> kvirt::spec::Mapping {
        self.to_spec_in::<X86_64>(va)
    }
}

/// What `take_next` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// One leaf, at its address.
    Leaf(Vaddr, Leaf),
    /// A whole node: its span and how many leaves it held.
    SubTree {
        /// The first address the node spans.
        va: Vaddr,
        /// The bytes it spans.
        len: usize,
        /// The leaves it held.
        num_frames: usize,
    },
}

/// The leaves of a page table by virtual start address.
#[derive(Debug, PartialEq, Eq)]
pub struct PtModel<F: PagingFormat = X86_64> {
    /// The leaves.
    pub map: BTreeMap<Vaddr, Leaf>,
    /// Whether the root's children exist for ever (a kernel table).
    fixed_top: bool,
    _format: PhantomData<F>,
}

impl<F: PagingFormat> Clone for PtModel<F> {
    fn clone(&self) -> Self {
        Self { map: self.map.clone(), fixed_top: self.fixed_top, _format: PhantomData }
    }
}

/// An empty x86-64 kernel table (the root's children fixed).
impl Default for PtModel<X86_64> {
    fn default() -> Self {
        Self::kernel()
    }
}

impl<F: PagingFormat> PtModel<F> {
    /// An empty table whose root's children exist for ever, as in a kernel
    /// table.
    #[must_use]
    pub fn kernel() -> Self {
        Self { map: BTreeMap::new(), fixed_top: true, _format: PhantomData }
    }

    /// An empty table whose root's children come and go, as in a user
    /// table.
    #[must_use]
    pub fn user() -> Self {
        Self { map: BTreeMap::new(), fixed_top: false, _format: PhantomData }
    }

    /// An empty table of configuration `C`.
    #[must_use]
    pub fn of<C: PageTableConfig<F = F>>() -> Self {
        if C::TOP_LEVEL_CAN_UNMAP {
            Self::user()
        } else {
            Self::kernel()
        }
    }

    /// The nodes of an empty table of this kind: the root, and the root's
    /// children of a kernel table's half.
    #[must_use]
    pub fn empty_table_nodes(&self) -> usize {
        1 + if self.fixed_top { F::NR_ENTRIES / 2 } else { 0 }
    }

    /// The spans of the nodes that come and go, largest first: a node of
    /// level `l` spans `page_size(l + 1)`.
    fn spans(&self) -> impl Iterator<Item = usize> {
        let top = if self.fixed_top { F::NR_LEVELS - 1 } else { F::NR_LEVELS };
        (2..top + 1).rev().map(page_size::<F>)
    }

    /// The lowest leaf intersecting `va..end`.
    #[must_use]
    pub fn first_intersecting(&self, va: Vaddr, end: Vaddr) -> Option<(Vaddr, Leaf)> {
        if let Some((&s, &m)) = self.map.range(..va).next_back() {
            if s + m.size > va {
                return Some((s, m));
            }
        }
        self.map.range(va..end).next().map(|(&s, &m)| (s, m))
    }

    /// The leaf mapping `va`.
    #[must_use]
    pub fn covering(&self, va: Vaddr) -> Option<(Vaddr, Leaf)> {
        self.first_intersecting(va, va + 1).filter(|&(s, _)| s <= va)
    }

    /// Whether nothing is mapped in `range`.
    #[must_use]
    pub fn is_free(&self, range: Range<Vaddr>) -> bool {
        self.first_intersecting(range.start, range.end).is_none()
    }

    /// Replaces the huge leaf at `start` by the leaves one level down.
    fn split(&mut self, start: Vaddr) {
        let m = self.map.remove(&start).expect("split of a missing leaf");
        assert!(m.size > PAGE_SIZE && !m.tracked, "only untracked huge pages split");
        let piece = m.size / F::NR_ENTRIES;
        for i in 0..F::NR_ENTRIES {
            self.map.insert(start + i * piece, Leaf { pa: m.pa + i * piece, size: piece, ..m });
        }
    }

    /// Splits leaves straddling `va..end` until the first one inside fits;
    /// returns it.
    fn first_fitting(&mut self, va: Vaddr, end: Vaddr) -> Option<(Vaddr, Leaf)> {
        loop {
            let (s, m) = self.first_intersecting(va, end)?;
            if s < va || s + m.size > end {
                self.split(s);
            } else {
                return Some((s, m));
            }
        }
    }

    /// What a `take_all` over `range` takes, taken: the fragments
    /// [`take_next`](Self::take_next) hands out one after another, counted
    /// as mappings (a sub-tree's frames each) and as the spans they cover.
    /// `dropped` gets the frame of each tracked page taken, whose reference
    /// goes with it.
    pub fn take_all(
        &mut self,
        range: Range<Vaddr>,
        dropped: &mut dyn FnMut(Paddr),
    ) -> (usize, Vec<Range<Vaddr>>) {
        // Tracked pages are 4 KiB (never split, never part of a page that
        // starts before the range): the ones a fragment takes are the ones
        // that start in its span, known before the first.
        let tracked: Vec<(Vaddr, Paddr)> =
            self.map.range(range.clone()).filter(|(_, l)| l.tracked).map(|(&va, l)| (va, l.pa)).collect();
        let (mut va, mut mappings, mut spans) = (range.start, 0, Vec::new());
        loop {
            let (frag, next) = self.take_next(va, range.end);
            let Some(frag) = frag else { break };
            let span = match frag {
                Taken::Leaf(at, l) => {
                    mappings += 1;
                    at..at + l.size
                }
                Taken::SubTree { va: at, len, num_frames } => {
                    mappings += num_frames;
                    at..at + len
                }
            };
            let (lo, hi) = (
                tracked.partition_point(|&(at, _)| at < span.start),
                tracked.partition_point(|&(at, _)| at < span.end),
            );
            for &(_, pa) in &tracked[lo..hi] {
                dropped(pa);
            }
            spans.push(span);
            va = next;
        }
        (mappings, spans)
    }

    /// `take_next` from `va` with the search ending at `end`: what is taken
    /// and where the cursor ends.
    pub fn take_next(&mut self, va: Vaddr, end: Vaddr) -> (Option<Taken>, Vaddr) {
        if va >= end {
            return (None, end);
        }
        let Some((s, m)) = self.first_fitting(va, end) else {
            return (None, end);
        };
        // The largest node around it that the search covers goes whole (a
        // kernel table's top-level nodes never do).
        for span in self.spans() {
            let base = s & !(span - 1);
            if m.size < span && base >= va && base.checked_add(span).is_some_and(|e| e <= end) {
                let inside: Vec<Vaddr> = self.map.range(base..base + span).map(|(&k, _)| k).collect();
                for k in &inside {
                    self.map.remove(k);
                }
                return (Some(Taken::SubTree { va: base, len: span, num_frames: inside.len() }), base + span);
            }
        }
        self.map.remove(&s);
        (Some(Taken::Leaf(s, m)), s + m.size)
    }

    /// `protect_next` with `op`: the range changed and where the cursor
    /// ends.
    pub fn protect_next_with(
        &mut self,
        va: Vaddr,
        end: Vaddr,
        op: impl FnOnce(&mut PageProperty),
    ) -> (Option<Range<Vaddr>>, Vaddr) {
        if va >= end {
            return (None, end);
        }
        let Some((s, m)) = self.first_fitting(va, end) else {
            return (None, end);
        };
        op(&mut self.map.get_mut(&s).expect("found above").prop);
        (Some(s..s + m.size), s + m.size)
    }

    /// `protect_next` to `prop`: the range changed and where the cursor ends.
    pub fn protect_next(
        &mut self,
        va: Vaddr,
        end: Vaddr,
        prop: PageProperty,
    ) -> (Option<Range<Vaddr>>, Vaddr) {
        self.protect_next_with(va, end, |p| *p = prop)
    }

    /// Where `find_next` from `va` stops before `end`.
    #[must_use]
    pub fn find_next(&self, va: Vaddr, end: Vaddr) -> Option<Vaddr> {
        if va >= end {
            return None;
        }
        self.first_intersecting(va, end).map(|(s, _)| s.max(va))
    }

    /// Whether a node of `span` at `base` must exist: it holds a leaf
    /// smaller than itself.
    fn node_exists(&self, base: Vaddr, span: usize) -> bool {
        self.map.range(base..base.saturating_add(span)).any(|(_, m)| m.size < span)
    }

    /// The size of the absent slot around an unmapped `va`, at the lowest
    /// node that must exist there.
    #[must_use]
    pub fn absent_size(&self, va: Vaddr) -> usize {
        self.spans().find(|&span| !self.node_exists(va & !(span - 1), span)).unwrap_or(PAGE_SIZE)
    }

    /// What `query` at `va` reports: the leaf's range, or the absent slot.
    #[must_use]
    pub fn query(&self, va: Vaddr) -> (Range<Vaddr>, Option<Leaf>) {
        if let Some((s, m)) = self.covering(va) {
            return (s..s + m.size, Some(m));
        }
        let size = self.absent_size(va);
        let s = va & !(size - 1);
        (s..s + size, None)
    }

    /// The nodes that must exist besides those of an empty table.
    #[must_use]
    pub fn nodes(&self) -> usize {
        self.spans()
            .map(|span| {
                let bases: BTreeSet<Vaddr> =
                    self.map.iter().filter(|(_, m)| m.size < span).map(|(&s, _)| s & !(span - 1)).collect();
                bases.len()
            })
            .sum()
    }

    /// The leaves as the spec's view has them.
    #[must_use]
    pub fn to_spec(&self) -> kvirt::spec::PageTableView {
        self.map.iter().map(|(&va, l)| (va, l.to_spec_in::<F>(va))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvirt::page_prop::{CachePolicy, PageFlags};

    fn leaf(pa: Paddr, size: usize) -> Leaf {
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        Leaf { pa, size, prop, tracked: false }
    }

    #[test]
    fn a_kernel_table_never_takes_a_top_level_node_whole() {
        let base = 512 * SZ_1G;
        let mut k = PtModel::<X86_64>::kernel();
        k.map.insert(base, leaf(0, PAGE_SIZE));
        let (taken, next) = k.take_next(base, base + 512 * SZ_1G);
        assert_eq!(taken, Some(Taken::SubTree { va: base, len: SZ_1G, num_frames: 1 }));
        assert_eq!(next, base + SZ_1G);
        let mut u = PtModel::<X86_64>::user();
        u.map.insert(base, leaf(0, PAGE_SIZE));
        assert_eq!(u.nodes(), 3, "an L3, an L2 and an L1 node");
        let (taken, _) = u.take_next(base, base + 512 * SZ_1G);
        assert_eq!(taken, Some(Taken::SubTree { va: base, len: 512 * SZ_1G, num_frames: 1 }));
        assert_eq!((u.nodes(), u.absent_size(base)), (0, 512 * SZ_1G));
    }

    #[test]
    fn protecting_inside_a_huge_page_splits_it_down_to_the_range() {
        let mut m = PtModel::<X86_64>::user();
        m.map.insert(0, leaf(SZ_1G, SZ_2M));
        let ro = PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback);
        let (changed, next) = m.protect_next(PAGE_SIZE, 2 * PAGE_SIZE, ro);
        assert_eq!((changed, next), (Some(PAGE_SIZE..2 * PAGE_SIZE), 2 * PAGE_SIZE));
        assert_eq!(m.map.len(), 512);
        assert_eq!(m.map[&PAGE_SIZE].prop, ro);
        assert_eq!(m.map[&0].pa, SZ_1G);
    }
}
