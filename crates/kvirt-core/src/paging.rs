//! Paging arithmetic: page sizes, entry indices, alignment, canonical
//! addresses and the checks on cursor ranges.
//!
//! A paging format is given by plain numbers here: `entry_bits` (log2 of
//! the entries in a node, at most 9 so that a node of 8-byte entries fits
//! in its 4 KiB page) and a `level` (1 for base pages up to at most 5). The
//! meaning is stated over mathematical integers with `pow2`:
//!
//! * a leaf at `level` maps `pow2(level_shift(entry_bits, level))` bytes,
//!   where `level_shift = 12 + entry_bits * (level - 1)`;
//! * the index of `va` in a node at `level` is
//!   `(va / pow2(level_shift)) % pow2(entry_bits)`, and the indices of all
//!   levels together with the offset in the base page give `va` back
//!   (`lemma_index_steps_reconstruct`);
//! * `is_aligned(v, a)` is `v % a == 0`; `align_down(v, a)` is the multiple
//!   of `a` at or below `v` and `checked_align_up(v, a)` the one at or
//!   above it, or `None` exactly when that does not fit in `usize`.
//!
//! The proofs bridge the machine operations (shifts and masks) and this
//! meaning with vstd's lemmas on shifts and low-bit masks, and with
//! `bit_vector` reasoning where the operands are all machine words.

use vstd::prelude::*;

#[cfg(verus_keep_ghost)]
use vstd::arithmetic::div_mod::{lemma_div_pos_is_pos, lemma_mod_breakdown};
#[cfg(verus_keep_ghost)]
use vstd::arithmetic::power2::{lemma_pow2_adds, lemma_pow2_pos, lemma_pow2_strictly_increases, pow2};
#[cfg(verus_keep_ghost)]
use vstd::bits::{
    lemma_usize_low_bits_mask_is_mod, lemma_usize_pow2_no_overflow, lemma_usize_shl_is_mul,
    lemma_usize_shr_is_div, low_bits_mask,
};

