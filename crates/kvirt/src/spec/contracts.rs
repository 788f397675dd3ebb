//! Run-time contract checks around the public `KVirtArea` operations
//! (feature `check-contracts`). A violated contract panics with the clause.
//!
//! Wrapped: `query` (requires and ensures), the constructors (every form
//! goes through `KernelSpace::try_map_frames` / `try_map_untracked_frames`),
//! `try_split` (and so `split`), `read_bytes`, `write_bytes` and `Drop`.
//! Not wrapped: the accessors `start`, `end`, `range`, `size`,
//! `mapped_range` and `set_label`, which only copy a field or a label.
//!
//! Like [`Inv`], the checks assume that nothing else changes what they look
//! at while they run: no other thread writes the bytes an area writes and
//! reads back, and no one else maps into an area's range (only the area
//! can).

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use super::{
    kernel_view, mapping_at, query_none_ensures, query_some_condition, query_some_ensures, Inv, PageTableView,
};
use crate::addr::{align_down, align_up, Paddr, Vaddr, PAGE_SIZE};
use crate::kspace::{
    AreaAccessError, AreaInfo, AreaKind, KVirtArea, KVirtAreaError, KernelLayout, KernelSpace,
    RangeAllocError, SplitError,
};
use crate::page_prop::{PageFlags, PageProperty};
use crate::page_table::{largest_pages, MappedItemRef};

/// `query`'s requires: `self.inv()` (`start <= addr < end` is a documented
/// panic checked before this).
pub(crate) fn query_requires<L: KernelLayout>(area: &KVirtArea<L>, _addr: Vaddr) {
    if let Err(clause) = area.check() {
        panic!("contract violated: KVirtArea::query requires inv(): {clause}");
    }
}

/// `query`'s ensures, against the abstract view of the page.
pub(crate) fn query_ensures<L: KernelLayout>(
    area: &KVirtArea<L>,
    addr: Vaddr,
    r: &Option<MappedItemRef<'_>>,
) {
    let page = align_down(addr, PAGE_SIZE);
    let view = area.with_kernel_space(|space| kernel_view(space, &(page..page + PAGE_SIZE)));
    if query_some_condition(&view, addr) {
        assert!(query_some_ensures(&view, addr, r), "contract violated: query_some_ensures at {addr:#x}");
    } else {
        assert!(query_none_ensures(r), "contract violated: query_none_ensures at {addr:#x}");
    }
}

/// What a constructor was asked to map.
#[derive(Debug)]
pub(crate) enum Requested {
    /// Tracked frames, by physical address, in order.
    Frames(Vec<Paddr>),
    /// An untracked physical range.
    Untracked(Range<Paddr>),
}

/// A constructor call, as the contract needs it.
#[derive(Debug)]
pub(crate) struct ConstructorRequest {
    /// The spec's panic condition for these arguments.
    pub(crate) panic_condition: bool,
    pub(crate) area_size: usize,
    pub(crate) map_offset: usize,
    pub(crate) what: Requested,
    pub(crate) prop: PageProperty,
}

