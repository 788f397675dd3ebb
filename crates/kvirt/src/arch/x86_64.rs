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
//!
//! The bits are encoded and decoded by `kvirt_core::x86_64_pte`, whose
//! round trips are proven (`cargo xtask verus`); this file converts
//! [`PageProperty`] to and from its integers and holds the decode table and
//! the 4 KiB encode table, both filled by the proven functions.

use super::{PagingFormat, PteKind};
use crate::addr::{Paddr, PagingLevel};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};

/// The x86-64 4-level paging format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86_64;

/// The value for `IA32_PAT` that the cache-policy encoding assumes.
pub const PAT_MSR_VALUE: u64 = 0x0007_0501_0007_0406;

use kvirt_core::x86_64_pte as pte;
#[cfg(test)]
use kvirt_core::x86_64_pte::{A, ADDR_MASK, D, G, NONE, NX, P, PAT_HUGE, PCD, PS, PWT, TRACKED, U, W};

impl X86_64 {
    #[cfg(test)]
    const fn pat_bit(level: PagingLevel) -> u64 {
        pte::pat_bit(level)
    }
}

/// `prop` as the proven encoding's integers. A flag set built with bits
/// no flag names (`from_bits_retain`) keeps only its named bits through
/// an encoding.
#[inline]
const fn to_core(prop: PageProperty) -> pte::Prop {
    pte::Prop { flags: prop.flags.bits(), cache: prop.cache as u8, privs: prop.priv_flags.bits() }
}

/// The property of the proven encoding's integers (well formed: every
/// cache code below 5).
const fn from_core(prop: pte::Prop) -> PageProperty {
    let cache = match prop.cache {
        0 => CachePolicy::Writeback,
        1 => CachePolicy::Writethrough,
        3 => CachePolicy::WriteCombining,
        4 => CachePolicy::WriteProtected,
        _ => CachePolicy::Uncacheable,
    };
    PageProperty {
        flags: PageFlags::from_bits_retain(prop.flags),
        cache,
        priv_flags: PrivilegedPageFlags::from_bits_retain(prop.privs),
    }
}

// The proven encoding numbers the cache policies in `CachePolicy`'s order.
const _: () = {
    let mut i = 0;
    while i < CachePolicy::ALL.len() {
        assert!(CachePolicy::ALL[i] as usize == i);
        i += 1;
    }
};

// SAFETY: the shape is the SDM's 4 levels of 512 entries with leaves at
// levels 1 to 3. The encoding is `kvirt_core::x86_64_pte`, whose proofs
// (checked by `cargo xtask verus`) give rules 2 to 4: 0 decodes as absent;
// an encoded leaf decodes as its address, property and tracked marker at
// every leaf level, and a table entry as a table at levels 2 to 4; neither
// encoding is 0; decode never reads a table at level 1 nor a leaf at level
// 4; `TRACKED` (software bit 9) is set only by `encode_page(.., true)`, and
// `A` and `D` are read only as the property's flags.
// `check_format_conformance` tests the same through this impl. A 4 KiB
// leaf's property bits come from `LEAF_4K`, which the proven encoder fills
// at compile time (`the_4k_leaf_table_encodes_as_the_proven_encoder`
// compares the two for every property). The MMU's
// reading of these bits is the SDM's (section 4.5), which the hosted
// machine's independent walker and the demo kernel under QEMU exercise.
unsafe impl PagingFormat for X86_64 {
    const NR_LEVELS: PagingLevel = 4;
    const ENTRY_BITS: u32 = 9;
    const HIGHEST_LEAF_LEVEL: PagingLevel = 3;
    const PA_BITS: u32 = 52;
    const SIGN_EXTEND: bool = true;

    #[inline]
    fn encode_page(pa: Paddr, level: PagingLevel, prop: PageProperty, tracked: bool) -> u64 {
        debug_assert!((1..=3).contains(&level));
        debug_assert_eq!(pa as u64 & !pte::addr_mask(level), 0, "unencodable frame address");
        let prop = to_core(prop);
        if level == 1 {
            // `encode_page` is the OR of the address, the property's bits
            // and the tracked marker (`lemma_encoder_is_or` for the address;
            // the marker is one `bit_if` of its own).
            LEAF_4K[leaf_index(prop)] | pa as u64 | pte::bit_if(tracked, pte::TRACKED)
        } else {
            pte::encode_page(pa as u64, level, prop, tracked)
        }
    }

