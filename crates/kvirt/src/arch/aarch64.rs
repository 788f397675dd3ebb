//! The AArch64 stage 1 translation format (Arm ARM, chapter D8, VMSAv8-64)
//! with the 4 KiB granule and 48-bit virtual addresses.
//!
//! Four levels of 512 entries. kvirt numbers them bottom-up, Arm top-down:
//! kvirt's level 4 is Arm's level 0 (tables only), 3 is level 1 (1 GiB
//! blocks), 2 is level 2 (2 MiB blocks) and 1 is level 3 (4 KiB pages).
//! The kernel half (`0xffff_8000_0000_0000..`) is translated through
//! `TTBR1_EL1` and the user half through `TTBR0_EL1`, with
//! `T0SZ = T1SZ = 16`: one root table serves both when loaded into both
//! registers, the user half using its entries 0..256 and the kernel half
//! its entries 256..512, as on x86-64 ([`PagingFormat::SIGN_EXTEND`]).
//! Output addresses are 48 bits.
//!
//! ```text
//!  54   53   58..55  51  47..12   11  10  9..8  7    6    4..2      1     0
//!  UXN  PXN  SW      DBM address  nG  AF  SH    AP2  AP1  AttrIndx  TYPE  VALID
//! ```
//!
//! * `TYPE` (bit 1) is 1 in table entries and 4 KiB page entries, 0 in
//!   blocks. Table entries are `VALID | TYPE` and the address, with every
//!   hierarchical control (`APTable`, `PXNTable`, ...) clear, so that the
//!   leaf alone decides.
//! * `AP2` is "read-only", `AP1` "accessible at EL0". A user mapping is
//!   never executable at EL1 (`PXN`), a kernel one never at EL0 (`UXN`).
//! * `AF` is set in every leaf ([`PagingFormat::SET_BY_FORMAT`]): without
//!   hardware access-flag management an access to a leaf with `AF = 0`
//!   faults.
//! * Software bits: 55 `TRACK` (kvirt's tracked-frame marker), 56 `DIRTY`
//!   (the property's dirty flag: without `FEAT_HAFDBS` the hardware keeps
//!   none), 57 `NONE`. Every valid leaf is readable at EL1, so a mapping
//!   without [`PageFlags::R`] keeps `VALID` clear (the hardware ignores
//!   the rest) and sets `NONE`.
//! * `SH` is inner shareable (0b11) throughout.
//! * The cache policy is the `AttrIndx` into [`MAIR_EL1_VALUE`], which a
//!   kernel loads into `MAIR_EL1`; every [`CachePolicy`] has its own index:
//!
//! | AttrIndx | MAIR attribute | [`CachePolicy`] |
//! |---|---|---|
//! | 0 | `0xff` Normal, write-back, read/write-allocate | `Writeback` |
//! | 1 | `0xbb` Normal, write-through, read/write-allocate | `Writethrough` |
//! | 2 | `0x04` Device-nGnRE | `Uncacheable` |
//! | 3 | `0x44` Normal, non-cacheable | `WriteCombining` |
//! | 4 | `0xaa` Normal, write-through, read-allocate only | `WriteProtected` |
//! | 5..=7 | `0x00` Device-nGnRnE | (decode as `Uncacheable`) |

use super::{PagingFormat, PteKind};
use crate::addr::{Paddr, PagingLevel};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};

/// AArch64 stage 1, 4 KiB granule, 48-bit virtual addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aarch64;

/// The value for `MAIR_EL1` that the cache-policy encoding assumes (one
/// attribute byte per `AttrIndx`, index 0 in the lowest byte).
pub const MAIR_EL1_VALUE: u64 = 0x0000_00aa_4404_bbff;

/// Descriptor bits (the table in the module documentation).
pub mod bits {
    /// Valid.
    pub const VALID: u64 = 1 << 0;
    /// Table (levels 0 to 2) or page (level 3) descriptor; clear in a block.
    pub const TYPE: u64 = 1 << 1;
    /// The `AttrIndx` field, bits 4:2.
    pub const ATTR_SHIFT: u32 = 2;
    /// `AP[1]`: accessible at EL0.
    pub const AP_EL0: u64 = 1 << 6;
    /// `AP[2]`: read-only.
    pub const AP_RO: u64 = 1 << 7;
    /// `SH`: inner shareable.
    pub const SH_INNER: u64 = 0b11 << 8;
    /// Access flag.
    pub const AF: u64 = 1 << 10;
    /// Not global.
    pub const NG: u64 = 1 << 11;
    /// The output address, bits 47:12.
    pub const ADDRESS: u64 = 0x0000_ffff_ffff_f000;
    /// Privileged execute-never.
    pub const PXN: u64 = 1 << 53;
    /// Unprivileged execute-never.
    pub const UXN: u64 = 1 << 54;
    /// kvirt's tracked-frame marker (software bit).
    pub const TRACKED: u64 = 1 << 55;
    /// The property's dirty flag (software bit).
    pub const DIRTY: u64 = 1 << 56;
    /// kvirt's marker of a mapping kept invalid (software bit).
    pub const NONE: u64 = 1 << 57;
}

