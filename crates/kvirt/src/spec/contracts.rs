//! Run-time contract checks around the public `KVirtArea` operations
//! (feature `check-contracts`). A violated contract panics with the clause.

use super::{kernel_view, query_none_ensures, query_some_condition, query_some_ensures, Inv};
use crate::addr::{align_down, Vaddr, PAGE_SIZE};
use crate::kspace::{KVirtArea, KVirtAreaError, KernelLayout, KernelSpace};
use crate::page_table::MappedItemRef;

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

/// A constructor's ensures: it fails exactly when its panic condition holds
/// (or a resource runs out), and a created area satisfies `inv()`.
pub(crate) fn constructor_ensures<L: KernelLayout>(
    _space: &KernelSpace<L>,
    panic_condition: bool,
    result: &Result<KVirtArea<L>, KVirtAreaError>,
) {
    match result {
        Ok(area) => {
            assert!(
                !panic_condition,
                "contract violated: an area was created although the panic condition holds"
            );
            if let Err(clause) = area.check() {
                panic!("contract violated: a new area breaks inv(): {clause}");
            }
        }
        Err(e) => assert!(
            panic_condition || super::is_resource_error(e),
            "contract violated: rejected ({e}) although no panic condition holds"
        ),
    }
}
