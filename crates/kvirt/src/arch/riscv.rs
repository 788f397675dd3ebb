//! The RISC-V paging formats Sv39 and Sv48 (privileged specification,
//! sections "Sv39" and "Sv48", with the Svpbmt extension).
//!
//! Both use 512-entry nodes of 64-bit entries; they differ only in depth:
//!
//! | format | levels | VA bits | leaves kvirt maps |
//! |---|---|---|---|
//! | [`Sv39`] | 3 | 39 | 4 KiB, 2 MiB |
//! | [`Sv48`] | 4 | 48 | 4 KiB, 2 MiB, 1 GiB |
//!
//! Hardware also allows a leaf in the root (a 1 GiB page on Sv39, 512 GiB
//! on Sv48); kvirt never maps one there, since the kernel half's root
//! entries are shared with every user table and stay for ever.
//! Virtual addresses are sign-extended from their top bit, and physical
//! addresses are 56 bits wide.
//!
//! ```text
//!  63  62..61  60..54  53..10  9     8      7  6  5  4  3  2  1  0
//!  N   PBMT    (zero)  PPN     NONE  TRACK  D  A  G  U  X  W  R  V
//! ```
//!
//! * A leaf is a valid entry with any of `R`, `W`, `X`; a valid entry with
//!   none of them points to the next table. Table entries are `V` and the
//!   address alone (`A`, `D` and `U` are reserved there).
//! * `A` and `D` are set in every leaf ([`PagingFormat::SET_BY_FORMAT`]):
//!   without Svadu the hardware faults on an access with `A` clear or a
//!   write with `D` clear instead of setting them.
//! * `R`, `W`, `X` are the property's. `W` without `R` is a reserved
//!   combination, and no combination means "no access"; such mappings keep
//!   `V` clear (so every access faults) and set the software bit `NONE`
//!   (bit 9), so that they stay mappings to kvirt.
//! * `TRACK` (software bit 8) is kvirt's tracked-frame marker.
//! * Cache policies through Svpbmt's `PBMT` field:
//!
//! | PBMT | memory type | [`CachePolicy`] |
//! |---|---|---|
//! | 0 | PMA (main memory: cacheable) | `Writeback` |
//! | 1 | NC (non-cacheable, idempotent, weakly ordered) | `WriteCombining`; `Writethrough` and `WriteProtected` become it |
//! | 2 | IO (non-cacheable, strongly ordered: devices) | `Uncacheable` |
//! | 3 | reserved | (decodes as `Uncacheable`) |
//!
//! Svpbmt has no write-through type, so a write-through or write-protected
//! request gets NC, which caches less than asked, never more
//! ([`PagingFormat::cache_policy`]).

use super::{PagingFormat, PteKind};
use crate::addr::{Paddr, PagingLevel};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};

/// RISC-V Sv39: 3 levels, 39-bit virtual addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sv39;

/// RISC-V Sv48: 4 levels, 48-bit virtual addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sv48;

/// Entry bits (the table in the module documentation).
pub mod bits {
    /// Valid.
    pub const V: u64 = 1 << 0;
    /// Readable.
    pub const R: u64 = 1 << 1;
    /// Writable.
    pub const W: u64 = 1 << 2;
    /// Executable.
    pub const X: u64 = 1 << 3;
    /// Accessible in U-mode.
    pub const U: u64 = 1 << 4;
    /// Global.
    pub const G: u64 = 1 << 5;
    /// Accessed.
    pub const A: u64 = 1 << 6;
    /// Dirty.
    pub const D: u64 = 1 << 7;
    /// kvirt's tracked-frame marker (software bit).
    pub const TRACKED: u64 = 1 << 8;
    /// kvirt's marker of a mapping kept invalid (software bit).
    pub const NONE: u64 = 1 << 9;
    /// The physical page number field, bits 53:10.
    pub const PPN: u64 = ((1 << 44) - 1) << 10;
    /// The Svpbmt memory type field, bits 62:61.
    pub const PBMT_SHIFT: u32 = 61;
}

use bits::{A, D, G, NONE, PBMT_SHIFT, PPN, R, TRACKED, U, V, W, X};

/// Svpbmt memory types.
const PBMT_NC: u64 = 1;
const PBMT_IO: u64 = 2;

/// Whether hardware may use a leaf with these rights: `R` set, or
/// execute-only (`W` without `R` is reserved, and no right at all is not
/// a leaf).
const fn hardware_leaf(rights: u64) -> bool {
    rights & R != 0 || rights == X
}