use bits::{
    ADDRESS, AF, AP_EL0, AP_RO, ATTR_SHIFT, DIRTY, NG, NONE, PXN, SH_INNER, TRACKED, TYPE, UXN, VALID,
};

/// Every bit of a leaf at `level` but its address.
fn leaf_bits(level: PagingLevel, prop: PageProperty, tracked: bool) -> u64 {
    let mut raw = AF | SH_INNER | (prop.cache as u64) << ATTR_SHIFT;
    if level == 1 {
        raw |= TYPE;
    }
    raw |= if prop.flags.contains(PageFlags::R) { VALID } else { NONE };
    if !prop.flags.contains(PageFlags::W) {
        raw |= AP_RO;
    }
    let executable = prop.flags.contains(PageFlags::X);
    if prop.priv_flags.contains(PrivilegedPageFlags::USER) {
        raw |= AP_EL0 | PXN | if executable { 0 } else { UXN };
    } else {
        raw |= UXN | if executable { 0 } else { PXN };
    }
    if !prop.priv_flags.contains(PrivilegedPageFlags::GLOBAL) {
        raw |= NG;
    }
    if prop.flags.contains(PageFlags::DIRTY) {
        raw |= DIRTY;
    }
    if tracked {
        raw |= TRACKED;
    }
    raw
}

// `AttrIndx` is the policy's position in `CachePolicy::ALL`.
const _: () = {
    let mut i = 0;
    while i < CachePolicy::ALL.len() {
        assert!(CachePolicy::ALL[i] as usize == i);
        i += 1;
    }
};

// SAFETY: the shape is the 4 KiB granule's with 48-bit addresses: 4 levels
// of 512 eight-byte entries, blocks at Arm levels 1 and 2 (kvirt 3 and 2),
// pages at Arm level 3, 48-bit output addresses. Round trip: every field
// has its own bits (AP, PXN/UXN chosen by USER, nG, AttrIndx = the policy's
// index, the DIRTY software bit; AF always set, as `SET_BY_FORMAT`
// declares) and `check_format_conformance` tests every property at every
// leaf level. A table entry has `VALID | TYPE`, which `decode` reads as a
// table at levels 2 to 4 only; a leaf has `VALID` without `TYPE` above
// level 1, or `NONE` without `VALID`, so it never decodes as a table; 0 is
// absent; `TRACKED` is set only by `encode_page(.., true)`. Hardware: a
// valid descriptor with `TYPE` is followed as a table above Arm level 3, a
// valid block or page maps its address with its AP and execute-never
// rights, an invalid one faults whatever its other bits, and no hardware
// update is needed (AF is set; dirty state is software's).
unsafe impl PagingFormat for Aarch64 {
    const NR_LEVELS: PagingLevel = 4;
    const ENTRY_BITS: u32 = 9;
    const HIGHEST_LEAF_LEVEL: PagingLevel = 3;
    const PA_BITS: u32 = 48;
    const SIGN_EXTEND: bool = true;
    const SET_BY_FORMAT: PageFlags = PageFlags::ACCESSED;

    #[inline]
    fn encode_page(pa: Paddr, level: PagingLevel, prop: PageProperty, tracked: bool) -> u64 {
        debug_assert!((1..=Self::HIGHEST_LEAF_LEVEL).contains(&level));
        debug_assert_eq!(pa as u64 & !ADDRESS, 0, "unencodable frame address");
        pa as u64 | leaf_bits(level, prop, tracked)
    }

    #[inline]
    fn page_encoder(level: PagingLevel, prop: PageProperty, tracked: bool) -> impl Fn(Paddr) -> u64 + Copy {
        let rest = leaf_bits(level, prop, tracked);
        move |pa| pa as u64 | rest
    }

    #[inline]
    fn encode_table(pa: Paddr) -> u64 {
        debug_assert_eq!(pa as u64 & !ADDRESS, 0, "unencodable table address");
        pa as u64 | VALID | TYPE
    }