/// A constructor's ensures: it fails exactly when its panic condition holds
/// (or a resource runs out); a created area satisfies `inv()`, has
/// `size() == area_size`, is registered with its kind and no label, and
/// maps exactly what was asked, from `map_offset` on, with `prop`: tracked
/// frames page by page in order, an untracked range with the pages
/// `largest_pages` chooses; nothing else in the area is mapped.
pub(crate) fn constructor_ensures<L: KernelLayout>(
    space: &KernelSpace<L>,
    request: &ConstructorRequest,
    result: &Result<KVirtArea<L>, KVirtAreaError>,
) {
    let area = match result {
        Ok(area) => area,
        Err(e) => {
            assert!(
                request.panic_condition || super::is_resource_error(e),
                "contract violated: rejected ({e}) although no panic condition holds"
            );
            return;
        }
    };
    assert!(
        !request.panic_condition,
        "contract violated: an area was created although the panic condition holds"
    );
    if let Err(clause) = area.check() {
        panic!("contract violated: a new area breaks inv(): {clause}");
    }
    assert_eq!(area.size(), request.area_size, "contract violated: a new area's size is not area_size");
    let (kind, len) = match &request.what {
        Requested::Frames(pas) => (AreaKind::Tracked, pas.len() * PAGE_SIZE),
        Requested::Untracked(pa) => (AreaKind::Untracked, pa.len()),
    };
    let mapped_start = area.start() + request.map_offset;
    assert_eq!(
        area.mapped_range(),
        mapped_start..mapped_start + len,
        "contract violated: a new area's mapped part does not start at map_offset"
    );
    let expected = AreaInfo { range: area.range(), mapped: area.mapped_range(), kind, label: None };
    assert_eq!(area.registry_info(), Some(expected), "contract violated: a new area is registered wrongly");
    let view = kernel_view(space, &area.range());
    // (va, pa, level, tracked) of every page the area must map, in order.
    let expected: Vec<(Vaddr, Paddr, u8, bool)> = match &request.what {
        Requested::Frames(pas) => {
            pas.iter().enumerate().map(|(i, &pa)| (mapped_start + i * PAGE_SIZE, pa, 1, true)).collect()
        }
        Requested::Untracked(pa) => {
            let mut va = mapped_start;
            largest_pages::<L::Format>(mapped_start, pa.start, len)
                .map(|(pa, level)| {
                    let page = (va, pa, level, false);
                    va += crate::arch::page_size::<L::Format>(level);
                    page
                })
                .collect()
        }
    };
    let found: Vec<(Vaddr, Paddr, u8, bool)> =
        view.values().map(|m| (m.va, m.pa, m.level, m.tracked)).collect();
    assert_eq!(found, expected, "contract violated: a new area does not map exactly what was asked");
    assert!(
        view.values().all(|m| m.prop == crate::arch::effective_property::<L::Format>(request.prop)),
        "contract violated: a new area maps a page with another property than prop"
    );
}

/// An area as `split` found it.
#[derive(Debug)]
pub(crate) struct SplitBefore {
    range: Range<Vaddr>,
    mapped: Range<Vaddr>,
    info: Option<AreaInfo>,
    view: PageTableView,
}

/// `try_split`'s requires (`inv()`), and what its ensures compare with.
pub(crate) fn split_requires<L: KernelLayout>(area: &KVirtArea<L>) -> SplitBefore {
    if let Err(clause) = area.check() {
        panic!("contract violated: KVirtArea::try_split requires inv(): {clause}");
    }
    SplitBefore {
        range: area.range(),
        mapped: area.mapped_range(),
        info: area.registry_info(),
        view: area.with_kernel_space(|space| kernel_view(space, &area.range())),
    }
}

/// `try_split`'s ensures. It succeeds exactly when `offset` is page
/// aligned and strictly inside the area, or runs out of memory. On success
/// the halves are `start..start + offset` and the rest, each with the
/// original mapped part clamped to it, both satisfy `inv()`, both are
/// registered with the original kind and label, and every address
/// translates as before. On an error the area comes back unchanged: range,
/// mapped part, registry entry and page-table view.
#[allow(clippy::type_complexity, reason = "try_split's own result type")]
pub(crate) fn split_ensures<L: KernelLayout>(
    before: &SplitBefore,
    offset: usize,
    result: &Result<(KVirtArea<L>, KVirtArea<L>), (KVirtArea<L>, SplitError)>,
) {
    let size = before.range.len();
    let valid = offset % PAGE_SIZE == 0 && 0 < offset && offset < size;
    let (left, right) = match result {
        Err((area, e)) => {
            match *e {
                SplitError::BadOffset { offset: o, size: s } => assert!(
                    !valid && o == offset && s == size,
                    "contract violated: try_split refused a valid offset {offset:#x} as bad ({e})"
                ),
                SplitError::OutOfMemory => {
                    assert!(
                        valid,
                        "contract violated: try_split at a bad offset {offset:#x} ran out of memory"
                    )
                }
            }
            let view = area.with_kernel_space(|space| kernel_view(space, &before.range));
            assert!(
                area.range() == before.range
                    && area.mapped_range() == before.mapped
                    && area.registry_info() == before.info
                    && view == before.view,
                "contract violated: a refused try_split changed the area"
            );
            if let Err(clause) = area.check() {
                panic!("contract violated: a refused try_split broke inv(): {clause}");
            }
            return;
        }
        Ok((left, right)) => (left, right),
    };
    assert!(valid, "contract violated: try_split accepted the bad offset {offset:#x}");
    let mid = before.range.start + offset;
    assert!(
        left.range() == (before.range.start..mid) && right.range() == (mid..before.range.end),
        "contract violated: the halves of a split are not start..start + offset and the rest"
    );
    for half in [left, right] {
        let r = half.range();
        let (s, e) = (before.mapped.start.clamp(r.start, r.end), before.mapped.end.clamp(r.start, r.end));
        assert_eq!(
            half.mapped_range(),
            s..e.max(s),
            "contract violated: a half's mapped part is not the original clamped to it"
        );
        if let Err(clause) = half.check() {
            panic!("contract violated: a half of a split breaks inv(): {clause}");
        }
        let expected = before.info.clone().map(|info| AreaInfo {
            range: half.range(),
            mapped: half.mapped_range(),
            ..info
        });
        assert_eq!(
            half.registry_info(),
            expected,
            "contract violated: a half of a split is not registered with the original kind and label"
        );
    }
    let after = left.with_kernel_space(|space| kernel_view(space, &before.range));
    assert!(
        same_translations(&before.view, &after, &before.range),
        "contract violated: a split changed a translation"
    );
}

