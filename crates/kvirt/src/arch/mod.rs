//! Paging formats: everything architecture-specific about a page table.
//!
//! The generic page table (`crate::page_table`) knows nothing about PTE bits.
//! It asks a [`PagingFormat`] for the shape of the tree (levels, entries per
//! node, the highest level that may hold a leaf) and to encode and decode
//! single entries. Each architecture is one such type in its own file:
//! [`x86_64`], [`riscv`] (Sv39 and Sv48), [`aarch64`] (stage 1, 4 KiB
//! granule) and [`tiny`] (for exhaustive testing); no generic code changes
//! between them.
//!
//! # What a format cannot express
//!
//! A [`PageProperty`] is x86-64's vocabulary, and other formats cannot
//! always store it exactly. Two things may differ, and a format declares
//! both, so that every comparison of a mapped property with a requested one
//! goes through [`effective_property`]:
//!
//! * **Status flags the format sets itself**
//!   ([`PagingFormat::SET_BY_FORMAT`]). RISC-V without Svadu faults on an
//!   access to a leaf whose `A` bit is clear (and on a write with `D`
//!   clear), and Arm without hardware access-flag management faults on
//!   `AF = 0`. Such formats set the bits in every leaf they encode, and
//!   their leaves decode with those flags.
//! * **Cache policies it lacks** ([`PagingFormat::cache_policy`]). Svpbmt
//!   has three memory types, so RISC-V maps each other policy to the
//!   nearest one that caches no more than asked.
//!
//! Neither ever changes what a mapping allows: read, write, execute, user
//! and global round-trip exactly on every format.
//!
//! Every format uses 4 KiB nodes holding 64-bit entries (a format with fewer
//! entries per node simply uses the start of the node).

pub mod aarch64;
pub mod riscv;
pub mod tiny;
pub mod x86_64;

use core::fmt::Debug;

use crate::addr::{Paddr, PagingLevel, PAGE_SIZE};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty};

/// What one page-table entry says, independent of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PteKind {
    /// Nothing is mapped here.
    Absent,
    /// Points to a page-table node one level down.
    Table(Paddr),
    /// A leaf mapping `pa` (aligned to the page size of its level).
    Page {
        /// The physical address of the page.
        pa: Paddr,
        /// Its property, without any library bookkeeping bits.
        prop: PageProperty,
        /// The library's marker: the page is a tracked frame whose reference
        /// the entry owns (as opposed to untracked memory such as MMIO).
        tracked: bool,
    },
}

