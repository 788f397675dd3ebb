//! The checks between operations, the hash of the model's state, and the
//! final leak check.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use kvirt::frame::Frame;
use kvirt::kspace::{AreaInfo, AreaKind, KernelLayout, GUARD_SIZE};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{vaddr_bounds, UserPtConfig};
use kvirt::spec::{self, Inv};
use kvirt::{Paddr, PAGE_SIZE};

use super::{Area, Model, Outcome};
use crate::view::{as_spec_view, describe_diff};

/// Which checks [`Model::check`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Checks {
    /// The cheap ones: the reference counts of the frames whose count
    /// changed since the last check (a frame the model no longer
    /// references is free), data pages in use equal to the live frames,
    /// and, after an operation on areas, the registry, the guard gaps and
    /// VMALLOC in use equal to the live areas plus their guards.
    Light,
    /// Those (the registry and VMALLOC after any operation), the reference
    /// count of every frame the model knows (and its bookkeeping
    /// recounted), and what walks the model's own areas and table: `inv()` of every area, refinement of every area's range and
    /// guard and of the whole user page table (its structure too, with
    /// exactly the nodes the model needs) against the model, `query` at
    /// the start, middle and last byte of every area, no guard page mapped.
    Areas,
    /// Those, and what walks the whole space: `inv()` of the space (its
    /// page table, frame metadata, allocator, VMALLOC, registry), and
    /// refinement of all of VMALLOC rather than of the areas alone.
    Full,
}