/// Whether `after` translates every address of `window` as `before` does:
/// each of its leaves (clipped to the window) lies inside one leaf of
/// `before` with the same offset, property and tracked-ness, and both map
/// the same number of bytes of the window. Leaves do not overlap, so this
/// is equality of the translations.
fn same_translations(before: &PageTableView, after: &PageTableView, window: &Range<Vaddr>) -> bool {
    let clip = |m: &super::Mapping| m.va.max(window.start)..(m.va + m.size).min(window.end);
    let bytes = |v: &PageTableView| v.values().map(|m| clip(m).len()).sum::<usize>();
    let inside = |m: &super::Mapping| {
        let c = clip(m);
        mapping_at(before, c.start).is_some_and(|b| {
            c.end <= b.va + b.size
                && m.pa + (c.start - m.va) == b.pa + (c.start - b.va)
                && m.prop == b.prop
                && m.tracked == b.tracked
        })
    };
    after.values().all(inside) && bytes(after) == bytes(before)
}

/// The `AreaAccessError` the access of `len` bytes at `offset` must give if
/// it is out of bounds.
fn out_of_bounds<L: KernelLayout>(area: &KVirtArea<L>, offset: usize, len: usize) -> Option<AreaAccessError> {
    let size = area.size();
    offset.checked_add(len).is_none_or(|end| end > size).then_some(AreaAccessError::OutOfBounds {
        offset,
        len,
        size,
    })
}

/// Checks the error (or success) of a byte access against the bounds and
/// the page table: out of bounds exactly when `offset + len > size()`; an
/// address named by another error lies in the accessed range, every page
/// of the range before it is mapped with the `needed` rights (`R` to read,
/// `RW` to write), and it is unmapped for `Unmapped`, mapped for `NotRam`
/// and `TypedFrame`, mapped without a needed right for `NotWritable` (a
/// write) and `NotReadable` (a read); a success had every page of the
/// range mapped with the needed rights.
fn access_result_ensures<L: KernelLayout>(
    op: &str,
    area: &KVirtArea<L>,
    offset: usize,
    len: usize,
    needed: PageFlags,
    result: &Result<(), AreaAccessError>,
) {
    match (out_of_bounds(area, offset, len), result) {
        (Some(expected), Err(e)) => {
            assert_eq!(*e, expected, "contract violated: {op} out of bounds gave another error");
            return;
        }
        (Some(_), Ok(())) => panic!("contract violated: {op} succeeded out of bounds"),
        (None, Err(AreaAccessError::OutOfBounds { .. })) => {
            panic!("contract violated: {op} in bounds reported OutOfBounds")
        }
        (None, _) => {}
    }
    let accessed = area.start() + offset..area.start() + offset + len;
    let (va, must_be_mapped) = match *result {
        Err(AreaAccessError::OutOfBounds { .. }) => return,
        Ok(()) => (accessed.end, true),
        Err(AreaAccessError::Unmapped(va)) => (va, false),
        Err(
            AreaAccessError::NotRam(va)
            | AreaAccessError::TypedFrame(va)
            | AreaAccessError::NotWritable(va)
            | AreaAccessError::NotReadable(va),
        ) => (va, true),
    };
    if result.is_err() {
        assert!(accessed.contains(&va), "contract violated: {op} named {va:#x}, outside the accessed range");
    }
    // Every page before `va` (all of them, on a success) allows the access.
    let pages_end =
        if result.is_ok() { align_up(accessed.end, PAGE_SIZE) } else { align_down(va, PAGE_SIZE) };
    let pages = align_down(accessed.start, PAGE_SIZE)..pages_end;
    if !accessed.is_empty() && !pages.is_empty() {
        let view = area.with_kernel_space(|space| kernel_view(space, &pages));
        for page in pages.clone().step_by(PAGE_SIZE) {
            assert!(
                mapping_at(&view, page).is_some_and(|m| m.prop.flags.contains(needed)),
                "contract violated: {op} gave {result:?}, but the page at {page:#x} does not allow it"
            );
        }
    }
    if result.is_ok() {
        return;
    }
    let page = align_down(va, PAGE_SIZE);
    let view = area.with_kernel_space(|space| kernel_view(space, &(page..page + PAGE_SIZE)));
    let mapping = mapping_at(&view, va);
    assert_eq!(
        mapping.is_some(),
        must_be_mapped,
        "contract violated: {op} gave {result:?} for a page that is {}",
        if must_be_mapped { "unmapped" } else { "mapped" }
    );
    let flags = mapping.map_or(PageFlags::empty(), |m| m.prop.flags);
    let missing = needed - flags;
    let rights_ok = match *result {
        Err(AreaAccessError::NotWritable(_)) => needed.contains(PageFlags::W) && !missing.is_empty(),
        Err(AreaAccessError::NotReadable(_)) => !needed.contains(PageFlags::W) && !missing.is_empty(),
        Err(AreaAccessError::Unmapped(_)) => true,
        _ => missing.is_empty(),
    };
    assert!(rights_ok, "contract violated: {op} gave {result:?} for a page mapped with {flags:?}");
}