/// The encoding and shape of one kind of page table.
///
/// Implementations are plain constant tables plus pure functions. kvirt's
/// memory safety rests on them: an entry decoded as a table is followed as
/// a page-table node, and an entry decoded as a tracked page owns a frame
/// reference that kvirt releases when it unmaps it. So the trait is
/// `unsafe`: a format that broke a rule below could make kvirt free a live
/// frame or read an ordinary page as a node.
///
/// The shape rules are checked when a page table of the format is made (a
/// compile-time error); the encoding rules are what
/// `check_format_conformance` tests for kvirt's own formats. A safe
/// implementation does not compile:
///
/// ```compile_fail,E0200
/// use kvirt::arch::{PagingFormat, PteKind};
/// use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
///
/// #[derive(Clone, Copy, Debug)]
/// struct Liar;
///
/// impl PagingFormat for Liar {
///     const NR_LEVELS: u8 = 4;
///     const ENTRY_BITS: u32 = 9;
///     const HIGHEST_LEAF_LEVEL: u8 = 1;
///     const PA_BITS: u32 = 52;
///     const SIGN_EXTEND: bool = true;
///     fn encode_page(pa: usize, _: u8, _: PageProperty, _: bool) -> u64 { pa as u64 | 1 }
///     fn encode_table(pa: usize) -> u64 { pa as u64 | 1 }
///     // Lies: calls every entry a tracked page.
///     fn decode(raw: u64, _: u8) -> PteKind {
///         if raw == 0 { PteKind::Absent } else {
///             let prop = PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback);
///             PteKind::Page { pa: (raw & !0xfff) as usize, prop, tracked: true }
///         }
///     }
/// }
/// ```
///
/// Nor does a table of an `unsafe` implementation that breaks a shape
/// rule, such as one claiming more entries than `ENTRY_BITS` indexes:
///
/// ```compile_fail,E0080
/// use kvirt::arch::{PagingFormat, PteKind};
/// use kvirt::page_prop::PageProperty;
/// use kvirt::page_table::{vaddr_bounds, KernelPtConfig};
///
/// #[derive(Clone, Copy, Debug)]
/// struct Wide;
///
/// // SAFETY: it is not; the shape check refuses it.
/// unsafe impl PagingFormat for Wide {
///     const NR_LEVELS: u8 = 4;
///     const ENTRY_BITS: u32 = 9;
///     const HIGHEST_LEAF_LEVEL: u8 = 1;
///     const PA_BITS: u32 = 52;
///     const SIGN_EXTEND: bool = true;
///     const NR_ENTRIES: usize = 1024;
///     fn encode_page(pa: usize, _: u8, _: PageProperty, _: bool) -> u64 { pa as u64 | 1 }
///     fn encode_table(pa: usize) -> u64 { pa as u64 | 1 }
///     fn decode(raw: u64, _: u8) -> PteKind { PteKind::Absent }
/// }
/// let _ = vaddr_bounds::<KernelPtConfig<Wide>>(); // does not compile
/// ```
///
/// # Safety
///
/// An implementation promises, for every `level` in `1..=NR_LEVELS`:
///
/// 1. **Shape.** `1 <= HIGHEST_LEAF_LEVEL < NR_LEVELS <= 5`,
///    `1 <= ENTRY_BITS <= 9` (a node's entries fit in its 4 KiB page),
///    [`NR_ENTRIES`](Self::NR_ENTRIES) and [`VA_BITS`](Self::VA_BITS) keep
///    their default values (`1 << ENTRY_BITS`, and 12 bits of page offset
///    plus `ENTRY_BITS` per level), `PA_BITS` is at most 64, and
///    [`SET_BY_FORMAT`](Self::SET_BY_FORMAT) holds only `ACCESSED` and
///    `DIRTY`.
/// 2. **Absent.** `decode(0, level)` is [`PteKind::Absent`].
/// 3. **Round trip.** For every page-aligned `pa` below `1 << PA_BITS`
///    (aligned to [`page_size`] of `level` for leaves), every
///    [`PageProperty`] and both values of `tracked`:
///    `decode(encode_page(pa, level, prop, tracked), level)` is
///    `Page { pa, prop: effective_property::<Self>(prop), tracked }` for
///    `level <= HIGHEST_LEAF_LEVEL` (see [`effective_property`]), and
///    `decode(encode_table(pa), level)` is `Table(pa)` for `level >= 2`;
///    neither encoding is 0. [`page_encoder`](Self::page_encoder) returns
///    `encode_page`'s result, and [`cache_policy`](Self::cache_policy) is
///    idempotent.
/// 4. **Nothing else is a table or a tracked page.** kvirt stores only 0
///    and words from the two encoders, and the MMU may then set the
///    accessed and dirty bits of a leaf. `decode` of any such word gives
///    back what was encoded (the MMU's bits may change only the
///    `ACCESSED` and `DIRTY` flags of the property): in particular a word
///    encoded untracked never decodes as tracked, and no leaf decodes as
///    a table. `decode` never returns `Table` at level 1 nor `Page` above
///    `HIGHEST_LEAF_LEVEL`.
/// 5. **Hardware.** For a format a CPU walks, the MMU reads an entry as
///    `decode` does: a table entry leads to the node at its address, a
///    leaf maps its `pa` with no more rights than its property allows, and
///    0 faults.
pub unsafe trait PagingFormat: Copy + Debug + Send + Sync + 'static {
    /// Number of levels; the root is at this level.
    const NR_LEVELS: PagingLevel;
    /// log2 of the number of entries in a node.
    const ENTRY_BITS: u32;
    /// The highest level at which a leaf (huge page) may be mapped.
    const HIGHEST_LEAF_LEVEL: PagingLevel;
    /// Physical addresses a leaf can express are below `1 << PA_BITS`.
    const PA_BITS: u32;
    /// Whether virtual addresses are sign-extended from bit `VA_BITS - 1`
    /// (x86-64, RISC-V) rather than zero-extended.
    const SIGN_EXTEND: bool;

    /// Entries in one node. Derived from `ENTRY_BITS`; an implementation
    /// that sets it to anything else does not compile (safety rule 1).
    const NR_ENTRIES: usize = 1 << Self::ENTRY_BITS;
    /// Virtual address bits translated by the whole tree. Derived from the
    /// shape; an implementation that sets it to anything else does not
    /// compile (safety rule 1).
    const VA_BITS: u32 = PAGE_SIZE.trailing_zeros() + Self::NR_LEVELS as u32 * Self::ENTRY_BITS;
    /// Status flags (only [`PageFlags::ACCESSED`] and [`PageFlags::DIRTY`])
    /// that the format sets in every leaf it encodes, whatever the property
    /// asks, because the hardware would fault on a leaf without them (see
    /// the [module documentation](self)). Its leaves decode with them set.
    const SET_BY_FORMAT: PageFlags = PageFlags::empty();

    /// The cache policy a leaf asking for `cache` gets: `cache` itself if
    /// the format can express it, else the nearest policy it can express
    /// that caches no more than asked. Idempotent.
    #[inline]
    fn cache_policy(cache: CachePolicy) -> CachePolicy {
        cache
    }

    /// Encodes a leaf mapping `pa` at `level` (`1..=HIGHEST_LEAF_LEVEL`).
    /// `pa` is aligned to [`page_size::<Self>(level)`](page_size) and below
    /// `1 << PA_BITS`; the generic code checks both before calling.
    fn encode_page(pa: Paddr, level: PagingLevel, prop: PageProperty, tracked: bool) -> u64;

    /// [`encode_page`](Self::encode_page) for many pages alike: the
    /// returned function maps `pa` to `encode_page(pa, level, prop,
    /// tracked)`. Formats whose address field is a plain bit range override
    /// it to compute everything but the address once; mapping a run of
    /// 4 KiB pages then costs one OR per page.
    #[inline]
    fn page_encoder(level: PagingLevel, prop: PageProperty, tracked: bool) -> impl Fn(Paddr) -> u64 + Copy {
        move |pa| Self::encode_page(pa, level, prop, tracked)
    }

    /// Encodes an entry pointing to a node at physical address `pa`.
    fn encode_table(pa: Paddr) -> u64;

    /// Decodes an entry found at `level`. Total: any 64-bit word decodes to
    /// something, and an all-zero word is [`PteKind::Absent`].
    fn decode(raw: u64, level: PagingLevel) -> PteKind;
}

