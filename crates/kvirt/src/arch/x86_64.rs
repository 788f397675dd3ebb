//! The x86-64 4-level paging format (48-bit virtual addresses).
//!
//! Entry bits used (Intel SDM vol. 3, 4.5):
//!
//! ```text
//!  63   62..53  52..M  M-1..12      11  10   9     8  7     6  5  4   3   2  1  0
//!  NX   ign     frame address       ign NONE TRACK G  PS/PAT D  A  PCD PWT U  W  P
//! ```
//!
//! * `P` is set exactly when the mapping is readable. A mapping without
//!   [`PageFlags::R`] keeps `P` clear and sets the software bit `NONE` (10),
//!   so it stays a mapping to the library while every access faults.
//! * `TRACK` (software bit 9) is the library's "tracked frame" marker. It is
//!   never part of a decoded [`PageProperty`].
//! * Bit 7 is `PS` (huge page) at levels 2 and 3, and the `PAT` bit of a
//!   4 KiB leaf at level 1. A huge leaf keeps its `PAT` bit at bit 12.
//! * Cache policies use the PAT layout [`PAT_MSR_VALUE`], which a kernel must
//!   load into `IA32_PAT` (MSR 0x277) before using kvirt's mappings:
//!
//! | PAT index (PAT,PCD,PWT) | memory type | [`CachePolicy`] |
//! |---|---|---|
//! | 0 (000) | WB  | `Writeback` |
//! | 1 (001) | WT  | `Writethrough` |
//! | 2 (010) | UC- | (decodes as `Uncacheable`) |
//! | 3 (011) | UC  | `Uncacheable` |
//! | 4 (100) | WC  | `WriteCombining` |
//! | 5 (101) | WP  | `WriteProtected` |
//! | 6 (110) | UC- | (decodes as `Uncacheable`) |
//! | 7 (111) | UC  | (decodes as `Uncacheable`) |
//!
//! Table entries are `P | W | U` plus the address, so that the leaf alone
//! decides access rights.

use super::{PagingFormat, PteKind};
use crate::addr::{Paddr, PagingLevel};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};

/// The x86-64 4-level paging format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86_64;

/// The value for `IA32_PAT` that the cache-policy encoding assumes.
pub const PAT_MSR_VALUE: u64 = 0x0007_0501_0007_0406;

const P: u64 = 1 << 0;
const W: u64 = 1 << 1;
const U: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const PAT_4K: u64 = 1 << 7;
const G: u64 = 1 << 8;
const TRACKED: u64 = 1 << 9;
const NONE: u64 = 1 << 10;
const PAT_HUGE: u64 = 1 << 12;
const NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

impl X86_64 {
    #[inline]
    const fn addr_mask(level: PagingLevel) -> u64 {
        match level {
            1 => ADDR_MASK,
            2 => ADDR_MASK & !((1 << 21) - 1),
            _ => ADDR_MASK & !((1 << 30) - 1),
        }
    }

    #[inline]
    const fn pat_bit(level: PagingLevel) -> u64 {
        if level == 1 {
            PAT_4K
        } else {
            PAT_HUGE
        }
    }
}

// SAFETY: the shape is the SDM's 4 levels of 512 entries with leaves at
// levels 1 to 3. A table entry is `P | W | U` plus the address, a leaf at
// level 2 or 3 has `PS`, and a level-1 entry is always a leaf; `TRACKED`
// (software bit 9) is set only by `encode_page(.., true)`; decode ignores
// `A` and `D` except as the property's flags. The round trip is
// `check_format_conformance`, run by this file's tests; the MMU's reading
// of these bits is the SDM's (section 4.5), which the hosted machine's
// independent walker and the demo kernel under QEMU exercise.
unsafe impl PagingFormat for X86_64 {
    const NR_LEVELS: PagingLevel = 4;
    const ENTRY_BITS: u32 = 9;
    const HIGHEST_LEAF_LEVEL: PagingLevel = 3;
    const PA_BITS: u32 = 52;
    const SIGN_EXTEND: bool = true;