/// The cache policy Svpbmt gives `cache` (see the module documentation).
const fn svpbmt_policy(cache: CachePolicy) -> CachePolicy {
    match cache {
        CachePolicy::Writeback => CachePolicy::Writeback,
        CachePolicy::Uncacheable => CachePolicy::Uncacheable,
        CachePolicy::Writethrough | CachePolicy::WriteCombining | CachePolicy::WriteProtected => {
            CachePolicy::WriteCombining
        }
    }
}

/// Every bit of a leaf but its address.
fn leaf_bits(prop: PageProperty, tracked: bool) -> u64 {
    let mut raw = A | D;
    for (flag, bit) in [(PageFlags::R, R), (PageFlags::W, W), (PageFlags::X, X)] {
        if prop.flags.contains(flag) {
            raw |= bit;
        }
    }
    raw |= if hardware_leaf(raw & (R | W | X)) { V } else { NONE };
    if prop.priv_flags.contains(PrivilegedPageFlags::USER) {
        raw |= U;
    }
    if prop.priv_flags.contains(PrivilegedPageFlags::GLOBAL) {
        raw |= G;
    }
    let pbmt = match svpbmt_policy(prop.cache) {
        CachePolicy::Writeback => 0,
        CachePolicy::Uncacheable => PBMT_IO,
        _ => PBMT_NC,
    };
    raw |= pbmt << PBMT_SHIFT;
    if tracked {
        raw |= TRACKED;
    }
    raw
}

/// The physical address of the PPN field.
const fn address(raw: u64) -> Paddr {
    ((raw & PPN) << 2) as Paddr
}

/// Decodes `raw` at `level` of format `F` (Sv39 or Sv48).
fn decode<F: PagingFormat>(raw: u64, level: PagingLevel) -> PteKind {
    // Tested first, with one mask, as a walk meets pointers most: a valid
    // entry without rights.
    if raw & (V | R | W | X) == V {
        // A pointer at the last level faults on hardware.
        return if level >= 2 { PteKind::Table(address(raw)) } else { PteKind::Absent };
    }
    // Else a valid entry is a leaf (it has rights), and an invalid one is a
    // leaf only if kvirt marked it (`NONE`).
    if raw & (V | NONE) == 0 {
        return PteKind::Absent;
    }
    if level > F::HIGHEST_LEAF_LEVEL {
        // kvirt never maps a leaf this high (a root leaf).
        return PteKind::Absent;
    }
    let mut flags = PageFlags::empty();
    for (flag, bit) in [(PageFlags::R, R), (PageFlags::W, W), (PageFlags::X, X), (PageFlags::ACCESSED, A)] {
        flags.set(flag, raw & bit != 0);
    }
    flags.set(PageFlags::DIRTY, raw & D != 0);
    let mut priv_flags = PrivilegedPageFlags::empty();
    priv_flags.set(PrivilegedPageFlags::USER, raw & U != 0);
    priv_flags.set(PrivilegedPageFlags::GLOBAL, raw & G != 0);
    let cache = match (raw >> PBMT_SHIFT) & 3 {
        0 => CachePolicy::Writeback,
        PBMT_NC => CachePolicy::WriteCombining,
        _ => CachePolicy::Uncacheable,
    };
    // A huge leaf's low PPN bits must be zero on hardware (else it faults);
    // they are not part of its address.
    PteKind::Page {
        pa: address(raw) & !super::offset_mask::<F>(level),
        prop: PageProperty { flags, cache, priv_flags },
        tracked: raw & TRACKED != 0,
    }
}