/// The property a leaf of format `F` encoded with `prop` decodes as:
/// `prop` with the format's [`SET_BY_FORMAT`](PagingFormat::SET_BY_FORMAT)
/// flags added and its cache policy through
/// [`cache_policy`](PagingFormat::cache_policy). The access rights, user
/// and global bits are `prop`'s. For x86-64 and the tiny format it is
/// `prop` itself.
#[must_use]
#[inline]
pub fn effective_property<F: PagingFormat>(prop: PageProperty) -> PageProperty {
    PageProperty { flags: prop.flags | F::SET_BY_FORMAT, cache: F::cache_policy(prop.cache), ..prop }
}

/// Checks the shape rules of [`PagingFormat`] (safety rule 1) for `F`;
/// evaluated at compile time wherever a page table of `F` is made.
pub(crate) const fn check_shape<F: PagingFormat>() {
    assert!(
        1 <= F::HIGHEST_LEAF_LEVEL && F::HIGHEST_LEAF_LEVEL < F::NR_LEVELS && F::NR_LEVELS <= 5,
        "PagingFormat: the levels must satisfy 1 <= HIGHEST_LEAF_LEVEL < NR_LEVELS <= 5"
    );
    assert!(
        1 <= F::ENTRY_BITS && F::ENTRY_BITS <= 9,
        "PagingFormat: a node's entries must fit in 4 KiB (1 <= ENTRY_BITS <= 9)"
    );
    // Indices, bounds and sign extension are computed from ENTRY_BITS in
    // some places and from these two in others: they must agree.
    assert!(F::NR_ENTRIES == 1 << F::ENTRY_BITS, "PagingFormat: NR_ENTRIES must be 1 << ENTRY_BITS");
    assert!(
        F::VA_BITS == PAGE_SIZE.trailing_zeros() + F::NR_LEVELS as u32 * F::ENTRY_BITS,
        "PagingFormat: VA_BITS must be 12 + NR_LEVELS * ENTRY_BITS"
    );
    assert!(F::PA_BITS <= 64, "PagingFormat: PA_BITS is at most 64");
    let status = PageFlags::ACCESSED.union(PageFlags::DIRTY);
    assert!(
        F::SET_BY_FORMAT.difference(status).is_empty(),
        "PagingFormat: SET_BY_FORMAT holds only ACCESSED and DIRTY"
    );
}

/// The number of bytes a leaf at `level` maps in format `F`.
#[must_use]
#[inline]
pub const fn page_size<F: PagingFormat>(level: PagingLevel) -> usize {
    debug_assert!(1 <= level && level <= kvirt_core::paging::MAX_LEVELS);
    kvirt_core::paging::page_size(F::ENTRY_BITS, level)
}

