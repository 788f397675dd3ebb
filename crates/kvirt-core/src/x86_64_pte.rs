//! The x86-64 page-table entry encoding, over plain integers.
//!
//! A property is three small integers ([`Prop`]): the flag bits
//! (R 1, W 2, X 4, ACCESSED 8, DIRTY 16), the cache policy (0 write-back,
//! 1 write-through, 2 uncacheable, 3 write-combining, 4 write-protected)
//! and the privileged bits (USER 1, GLOBAL 2). kvirt's `PageProperty`
//! converts to and from it field by field.
//!
//! ```text
//!  63   62..52  51..12          11  10   9     8  7       6  5  4   3   2  1  0
//!  NX   0       frame address   0   NONE TRACK G  PS/PAT  D  A  PCD PWT U  W  P
//! ```
//!
//! A leaf without R keeps P clear and sets the software bit NONE, so it
//! stays a mapping to kvirt while every access faults. Bit 7 is PS at
//! levels 2 and 3 and PAT at level 1; a huge leaf keeps PAT at bit 12.
//!
//! Proven here, for every well-formed property (`Prop::wf`), every leaf
//! level and both values of `is_tracked`:
//!
//! * `lemma_leaf_round_trip`: decoding an encoded leaf gives back its
//!   address, its property and `is_tracked`, and the word is not 0;
//! * `lemma_table_round_trip`: a table entry decodes as a table at
//!   levels 2 to 4, and is not 0;
//! * [`decode`] never calls a level-1 entry a table nor a level-4 entry a
//!   leaf, and decodes 0 as absent;
//! * the address masks keep exactly the address bits (bits 12 to 51, and
//!   from bit 21 or 30 up for huge leaves) ([`addr_mask`]);
//! * [`encode_page`] is `encode_page(0, ..) | pa` (`lemma_encoder_is_or`),
//!   which is how runs of pages are mapped;
//! * `lemma_table_decode_is_bitwise`: the property that [`decode`] reads
//!   from the 1024-entry table ([`prop_of_index`] of the word's ten
//!   property bits) is the bit-by-bit reading of the word.

use vstd::prelude::*;

verus! {

/// Present.
pub const P: u64 = 0x1;
/// Writable.
pub const W: u64 = 0x2;
/// User accessible.
pub const U: u64 = 0x4;
/// Page-level write-through.
pub const PWT: u64 = 0x8;
/// Page-level cache disable.
pub const PCD: u64 = 0x10;
/// Accessed.
pub const A: u64 = 0x20;
/// Dirty.
pub const D: u64 = 0x40;
/// Page size: a leaf at levels 2 and 3.
pub const PS: u64 = 0x80;
/// The PAT bit of a 4 KiB leaf.
pub const PAT_4K: u64 = 0x80;
/// Global.
pub const G: u64 = 0x100;
/// kvirt's "tracked frame" marker (a software bit).
pub const TRACKED: u64 = 0x200;
/// kvirt's "mapped but not readable" marker (a software bit).
pub const NONE: u64 = 0x400;
/// The PAT bit of a huge leaf.
pub const PAT_HUGE: u64 = 0x1000;
/// No execute.
pub const NX: u64 = 0x8000_0000_0000_0000;
/// The frame address bits (12 to 51).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A page property as integers (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prop {
    /// R 1, W 2, X 4, ACCESSED 8, DIRTY 16.
    pub flags: u8,
    /// 0 write-back, 1 write-through, 2 uncacheable, 3 write-combining,
    /// 4 write-protected.
    pub cache: u8,
    /// USER 1, GLOBAL 2.
    pub privs: u8,
}

impl Prop {
    /// No undefined bit and a known cache policy.
    pub open spec fn wf(self) -> bool {
        self.flags < 32 && self.cache < 5 && self.privs < 4
    }
}

/// What an entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pte {
    /// Nothing is mapped.
    Absent,
    /// A node one level down, at this physical address.
    Table(u64),
    /// A leaf: its frame, the index of its property in the decode table
    /// ([`prop_of_index`]), and kvirt's tracked marker.
    Page { pa: u64, index: u16, is_tracked: bool },
}