impl<L: KernelLayout> Model<'_, L> {
    /// The checks between operations.
    ///
    /// # Errors
    ///
    /// The first check that failed.
    pub fn check(&mut self, checks: Checks) -> Outcome {
        self.space.synchronize();
        if checks == Checks::Full {
            let inv = self.space.check();
            self.expect(inv.is_ok(), "Inv of the space", || format!("{inv:?}"))?;
        }
        if checks >= Checks::Areas {
            for a in &self.areas {
                let inv = a.area.check();
                self.expect(inv.is_ok(), "Inv of an area", || format!("area {:#x?}: {inv:?}", a.range))?;
                let mapped = a.area.mapped_range();
                self.expect(mapped == a.mapped, "mapped part as the model says", || {
                    format!("area {:#x?}: mapped {mapped:#x?}, the model says {:#x?}", a.range, a.mapped)
                })?;
            }
        }
        let areas_changed = std::mem::replace(&mut self.areas_changed, false);
        if checks >= Checks::Areas || areas_changed {
            self.check_registry()?;
        }
        if checks >= Checks::Areas {
            self.check_refinement(checks == Checks::Full)?;
        }
        self.check_frames(checks >= Checks::Areas, checks >= Checks::Areas || areas_changed)
    }

    /// The registry lists the model's areas, which are disjoint with guard
    /// gaps.
    fn check_registry(&self) -> Outcome {
        let mut expected: Vec<AreaInfo> = self
            .areas
            .iter()
            .map(|a| AreaInfo {
                range: a.range.clone(),
                mapped: a.mapped.clone(),
                kind: a.kind,
                label: Some(a.label),
            })
            .collect();
        expected.sort_by_key(|a| a.range.start);
        let got = self.space.areas();
        self.expect(got == expected, "registry matches the model", || {
            format!("registry {got:#x?}\nmodel {expected:#x?}")
        })?;
        // Areas are disjoint; two halves of a split may touch while both
        // live, any other neighbours are separated by a guard gap.
        let mut by_start: Vec<&Area<L>> = self.areas.iter().collect();
        by_start.sort_by_key(|a| a.range.start);
        let touching = by_start.windows(2).find(|w| {
            let siblings = w[0].right.is_some() && w[0].right == w[1].left;
            w[0].range.end + if siblings { 0 } else { GUARD_SIZE } > w[1].range.start
        });
        self.expect(touching.is_none(), "guard gap between areas", || {
            let w = touching.expect("failed");
            format!("areas {:#x?} and {:#x?} overlap or touch", w[0].range, w[1].range)
        })
    }

    /// Refinement of VMALLOC (all of it, or the areas and their guards)
    /// and of the user page table, and queries.
    fn check_refinement(&self, all_of_vmalloc: bool) -> Outcome {
        if all_of_vmalloc {
            let actual = spec::kernel_view(self.space, &L::VMALLOC_VADDR_RANGE);
            let model = as_spec_view::<L::Format>(&self.view);
            self.expect(actual == model, "refinement: kernel_view equals the model", || {
                describe_diff(&actual, &model)
            })?;
        } else {
            for a in &self.areas {
                self.check_range(&(a.range.start..a.range.end + GUARD_SIZE))?;
            }
        }
        for a in &self.areas {
            for va in [a.range.start, a.range.start + a.range.len() / 2, a.range.end - 1] {
                self.check_query(a, va)?;
            }
            let sibling = a.right.is_some_and(|link| !self.links[&link]);
            let guard = self.space.kernel_translate(a.range.end);
            self.expect(sibling || guard.is_none(), "a guard page is unmapped", || {
                format!("the guard page after {:#x?} maps {guard:x?}", a.range)
            })?;
        }
        let pt = self.pt.as_ref().expect("the page table lives until `finish`");
        let nodes = pt.check_inv();
        let want = self.pt_model.empty_table_nodes() + self.pt_model.nodes();
        self.expect(nodes == Ok(want), "Inv of the user page table", || {
            format!("check_inv: {nodes:?}, the model needs {want} nodes")
        })?;
        let (first, last) = vaddr_bounds::<UserPtConfig<L::Format>>();
        let mut cursor =
            pt.cursor(&(first..last + 1)).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?;
        let actual = spec::view_of(&mut cursor);
        let model = self.pt_model.to_spec();
        self.expect(actual == model, "refinement: the user page table equals the model", || {
            describe_diff(&actual, &model)
        })
    }

    /// Reference counts and accounting: with `all`, of every frame the
    /// model knows (recounted from scratch), else of the frames whose count
    /// changed since the last check; VMALLOC accounting with `vmalloc`.
    fn check_frames(&mut self, all: bool, vmalloc: bool) -> Outcome {
        let mut touched = std::mem::take(&mut self.touched);
        if all {
            let mut refs: BTreeMap<Paddr, u64> = BTreeMap::new();
            for f in self.held.iter().chain(&self.staged) {
                *refs.entry(f.paddr()).or_default() += 1;
            }
            for p in self.view.values().chain(self.pt_model.map.values()).filter(|p| p.tracked) {
                *refs.entry(p.pa).or_default() += 1;
            }
            self.expect(refs == self.refs, "the model's reference bookkeeping", || {
                format!("recounted {refs:x?}\nkept {:x?}", self.refs)
            })?;
            touched.extend(refs.keys());
        }
        touched.sort_unstable();
        touched.dedup();
        for &pa in &touched {
            let want = self.refs.get(&pa).copied().unwrap_or(0);
            let got = spec::frame_ref_count(self.space, pa);
            let check = if want == 0 {
                "a frame no one references is free"
            } else {
                "reference count = handles + mappings"
            };
            self.expect(got == want, check, || {
                format!("frame {pa:#x} has {got} references, the model counts {want}")
            })?;
        }
        for f in self.held.iter().filter(|f| all || touched.binary_search(&f.paddr()).is_ok()) {
            let (got, want) = (f.reference_count(), self.refs[&f.paddr()]);
            self.expect(got == want, "reference count = handles + mappings", || {
                format!("held frame {:#x} counts {got} references, the model {want}", f.paddr())
            })?;
        }
        // Accounting.
        let stats = self.space.phys_stats();
        let data_pages = (stats.used_pages - stats.page_table_pages).wrapping_sub(self.base_data_pages);
        let hogged: usize = self.hogs.iter().map(|s| s.nr_pages()).sum();
        self.expect(data_pages == self.refs.len() + hogged, "data pages in use = live frames", || {
            format!(
                "{data_pages} data pages in use, the model has {} live frames and {hogged} hogged pages",
                self.refs.len()
            )
        })?;
        if !vmalloc {
            return Ok(());
        }
        let vm = self.space.vmalloc_stats();
        let used: usize = self.areas.iter().map(|a| a.range.len() + self.guard(a)).sum();
        self.expect(vm.total_bytes - vm.free_bytes == used, "VMALLOC in use = areas + guards", || {
            format!(
                "{:#x} bytes of VMALLOC in use, the model expects {used:#x}",
                vm.total_bytes - vm.free_bytes
            )
        })
    }

    /// A hash of the model's state: what is mapped, the areas with their
    /// split links, the frame handles held, the bytes written, and the
    /// space's counters. Two sequences that reach the same hash reached the
    /// same abstract state (up to hash collisions).
    #[must_use]
    pub fn state_hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.view, &self.pt_model.map).hash(&mut h);
        for a in &self.areas {
            (&a.range, &a.mapped, a.kind == AreaKind::Tracked).hash(&mut h);
            let alive = |l: Option<u64>| l.map(|l| self.links[&l]);
            (alive(a.left), alive(a.right)).hash(&mut h);
        }
        let mut held: Vec<Paddr> = self.held.iter().map(Frame::paddr).collect();
        held.sort_unstable();
        held.hash(&mut h);
        let mut hogs: Vec<(Paddr, usize)> = self.hogs.iter().map(|s| (s.paddr(), s.nr_pages())).collect();
        hogs.sort_unstable();
        hogs.hash(&mut h);
        let mut bytes: Vec<(&Paddr, &Vec<u8>)> = self.bytes.iter().collect();
        bytes.sort_unstable();
        bytes.hash(&mut h);
        let (phys, vm) = (self.space.phys_stats(), self.space.vmalloc_stats());
        (phys.used_pages, phys.page_table_pages, vm.free_bytes, vm.largest_free, vm.fragments).hash(&mut h);
        h.finish()
    }

    /// Drops everything and checks that the space is back as the model
    /// found it: its counters (and the foreign space's), an empty registry,
    /// nothing mapped where the last areas and their guards were. Reserved
    /// RAM the model wrote is zeroed again once everything else is gone.
    /// With [`Checks::Full`], also the space's `inv()` and nothing mapped
    /// in all of VMALLOC.
    ///
    /// # Errors
    ///
    /// The first check that failed.
    pub fn finish(&mut self, checks: Checks) -> Outcome {
        let ranges: Vec<_> = self.areas.iter().map(|a| a.range.start..a.range.end + GUARD_SIZE).collect();
        self.areas.clear();
        self.view.clear();
        self.pt = None;
        self.pt_model.map.clear();
        self.held.clear();
        self.hogs.clear();
        self.staged.clear();
        self.refs.clear();
        self.touched.clear();
        self.foreign_frames.clear();
        self.restore_reserved()?;
        self.space.synchronize();
        let end = (self.space.phys_stats(), self.space.vmalloc_stats());
        self.expect(end == self.start, "no leak at the end", || {
            format!("start {:?}\nend   {end:?}", self.start)
        })?;
        self.expect(self.space.areas().is_empty(), "registry empty at the end", || {
            format!("{:#x?}", self.space.areas())
        })?;
        for range in &ranges {
            self.check_range(range)?;
        }
        if checks == Checks::Full {
            let inv = self.space.check();
            self.expect(inv.is_ok(), "Inv of the space", || format!("{inv:?}"))?;
            self.check_range(&L::VMALLOC_VADDR_RANGE)?;
        }
        if let (Some(foreign), Some(start)) = (self.foreign, self.foreign_start) {
            foreign.synchronize();
            let end = foreign.phys_stats();
            self.expect(end == start, "no leak in the foreign space", || {
                format!("start {start:?}\nend   {end:?}")
            })?;
        }
        Ok(())
    }

    /// Writes zeros over the reserved RAM the model wrote, through an area
    /// of one page at a time.
    fn restore_reserved(&mut self) -> Outcome {
        let mut pages: Vec<Paddr> = self
            .bytes
            .keys()
            .copied()
            .filter(|&pa| self.machine.reserved.iter().any(|r| r.start <= pa && pa + PAGE_SIZE <= r.end))
            .collect();
        pages.sort_unstable();
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        for pa in pages {
            // SAFETY: reserved RAM that nothing in this space uses (the
            // model wrote it through an untracked area of its own).
            let area = unsafe { self.space.try_map_untracked_frames(PAGE_SIZE, 0, pa..pa + PAGE_SIZE, prop) };
            let area = area.map_err(|e| self.fail("zeroing reserved RAM", format!("{pa:#x}: {e}")))?;
            let written = area.write_bytes(0, &[0; PAGE_SIZE]);
            self.expect(written.is_ok(), "zeroing reserved RAM", || format!("{pa:#x}: {written:?}"))?;
            self.bytes.remove(&pa);
        }
        Ok(())
    }
}