verus! {

global size_of usize == 8;

/// The base page size of every format kvirt supports.
pub const PAGE_SIZE: usize = 4096;

/// The highest level a format may have.
pub const MAX_LEVELS: u8 = 5;

/// The most index bits a node may have (512 entries of 8 bytes in 4 KiB).
pub const MAX_ENTRY_BITS: u32 = 9;

/// A level of a format with `entry_bits` index bits per node.
pub open spec fn valid_level(entry_bits: u32, level: u8) -> bool {
    1 <= entry_bits <= MAX_ENTRY_BITS && 1 <= level <= MAX_LEVELS
}

/// log2 of the bytes a leaf at `level` maps.
pub open spec fn level_shift(entry_bits: u32, level: u8) -> nat {
    (12 + entry_bits * (level - 1)) as nat
}

/// The bytes a leaf at `level` maps.
pub open spec fn level_size(entry_bits: u32, level: u8) -> nat {
    pow2(level_shift(entry_bits, level))
}

/// The index `va` selects in a node at `level`.
pub open spec fn index_at(va: nat, entry_bits: u32, level: u8) -> nat {
    (va / level_size(entry_bits, level)) % pow2(entry_bits as nat)
}

/// `align` is a power of two that a `usize` holds.
pub open spec fn is_pow2(align: usize) -> bool {
    exists|n: nat| n < 64 && align == pow2(n)
}

/// `pow2(n)` for small `n`, as the machine computes it.
proof fn lemma_shl_one(n: usize)
    requires
        n < 64,
    ensures
        (1usize << n) as nat == pow2(n as nat),
        pow2(n as nat) <= usize::MAX,
        pow2(n as nat) > 0,
{
    lemma_usize_pow2_no_overflow(n as nat);
    lemma_pow2_pos(n as nat);
    lemma_usize_shl_is_mul(1, n);
}

/// The shift of a level, as the machine computes it.
#[inline]
pub const fn page_shift(entry_bits: u32, level: u8) -> (r: u32)
    requires
        valid_level(entry_bits, level),
    ensures
        r as nat == level_shift(entry_bits, level),
        12 <= r <= 48,
{
    proof {
        assert(entry_bits * (level - 1) <= 36) by (nonlinear_arith)
            requires
                1 <= entry_bits <= 9,
                1 <= level <= 5,
        ;
    }
    12 + entry_bits * (level as u32 - 1)
}

/// The number of bytes a leaf at `level` maps.
#[inline]
pub const fn page_size(entry_bits: u32, level: u8) -> (r: usize)
    requires
        valid_level(entry_bits, level),
    ensures
        r as nat == level_size(entry_bits, level),
        r >= PAGE_SIZE,
{
    let shift = page_shift(entry_bits, level);
    proof {
        lemma_shl_one(shift as usize);
        lemma_shl_one(12);
        lemma_pow2_strictly_increases_or_equal(12, shift as nat);
        assert((1usize << 12usize) == 4096) by (bit_vector);
    }
    1usize << shift
}

proof fn lemma_pow2_strictly_increases_or_equal(a: nat, b: nat)
    requires
        a <= b,
    ensures
        pow2(a) <= pow2(b),
{
    if a < b {
        lemma_pow2_strictly_increases(a, b);
    }
}

/// The index into a node at `level` that `va` selects.
#[inline]
pub const fn pte_index(va: usize, entry_bits: u32, level: u8) -> (r: usize)
    requires
        valid_level(entry_bits, level),
    ensures
        r as nat == index_at(va as nat, entry_bits, level),
        (r as nat) < pow2(entry_bits as nat),
{
    let shift = page_shift(entry_bits, level);
    proof {
        lemma_shl_one(entry_bits as usize);
    }
    let mask = (1usize << entry_bits) - 1;
    proof {
        lemma_shl_one(shift as usize);
        lemma_usize_shr_is_div(va, shift as usize);
        let q = va >> shift;
        lemma_usize_low_bits_mask_is_mod(q, entry_bits as nat);
        assert(q as nat % pow2(entry_bits as nat) < pow2(entry_bits as nat)) by {
            vstd::arithmetic::div_mod::lemma_mod_bound(q as int, pow2(entry_bits as nat) as int);
        };
    }
    (va >> shift) & mask
}

/// The index of `va` at `level`, with the offset below it, gives the
/// offset of `va` below the next level: applied from level 1 up, the
/// indices of every level and the offset in the base page rebuild `va`.
pub proof fn lemma_index_steps_reconstruct(va: nat, entry_bits: u32, level: u8)
    requires
        valid_level(entry_bits, level),
        level < MAX_LEVELS,
    ensures
        level_shift(entry_bits, (level + 1) as u8) == level_shift(entry_bits, level) + entry_bits,
        va % level_size(entry_bits, (level + 1) as u8) == index_at(va, entry_bits, level) * level_size(
            entry_bits,
            level,
        ) + va % level_size(entry_bits, level),
{
    let s = level_shift(entry_bits, level);
    let e = entry_bits as nat;
    assert(entry_bits * level == entry_bits * (level - 1) + entry_bits) by (nonlinear_arith);
    lemma_pow2_pos(s);
    lemma_pow2_pos(e);
    lemma_pow2_adds(s, e);
    lemma_mod_breakdown(va as int, pow2(s) as int, pow2(e) as int);
    let q = (va / pow2(s)) % pow2(e);
    assert(pow2(s) * q == q * pow2(s)) by (nonlinear_arith);
    assert(level_size(entry_bits, (level + 1) as u8) == pow2(s) * pow2(e));
    assert(va % level_size(entry_bits, (level + 1) as u8) == (va as int) % ((pow2(s) as int) * (pow2(e) as int)));
}

/// The addresses an entry at `level` covers, for `va` inside it (a node
/// at `level` covers the range of its parent entry, at `level + 1`): its
/// start is `va` rounded down to the entry's size; its end is the start
/// plus the size, or `usize::MAX` at the very top of the address space
/// (whose last byte no range reaches, so the last page is never mapped).
#[inline]
pub const fn entry_range(va: usize, entry_bits: u32, level: u8) -> (r: (usize, usize))
    requires
        valid_level(entry_bits, level),
    ensures
        r.0 == va as nat - va as nat % level_size(entry_bits, level),
        r.0 as nat % level_size(entry_bits, level) == 0,
        r.0 <= va,
        r.0 + level_size(entry_bits, level) <= usize::MAX ==> r.1 == r.0 + level_size(entry_bits, level),
        r.0 + level_size(entry_bits, level) > usize::MAX ==> r.1 == usize::MAX,
{
    let size = page_size(entry_bits, level);
    proof {
        let n = level_shift(entry_bits, level);
        assert(n <= 48) by (nonlinear_arith)
            requires
                n == 12 + entry_bits * (level - 1),
                1 <= entry_bits <= 9,
                1 <= level <= 5,
        ;
        assert(size == pow2(n));
        assert(is_pow2(size));
    }
    let start = align_down(va, size);
    let end = if start > usize::MAX - size {
        usize::MAX
    } else {
        start + size
    };
    (start, end)
}

/// Whether `value` is a multiple of `align` (a power of two).
#[inline]
pub const fn is_aligned(value: usize, align: usize) -> (r: bool)
    requires
        is_pow2(align),
    ensures
        r == (value % align == 0),
{
    proof {
        let n = choose|n: nat| n < 64 && align == pow2(n);
        lemma_shl_one(n as usize);
        lemma_usize_low_bits_mask_is_mod(value, n);
    }
    value & (align - 1) == 0
}

/// Whether `value` is a multiple of [`PAGE_SIZE`].
#[inline]
pub const fn is_page_aligned(value: usize) -> (r: bool)
    ensures
        r == (value % PAGE_SIZE == 0),
{
    proof {
        lemma_shl_one(12);
        assert((1usize << 12usize) == 4096) by (bit_vector);
    }
    is_aligned(value, PAGE_SIZE)
}

/// Rounds `value` down to a multiple of `align` (a power of two).
#[inline]
pub const fn align_down(value: usize, align: usize) -> (r: usize)
    requires
        is_pow2(align),
    ensures
        r == value - value % align,
        r % align == 0,
        r <= value,
{
    proof {
        let n = choose|n: nat| n < 64 && align == pow2(n);
        lemma_shl_one(n as usize);
        lemma_usize_low_bits_mask_is_mod(value, n);
        let m = (align - 1) as usize;
        assert((value & !m) == value - (value & m)) by (bit_vector);
        vstd::arithmetic::div_mod::lemma_sub_mod_noop_right(value as int, value as int, align as int);
        vstd::arithmetic::div_mod::lemma_mod_self_0(align as int);
        vstd::arithmetic::div_mod::lemma_fundamental_div_mod(value as int, align as int);
        vstd::arithmetic::div_mod::lemma_mod_multiples_basic(value as int / align as int, align as int);
    }
    value & !(align - 1)
}

/// Rounds `value` up to a multiple of `align` (a power of two), or `None`
/// exactly when the result does not fit in `usize`.
#[inline]
pub const fn checked_align_up(value: usize, align: usize) -> (r: Option<usize>)
    requires
        is_pow2(align),
    ensures
        r is None <==> value + (align - 1) > usize::MAX,
        r matches Some(up) ==> up % align == 0 && value <= up && up < value + align,
{
    proof {
        let n = choose|n: nat| n < 64 && align == pow2(n);
        lemma_pow2_pos(n);
    }
    if value > usize::MAX - (align - 1) {
        None
    } else {
        let bumped = value + (align - 1);
        let up = align_down(bumped, align);
        proof {
            vstd::arithmetic::div_mod::lemma_mod_bound(bumped as int, align as int);
            vstd::arithmetic::div_mod::lemma_fundamental_div_mod(value as int, align as int);
            vstd::arithmetic::div_mod::lemma_fundamental_div_mod(bumped as int, align as int);
            lemma_align_up_bounds(value as int, align as int);
        }
        Some(up)
    }
}

/// The multiple of `a` at or below `v + a - 1` lies in `v..v + a`.
proof fn lemma_align_up_bounds(v: int, a: int)
    requires
        v >= 0,
        a > 0,
    ensures
        v <= (v + a - 1) - (v + a - 1) % a < v + a,
{
    vstd::arithmetic::div_mod::lemma_fundamental_div_mod(v, a);
    vstd::arithmetic::div_mod::lemma_fundamental_div_mod(v + a - 1, a);
    vstd::arithmetic::div_mod::lemma_mod_bound(v + a - 1, a);
    vstd::arithmetic::div_mod::lemma_mod_bound(v, a);
    let r = v % a;
    if r == 0 {
        vstd::arithmetic::div_mod::lemma_mod_add_multiples_vanish(v + a - 1 - a, a);
        assert((v + a - 1) % a == a - 1) by {
            vstd::arithmetic::div_mod::lemma_add_mod_noop(v, a - 1, a);
            vstd::arithmetic::div_mod::lemma_small_mod((a - 1) as nat, a as nat);
        };
    } else {
        assert((v + a - 1) % a == r - 1) by {
            vstd::arithmetic::div_mod::lemma_add_mod_noop(v, a - 1, a);
            vstd::arithmetic::div_mod::lemma_small_mod((a - 1) as nat, a as nat);
            vstd::arithmetic::div_mod::lemma_mod_adds(r, a - 1, a);
            vstd::arithmetic::div_mod::lemma_small_mod((r - 1) as nat, a as nat);
            vstd::arithmetic::div_mod::lemma_mod_add_multiples_vanish(r - 1, a);
        };
    }
}

/// The value [`sign_extend`] computes.
pub open spec fn sign_extended(va: usize, va_bits: u32, sign: bool) -> usize {
    let bits = va_bits as usize;
    if sign && va_bits < 64 && va & (1usize << ((bits - 1) as usize)) != 0 {
        va | !(((1usize << bits) - 1) as usize)
    } else {
        va
    }
}

/// `va` in canonical form for a `va_bits`-bit address space: if `sign`
/// (x86-64, RISC-V) and bit `va_bits - 1` is set, every bit above it is
/// set too. Zero-extended spaces, and 64-bit ones, keep `va`.
#[inline]
pub const fn sign_extend(va: usize, va_bits: u32, sign: bool) -> (r: usize)
    requires
        1 <= va_bits <= 64,
    ensures
        r == sign_extended(va, va_bits, sign),
        !sign || va_bits == 64 ==> r == va,
        // Below 2^va_bits, the low bits are kept and the bits from
        // va_bits - 1 up are all equal: the address is canonical.
        sign && va_bits < 64 && va < (1usize << (va_bits as usize)) ==> r & (((1usize << (va_bits as usize)) - 1) as usize)
            == va && ((r >> ((va_bits - 1) as usize)) == 0 || (r >> ((va_bits - 1) as usize)) == (usize::MAX >> (
        (va_bits - 1) as usize))),
{
    if sign && va_bits < 64 {
        let bits = va_bits as usize;
        proof {
            lemma_shl_one(bits);
        }
        if va & (1usize << (bits - 1)) != 0 {
            let r = va | !((1usize << bits) - 1);
            proof {
                assert(va < (1usize << bits) ==> (r & (((1usize << bits) - 1) as usize)) == va && (r >> ((bits - 1) as usize))
                    == usize::MAX >> ((bits - 1) as usize)) by (bit_vector)
                    requires
                        1 <= bits < 64,
                        va & (1usize << ((bits - 1) as usize)) != 0,
                        r == va | !(((1usize << bits) - 1) as usize),
                ;
            }
            r
        } else {
            proof {
                assert(va < (1usize << bits) ==> (va & (((1usize << bits) - 1) as usize)) == va && (va >> ((bits - 1) as usize))
                    == 0) by (bit_vector)
                    requires
                        1 <= bits < 64,
                        va & (1usize << ((bits - 1) as usize)) == 0,
                ;
            }
            va
        }
    } else {
        va
    }
}

/// What [`check_range`] says of a cursor range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeCheck {
    /// A non-empty, page-aligned range inside the covered addresses.
    Ok,
    /// `start == end`.
    Empty,
    /// `start > end`.
    Reversed,
    /// `start` or `end` is not page aligned.
    Misaligned,
    /// The range reaches below `first` or above `last`.
    OutOfBounds,
}