/// The address bits of a leaf at `level` (1 to 3), or of a table entry
/// (any other level).
#[inline]
pub const fn addr_mask(level: u8) -> (r: u64)
    ensures
        level == 1 ==> r == ADDR_MASK,
        level == 2 ==> r == 0x000f_ffff_ffe0_0000,
        level >= 3 ==> r == 0x000f_ffff_c000_0000,
{
    if level == 1 {
        ADDR_MASK
    } else if level == 2 {
        // Bits 21 to 51: a 2 MiB frame.
        0x000f_ffff_ffe0_0000
    } else {
        // Bits 30 to 51: a 1 GiB frame.
        0x000f_ffff_c000_0000
    }
}

/// Where a leaf at `level` keeps its PAT bit.
#[inline]
pub const fn pat_bit(level: u8) -> (r: u64)
    ensures
        r == (if level == 1 { PAT_4K } else { PAT_HUGE }),
{
    if level == 1 {
        PAT_4K
    } else {
        PAT_HUGE
    }
}

/// The cache-policy bits of policy `cache` at a leaf whose PAT bit is
/// `pat`.
#[inline]
pub const fn cache_bits(cache: u8, pat: u64) -> (r: u64)
    ensures
        r == (if cache == 0 {
            0
        } else if cache == 1 {
            PWT
        } else if cache == 2 {
            PCD | PWT
        } else if cache == 3 {
            pat
        } else {
            pat | PWT
        }),
{
    if cache == 0 {
        0
    } else if cache == 1 {
        PWT
    } else if cache == 2 {
        PCD | PWT
    } else if cache == 3 {
        pat
    } else {
        pat | PWT
    }
}

/// `bit` if `set`, else 0.
#[inline]
pub const fn bit_if(set: bool, bit: u64) -> (r: u64)
    ensures
        r == (if set { bit } else { 0 }),
{
    if set {
        bit
    } else {
        0
    }
}

/// The leaf mapping `pa` at `level` (1 to 3) with `prop`.
#[inline]
pub const fn encode_page(pa: u64, level: u8, prop: Prop, is_tracked: bool) -> (r: u64)
    ensures
        r == encode_page_spec(pa, level, prop, is_tracked),
{
    let f = prop.flags;
    let pv = prop.privs;
    pa | bit_if(f & 1 != 0, P) | bit_if(f & 1 == 0, NONE) | bit_if(f & 2 != 0, W) | bit_if(f & 4 == 0, NX) | bit_if(
        f & 8 != 0,
        A,
    ) | bit_if(f & 16 != 0, D) | bit_if(pv & 1 != 0, U) | bit_if(pv & 2 != 0, G) | cache_bits(prop.cache, pat_bit(level))
        | bit_if(level > 1, PS) | bit_if(is_tracked, TRACKED)
}

/// The value [`encode_page`] computes.
pub open spec fn encode_page_spec(pa: u64, level: u8, prop: Prop, is_tracked: bool) -> u64 {
    let f = prop.flags;
    let pv = prop.privs;
    let pat = if level == 1 { PAT_4K } else { PAT_HUGE };
    pa | (if f & 1 != 0 { P } else { 0 }) | (if f & 1 == 0 { NONE } else { 0 }) | (if f & 2 != 0 { W } else { 0 }) | (
    if f & 4 == 0 { NX } else { 0 }) | (if f & 8 != 0 { A } else { 0 }) | (if f & 16 != 0 { D } else { 0 }) | (if pv
        & 1 != 0 { U } else { 0 }) | (if pv & 2 != 0 { G } else { 0 }) | (if prop.cache == 0 {
        0
    } else if prop.cache == 1 {
        PWT
    } else if prop.cache == 2 {
        PCD | PWT
    } else if prop.cache == 3 {
        pat
    } else {
        pat | PWT
    }) | (if level > 1 { PS } else { 0 }) | (if is_tracked { TRACKED } else { 0 })
}

/// The entry pointing to a node at `pa`: `P | W | U`, so that the leaf
/// alone decides the rights.
#[inline]
pub const fn encode_table(pa: u64) -> (r: u64)
    ensures
        r == pa | P | W | U,
{
    pa | P | W | U
}

