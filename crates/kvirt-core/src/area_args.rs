//! The argument checks of kernel virtual areas: what `map_frames`,
//! `map_untracked_frames`, `query`, `split` and the byte accessors check
//! before they touch anything.
//!
//! Each check returns the first rule its arguments break, in the order
//! kvirt reports them, and is proven equal to the specification's
//! conditions written as `spec fn`s over mathematical integers, so that no
//! sum in a check can overflow unnoticed:
//!
//! * [`check_area_args`] against `map_frames_accepts` (the requires and
//!   the `# Panics` list of OSTD's verified `map_frames`, which kvirt turns
//!   into typed errors), plus kvirt's refusal of user-accessible
//!   properties (`lemma_map_frames_checks`);
//! * [`check_untracked_args`] against `map_untracked_frames_accepts`
//!   (kvirt also refuses a reversed physical range, which the
//!   specification's `nat` subtraction lets through:
//!   `lemma_map_untracked_frames_checks`). The rule that the range holds
//!   no tracked page needs the frame allocator and stays in kvirt;
//! * [`query_addr_ok`]: the address part of `query`'s requires;
//! * [`split_offset_ok`]: `split`'s offset rule;
//! * [`access_in_bounds`]: the bounds of `read_bytes` / `write_bytes`.
//!
//! The specification also asks `area_size <= usize::MAX / 2`; kvirt does
//! not need it, because every sum here is checked (see
//! `docs/VERIFICATION.md`, rows 4 and 20).

use vstd::prelude::*;

use crate::paging::is_page_aligned;

verus! {

/// The first rule the arguments of an area constructor break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AreaArgs {
    /// Every rule holds.
    Ok,
    /// `area_size == 0`.
    ZeroSize,
    /// `area_size` is not a multiple of the page size.
    MisalignedSize,
    /// `map_offset` is not a multiple of the page size.
    MisalignedOffset,
    /// `map_offset >= area_size`.
    OffsetOutOfArea,
    /// `map_offset + len > area_size` (as integers).
    MappingExceedsArea,
    /// The property is user accessible.
    UserAccessible,
}

/// The rules, in order, over integers: `len` is the bytes to map.
pub open spec fn area_args_spec(area_size: usize, map_offset: usize, len: int, user: bool) -> AreaArgs {
    if area_size == 0 {
        AreaArgs::ZeroSize
    } else if area_size % 4096 != 0 {
        AreaArgs::MisalignedSize
    } else if map_offset % 4096 != 0 {
        AreaArgs::MisalignedOffset
    } else if map_offset >= area_size {
        AreaArgs::OffsetOutOfArea
    } else if map_offset + len > area_size {
        AreaArgs::MappingExceedsArea
    } else if user {
        AreaArgs::UserAccessible
    } else {
        AreaArgs::Ok
    }
}

/// Checks an area constructor's arguments; `len` is the bytes to map.
#[inline]
pub const fn check_area_args(area_size: usize, map_offset: usize, len: usize, user: bool) -> (r: AreaArgs)
    ensures
        r == area_args_spec(area_size, map_offset, len as int, user),
{
    if area_size == 0 {
        AreaArgs::ZeroSize
    } else if !is_page_aligned(area_size) {
        AreaArgs::MisalignedSize
    } else if !is_page_aligned(map_offset) {
        AreaArgs::MisalignedOffset
    } else if map_offset >= area_size {
        AreaArgs::OffsetOutOfArea
    } else if len > area_size - map_offset {
        AreaArgs::MappingExceedsArea
    } else if user {
        AreaArgs::UserAccessible
    } else {
        AreaArgs::Ok
    }
}

/// The bytes of `nr_pages` pages, or `usize::MAX` if that overflows (no
/// area can be that large, so the check above refuses it all the same).
#[inline]
pub const fn pages_len(nr_pages: usize) -> (r: usize)
    ensures
        nr_pages * 4096 <= usize::MAX ==> r == nr_pages * 4096,
        nr_pages * 4096 > usize::MAX ==> r == usize::MAX,
{
    if nr_pages > usize::MAX / 4096 {
        usize::MAX
    } else {
        nr_pages * 4096
    }
}

