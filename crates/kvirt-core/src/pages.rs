//! The page-size plan of an untracked range: which pages map `len` bytes
//! from virtual `va` to physical `pa`.
//!
//! The plan is greedy: each piece is the largest leaf the format allows
//! that fits what is left and is aligned, virtually and physically, to its
//! size (`fits`). [`PagePlan::next_piece`] yields one piece at a time and
//! is proven to
//!
//! * start where the previous piece ended, virtually and physically, and
//!   consume exactly its size from what is left, so the pieces tile the
//!   range exactly and in order, and the plan ends when nothing is left;
//! * be aligned to its size at both addresses and fit what is left;
//! * be the largest such leaf: no higher leaf level fits there;
//! * never overflow, up to a range that ends at the very top of the
//!   address space (`va + len == 2^64`), because the plan never computes an
//!   address past its last piece.

use vstd::prelude::*;

use crate::paging::page_size;
#[cfg(verus_keep_ghost)]
use crate::paging::{level_size, valid_level};

verus! {

/// A leaf at `level` fits `len` bytes at `va -> pa`: it is no longer than
/// `len` and both addresses are aligned to its size.
pub open spec fn fits(va: usize, pa: usize, len: usize, entry_bits: u32, level: u8) -> bool {
    level_size(entry_bits, level) <= len && va as nat % level_size(entry_bits, level) == 0 && pa as nat
        % level_size(entry_bits, level) == 0
}

/// The greedy split of `len` bytes at `va -> pa` into the largest aligned
/// leaves of a format with `entry_bits` index bits per node and leaves up
/// to `highest_leaf`.
#[derive(Clone, Copy, Debug)]
///
/// The fields are public so that the specifications can name them; make a
/// plan with [`PagePlan::new`], which establishes `PagePlan::wf`.
pub struct PagePlan {
    /// Where the next piece starts, virtually.
    pub va: usize,
    /// Where the next piece starts, physically.
    pub pa: usize,
    /// What is left to map.
    pub len: usize,
    /// log2 of the entries in a node.
    pub entry_bits: u32,
    /// The highest level a leaf may have.
    pub highest_leaf: u8,
}

impl PagePlan {
    /// What every plan keeps: page-aligned addresses and length, a range
    /// that ends at or below the top of the address space, and a valid
    /// format.
    pub open spec fn wf(&self) -> bool {
        &&& valid_level(self.entry_bits, self.highest_leaf)
        &&& self.va as nat % 4096 == 0
        &&& self.pa as nat % 4096 == 0
        &&& self.len as nat % 4096 == 0
        &&& self.va + self.len <= usize::MAX + 1
        &&& self.pa + self.len <= usize::MAX + 1
    }

    /// What is left to map.
    pub open spec fn remaining(&self) -> usize {
        self.len
    }

    /// Where the next piece starts (virtual, physical).
    pub open spec fn cursor(&self) -> (usize, usize) {
        (self.va, self.pa)
    }

    /// A plan for `len` bytes at `va -> pa`.
    pub const fn new(va: usize, pa: usize, len: usize, entry_bits: u32, highest_leaf: u8) -> (r: Self)
        requires
            valid_level(entry_bits, highest_leaf),
            va % 4096 == 0,
            pa % 4096 == 0,
            len % 4096 == 0,
            va + len <= usize::MAX + 1,
            pa + len <= usize::MAX + 1,
        ensures
            r.wf(),
            r.remaining() == len,
            r.cursor() == (va, pa),
            r.entry_bits == entry_bits,
            r.highest_leaf == highest_leaf,
    {
        PagePlan { va, pa, len, entry_bits, highest_leaf }
    }

    /// The next piece, `(pa, level)`, or `None` once nothing is left.
    pub fn next_piece(&mut self) -> (r: Option<(usize, u8)>)
        requires
            old(self).wf(),
        ensures
            final(self).wf(),
            final(self).entry_bits == old(self).entry_bits,
            final(self).highest_leaf == old(self).highest_leaf,
            old(self).len == 0 <==> r is None,
            r is None ==> *final(self) == *old(self),
            r matches Some((pa, level)) ==> {
                let size = level_size(final(self).entry_bits, level);
                &&& pa == old(self).pa
                &&& 1 <= level <= final(self).highest_leaf
                &&& fits(old(self).va, old(self).pa, old(self).len, final(self).entry_bits, level)
                &&& forall|l: u8|
                    level < l <= final(self).highest_leaf ==> !fits(
                        old(self).va,
                        old(self).pa,
                        old(self).len,
                        final(self).entry_bits,
                        l,
                    )
                &&& final(self).len == old(self).len - size
                &&& final(self).len > 0 ==> final(self).va == old(self).va + size && final(self).pa == old(self).pa + size
            },
    {
        if self.len == 0 {
            return None;
        }
        let (level, size) = largest_fitting(self.va, self.pa, self.len, self.entry_bits, self.highest_leaf);
        let pa = self.pa;
        if self.len == size {
            // The last piece: nothing is computed past it, so a range that
            // ends at the top of the address space does not overflow.
            self.len = 0;
        } else {
            proof {
                assert(self.va as nat % size as nat == 0 && self.len as nat % 4096 == 0);
                lemma_aligned_step(self.va as nat, self.len as nat, size as nat);
                lemma_aligned_step(self.pa as nat, self.len as nat, size as nat);
            }
            self.va += size;
            self.pa += size;
            self.len -= size;
        }
        Some((pa, level))
    }
}

/// Adding a multiple of 4096 keeps 4096-alignment; the length stays one.
proof fn lemma_aligned_step(a: nat, len: nat, size: nat)
    requires
        a % 4096 == 0,
        len % 4096 == 0,
        size % 4096 == 0,
        size < len,
    ensures
        (a + size) % 4096 == 0,
        ((len - size) as nat) % 4096 == 0,
{
    vstd::arithmetic::div_mod::lemma_add_mod_noop(a as int, size as int, 4096);
    vstd::arithmetic::div_mod::lemma_sub_mod_noop(len as int, size as int, 4096);
}

/// The highest leaf level that fits `len` bytes at `va -> pa`, and its size.
fn largest_fitting(va: usize, pa: usize, len: usize, entry_bits: u32, highest_leaf: u8) -> (r: (u8, usize))
    requires
        valid_level(entry_bits, highest_leaf),
        va as nat % 4096 == 0,
        pa as nat % 4096 == 0,
        len as nat % 4096 == 0,
        len > 0,
    ensures
        1 <= r.0 <= highest_leaf,
        r.1 as nat == level_size(entry_bits, r.0),
        r.1 as nat % 4096 == 0,
        fits(va, pa, len, entry_bits, r.0),
        forall|l: u8| r.0 < l <= highest_leaf ==> !fits(va, pa, len, entry_bits, l),
{
    let mut level = highest_leaf;
    while level > 1
        invariant
            valid_level(entry_bits, highest_leaf),
            1 <= level <= highest_leaf,
            forall|l: u8| level < l <= highest_leaf ==> !fits(va, pa, len, entry_bits, l),
        decreases level,
    {
        let size = page_size(entry_bits, level);
        if size <= len && va % size == 0 && pa % size == 0 {
            proof {
                lemma_size_is_page_multiple(entry_bits, level);
            }
            return (level, size);
        }
        level -= 1;
    }
    let size = page_size(entry_bits, 1);
    proof {
        assert(level_size(entry_bits, 1) == 4096) by {
            assert(crate::paging::level_shift(entry_bits, 1) == 12);
            vstd::arithmetic::power2::lemma2_to64();
        };
        vstd::arithmetic::div_mod::lemma_mod_bound(len as int, 4096);
    }
    (1, size)
}

/// Every leaf size is a multiple of the base page.
proof fn lemma_size_is_page_multiple(entry_bits: u32, level: u8)
    requires
        valid_level(entry_bits, level),
    ensures
        level_size(entry_bits, level) % 4096 == 0,
{
    let s = crate::paging::level_shift(entry_bits, level);
    vstd::arithmetic::power2::lemma_pow2_adds(12, (s - 12) as nat);
    vstd::arithmetic::power2::lemma2_to64();
    vstd::arithmetic::div_mod::lemma_mod_multiples_basic(
        vstd::arithmetic::power2::pow2((s - 12) as nat) as int,
        4096,
    );
    assert(vstd::arithmetic::power2::pow2(12) * vstd::arithmetic::power2::pow2((s - 12) as nat)
        == vstd::arithmetic::power2::pow2((s - 12) as nat) * 4096) by (nonlinear_arith)
        requires
            vstd::arithmetic::power2::pow2(12) == 4096,
    ;
}

} // verus!
