//! A tiny paging format for exhaustive testing: 3 levels of 4 entries,
//! 4 KiB and 16 KiB pages, an 18-bit (256 KiB) zero-extended address space.
//!
//! No hardware walks it. It exists so that a bounded checker can enumerate
//! every sequence of operations over a whole address space with the very
//! same generic page table and `KVirtArea` code that runs on x86-64: with
//! 4 entries per node, a few pages already exercise node creation, huge
//! pages, splits and reclamation at every level. It also shows what a new
//! architecture costs: this file.
//!
//! ```text
//!  level 3 (root)   4 entries × 64 KiB   (no leaves)
//!  level 2          4 entries × 16 KiB   (16 KiB leaves)
//!  level 1          4 entries ×  4 KiB
//! ```
//!
//! Entry bits: the encoding only has to be total and round-trip every
//! [`PageProperty`], so it stores the property's bits plainly.
//!
//! ```text
//!  63       52..12         11   10   9..7   6..2        1     0
//!  TRACKED  frame address  G    U    cache  PageFlags   LEAF  VALID
//! ```

use super::{PagingFormat, PteKind};
use crate::addr::{Paddr, PagingLevel};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};

/// The tiny test paging format (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tiny;

const VALID: u64 = 1 << 0;
const LEAF: u64 = 1 << 1;
const FLAGS_SHIFT: u32 = 2;
const FLAGS_MASK: u64 = 0x1f << FLAGS_SHIFT;
const CACHE_SHIFT: u32 = 7;
const CACHE_MASK: u64 = 0x7 << CACHE_SHIFT;
const USER: u64 = 1 << 10;
const GLOBAL: u64 = 1 << 11;
const TRACKED: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

impl Tiny {
    const fn addr_mask(level: PagingLevel) -> u64 {
        ADDR_MASK & !((1 << (12 + 2 * (level as u64 - 1))) - 1)
    }
}

// SAFETY: the shape is 3 levels of 4 entries with leaves at levels 1 and
// 2; the encoding stores every field in its own bits (the table above), a
// table entry has VALID without LEAF and a leaf both, and TRACKED is set
// only by `encode_page(.., true)`. No hardware walks it. The round trip is
// `check_format_conformance`, run by this file's tests.
unsafe impl PagingFormat for Tiny {
    const NR_LEVELS: PagingLevel = 3;
    const ENTRY_BITS: u32 = 2;
    const HIGHEST_LEAF_LEVEL: PagingLevel = 2;
    const PA_BITS: u32 = 52;
    const SIGN_EXTEND: bool = false;

    fn encode_page(pa: Paddr, level: PagingLevel, prop: PageProperty, tracked: bool) -> u64 {
        debug_assert!((1..=Self::HIGHEST_LEAF_LEVEL).contains(&level));
        debug_assert_eq!(pa as u64 & !Self::addr_mask(level), 0, "unencodable frame address");
        let cache =
            CachePolicy::ALL.iter().position(|&c| c == prop.cache).expect("every policy is listed") as u64;
        let mut raw = pa as u64 | VALID | LEAF;
        raw |= u64::from(prop.flags.bits()) << FLAGS_SHIFT;
        raw |= cache << CACHE_SHIFT;
        if prop.priv_flags.contains(PrivilegedPageFlags::USER) {
            raw |= USER;
        }
        if prop.priv_flags.contains(PrivilegedPageFlags::GLOBAL) {
            raw |= GLOBAL;
        }
        if tracked {
            raw |= TRACKED;
        }
        raw
    }

    fn encode_table(pa: Paddr) -> u64 {
        debug_assert_eq!(pa as u64 & !ADDR_MASK, 0, "unencodable table address");
        pa as u64 | VALID
    }

    fn decode(raw: u64, level: PagingLevel) -> PteKind {
        if raw & VALID == 0 {
            return PteKind::Absent;
        }
        // A table at level 1 would point below the last level: nothing.
        if raw & LEAF == 0 && level == 1 {
            return PteKind::Absent;
        }
        // A leaf bit where no leaf may be (the root) reads as a table, as on
        // hardware that ignores it there.
        if raw & LEAF == 0 || level > Self::HIGHEST_LEAF_LEVEL {
            return PteKind::Table((raw & ADDR_MASK) as Paddr);
        }
        let flags = PageFlags::from_bits_truncate(((raw & FLAGS_MASK) >> FLAGS_SHIFT) as u8);
        // Codes past the last policy do not come from `encode_page`; like
        // x86-64's spare PAT entries they read as uncacheable.
        let cache = CachePolicy::ALL
            .get(((raw & CACHE_MASK) >> CACHE_SHIFT) as usize)
            .copied()
            .unwrap_or(CachePolicy::Uncacheable);
        let mut priv_flags = PrivilegedPageFlags::empty();
        if raw & USER != 0 {
            priv_flags |= PrivilegedPageFlags::USER;
        }
        if raw & GLOBAL != 0 {
            priv_flags |= PrivilegedPageFlags::GLOBAL;
        }
        PteKind::Page {
            pa: (raw & Self::addr_mask(level)) as Paddr,
            prop: PageProperty { flags, cache, priv_flags },
            tracked: raw & TRACKED != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::page_size;

    #[test]
    fn shape_is_three_levels_of_four_entries() {
        assert_eq!(Tiny::NR_ENTRIES, 4);
        assert_eq!(Tiny::VA_BITS, 18);
        assert_eq!(page_size::<Tiny>(1), 4 << 10);
        assert_eq!(page_size::<Tiny>(2), 16 << 10);
        assert_eq!(page_size::<Tiny>(3), 64 << 10);
    }

    #[test]
    fn conforms_to_the_paging_format_rules() {
        crate::arch::check_format_conformance::<Tiny>();
    }

    #[test]
    fn root_leaves_read_as_tables() {
        assert_eq!(Tiny::decode(0x7000 | VALID | LEAF, 3), PteKind::Table(0x7000));
    }
}