/// The rules on a cursor range `start..end` of a table covering
/// `first..=last`, the first broken one first.
pub open spec fn range_check_spec(start: usize, end: usize, first: usize, last: usize) -> RangeCheck {
    if start == end {
        RangeCheck::Empty
    } else if start > end {
        RangeCheck::Reversed
    } else if start % 4096 != 0 || end % 4096 != 0 {
        RangeCheck::Misaligned
    } else if start < first || end - 1 > last {
        RangeCheck::OutOfBounds
    } else {
        RangeCheck::Ok
    }
}

/// Checks a cursor range `start..end` against a table covering
/// `first..=last` (see `range_check_spec`).
#[inline]
pub const fn check_range(start: usize, end: usize, first: usize, last: usize) -> (r: RangeCheck)
    ensures
        r == range_check_spec(start, end, first, last),
        r is Ok <==> start < end && start % 4096 == 0 && end % 4096 == 0 && first <= start && end - 1 <= last,
{
    if start == end {
        RangeCheck::Empty
    } else if start > end {
        RangeCheck::Reversed
    } else if !is_page_aligned(start) || !is_page_aligned(end) {
        RangeCheck::Misaligned
    } else if start < first || end - 1 > last {
        RangeCheck::OutOfBounds
    } else {
        RangeCheck::Ok
    }
}