/// The index into the decode table of a leaf word at `level`: the bits
/// P W U PWT PCD A D (0 to 6), PAT (bit 7 at level 1, bit 12 above), G
/// (bit 8) and NX (bit 63).
#[inline]
pub const fn index_of(raw: u64, level: u8) -> (r: u16)
    ensures
        r < 1024,
        r == index_spec(raw, level),
{
    let pat: u64 = if raw & pat_bit(level) != 0 {
        1
    } else {
        0
    };
    let i = (raw & (0x7f | G)) | (pat << 7) | ((raw >> 63) << 9);
    proof {
        assert(((raw & (0x7f | G)) | (pat << 7) | ((raw >> 63) << 9)) < 1024) by (bit_vector)
            requires
                pat <= 1,
        ;
    }
    i as u16
}

/// The value [`index_of`] computes.
pub open spec fn index_spec(raw: u64, level: u8) -> u16 {
    let pat: u64 = if raw & (if level == 1 { PAT_4K } else { PAT_HUGE }) != 0 {
        1
    } else {
        0
    };
    ((raw & (0x7f | G)) | (pat << 7) | ((raw >> 63) << 9)) as u16
}

/// The property the decode table holds at `index`: each of its ten bits
/// read as the entry bit it stands for.
#[inline]
pub const fn prop_of_index(index: u16) -> (r: Prop)
    requires
        index < 1024,
    ensures
        r.wf(),
        r == prop_of_index_spec(index),
{
    let i = index;
    let flags = (i & 1) as u8 | ((i & 2) as u8) | bit8(i & 0x200 == 0, 4) | bit8(i & 0x20 != 0, 8) | bit8(
        i & 0x40 != 0,
        16,
    );
    let privs = bit8(i & 4 != 0, 1) | bit8(i & 0x100 != 0, 2);
    let cache = cache_of(i & 0x80 != 0, i & 0x10 != 0, i & 0x8 != 0);
    proof {
        assert(((i & 1) as u8 | ((i & 2) as u8) | (if i & 0x200 == 0 { 4u8 } else { 0u8 }) | (if i & 0x20 != 0 {
            8u8
        } else {
            0u8
        }) | (if i & 0x40 != 0 { 16u8 } else { 0u8 })) < 32) by (bit_vector);
        assert(((if i & 4 != 0 { 1u8 } else { 0u8 }) | (if i & 0x100 != 0 { 2u8 } else { 0u8 })) < 4) by (bit_vector);
    }
    Prop { flags, cache, privs }
}

/// `value` if `set`, else 0.
#[inline]
const fn bit8(set: bool, value: u8) -> (r: u8)
    ensures
        r == (if set { value } else { 0 }),
{
    if set {
        value
    } else {
        0
    }
}

/// The cache policy of the PAT, PCD and PWT bits (the PAT layout kvirt
/// loads): 000 write-back, 001 write-through, 100 write-combining, 101
/// write-protected, anything else uncacheable.
#[inline]
pub const fn cache_of(pat: bool, pcd: bool, pwt: bool) -> (r: u8)
    ensures
        r < 5,
        r == cache_of_spec(pat, pcd, pwt),
{
    if !pat && !pcd && !pwt {
        0
    } else if !pat && !pcd && pwt {
        1
    } else if pat && !pcd && !pwt {
        3
    } else if pat && !pcd && pwt {
        4
    } else {
        2
    }
}

/// The value [`cache_of`] computes.
pub open spec fn cache_of_spec(pat: bool, pcd: bool, pwt: bool) -> u8 {
    if !pat && !pcd && !pwt {
        0
    } else if !pat && !pcd && pwt {
        1
    } else if pat && !pcd && !pwt {
        3
    } else if pat && !pcd && pwt {
        4
    } else {
        2
    }
}

/// The value [`prop_of_index`] computes.
pub open spec fn prop_of_index_spec(i: u16) -> Prop {
    Prop {
        flags: ((i & 1) as u8 | ((i & 2) as u8) | (if i & 0x200 == 0 { 4u8 } else { 0u8 }) | (if i & 0x20 != 0 {
            8u8
        } else {
            0u8
        }) | (if i & 0x40 != 0 { 16u8 } else { 0u8 })),
        cache: cache_of_spec(i & 0x80 != 0, i & 0x10 != 0, i & 0x8 != 0),
        privs: ((if i & 4 != 0 { 1u8 } else { 0u8 }) | (if i & 0x100 != 0 { 2u8 } else { 0u8 })),
    }
}