/// `read_bytes`'s ensures: its error is right, and on an error `buf` is
/// unchanged.
pub(crate) fn read_bytes_ensures<L: KernelLayout>(
    area: &KVirtArea<L>,
    offset: usize,
    before: &[u8],
    buf: &[u8],
    result: &Result<(), AreaAccessError>,
) {
    access_result_ensures("read_bytes", area, offset, buf.len(), PageFlags::R, result);
    if result.is_err() {
        assert!(buf == before, "contract violated: a failed read_bytes changed the buffer");
    }
}

/// The bytes of the part of `offset..offset + len` inside the area, page by
/// page, whatever the property allows (`None` for a page that is not the
/// RAM of an untyped frame or untracked memory).
pub(crate) type BytesBefore = Vec<Option<Vec<u8>>>;

/// Snapshots what `write_bytes` may change, for its ensures.
pub(crate) fn write_bytes_requires<L: KernelLayout>(
    area: &KVirtArea<L>,
    offset: usize,
    len: usize,
) -> BytesBefore {
    let end = offset.saturating_add(len).min(area.size());
    let mut pieces = Vec::new();
    let mut at = offset;
    while at < end {
        let va = area.start() + at;
        let piece = (PAGE_SIZE - va % PAGE_SIZE).min(end - at);
        let mut bytes = vec![0; piece];
        pieces.push(area.inspect_bytes(at, &mut bytes).ok().map(|()| bytes));
        at += piece;
    }
    pieces
}

/// `write_bytes`'s ensures: its error is right; a successful write is read
/// back; a failed one changed no byte.
pub(crate) fn write_bytes_ensures<L: KernelLayout>(
    area: &KVirtArea<L>,
    offset: usize,
    data: &[u8],
    before: &BytesBefore,
    result: &Result<(), AreaAccessError>,
) {
    access_result_ensures("write_bytes", area, offset, data.len(), PageFlags::RW, result);
    if result.is_ok() {
        let mut back = vec![0; data.len()];
        assert!(
            area.inspect_bytes(offset, &mut back).is_ok() && back == data,
            "contract violated: what write_bytes wrote does not read back"
        );
    } else {
        assert!(
            write_bytes_requires(area, offset, data.len()) == *before,
            "contract violated: a failed write_bytes changed a byte"
        );
    }
}

/// `Drop`'s ensures, checked after the area unmapped everything and left
/// the registry, and before it gives up any part of its range: nothing is
/// mapped in the mapped part, the area is not registered, and its range is
/// still allocated. Checked before the drop settles with its split
/// neighbours: once it has, a neighbour dropped at the same time may free
/// (and another area reuse) the page this drop leaves to it.
pub(crate) fn drop_ensures_before_free<L: KernelLayout>(area: &KVirtArea<L>) {
    let mapped = area.mapped_range();
    let (unmapped, allocated) = area.with_kernel_space(|space| {
        let unmapped = mapped.is_empty() || kernel_view(space, &mapped).is_empty();
        (unmapped, space.vmalloc().is_allocated(area.range()))
    });
    assert!(unmapped, "contract violated: a dropped area left a mapping in {mapped:#x?}");
    assert!(area.registry_info().is_none(), "contract violated: a dropped area is still registered");
    assert!(allocated, "contract violated: a dropped area's range was freed before the drop freed it");
}