/// The first and last address of the root entries `lo..hi` of a table
/// with `nr_levels` levels, in canonical form.
#[inline]
pub const fn root_entries_bounds(entry_bits: u32, nr_levels: u8, lo: usize, hi: usize, sign: bool) -> (r: (
    usize,
    usize,
))
    requires
        valid_level(entry_bits, nr_levels),
        lo < hi,
        hi as nat <= pow2(entry_bits as nat),
    ensures
        r.0 == sign_extended((lo as nat * level_size(entry_bits, nr_levels)) as usize, va_bits_of(entry_bits, nr_levels), sign),
        r.1 == sign_extended(
            (hi as nat * level_size(entry_bits, nr_levels) - 1) as usize,
            va_bits_of(entry_bits, nr_levels),
            sign,
        ),
{
    let top = page_size(entry_bits, nr_levels);
    let va_bits = page_shift(entry_bits, nr_levels) + entry_bits;
    proof {
        let s = level_shift(entry_bits, nr_levels);
        let e = entry_bits as nat;
        lemma_pow2_adds(e, s);
        assert(s + e <= 57) by (nonlinear_arith)
            requires
                s == 12 + entry_bits * (nr_levels - 1),
                e == entry_bits,
                entry_bits <= 9,
                nr_levels <= 5,
        ;
        lemma_pow2_strictly_increases_or_equal(s + e, 57);
        lemma_usize_pow2_no_overflow(57);
        assert(hi * top <= pow2(e) * pow2(s)) by (nonlinear_arith)
            requires
                hi <= pow2(e),
                top == pow2(s),
        ;
        assert(lo * top < hi * top) by (nonlinear_arith)
            requires
                lo < hi,
                top > 0,
        ;
    }
    let first = sign_extend(lo * top, va_bits, sign);
    let last = sign_extend(hi * top - 1, va_bits, sign);
    (first, last)
}

/// The virtual address bits a table of `nr_levels` levels translates.
pub open spec fn va_bits_of(entry_bits: u32, nr_levels: u8) -> u32 {
    (level_shift(entry_bits, nr_levels) + entry_bits) as u32
}

} // verus!