/// The property of a leaf word at `level`, read bit by bit: R is P, W is
/// W, X is not NX, ACCESSED is A, DIRTY is D, USER is U, GLOBAL is G, and
/// the cache policy is [`cache_of`] of its PAT, PCD and PWT bits.
pub open spec fn bitwise_prop(raw: u64, level: u8) -> Prop {
    let pat = if level == 1 { PAT_4K } else { PAT_HUGE };
    Prop {
        flags: ((if raw & P != 0 { 1u8 } else { 0u8 }) | (if raw & W != 0 { 2u8 } else { 0u8 }) | (if raw & NX == 0 {
            4u8
        } else {
            0u8
        }) | (if raw & A != 0 { 8u8 } else { 0u8 }) | (if raw & D != 0 { 16u8 } else { 0u8 })),
        cache: cache_of_spec(raw & pat != 0, raw & PCD != 0, raw & PWT != 0),
        privs: ((if raw & U != 0 { 1u8 } else { 0u8 }) | (if raw & G != 0 { 2u8 } else { 0u8 })),
    }
}

/// Decodes an entry found at `level` (1 to 4). Total: any word decodes.
#[inline]
pub const fn decode(raw: u64, level: u8) -> (r: Pte)
    requires
        1 <= level <= 4,
    ensures
        raw == 0 ==> r is Absent,
        raw & (P | NONE) == 0 <==> r is Absent,
        level == 1 ==> !(r is Table),
        level == 4 ==> !(r is Page),
        r matches Pte::Table(pa) ==> pa == raw & ADDR_MASK && (level == 4 || raw & PS == 0),
        r matches Pte::Page { pa, index, is_tracked } ==> {
            &&& pa == raw & addr_mask_spec(level)
            &&& index == index_spec(raw, level)
            &&& is_tracked == (raw & TRACKED != 0)
            &&& (level == 1 || raw & PS != 0)
        },
{
    proof {
        assert(0u64 & (P | NONE) == 0) by (bit_vector);
    }
    if raw & (P | NONE) == 0 {
        return Pte::Absent;
    }
    let is_leaf = level == 1 || (level <= 3 && raw & PS != 0);
    if !is_leaf {
        return Pte::Table(raw & ADDR_MASK);
    }
    Pte::Page { pa: raw & addr_mask(level), index: index_of(raw, level), is_tracked: raw & TRACKED != 0 }
}

/// The value [`addr_mask`] gives.
pub open spec fn addr_mask_spec(level: u8) -> u64 {
    if level == 1 {
        ADDR_MASK
    } else if level == 2 {
        0x000f_ffff_ffe0_0000
    } else {
        0x000f_ffff_c000_0000
    }
}

/// `pa` is a frame address a leaf at `level` can hold: below 2^52 and
/// aligned to the leaf's size.
pub open spec fn leaf_addr(pa: u64, level: u8) -> bool {
    pa & !addr_mask_spec(level) == 0
}

/// The table reads each of its ten bits as the word's bit it stands for.
pub proof fn lemma_table_decode_is_bitwise(raw: u64, level: u8)
    requires
        1 <= level <= 3,
    ensures
        prop_of_index_spec(index_spec(raw, level)) == bitwise_prop(raw, level),
{
    let pat = if level == 1 { PAT_4K } else { PAT_HUGE };
    let p: u64 = if raw & pat != 0 { 1 } else { 0 };
    let i = ((raw & (0x7f | G)) | (p << 7) | ((raw >> 63) << 9)) as u16;
    assert(index_spec(raw, level) == i);
    assert((i & 1 != 0) == (raw & P != 0) && (i & 2 != 0) == (raw & W != 0) && (i & 4 != 0) == (raw & U != 0) && (i
        & 8 != 0) == (raw & PWT != 0) && (i & 0x10 != 0) == (raw & PCD != 0) && (i & 0x20 != 0) == (raw & A != 0) && (i
        & 0x40 != 0) == (raw & D != 0) && (i & 0x80 != 0) == (p == 1) && (i & 0x100 != 0) == (raw & G != 0) && (i
        & 0x200 != 0) == (raw & NX != 0)) by (bit_vector)
        requires
            p <= 1,
            i == ((raw & (0x7fu64 | 0x100u64)) | (p << 7u64) | ((raw >> 63u64) << 9u64)) as u16,
    ;
    assert(((i & 1) as u8 | ((i & 2) as u8)) == ((if i & 1 != 0 { 1u8 } else { 0u8 }) | (if i & 2 != 0 {
        2u8
    } else {
        0u8
    }))) by (bit_vector);
}