/// One `unsafe impl` per depth, alike but for the shape.
macro_rules! sv_format {
    ($ty:ty, $levels:expr) => {
        // SAFETY: the shape is the privileged specification's: 512 entries
        // of 8 bytes per node, `$levels` levels, leaves below the root
        // only, PPN bits 53:10 (56-bit physical addresses). Round trip:
        // each property field has its own bits (R, W, X, U, G, PBMT; A and
        // D always set, as `SET_BY_FORMAT` declares; the cache policy
        // through `svpbmt_policy`, idempotent), the address sits in the PPN
        // field, and `check_format_conformance` tests every property at
        // every leaf level. A table entry is `V` alone with the address,
        // which `decode` reads as a table above level 1 only; a leaf
        // always has R, W or X or (when `V` is clear) `NONE`, so it never
        // decodes as a table, and 0 is absent. `TRACKED` is set only by
        // `encode_page(.., true)`. Hardware: the walk reads a valid entry
        // without R, W, X as a pointer and one with them as a leaf granting
        // exactly its R, W, X and U; a leaf kvirt keeps invalid has `V`
        // clear and grants nothing; A and D are already set, so the MMU
        // never needs to change an entry.
        unsafe impl PagingFormat for $ty {
            const NR_LEVELS: PagingLevel = $levels;
            const ENTRY_BITS: u32 = 9;
            const HIGHEST_LEAF_LEVEL: PagingLevel = $levels - 1;
            const PA_BITS: u32 = 56;
            const SIGN_EXTEND: bool = true;
            const SET_BY_FORMAT: PageFlags = PageFlags::ACCESSED.union(PageFlags::DIRTY);

            #[inline]
            fn cache_policy(cache: CachePolicy) -> CachePolicy {
                svpbmt_policy(cache)
            }

            #[inline]
            fn encode_page(pa: Paddr, level: PagingLevel, prop: PageProperty, tracked: bool) -> u64 {
                debug_assert!((1..=Self::HIGHEST_LEAF_LEVEL).contains(&level));
                debug_assert_eq!(pa as u64 >> 2 & !PPN, 0, "unencodable frame address");
                (pa as u64 >> 2) | leaf_bits(prop, tracked)
            }

            #[inline]
            fn page_encoder(
                _level: PagingLevel,
                prop: PageProperty,
                tracked: bool,
            ) -> impl Fn(Paddr) -> u64 + Copy {
                let rest = leaf_bits(prop, tracked);
                move |pa| (pa as u64 >> 2) | rest
            }

            #[inline]
            fn encode_table(pa: Paddr) -> u64 {
                debug_assert_eq!(pa as u64 >> 2 & !PPN, 0, "unencodable table address");
                (pa as u64 >> 2) | V
            }

            #[inline]
            fn decode(raw: u64, level: PagingLevel) -> PteKind {
                decode::<Self>(raw, level)
            }
        }
    };
}

sv_format!(Sv39, 3);
sv_format!(Sv48, 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{check_format_conformance, page_size};

    #[test]
    fn sv39_and_sv48_conform_to_the_paging_format_rules() {
        check_format_conformance::<Sv39>();
        check_format_conformance::<Sv48>();
    }

    #[test]
    fn shapes_follow_the_specification() {
        assert_eq!((Sv39::VA_BITS, Sv48::VA_BITS), (39, 48));
        assert_eq!(page_size::<Sv39>(Sv39::HIGHEST_LEAF_LEVEL), 2 << 20);
        assert_eq!(page_size::<Sv48>(Sv48::HIGHEST_LEAF_LEVEL), 1 << 30);
    }

    #[test]
    fn a_kernel_leaf_has_the_bits_the_specification_names() {
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        let raw = Sv48::encode_page(0x8020_0000, 2, prop, false);
        assert_eq!(raw, (0x8020_0000 >> 12 << 10) | V | R | W | G | A | D);
        assert_eq!(Sv48::encode_page(0x8020_0000, 2, prop, true) ^ raw, TRACKED);
        assert_eq!(Sv39::encode_table(0x8000_1000), 0x2000_0400 | V);
    }

    #[test]
    fn devices_are_io_and_frame_buffers_nc() {
        let at = |cache| Sv39::encode_page(0, 1, PageProperty::new_kernel(PageFlags::RW, cache), false) >> 61;
        assert_eq!(at(CachePolicy::Writeback), 0);
        assert_eq!(at(CachePolicy::WriteCombining), 1);
        assert_eq!(at(CachePolicy::Uncacheable), 2);
        assert_eq!(at(CachePolicy::Writethrough), 1, "no write-through type: caches less");
    }

    #[test]
    fn write_only_and_no_access_mappings_are_invalid_to_hardware_but_decode() {
        for flags in [PageFlags::empty(), PageFlags::W, PageFlags::W | PageFlags::X] {
            let raw =
                Sv48::encode_page(0x3000, 1, PageProperty::new_kernel(flags, CachePolicy::Writeback), false);
            assert_eq!(raw & V, 0, "{flags:?}");
            assert!(matches!(Sv48::decode(raw, 1), PteKind::Page { pa: 0x3000, .. }));
        }
        let exec_only = PageProperty::new_kernel(PageFlags::X, CachePolicy::Writeback);
        assert_ne!(Sv48::encode_page(0x3000, 1, exec_only, false) & V, 0, "execute-only is a valid leaf");
    }

    #[test]
    fn a_pointer_at_the_last_level_and_a_root_leaf_are_not_what_kvirt_maps() {
        assert_eq!(Sv39::decode(0x400 | V, 1), PteKind::Absent);
        assert_eq!(Sv39::decode(0x400 | V | R, 3), PteKind::Absent);
        assert_eq!(Sv48::decode(0x400 | V | R, 4), PteKind::Absent);
        // A 1 GiB leaf's address drops the PPN bits below 1 GiB.
        let raw = ((0x4000_0000 | 0x1000) >> 2) | V | R;
        assert!(matches!(Sv48::decode(raw, 3), PteKind::Page { pa: 0x4000_0000, .. }));
    }
}
