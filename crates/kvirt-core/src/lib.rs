//! The proven core of kvirt.
//!
//! Every function here is the code kvirt runs, written inside `verus! { }`
//! with its specification (`spec fn`s stating what it means) and its proof.
//! Plain `cargo build` compiles it with the ghost parts erased, for the host
//! and for bare metal; `cargo xtask verus` runs the Verus verifier over the
//! same text. `kvirt` calls these functions and keeps no second copy.
//!
//! The crate works on plain integers (addresses, levels, flag bits) so that
//! nothing in a proof rests on an unverified type: `kvirt` wraps them in its
//! typed API (`PageProperty`, `PagingFormat`, error enums).
//!
//! | module | what is proven |
//! |---|---|
//! | [`paging`] | page sizes, entry indices, alignment, canonical addresses, cursor-range checks |
//! | [`pages`] | the page-size plan of an untracked range tiles it with the largest aligned pages |
//! | [`x86_64_pte`] | the x86-64 entry encoding round-trips; tables and leaves are never confused |
//! | [`area_args`] | the argument checks of kernel virtual areas equal the specification's conditions |
//! | [`ref_count`] | the frame reference-count transitions keep the state invariant |
//!
//! `docs/VERIFICATION.md` lists each proven clause and the trusted base.
//!
//! The specifications (`spec fn`s) and proofs (`proof fn`s, the lemmas
//! named in the module docs) exist only for the verifier: a plain build,
//! and so this documentation, has the executable functions alone. Read
//! them in the source.
#![no_std]
// A plain build erases `global size_of usize == 8;` (a fact for the
// verifier) into an item with braces around its value.
#![cfg_attr(not(verus_keep_ghost), allow(unused_braces, reason = "what verus! leaves of a `global` fact"))]

pub mod area_args;
pub mod pages;
pub mod paging;
pub mod ref_count;
pub mod x86_64_pte;