    fn decode(raw: u64, level: PagingLevel) -> PteKind {
        let leaf = match (raw & VALID != 0, raw & TYPE != 0) {
            (false, _) if raw & NONE == 0 => return PteKind::Absent,
            (false, _) => true,
            // A page descriptor at the last level, a table above it.
            (true, true) if level == 1 => true,
            (true, true) => return PteKind::Table((raw & ADDRESS) as Paddr),
            // A block: reserved at the last level and at Arm level 0.
            (true, false) => level != 1,
        };
        if !leaf || level > Self::HIGHEST_LEAF_LEVEL {
            return PteKind::Absent;
        }
        let user = raw & AP_EL0 != 0;
        let mut flags = PageFlags::empty();
        flags.set(PageFlags::R, raw & VALID != 0);
        flags.set(PageFlags::W, raw & AP_RO == 0);
        flags.set(PageFlags::X, raw & if user { UXN } else { PXN } == 0);
        flags.set(PageFlags::ACCESSED, raw & AF != 0);
        flags.set(PageFlags::DIRTY, raw & DIRTY != 0);
        let mut priv_flags = PrivilegedPageFlags::empty();
        priv_flags.set(PrivilegedPageFlags::USER, user);
        priv_flags.set(PrivilegedPageFlags::GLOBAL, raw & NG == 0);
        let cache = CachePolicy::ALL
            .get(((raw >> ATTR_SHIFT) & 7) as usize)
            .copied()
            .unwrap_or(CachePolicy::Uncacheable);
        let size = super::page_size::<Self>(level) as u64;
        PteKind::Page {
            pa: (raw & ADDRESS & !(size - 1)) as Paddr,
            prop: PageProperty { flags, cache, priv_flags },
            tracked: raw & TRACKED != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conforms_to_the_paging_format_rules() {
        crate::arch::check_format_conformance::<Aarch64>();
    }

    #[test]
    fn pages_blocks_and_tables_have_the_architected_type_bits() {
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        assert_eq!(Aarch64::encode_page(0x5000, 1, prop, false) & 3, 0b11, "a page");
        assert_eq!(Aarch64::encode_page(0x20_0000, 2, prop, false) & 3, 0b01, "a 2 MiB block");
        assert_eq!(Aarch64::encode_page(0x4000_0000, 3, prop, false) & 3, 0b01, "a 1 GiB block");
        assert_eq!(Aarch64::encode_table(0x7000), 0x7000 | 0b11);
        // A block descriptor at Arm level 0 is reserved with this granule.
        assert_eq!(Aarch64::decode(0x80_0000_0000 | VALID | AF, 4), PteKind::Absent);
    }

    #[test]
    fn a_kernel_rw_leaf_is_el1_only_global_and_never_executable() {
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        let raw = Aarch64::encode_page(0x5000, 1, prop, false);
        assert_eq!(raw, 0x5000 | VALID | TYPE | AF | SH_INNER | PXN | UXN);
        let rx = PageProperty::new_kernel(PageFlags::RX, CachePolicy::Writeback);
        assert_eq!(Aarch64::encode_page(0x5000, 1, rx, false) & (PXN | UXN | AP_RO), UXN | AP_RO);
        let user = PageProperty::new_user(PageFlags::RX, CachePolicy::Writeback);
        let raw = Aarch64::encode_page(0x5000, 1, user, false);
        assert_eq!(raw & (PXN | UXN | AP_EL0 | NG), PXN | AP_EL0 | NG);
    }

    #[test]
    fn mair_bytes_match_the_attr_indices() {
        let attr = |cache: CachePolicy| {
            let raw = Aarch64::encode_page(0, 1, PageProperty::new_kernel(PageFlags::R, cache), false);
            MAIR_EL1_VALUE.to_le_bytes()[((raw >> ATTR_SHIFT) & 7) as usize]
        };
        assert_eq!(attr(CachePolicy::Writeback), 0xff);
        assert_eq!(attr(CachePolicy::Writethrough), 0xbb);
        assert_eq!(attr(CachePolicy::Uncacheable), 0x04, "Device-nGnRE");
        assert_eq!(attr(CachePolicy::WriteCombining), 0x44);
        assert_eq!(attr(CachePolicy::WriteProtected), 0xaa);
    }

    #[test]
    fn unreadable_mappings_are_invalid_to_hardware_but_decode() {
        let prop = PageProperty::new_kernel(PageFlags::W | PageFlags::X, CachePolicy::Writeback);
        let raw = Aarch64::encode_page(0x20_0000, 2, prop, true);
        assert_eq!(raw & VALID, 0);
        assert!(matches!(Aarch64::decode(raw, 2), PteKind::Page { pa: 0x20_0000, tracked: true, .. }));
    }
}