    #[inline]
    fn encode_page(pa: Paddr, level: PagingLevel, prop: PageProperty, tracked: bool) -> u64 {
        debug_assert!((1..=3).contains(&level));
        debug_assert_eq!(pa as u64 & !Self::addr_mask(level), 0, "unencodable frame address");
        let mut raw = pa as u64;
        let f = prop.flags;
        raw |= if f.contains(PageFlags::R) { P } else { NONE };
        if f.contains(PageFlags::W) {
            raw |= W;
        }
        if !f.contains(PageFlags::X) {
            raw |= NX;
        }
        if f.contains(PageFlags::ACCESSED) {
            raw |= A;
        }
        if f.contains(PageFlags::DIRTY) {
            raw |= D;
        }
        if prop.priv_flags.contains(PrivilegedPageFlags::USER) {
            raw |= U;
        }
        if prop.priv_flags.contains(PrivilegedPageFlags::GLOBAL) {
            raw |= G;
        }
        let pat = Self::pat_bit(level);
        raw |= match prop.cache {
            CachePolicy::Writeback => 0,
            CachePolicy::Writethrough => PWT,
            CachePolicy::Uncacheable => PCD | PWT,
            CachePolicy::WriteCombining => pat,
            CachePolicy::WriteProtected => pat | PWT,
        };
        if level > 1 {
            raw |= PS;
        }
        if tracked {
            raw |= TRACKED;
        }
        raw
    }

    #[inline]
    fn page_encoder(level: PagingLevel, prop: PageProperty, tracked: bool) -> impl Fn(Paddr) -> u64 + Copy {
        // The address field is bits 12..52 as they are: `encode_page` ORs
        // the address into the other bits.
        let rest = Self::encode_page(0, level, prop, tracked);
        move |pa| {
            debug_assert_eq!(pa as u64 & !Self::addr_mask(level), 0, "unencodable frame address");
            rest | pa as u64
        }
    }

    fn encode_table(pa: Paddr) -> u64 {
        debug_assert_eq!(pa as u64 & !ADDR_MASK, 0, "unencodable table address");
        pa as u64 | P | W | U
    }

    #[inline]
    fn decode(raw: u64, level: PagingLevel) -> PteKind {
        if raw & (P | NONE) == 0 {
            return PteKind::Absent;
        }
        let is_leaf = level == 1 || (level <= Self::HIGHEST_LEAF_LEVEL && raw & PS != 0);
        if !is_leaf {
            return PteKind::Table((raw & ADDR_MASK) as Paddr);
        }
        // The ten bits a property depends on, in one table index.
        let pat = (raw & Self::pat_bit(level) != 0) as usize;
        let index = (raw & (0x7f | G)) as usize | pat << 7 | ((raw >> 63) as usize) << 9;
        PteKind::Page {
            pa: (raw & Self::addr_mask(level)) as Paddr,
            prop: PROPERTIES[index],
            tracked: raw & TRACKED != 0,
        }
    }
}