/// OSTD's verified `map_frames` accepts these arguments: its requires
/// (`0 < area_size`, `map_offset < area_size`, `map_offset % PAGE_SIZE ==
/// 0`, `frames.len() * PAGE_SIZE + map_offset <= area_size`) hold and none
/// of its panic conditions (a misaligned size or offset, the frames
/// exceeding the area) does. Its `area_size <= usize::MAX / 2` is left out
/// (see the module documentation).
pub open spec fn map_frames_accepts(area_size: usize, map_offset: usize, nr_frames: usize) -> bool {
    &&& 0 < area_size
    &&& map_offset < area_size
    &&& map_offset % 4096 == 0
    &&& nr_frames as int * 4096 + map_offset as int <= area_size as int
    &&& !(area_size % 4096 != 0)
    &&& !(map_offset % 4096 != 0)
    &&& !(map_offset as int + nr_frames as int * 4096 > area_size as int)
}

/// kvirt creates a tracked area exactly when the specification accepts
/// the arguments and the property is not user accessible.
pub proof fn lemma_map_frames_checks(area_size: usize, map_offset: usize, nr_frames: usize, user: bool)
    ensures
        area_args_spec(area_size, map_offset, pages_len_spec(nr_frames), user) is Ok <==> map_frames_accepts(
            area_size,
            map_offset,
            nr_frames,
        ) && !user,
{
}

/// The value [`pages_len`] computes, as an integer.
pub open spec fn pages_len_spec(nr_pages: usize) -> int {
    if nr_pages * 4096 > usize::MAX {
        usize::MAX as int
    } else {
        nr_pages * 4096
    }
}

/// The first rule the arguments of an untracked area break (the rule on
/// tracked pages aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UntrackedArgs {
    /// Every rule checked here holds.
    Ok,
    /// `pa_start > pa_end`.
    Reversed,
    /// A rule shared with tracked areas.
    Area(AreaArgs),
    /// `pa_start` or `pa_end` is not page aligned.
    MisalignedPaddr,
    /// `pa_end` is beyond what the format can map (`2^pa_bits`).
    PaddrTooLarge,
}

/// The rules, in order.
pub open spec fn untracked_args_spec(
    area_size: usize,
    map_offset: usize,
    pa_start: usize,
    pa_end: usize,
    pa_bits: u32,
    user: bool,
) -> UntrackedArgs {
    if pa_start > pa_end {
        UntrackedArgs::Reversed
    } else if !(area_args_spec(area_size, map_offset, pa_end - pa_start, user) is Ok) {
        UntrackedArgs::Area(area_args_spec(area_size, map_offset, pa_end - pa_start, user))
    } else if pa_start % 4096 != 0 || pa_end % 4096 != 0 {
        UntrackedArgs::MisalignedPaddr
    } else if pa_end > vstd::arithmetic::power2::pow2(pa_bits as nat) {
        UntrackedArgs::PaddrTooLarge
    } else {
        UntrackedArgs::Ok
    }
}

/// Checks an untracked area's arguments, but for the rule on tracked
/// pages, for a format whose physical addresses are below `2^pa_bits`.
#[inline]
pub const fn check_untracked_args(
    area_size: usize,
    map_offset: usize,
    pa_start: usize,
    pa_end: usize,
    pa_bits: u32,
    user: bool,
) -> (r: UntrackedArgs)
    requires
        pa_bits <= 64,
    ensures
        r == untracked_args_spec(area_size, map_offset, pa_start, pa_end, pa_bits, user),
{
    if pa_start > pa_end {
        return UntrackedArgs::Reversed;
    }
    let area = check_area_args(area_size, map_offset, pa_end - pa_start, user);
    if !matches!(area, AreaArgs::Ok) {
        return UntrackedArgs::Area(area);
    }
    if !is_page_aligned(pa_start) || !is_page_aligned(pa_end) {
        return UntrackedArgs::MisalignedPaddr;
    }
    if !paddr_range_fits(0, pa_end, pa_bits) {
        return UntrackedArgs::PaddrTooLarge;
    }
    UntrackedArgs::Ok
}