/// `Drop`'s ensures on what it frees: its range, less the first page if a
/// live left half keeps it as its guard, plus the page after it if its
/// right half has been dropped (`SplitLink`); never anything else.
pub(crate) fn drop_ensures_frees_within<L: KernelLayout>(area: &KVirtArea<L>, to_free: &Range<Vaddr>) {
    assert!(
        area.start() <= to_free.start && to_free.end <= area.end() + crate::kspace::GUARD_SIZE,
        "contract violated: a dropped area frees {to_free:#x?}, outside its range and guard"
    );
}

/// `Drop`'s last ensures: freeing the range in VMALLOC succeeded, so (by
/// `RangeAllocator::free`'s contract) all of it is free now.
pub(crate) fn drop_ensures_freed(to_free: &Range<Vaddr>, freed: &Result<(), RangeAllocError>) {
    assert!(freed.is_ok(), "contract violated: a dropped area could not free {to_free:#x?}: {freed:?}");
}

/// Each contract check fires on a wrong result handed to it directly.
#[cfg(test)]
mod tests {
    use alloc::string::String;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;
    use crate::frame::FrameAllocOptions;
    use crate::page_prop::{CachePolicy, PageFlags};

    fn space() -> KernelSpace {
        KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20))
    }

    fn rw() -> PageProperty {
        PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
    }

    /// The message of the contract violation `f` panics with.
    fn violation(f: impl FnOnce()) -> String {
        let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("the contract must fire");
        match payload.downcast::<String>() {
            Ok(message) => *message,
            Err(payload) => String::from(*payload.downcast::<&str>().expect("a panic message")),
        }
    }

    #[test]
    fn constructor_ensures_fires_when_the_area_maps_other_frames() {
        let space = space();
        let opts = FrameAllocOptions::new_in(&space);
        let (mapped, other) = (opts.alloc_frame().unwrap(), opts.alloc_frame().unwrap());
        let area = space.try_map_frames(2 * PAGE_SIZE, PAGE_SIZE, [mapped], rw());
        assert!(area.is_ok());
        let request = |what| ConstructorRequest {
            panic_condition: false,
            area_size: 2 * PAGE_SIZE,
            map_offset: PAGE_SIZE,
            what,
            prop: rw(),
        };
        let wrong = request(Requested::Frames(vec![other.paddr()]));
        let message = violation(|| constructor_ensures(&space, &wrong, &area));
        assert!(message.contains("does not map exactly what was asked"), "{message}");
        // A panic condition that held, yet an area was created.
        let wrong = ConstructorRequest { panic_condition: true, ..request(Requested::Frames(vec![])) };
        let message = violation(|| constructor_ensures(&space, &wrong, &area));
        assert!(message.contains("although the panic condition holds"), "{message}");
        // A rejection that no panic condition explains.
        let refused = Err(KVirtAreaError::ZeroSize);
        let message =
            violation(|| constructor_ensures(&space, &request(Requested::Frames(vec![])), &refused));
        assert!(message.contains("although no panic condition holds"), "{message}");
    }

    #[test]
    fn split_ensures_fires_when_the_halves_are_swapped() {
        let space = space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let area = space.try_map_frames(2 * PAGE_SIZE, 0, frames, rw()).unwrap();
        let before = split_requires(&area);
        let (left, right) = area.split(PAGE_SIZE);
        let swapped = Ok((right, left));
        let message = violation(|| split_ensures(&before, PAGE_SIZE, &swapped));
        assert!(message.contains("are not start..start + offset and the rest"), "{message}");
        let Ok((right, left)) = swapped else { unreachable!() };
        let right_ok = Ok((left, right));
        // The real halves satisfy it, but not at another offset.
        split_ensures(&before, PAGE_SIZE, &right_ok);
        let message = violation(|| split_ensures(&before, 3 * PAGE_SIZE, &right_ok));
        assert!(message.contains("accepted the bad offset"), "{message}");
    }

    #[test]
    fn byte_access_ensures_fire_on_wrong_results() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let area = space.try_map_frames(2 * PAGE_SIZE, 0, [frame], rw()).unwrap();
        let before = write_bytes_requires(&area, 0, 4);
        area.write_bytes(0, b"data").unwrap();
        let message = violation(|| write_bytes_ensures(&area, 0, b"else", &before, &Ok(())));
        assert!(message.contains("does not read back"), "{message}");
        // A failure that changed a byte (the write above did, from the
        // zeros of `before`).
        let typed = Err(AreaAccessError::TypedFrame(area.start()));
        let message = violation(|| write_bytes_ensures(&area, 0, b"data", &before, &typed));
        assert!(message.contains("changed a byte"), "{message}");
        // An error that names a mapped page as unmapped.
        let unmapped = Err(AreaAccessError::Unmapped(area.start()));
        let message = violation(|| write_bytes_ensures(&area, 0, b"data", &before, &unmapped));
        assert!(message.contains("gave Err(Unmapped"), "{message}");
        // The page after the frame is unmapped: a read there that failed
        // but changed the buffer, and one that claims success out of bounds.
        let hole = Err(AreaAccessError::Unmapped(area.start() + PAGE_SIZE));
        let message = violation(|| read_bytes_ensures(&area, PAGE_SIZE, &[0], &[1], &hole));
        assert!(message.contains("changed the buffer"), "{message}");
        let message = violation(|| read_bytes_ensures(&area, 2 * PAGE_SIZE, &[0], &[0], &Ok(())));
        assert!(message.contains("succeeded out of bounds"), "{message}");
    }

    #[test]
    fn byte_access_ensures_fire_on_results_the_property_contradicts() {
        let space = space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let read_only = PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback);
        let ro = space.try_map_frames(2 * PAGE_SIZE, 0, frames.clone(), read_only).unwrap();
        let rw = space.try_map_frames(2 * PAGE_SIZE, 0, frames, rw()).unwrap();
        // A write that succeeds on a read-only page.
        let before = write_bytes_requires(&ro, 0, 4);
        let message = violation(|| write_bytes_ensures(&ro, 0, &[0; 4], &before, &Ok(())));
        assert!(message.contains("does not allow it"), "{message}");
        // A refusal for lack of a right the page has.
        let before = write_bytes_requires(&rw, PAGE_SIZE, 4);
        let refused = Err(AreaAccessError::NotWritable(rw.start() + PAGE_SIZE));
        let message = violation(|| write_bytes_ensures(&rw, PAGE_SIZE, &[0; 4], &before, &refused));
        assert!(message.contains("for a page mapped with"), "{message}");
        let refused = Err(AreaAccessError::NotReadable(ro.start()));
        let message = violation(|| read_bytes_ensures(&ro, 0, &[0], &[0], &refused));
        assert!(message.contains("for a page mapped with"), "{message}");
        // A refusal on the second page although the first one forbids the
        // access already.
        let late = Err(AreaAccessError::Unmapped(ro.start() + 2 * PAGE_SIZE));
        let before = write_bytes_requires(&ro, PAGE_SIZE - 2, 4);
        let message = violation(|| write_bytes_ensures(&ro, PAGE_SIZE - 2, &[0; 4], &before, &late));
        assert!(message.contains("outside the accessed range"), "{message}");
        let second = Err(AreaAccessError::NotWritable(ro.start() + PAGE_SIZE));
        let message = violation(|| write_bytes_ensures(&ro, PAGE_SIZE - 2, &[0; 4], &before, &second));
        assert!(message.contains("does not allow it"), "{message}");
        // The right answers pass.
        write_bytes_ensures(
            &ro,
            PAGE_SIZE - 2,
            &[0; 4],
            &before,
            &Err(AreaAccessError::NotWritable(ro.start() + PAGE_SIZE - 2)),
        );
        read_bytes_ensures(&ro, PAGE_SIZE - 2, &[0; 4], &[0; 4], &Ok(()));
    }

    #[test]
    fn drop_ensures_fire_on_a_live_area() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let area = space.try_map_frames(PAGE_SIZE, 0, [frame], rw()).unwrap();
        let message = violation(|| drop_ensures_before_free(&area));
        assert!(message.contains("left a mapping"), "{message}");
        let empty = space.try_map_frames::<()>(PAGE_SIZE, 0, [], rw()).unwrap();
        let message = violation(|| drop_ensures_before_free(&empty));
        assert!(message.contains("still registered"), "{message}");
        let beyond = empty.start()..empty.end() + 2 * PAGE_SIZE;
        let message = violation(|| drop_ensures_frees_within(&empty, &beyond));
        assert!(message.contains("outside its range and guard"), "{message}");
        let message = violation(|| drop_ensures_freed(&empty.range(), &Err(RangeAllocError::DoubleFree)));
        assert!(message.contains("could not free"), "{message}");
    }
}
