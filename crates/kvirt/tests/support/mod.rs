//! Test platforms shared by several test files, each of which declares
//! `mod support;` and uses the part it needs.

#[cfg(not(miri))]
pub mod abort_in_child;
pub mod counting_rcu;
pub mod hooked;
pub mod memory;