/// `page_size::<F>(level) - 1`: the offset bits of an address inside a leaf
/// at `level`, read from a table rather than shifted out, so that a walk
/// whose exits share one tail (a level in a register) spends a load, not
/// two variable shifts, on it.
#[must_use]
#[inline(always)]
pub(crate) fn offset_mask<F: PagingFormat>(level: PagingLevel) -> usize {
    const fn masks(entry_bits: u32) -> [usize; 6] {
        let mut m = [0; 6];
        let mut level = 1;
        while level <= 5 {
            m[level] = kvirt_core::paging::page_size(entry_bits, level as u8) - 1;
            level += 1;
        }
        m
    }
    struct Masks<F>(core::marker::PhantomData<F>);
    impl<F: PagingFormat> Masks<F> {
        const MASKS: [usize; 6] = masks(F::ENTRY_BITS);
    }
    Masks::<F>::MASKS[level as usize]
}

/// The index into a node at `level` that `va` selects.
#[must_use]
#[inline]
pub const fn pte_index<F: PagingFormat>(va: usize, level: PagingLevel) -> usize {
    debug_assert!(1 <= level && level <= kvirt_core::paging::MAX_LEVELS);
    kvirt_core::paging::pte_index(va, F::ENTRY_BITS, level)
}

/// What every [`PagingFormat`] must satisfy, checked by each format's tests.
#[cfg(test)]
pub(crate) fn check_format_conformance<F: PagingFormat>() {
    for level in 1..=F::NR_LEVELS {
        assert_eq!(F::decode(0, level), PteKind::Absent, "a zeroed entry at level {level}");
    }
    let table = F::encode_table(0x1234_5000);
    assert!(!matches!(F::decode(table, 1), PteKind::Table(_)), "no table at level 1: {table:#x}");
    for level in 2..=F::NR_LEVELS {
        let pa = 0x1234_5000;
        assert_eq!(
            F::decode(F::encode_table(pa), level),
            PteKind::Table(pa),
            "a table entry at level {level}"
        );
    }
    for cache in CachePolicy::ALL {
        let got = F::cache_policy(cache);
        assert_eq!(F::cache_policy(got), got, "cache_policy is idempotent ({cache:?})");
    }
    for level in 1..=F::HIGHEST_LEAF_LEVEL {
        let pa = 3 * page_size::<F>(level);
        for prop in PageProperty::all() {
            let [plain, tracked] = [false, true].map(|t| F::encode_page(pa, level, prop, t));
            let effective = effective_property::<F>(prop);
            assert_eq!(
                (effective.flags & PageFlags::RWX, effective.priv_flags),
                (prop.flags & PageFlags::RWX, prop.priv_flags),
                "the rights, user and global bits are exact"
            );
            for (raw, tracked) in [(plain, false), (tracked, true)] {
                assert_ne!(raw, 0, "a leaf is never 0");
                assert_eq!(
                    F::decode(raw, level),
                    PteKind::Page { pa, prop: effective, tracked },
                    "level {level} prop {prop:?} tracked {tracked}: raw {raw:#x}"
                );
            }
            assert_eq!(
                (plain ^ tracked).count_ones(),
                1,
                "the tracked marker is one bit, apart from the property"
            );
            for t in [false, true] {
                let encode = F::page_encoder(level, prop, t);
                for pa in [0, pa, (1 << F::PA_BITS) - page_size::<F>(level)] {
                    assert_eq!(encode(pa), F::encode_page(pa, level, prop, t), "page_encoder at {pa:#x}");
                    let want = PteKind::Page { pa, prop: effective, tracked: t };
                    assert_eq!(F::decode(encode(pa), level), want, "a leaf at {pa:#x}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::x86_64::X86_64;
    use super::*;

    #[test]
    fn x86_64_page_sizes_and_indices() {
        assert_eq!(page_size::<X86_64>(1), 4096);
        assert_eq!(page_size::<X86_64>(2), 2 << 20);
        assert_eq!(page_size::<X86_64>(3), 1 << 30);
        assert_eq!(page_size::<X86_64>(4), 512 << 30);
        assert_eq!(X86_64::VA_BITS, 48);
        let va = 0xffff_c000_1234_5000usize;
        assert_eq!(pte_index::<X86_64>(va, 4), 384);
        assert_eq!(pte_index::<X86_64>(va, 1), 0x145);
    }

    #[test]
    fn offset_mask_is_the_page_size_less_one_at_every_level_of_every_format() {
        fn check<F: PagingFormat>() {
            for level in 1..=F::NR_LEVELS {
                assert_eq!(offset_mask::<F>(level), page_size::<F>(level) - 1, "level {level}");
            }
        }
        check::<X86_64>();
        check::<super::riscv::Sv39>();
        check::<super::riscv::Sv48>();
        check::<super::aarch64::Aarch64>();
        check::<super::tiny::Tiny>();
    }
}