    #[inline]
    fn page_encoder(level: PagingLevel, prop: PageProperty, tracked: bool) -> impl Fn(Paddr) -> u64 + Copy {
        // `encode_page(pa, ..)` is `encode_page(0, ..) | pa`
        // (`lemma_encoder_is_or`).
        let rest = Self::encode_page(0, level, prop, tracked);
        move |pa| {
            debug_assert_eq!(pa as u64 & !pte::addr_mask(level), 0, "unencodable frame address");
            rest | pa as u64
        }
    }

    fn encode_table(pa: Paddr) -> u64 {
        debug_assert_eq!(pa as u64 & !pte::ADDR_MASK, 0, "unencodable table address");
        pte::encode_table(pa as u64)
    }

    #[inline]
    fn decode(raw: u64, level: PagingLevel) -> PteKind {
        match pte::decode(raw, level) {
            pte::Pte::Absent => PteKind::Absent,
            pte::Pte::Table(pa) => PteKind::Table(pa as Paddr),
            pte::Pte::Page { pa, index, is_tracked } => {
                PteKind::Page { pa: pa as Paddr, prop: PROPERTIES[index as usize], tracked: is_tracked }
            }
        }
    }
}

/// Where a 4 KiB leaf's property bits sit in [`LEAF_4K`]: the five flag
/// bits, the two privilege bits and the cache code, which are all that
/// `pte::encode_page` reads of a property (it tests `flags & 1` to
/// `flags & 16`, `privs & 1` and `privs & 2`, and the cache code, below 5).
#[inline]
const fn leaf_index(prop: pte::Prop) -> usize {
    (prop.flags & 31) as usize | ((prop.privs & 3) as usize) << 5 | (prop.cache as usize) << 7
}

/// `pte::encode_page(0, 1, prop, false)` for every property, by
/// [`leaf_index`], built at compile time by the proven function: one load
/// instead of a dozen bit tests when a 4 KiB page is mapped.
static LEAF_4K: [u64; 5 << 7] = {
    let mut table = [0; 5 << 7];
    let mut i = 0;
    while i < table.len() {
        let prop = pte::Prop { flags: (i & 31) as u8, privs: ((i >> 5) & 3) as u8, cache: (i >> 7) as u8 };
        table[i] = pte::encode_page(0, 1, prop, false);
        i += 1;
    }
    table
};

/// The property of every combination of the ten bits `decode` looks at
/// (`pte::index_of`), built at compile time by the proven
/// `pte::prop_of_index`, which reads each bit as the entry bit it stands
/// for (`lemma_table_decode_is_bitwise`). One load instead of a bit test
/// per flag on every walk's last step.
static PROPERTIES: [PageProperty; 1024] = {
    let mut table = [PageProperty::new_kernel(PageFlags::empty(), CachePolicy::Writeback); 1024];
    let mut i = 0;
    while i < 1024 {
        table[i] = from_core(pte::prop_of_index(i as u16));
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The 4 KiB table gives what the proven encoder computes, for every
    /// property (named flag bits or not), address and tracked marker.
    #[test]
    fn the_4k_leaf_table_encodes_as_the_proven_encoder() {
        for flags in 0..=u8::MAX {
            for privs in 0..=u8::MAX {
                for cache in CachePolicy::ALL {
                    let prop = PageProperty {
                        flags: PageFlags::from_bits_retain(flags),
                        cache,
                        priv_flags: PrivilegedPageFlags::from_bits_retain(privs),
                    };
                    for (pa, tracked) in [(0, false), (0x1234_5000, true), (ADDR_MASK as usize, false)] {
                        assert_eq!(
                            X86_64::encode_page(pa, 1, prop, tracked),
                            pte::encode_page(pa as u64, 1, to_core(prop), tracked),
                            "{prop:?} at {pa:#x}, tracked {tracked}"
                        );
                    }
                }
            }
        }
    }

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