/// `size` bytes at physical `pa` lie below `2^pa_bits`: a format with
/// `pa_bits` address bits can map them.
#[inline]
pub const fn paddr_range_fits(pa: usize, size: usize, pa_bits: u32) -> (r: bool)
    requires
        pa_bits <= 64,
    ensures
        r == (pa + size <= vstd::arithmetic::power2::pow2(pa_bits as nat)),
{
    if pa_bits < 64 {
        proof {
            vstd::bits::lemma_usize_pow2_no_overflow(pa_bits as nat);
            vstd::bits::lemma_usize_shl_is_mul(1, pa_bits as usize);
        }
        let limit = 1usize << pa_bits;
        pa <= limit && size <= limit - pa
    } else {
        proof {
            vstd::arithmetic::power2::lemma2_to64();
            vstd::arithmetic::power2::lemma2_to64_rest();
        }
        pa == 0 || size <= usize::MAX - (pa - 1)
    }
}

/// OSTD's verified `map_untracked_frames` accepts these arguments (the
/// rule on tracked pages aside): its requires hold (`0 < area_size`,
/// aligned offset inside the area, the range's length within what is left
/// of the area, as `nat` subtraction, its end at most `MAX_PADDR`, both
/// ends aligned) and none of its arithmetic panic conditions does.
pub open spec fn map_untracked_frames_accepts(
    area_size: usize,
    map_offset: usize,
    pa_start: usize,
    pa_end: usize,
    max_paddr: nat,
) -> bool {
    &&& 0 < area_size
    &&& map_offset % 4096 == 0
    &&& map_offset < area_size
    &&& pa_end as nat - pa_start as nat <= area_size as nat - map_offset as nat
    &&& pa_end <= max_paddr
    &&& pa_start % 4096 == 0
    &&& pa_end % 4096 == 0
    &&& !(area_size % 4096 != 0)
    &&& !(map_offset as int + (pa_end as int - pa_start as int) > area_size as int)
}

/// kvirt creates an untracked area (the rule on tracked pages aside)
/// exactly when the specification accepts the arguments, the range is not
/// reversed, and the property is not user accessible.
pub proof fn lemma_map_untracked_frames_checks(
    area_size: usize,
    map_offset: usize,
    pa_start: usize,
    pa_end: usize,
    pa_bits: u32,
    user: bool,
)
    requires
        pa_bits <= 64,
    ensures
        untracked_args_spec(area_size, map_offset, pa_start, pa_end, pa_bits, user) is Ok <==> pa_start <= pa_end
            && !user && map_untracked_frames_accepts(
            area_size,
            map_offset,
            pa_start,
            pa_end,
            vstd::arithmetic::power2::pow2(pa_bits as nat),
        ),
{
}

/// `query`'s requires on the address: inside the area.
#[inline]
pub const fn query_addr_ok(start: usize, end: usize, addr: usize) -> (r: bool)
    ensures
        r == (start <= addr && addr < end),
{
    start <= addr && addr < end
}

/// `split`'s offset rule: page aligned and strictly inside the area.
#[inline]
pub const fn split_offset_ok(offset: usize, size: usize) -> (r: bool)
    ensures
        r == (offset % 4096 == 0 && 0 < offset && offset < size),
{
    is_page_aligned(offset) && 0 < offset && offset < size
}

/// The bounds of `read_bytes` / `write_bytes`: `len` bytes at `offset` lie
/// inside an area of `size` bytes (as integers: no overflow).
#[inline]
pub const fn access_in_bounds(offset: usize, len: usize, size: usize) -> (r: bool)
    ensures
        r == (offset as int + len as int <= size as int),
{
    offset <= size && len <= size - offset
}

} // verus!
