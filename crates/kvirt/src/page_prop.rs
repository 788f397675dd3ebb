//! Page properties: what a mapping allows and how it is cached.
//!
//! A [`PageProperty`] is architecture-neutral. The paging format
//! ([`crate::arch::PagingFormat`]) turns it into PTE bits and back; every
//! property round-trips exactly, and the library's own bookkeeping bits in a
//! PTE (the "tracked" marker) never appear here.

use bitflags::bitflags;

bitflags! {
    /// Access rights and status bits of a mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct PageFlags: u8 {
        /// Readable. On x86-64 a mapping without `R` is kept in the page
        /// table but not present to the hardware, so every access faults.
        const R = 1 << 0;
        /// Writable.
        const W = 1 << 1;
        /// Executable.
        const X = 1 << 2;
        /// Readable and writable.
        const RW = Self::R.bits() | Self::W.bits();
        /// Readable and executable.
        const RX = Self::R.bits() | Self::X.bits();
        /// Readable, writable and executable.
        const RWX = Self::R.bits() | Self::W.bits() | Self::X.bits();
        /// Set by the hardware when the page is accessed.
        const ACCESSED = 1 << 3;
        /// Set by the hardware when the page is written.
        const DIRTY = 1 << 4;
    }
}

bitflags! {
    /// Properties only the kernel may set.
    ///
    /// On x86-64 these are the two per-mapping bits of a leaf entry that
    /// only the kernel controls and that no other field of
    /// [`PageProperty`] covers: `U/S` ([`USER`](Self::USER)) and `G`
    /// ([`GLOBAL`](Self::GLOBAL)). The leaf's `R/W`, `XD`, `A` and `D` bits
    /// are [`PageFlags`], and its `PWT`, `PCD` and `PAT` bits the
    /// [`CachePolicy`]. The other privileged controls are left out because
    /// they are one of:
    ///
    /// * **per table, not per mapping**: the PCID and the `PWT`/`PCD` bits
    ///   of CR3 (one per address space), and the rights bits of non-leaf
    ///   entries, which kvirt always sets to `P | R/W | U/S` so that the
    ///   leaf alone decides (see `arch::x86_64`);
    /// * **not used by kernel virtual areas**: the protection-key field
    ///   (bits 62:59; PKU keys for user pages, PKS keys for supervisor
    ///   pages), memory-encryption bits (AMD SEV's C-bit, Intel TDX's
    ///   shared bit; their position depends on the platform and they sit
    ///   among the address bits), and the bits left to software (kvirt
    ///   uses bits 9 and 10 itself, for its tracked and not-present
    ///   markers).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct PrivilegedPageFlags: u8 {
        /// Accessible from user mode. Kernel virtual areas reject it.
        const USER = 1 << 0;
        /// Global: survives address-space switches in the TLB.
        const GLOBAL = 1 << 1;
    }
}

/// How the processor caches a mapping (x86-64 memory types through PAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CachePolicy {
    /// Write-back: ordinary memory.
    #[default]
    Writeback,
    /// Write-through.
    Writethrough,
    /// Uncacheable: device registers.
    Uncacheable,
    /// Write-combining: frame buffers.
    WriteCombining,
    /// Write-protected.
    WriteProtected,
}

impl CachePolicy {
    /// Every cache policy.
    pub const ALL: [CachePolicy; 5] = [
        CachePolicy::Writeback,
        CachePolicy::Writethrough,
        CachePolicy::Uncacheable,
        CachePolicy::WriteCombining,
        CachePolicy::WriteProtected,
    ];
}

/// The property of a mapping: its access rights, cache policy and
/// privileged bits, as every mapping call takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageProperty {
    /// Access rights and status bits.
    pub flags: PageFlags,
    /// Cache policy.
    pub cache: CachePolicy,
    /// Privileged properties.
    pub priv_flags: PrivilegedPageFlags,
}

impl PageProperty {
    /// A kernel mapping: global, not user-accessible.
    #[must_use]
    pub const fn new_kernel(flags: PageFlags, cache: CachePolicy) -> Self {
        Self { flags, cache, priv_flags: PrivilegedPageFlags::GLOBAL }
    }

    /// A user mapping: user-accessible, not global.
    #[must_use]
    pub const fn new_user(flags: PageFlags, cache: CachePolicy) -> Self {
        Self { flags, cache, priv_flags: PrivilegedPageFlags::USER }
    }

    /// Every combination of flags, cache policy and privileged flags (for
    /// exhaustive tests).
    pub fn all() -> impl Iterator<Item = PageProperty> {
        (0..=PageFlags::all().bits()).flat_map(|f| {
            CachePolicy::ALL.into_iter().flat_map(move |cache| {
                (0..=PrivilegedPageFlags::all().bits()).map(move |p| PageProperty {
                    flags: PageFlags::from_bits_truncate(f),
                    cache,
                    priv_flags: PrivilegedPageFlags::from_bits_truncate(p),
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_enumerates_every_distinct_property_once() {
        let all: alloc::vec::Vec<_> = PageProperty::all().collect();
        assert_eq!(all.len(), 32 * 5 * 4);
        let set: std::collections::HashSet<_> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len());
    }

    #[test]
    fn kernel_and_user_constructors_set_privilege() {
        let k = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        assert!(!k.priv_flags.contains(PrivilegedPageFlags::USER));
        let u = PageProperty::new_user(PageFlags::R, CachePolicy::Uncacheable);
        assert!(u.priv_flags.contains(PrivilegedPageFlags::USER));
        assert_eq!(u.cache, CachePolicy::Uncacheable);
    }
}
