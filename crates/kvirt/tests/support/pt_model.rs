//! The model of an x86-64 kernel page table's leaves: what a cursor's
//! `try_map`, `take_next`, `protect_next`, `find_next` and `query` must do,
//! and which nodes must exist. Written once, for the model-based test
//! (`tests/page_table_model.rs`) and the fuzz target (`fuzz/fuzz_logic.rs`),
//! which include this file.

#![allow(dead_code, reason = "each includer uses a different part of the model")]

use std::collections::BTreeMap;
use std::ops::Range;

use kvirt::arch::x86_64::X86_64;
use kvirt::page_prop::PageProperty;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

pub const SZ_2M: usize = 2 << 20;
pub const SZ_1G: usize = 1 << 30;

/// One leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub pa: Paddr,
    pub size: usize,
    pub prop: PageProperty,
    /// A tracked frame (always 4 KiB) rather than untracked memory.
    pub tracked: bool,
}

impl Leaf {
    /// The leaf as the spec's view has it, at `va`.
    pub fn to_spec(self, va: Vaddr) -> kvirt::spec::Mapping {
        let level = kvirt::spec::level_of_size::<X86_64>(self.size).expect("a leaf size of x86-64");
        kvirt::spec::Mapping {
            va,
            pa: self.pa,
            level,
            size: self.size,
            prop: self.prop,
            tracked: self.tracked,
        }
    }
}

/// What `take_next` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    Leaf(Vaddr, Leaf),
    SubTree { va: Vaddr, len: usize, num_frames: usize },
}

/// The leaves by virtual start address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtModel {
    pub map: BTreeMap<Vaddr, Leaf>,
}

impl PtModel {
    /// The lowest leaf intersecting `va..end`.
    pub fn first_intersecting(&self, va: Vaddr, end: Vaddr) -> Option<(Vaddr, Leaf)> {
        if let Some((&s, &m)) = self.map.range(..va).next_back() {
            if s + m.size > va {
                return Some((s, m));
            }
        }
        self.map.range(va..end).next().map(|(&s, &m)| (s, m))
    }

    /// The leaf mapping `va`.
    pub fn covering(&self, va: Vaddr) -> Option<(Vaddr, Leaf)> {
        self.first_intersecting(va, va + 1).filter(|&(s, _)| s <= va)
    }

    /// Whether nothing is mapped in `range`.
    pub fn is_free(&self, range: Range<Vaddr>) -> bool {
        self.first_intersecting(range.start, range.end).is_none()
    }

    /// Replaces the huge leaf at `start` by 512 leaves one level down.
    fn split(&mut self, start: Vaddr) {
        let m = self.map.remove(&start).expect("split of a missing leaf");
        assert!(m.size > PAGE_SIZE && !m.tracked, "only untracked huge pages split");
        let piece = m.size / 512;
        for i in 0..512 {
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

    /// `take_next` from `va` with the search ending at `end`: what is taken
    /// and where the cursor ends.
    pub fn take_next(&mut self, va: Vaddr, end: Vaddr) -> (Option<Taken>, Vaddr) {
        if va >= end {
            return (None, end);
        }
        let Some((s, m)) = self.first_fitting(va, end) else {
            return (None, end);
        };
        // The largest node around it that the search covers goes whole
        // (kernel L3 nodes never do).
        for span in [SZ_1G, SZ_2M] {
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

    /// `protect_next` to `prop`: the range changed and where the cursor ends.
    pub fn protect_next(
        &mut self,
        va: Vaddr,
        end: Vaddr,
        prop: PageProperty,
    ) -> (Option<Range<Vaddr>>, Vaddr) {
        if va >= end {
            return (None, end);
        }
        let Some((s, m)) = self.first_fitting(va, end) else {
            return (None, end);
        };
        self.map.get_mut(&s).expect("found above").prop = prop;
        (Some(s..s + m.size), s + m.size)
    }

    /// Where `find_next` from `va` stops before `end`.
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
    pub fn absent_size(&self, va: Vaddr) -> usize {
        if !self.node_exists(va & !(SZ_1G - 1), SZ_1G) {
            SZ_1G
        } else if !self.node_exists(va & !(SZ_2M - 1), SZ_2M) {
            SZ_2M
        } else {
            PAGE_SIZE
        }
    }

    /// What `query` at `va` reports: the leaf's range, or the absent slot.
    pub fn query(&self, va: Vaddr) -> (Range<Vaddr>, Option<Leaf>) {
        if let Some((s, m)) = self.covering(va) {
            return (s..s + m.size, Some(m));
        }
        let size = self.absent_size(va);
        let s = va & !(size - 1);
        (s..s + size, None)
    }

    /// The nodes below the kernel L3 nodes that must exist.
    pub fn nodes(&self) -> usize {
        let mut l2 = std::collections::BTreeSet::new();
        let mut l1 = std::collections::BTreeSet::new();
        for (&s, m) in &self.map {
            if m.size < SZ_1G {
                l2.insert(s & !(SZ_1G - 1));
            }
            if m.size < SZ_2M {
                l1.insert(s & !(SZ_2M - 1));
            }
        }
        l2.len() + l1.len()
    }
}
