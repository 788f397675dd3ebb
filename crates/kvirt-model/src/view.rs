//! The model's expected leaf mappings of VMALLOC: how they are laid out when
//! an untracked area is created (the largest pages that fit), and how huge
//! pages split when part of one is unmapped or re-protected (docs/DESIGN.md
//! section 4), written independently of kvirt's own code.

use std::collections::BTreeMap;
use std::ops::Range;

use kvirt::arch::{page_size, PagingFormat};
use kvirt::page_prop::PageProperty;
use kvirt::spec::PageTableView;
use kvirt::{Paddr, Vaddr};

use crate::pt::Leaf;

/// Expected leaves by virtual start address.
pub type View = BTreeMap<Vaddr, Leaf>;

/// The greedy split of `len` bytes mapping `pa` at `va` into the largest
/// pages of format `F` that fit (independent of
/// `kvirt::page_table::largest_pages`), with property `prop`.
#[must_use]
pub fn greedy_pages<F: PagingFormat>(
    mut va: Vaddr,
    mut pa: Paddr,
    mut len: usize,
    prop: PageProperty,
) -> Vec<(Vaddr, Leaf)> {
    let mut out = Vec::new();
    while len > 0 {
        let size = (1..=F::HIGHEST_LEAF_LEVEL)
            .rev()
            .map(page_size::<F>)
            .find(|&s| s <= len && va % s == 0 && pa % s == 0)
            .expect("the smallest page always fits");
        out.push((va, Leaf { pa, size, prop, tracked: false }));
        va += size;
        pa += size;
        len -= size;
    }
    out
}

/// The leaf of `view` that maps `va`, with its start.
#[must_use]
pub fn page_at(view: &View, va: Vaddr) -> Option<(Vaddr, &Leaf)> {
    view.range(..=va).next_back().filter(|(base, p)| va < **base + p.size).map(|(base, p)| (*base, p))
}

/// Replaces every page of `view` inside `range` by `inside(page)` (`None`:
/// unmapped). A huge page straddling the range is first split into its
/// `nr_entries` children, recursively, so that pages outside keep their
/// mapping and property: what kvirt must do (docs/DESIGN.md section 4).
pub fn reshape(
    view: &mut View,
    range: &Range<Vaddr>,
    nr_entries: usize,
    inside: impl Fn(Leaf) -> Option<Leaf> + Copy,
) {
    fn place(
        view: &mut View,
        va: Vaddr,
        page: Leaf,
        range: &Range<Vaddr>,
        nr_entries: usize,
        inside: impl Fn(Leaf) -> Option<Leaf> + Copy,
    ) {
        let end = va + page.size;
        if end <= range.start || va >= range.end {
            view.insert(va, page);
        } else if range.start <= va && end <= range.end {
            if let Some(p) = inside(page) {
                view.insert(va, p);
            }
        } else {
            let child = page.size / nr_entries;
            for j in 0..nr_entries {
                let c = Leaf { pa: page.pa + j * child, size: child, ..page };
                place(view, va + j * child, c, range, nr_entries, inside);
            }
        }
    }
    if range.is_empty() {
        return;
    }
    let hit: Vec<Vaddr> = view
        .range(..range.end)
        .rev()
        .take_while(|(va, p)| *va + p.size > range.start)
        .map(|(va, _)| *va)
        .collect();
    for va in hit {
        let page = view.remove(&va).expect("just found");
        place(view, va, page, range, nr_entries, inside);
    }
}

/// The model's leaves as the spec's view, in format `F`.
#[must_use]
pub fn as_spec_view<F: PagingFormat>(view: &View) -> PageTableView {
    view.iter().map(|(&va, p)| (va, p.to_spec_in::<F>(va))).collect()
}

/// How two views differ, for a failure message.
#[must_use]
pub fn describe_diff(actual: &PageTableView, model: &PageTableView) -> String {
    let only_actual = actual.iter().find(|(va, m)| model.get(va) != Some(m));
    let only_model = model.iter().find(|(va, m)| actual.get(va) != Some(m));
    format!(
        "{} mappings in the page table, {} in the model; first in the table but not the model: {:x?}; first in the model but not the table: {:x?}",
        actual.len(),
        model.len(),
        only_actual.map(|(_, m)| m),
        only_model.map(|(_, m)| m)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvirt::arch::x86_64::X86_64;
    use kvirt::page_prop::{CachePolicy, PageFlags};
    use kvirt::PAGE_SIZE;

    #[test]
    fn unmapping_a_page_splits_huge_pages_like_design_says() {
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        let base = 1usize << 40;
        let mut view: View = greedy_pages::<X86_64>(base, 1 << 30, 1 << 30, prop).into_iter().collect();
        assert_eq!(view.len(), 1, "one 1 GiB page");
        reshape(&mut view, &(base..base + PAGE_SIZE), 512, |_| None);
        assert_eq!(view.len(), 511 + 511);
        assert_eq!(view.get(&(base + PAGE_SIZE)).map(|p| p.size), Some(PAGE_SIZE));
        assert_eq!(
            view.get(&(base + (2 << 20))).map(|p| (p.pa, p.size)),
            Some(((1 << 30) + (2 << 20), 2 << 20))
        );
    }
}