/// An encoded leaf decodes as what was encoded.
pub proof fn lemma_leaf_round_trip(pa: u64, level: u8, prop: Prop, is_tracked: bool)
    requires
        1 <= level <= 3,
        prop.wf(),
        leaf_addr(pa, level),
    ensures
        encode_page_spec(pa, level, prop, is_tracked) != 0,
        ({
            let raw = encode_page_spec(pa, level, prop, is_tracked);
            &&& raw & (P | NONE) != 0
            &&& (level == 1 || raw & PS != 0)
            &&& raw & addr_mask_spec(level) == pa
            &&& (raw & TRACKED != 0) == is_tracked
            &&& bitwise_prop(raw, level) == prop
            &&& prop_of_index_spec(index_spec(raw, level)) == prop
        }),
{
    let raw = encode_page_spec(pa, level, prop, is_tracked);
    let f = prop.flags;
    let pv = prop.privs;
    let c = prop.cache;
    let mask = addr_mask_spec(level);
    let lvl1 = level == 1;
    let pat: u64 = if level == 1 { PAT_4K } else { PAT_HUGE };
    let ca: u64 = if c == 0 {
        0
    } else if c == 1 {
        PWT
    } else if c == 2 {
        PCD | PWT
    } else if c == 3 {
        pat
    } else {
        pat | PWT
    };
    let (r, w, x, a, d) = (f & 1 != 0, f & 2 != 0, f & 4 != 0, f & 8 != 0, f & 16 != 0);
    let (u, g) = (pv & 1 != 0, pv & 2 != 0);
    assert(raw == pa | (if r { 1u64 } else { 0u64 }) | (if !r { 0x400u64 } else { 0u64 }) | (if w {
        2u64
    } else {
        0u64
    }) | (if !x { 0x8000_0000_0000_0000u64 } else { 0u64 }) | (if a { 0x20u64 } else { 0u64 }) | (if d {
        0x40u64
    } else {
        0u64
    }) | (if u { 4u64 } else { 0u64 }) | (if g { 0x100u64 } else { 0u64 }) | ca | (if !lvl1 {
        0x80u64
    } else {
        0u64
    }) | (if is_tracked { 0x200u64 } else { 0u64 }));
    assert(pat == 0x80 || pat == 0x1000);
    assert(ca & !(0x18u64 | pat) == 0 && (ca & pat != 0) == (c == 3 || c == 4) && (ca & 0x10 != 0) == (c == 2) && (ca
        & 8 != 0) == (c == 1 || c == 2 || c == 4)) by (bit_vector)
        requires
            c < 5,
            pat == 0x80u64 || pat == 0x1000u64,
            ca == (if c == 0 { 0u64 } else if c == 1 { PWT } else if c == 2 { PCD | PWT } else if c == 3 {
                pat
            } else {
                pat | PWT
            }),
    ;
    assert(raw != 0 && raw & mask == pa && raw & (P | NONE) != 0 && (raw & TRACKED != 0) == is_tracked && (raw & P != 0)
        == r && (raw & W != 0) == w && (raw & NX == 0) == x && (raw & A != 0) == a && (raw & D != 0) == d && (raw & U
        != 0) == u && (raw & G != 0) == g && (!lvl1 ==> raw & PS != 0) && (raw & pat != 0) == (ca & pat != 0) && (raw
        & PCD != 0) == (ca & 0x10 != 0) && (raw & PWT != 0) == (ca & 8 != 0)) by (bit_vector)
        requires
            raw == pa | (if r { 1u64 } else { 0u64 }) | (if !r { 0x400u64 } else { 0u64 }) | (if w {
                2u64
            } else {
                0u64
            }) | (if !x { 0x8000_0000_0000_0000u64 } else { 0u64 }) | (if a { 0x20u64 } else { 0u64 }) | (if d {
                0x40u64
            } else {
                0u64
            }) | (if u { 4u64 } else { 0u64 }) | (if g { 0x100u64 } else { 0u64 }) | ca | (if !lvl1 {
                0x80u64
            } else {
                0u64
            }) | (if is_tracked { 0x200u64 } else { 0u64 }),
            pa & !mask == 0,
            lvl1 ==> mask == 0x000f_ffff_ffff_f000u64 && pat == 0x80u64,
            !lvl1 ==> (mask == 0x000f_ffff_ffe0_0000u64 || mask == 0x000f_ffff_c000_0000u64) && pat == 0x1000u64,
            ca & !(0x18u64 | pat) == 0,
    ;
    assert(f < 32 ==> ((if r { 1u8 } else { 0u8 }) | (if w { 2u8 } else { 0u8 }) | (if x { 4u8 } else { 0u8 }) | (if a {
        8u8
    } else {
        0u8
    }) | (if d { 16u8 } else { 0u8 })) == f) by (bit_vector)
        requires
            r == (f & 1 != 0),
            w == (f & 2 != 0),
            x == (f & 4 != 0),
            a == (f & 8 != 0),
            d == (f & 16 != 0),
    ;
    assert(pv < 4 ==> ((if u { 1u8 } else { 0u8 }) | (if g { 2u8 } else { 0u8 })) == pv) by (bit_vector)
        requires
            u == (pv & 1 != 0),
            g == (pv & 2 != 0),
    ;
    lemma_table_decode_is_bitwise(raw, level);
}

