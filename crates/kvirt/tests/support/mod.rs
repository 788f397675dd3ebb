//! Test platforms shared by several test files, each of which declares
//! `mod support;` and uses the part it needs.

pub mod counting_rcu;