/// The property of every combination of the bits `decode` looks at,
/// indexed as there: P W U PWT PCD A D (bits 0-6 of the entry), PAT (bit 7
/// of a 4 KiB leaf, bit 12 of a huge one), G, NX. One load instead of
/// a bit test per flag on every walk's last step.
static PROPERTIES: [PageProperty; 1024] = {
    let mut table = [PageProperty::new_kernel(PageFlags::empty(), CachePolicy::Writeback); 1024];
    let mut i = 0;
    while i < 1024 {
        let mut flags = 0;
        flags |= if i & 1 == 1 { PageFlags::R.bits() } else { 0 };
        flags |= if (i >> 1) & 1 == 1 { PageFlags::W.bits() } else { 0 };
        flags |= if (i >> 9) & 1 == 1 { 0 } else { PageFlags::X.bits() };
        flags |= if (i >> 5) & 1 == 1 { PageFlags::ACCESSED.bits() } else { 0 };
        flags |= if (i >> 6) & 1 == 1 { PageFlags::DIRTY.bits() } else { 0 };
        let mut priv_flags = 0;
        priv_flags |= if (i >> 2) & 1 == 1 { PrivilegedPageFlags::USER.bits() } else { 0 };
        priv_flags |= if (i >> 8) & 1 == 1 { PrivilegedPageFlags::GLOBAL.bits() } else { 0 };
        let cache = match ((i >> 7) & 1 == 1, (i >> 4) & 1 == 1, (i >> 3) & 1 == 1) {
            (false, false, false) => CachePolicy::Writeback,
            (false, false, true) => CachePolicy::Writethrough,
            (true, false, false) => CachePolicy::WriteCombining,
            (true, false, true) => CachePolicy::WriteProtected,
            _ => CachePolicy::Uncacheable,
        };
        table[i] = PageProperty {
            flags: PageFlags::from_bits_retain(flags),
            cache,
            priv_flags: PrivilegedPageFlags::from_bits_retain(priv_flags),
        };
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conforms_to_the_paging_format_rules() {
        crate::arch::check_format_conformance::<X86_64>();
    }

    /// Every leaf word the property bits can make (the ten bits in every
    /// combination, read or not), at every leaf level, decodes as the bits
    /// say one by one: the table's index misses no bit and mixes none up.
    #[test]
    fn every_combination_of_property_bits_decodes_bit_by_bit() {
        for level in 1..=X86_64::HIGHEST_LEAF_LEVEL {
            let pat = X86_64::pat_bit(level);
            let bits = [P, W, U, PWT, PCD, A, D, pat, G, NX];
            for combo in 0..1u32 << bits.len() {
                let mut raw = 0x4000_0000 | NONE | if level > 1 { PS } else { 0 };
                for (i, bit) in bits.iter().enumerate() {
                    if combo >> i & 1 == 1 {
                        raw |= bit;
                    }
                }
                let has = |bit: u64| raw & bit != 0;
                let mut flags = PageFlags::empty();
                flags.set(PageFlags::R, has(P));
                flags.set(PageFlags::W, has(W));
                flags.set(PageFlags::X, !has(NX));
                flags.set(PageFlags::ACCESSED, has(A));
                flags.set(PageFlags::DIRTY, has(D));
                let mut priv_flags = PrivilegedPageFlags::empty();
                priv_flags.set(PrivilegedPageFlags::USER, has(U));
                priv_flags.set(PrivilegedPageFlags::GLOBAL, has(G));
                let cache = match (has(pat), has(PCD), has(PWT)) {
                    (false, false, false) => CachePolicy::Writeback,
                    (false, false, true) => CachePolicy::Writethrough,
                    (true, false, false) => CachePolicy::WriteCombining,
                    (true, false, true) => CachePolicy::WriteProtected,
                    _ => CachePolicy::Uncacheable,
                };
                let want = PteKind::Page {
                    pa: 0x4000_0000,
                    prop: PageProperty { flags, cache, priv_flags },
                    tracked: false,
                };
                assert_eq!(X86_64::decode(raw, level), want, "level {level}, raw {raw:#x}");
            }
        }
    }

    #[test]
    fn tracked_marker_is_bit_9() {
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        assert_eq!(
            X86_64::encode_page(0x5000, 1, prop, true) ^ X86_64::encode_page(0x5000, 1, prop, false),
            TRACKED
        );
    }

    #[test]
    fn huge_pages_keep_pat_at_bit_12_and_address_above_it() {
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::WriteCombining);
        let raw = X86_64::encode_page(0x4000_0000, 3, prop, false);
        assert_ne!(raw & PAT_HUGE, 0);
        assert_ne!(raw & PS, 0);
        assert_eq!(raw & ADDR_MASK & !PAT_HUGE, 0x4000_0000);
    }

    #[test]
    fn unreadable_mapping_is_not_present_to_hardware_but_decodes() {
        let prop = PageProperty::new_kernel(PageFlags::W, CachePolicy::Writeback);
        let raw = X86_64::encode_page(0x2000, 1, prop, false);
        assert_eq!(raw & P, 0);
        assert!(matches!(X86_64::decode(raw, 1), PteKind::Page { pa: 0x2000, .. }));
    }

    #[test]
    fn pat_msr_value_matches_the_table() {
        // WB=06 WT=04 UC-=07 UC=00 WC=01 WP=05, one byte per PAT index.
        let bytes = PAT_MSR_VALUE.to_le_bytes();
        assert_eq!(bytes, [0x06, 0x04, 0x07, 0x00, 0x01, 0x05, 0x07, 0x00]);
    }
}