/// A table entry decodes as a table wherever a table may be.
pub proof fn lemma_table_round_trip(pa: u64, level: u8)
    requires
        2 <= level <= 4,
        pa & !ADDR_MASK == 0,
    ensures
        pa | P | W | U != 0,
        ({
            let raw = pa | P | W | U;
            &&& raw & (P | NONE) != 0
            &&& raw & PS == 0
            &&& raw & ADDR_MASK == pa
        }),
{
    assert(pa | P | W | U != 0 && (pa | P | W | U) & (P | NONE) != 0 && (pa | P | W | U) & PS == 0 && (pa | P | W | U)
        & ADDR_MASK == pa) by (bit_vector)
        requires
            pa & !ADDR_MASK == 0,
    ;
}

/// Mapping a run of pages alike: everything but the address is computed
/// once, and each page ORs its address in.
pub proof fn lemma_encoder_is_or(pa: u64, level: u8, prop: Prop, is_tracked: bool)
    requires
        1 <= level <= 3,
        prop.wf(),
        leaf_addr(pa, level),
    ensures
        encode_page_spec(pa, level, prop, is_tracked) == encode_page_spec(0, level, prop, is_tracked) | pa,
{
    let f = prop.flags;
    let pv = prop.privs;
    let pat = if level == 1 { PAT_4K } else { PAT_HUGE };
    let b1: u64 = if f & 1 != 0 { P } else { 0 };
    let b2: u64 = if f & 1 == 0 { NONE } else { 0 };
    let b3: u64 = if f & 2 != 0 { W } else { 0 };
    let b4: u64 = if f & 4 == 0 { NX } else { 0 };
    let b5: u64 = if f & 8 != 0 { A } else { 0 };
    let b6: u64 = if f & 16 != 0 { D } else { 0 };
    let b7: u64 = if pv & 1 != 0 { U } else { 0 };
    let b8: u64 = if pv & 2 != 0 { G } else { 0 };
    let b9: u64 = if prop.cache == 0 {
        0
    } else if prop.cache == 1 {
        PWT
    } else if prop.cache == 2 {
        PCD | PWT
    } else if prop.cache == 3 {
        pat
    } else {
        pat | PWT
    };
    let b10: u64 = if level > 1 { PS } else { 0 };
    let b11: u64 = if is_tracked { TRACKED } else { 0 };
    let raw = encode_page_spec(pa, level, prop, is_tracked);
    let rest = encode_page_spec(0, level, prop, is_tracked);
    assert(raw == pa | b1 | b2 | b3 | b4 | b5 | b6 | b7 | b8 | b9 | b10 | b11);
    assert(rest == 0 | b1 | b2 | b3 | b4 | b5 | b6 | b7 | b8 | b9 | b10 | b11);
    assert(pa | b1 | b2 | b3 | b4 | b5 | b6 | b7 | b8 | b9 | b10 | b11 == (0 | b1 | b2 | b3 | b4 | b5 | b6 | b7 | b8
        | b9 | b10 | b11) | pa) by (bit_vector);
}

} // verus!
