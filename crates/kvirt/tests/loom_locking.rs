//! Model checking of the page-table lock protocol with loom.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p kvirt --release --test
//! loom_locking`. The test drives the library's own protocol functions
//! (`kvirt::page_table::locking`) over a tiny tree built from loom atomics:
//! 3 levels, 2 entries per node, one-byte "pages", so the whole address
//! space is `0..8`:
//!
//! ```text
//!   root (L3)  entries cover 0..4 | 4..8
//!    └─ A (L2) entries cover 0..2 | 2..4
//!        ├─ B (L1) entries 0 | 1
//!        └─ C (L1) entries 2 | 3
//! ```
//!
//! `lock_leaf`, the protocol's shortcut for one page whose leaf exists, is
//! run against `lock_range` over the same page and over the whole tree.
//!
//! Every lock holder writes to the `data` cell of every node it holds; loom
//! reports any two unsynchronised accesses, so a protocol that let two
//! overlapping ranges run at once fails the test. A thread that detaches a
//! sub-tree marks it stray; the other thread must then never work under a
//! stray guard.
#![cfg(loom)]

use std::ops::Range;

use kvirt::page_table::locking::{lock_leaf, lock_range, unlock_range, Guard, LockTree};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;

const ROOT: usize = 0;
const A: usize = 1;
const B: usize = 2;
const C: usize = 3;

struct Node {
    lock: AtomicBool,
    stray: AtomicBool,
    /// Child node id + 1, or 0 for an absent entry.
    entries: [AtomicUsize; 2],
    level: u8,
    data: UnsafeCell<u32>,
}

struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn new() -> Arc<Self> {
        let node = |level, e0: Option<usize>, e1: Option<usize>| Node {
            lock: AtomicBool::new(false),
            stray: AtomicBool::new(false),
            entries: [AtomicUsize::new(e0.map_or(0, |c| c + 1)), AtomicUsize::new(e1.map_or(0, |c| c + 1))],
            level,
            data: UnsafeCell::new(0),
        };
        Arc::new(Tree {
            nodes: vec![
                node(3, Some(A), None),
                node(2, Some(B), Some(C)),
                node(1, None, None),
                node(1, None, None),
            ],
        })
    }

    /// Touches the data of every node the guard holds for `range` (the
    /// guard and its descendants intersecting it).
    fn touch_held(&self, node: usize, level: u8, base: usize, range: &Range<usize>) {
        // SAFETY: loom reports any access to the cell that races with this
        // one; that is exactly the property under test.
        self.nodes[node].data.with_mut(|d| unsafe { *d += 1 });
        assert!(!self.nodes[node].stray.load(Ordering::Acquire), "working under a stray node");
        if level == 1 {
            return;
        }
        for i in kvirt::page_table::locking::entry_indices(self, level, base, range) {
            if let Some(child) = self.child(node, level, i) {
                self.touch_held(child, level - 1, base + i * self.entry_size(level), range);
            }
        }
    }
}

impl LockTree for Tree {
    type Node = usize;

    fn root(&self) -> usize {
        ROOT
    }
    fn nr_levels(&self) -> u8 {
        3
    }
    fn nr_entries(&self) -> usize {
        2
    }
    fn entry_size(&self, level: u8) -> usize {
        1 << (level - 1)
    }
    fn index(&self, va: usize, level: u8) -> usize {
        (va >> (level - 1)) & 1
    }
    fn canonical(&self, va: usize) -> usize {
        va
    }
    fn child(&self, node: usize, level: u8, index: usize) -> Option<usize> {
        assert_eq!(self.nodes[node].level, level);
        match self.nodes[node].entries[index].load(Ordering::Acquire) {
            0 => None,
            c => Some(c - 1),
        }
    }
    fn lock(&self, node: usize) {
        while self.nodes[node]
            .lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            loom::thread::yield_now();
        }
    }
    fn unlock(&self, node: usize) {
        self.nodes[node].lock.store(false, Ordering::Release);
    }
    fn is_stray(&self, node: usize) -> bool {
        self.nodes[node].stray.load(Ordering::Acquire)
    }
}

/// Locks `range`, works under it, unlocks.
fn critical_section(tree: &Tree, range: Range<usize>) -> Guard<usize> {
    let guard = lock_range(tree, &range, 1);
    tree.touch_held(guard.node, guard.level, guard.base, &range);
    unlock_range(tree, &guard, &range);
    guard
}

/// Detaches A (and B and C below it) as a cursor over `0..4` would: locks
/// the range, unhooks A from the root, marks the three stray and unlocks
/// them.
fn detach_a(t: &Tree) {
    let range = 0..4;
    let guard = lock_range(t, &range, 1);
    assert_eq!(guard.node, ROOT, "a range covering a whole entry locks the node holding it");
    t.touch_held(guard.node, guard.level, guard.base, &range);
    t.nodes[ROOT].entries[0].store(0, Ordering::Release);
    for n in [A, B, C] {
        t.nodes[n].stray.store(true, Ordering::Release);
    }
    for n in [C, B, A] {
        t.unlock(n);
    }
    // A, B and C are gone from the tree: only the root is left to unlock.
    unlock_range(t, &guard, &range);
}

#[test]
fn overlapping_ranges_exclude_each_other() {
    loom::model(|| {
        let tree = Tree::new();
        let t = tree.clone();
        let other = loom::thread::spawn(move || critical_section(&t, 1..3));
        let mine = critical_section(&tree, 0..2);
        let theirs = other.join().unwrap();
        assert_eq!((mine.node, theirs.node), (A, A), "both must lock the node covering them");
    });
}

#[test]
fn disjoint_ranges_lock_disjoint_nodes() {
    loom::model(|| {
        let tree = Tree::new();
        let t = tree.clone();
        let other = loom::thread::spawn(move || critical_section(&t, 2..3));
        let mine = critical_section(&tree, 0..1);
        assert_eq!((mine.node, other.join().unwrap().node), (B, C));
    });
}

#[test]
fn walker_never_works_under_a_detached_node() {
    loom::model(|| {
        let tree = Tree::new();
        let t = tree.clone();
        // Detach A (and B, C below it) while another thread walks to B.
        let detacher = loom::thread::spawn(move || detach_a(&t));
        let guard = critical_section(&tree, 0..1);
        assert!(guard.node == B || guard.node == ROOT, "locked {} for 0..1", guard.node);
        detacher.join().unwrap();
    });
}

/// Locks the leaf of page `va` with `lock_leaf`, works under it, unlocks;
/// returns the leaf, if there was one.
fn leaf_section(tree: &Tree, va: usize) -> Option<usize> {
    let leaf = lock_leaf(tree, &(va..va + 1))?;
    tree.touch_held(leaf, 1, va, &(va..va + 1));
    tree.unlock(leaf);
    Some(leaf)
}

#[test]
fn a_leaf_locked_alone_excludes_a_range_over_it() {
    loom::model(|| {
        let tree = Tree::new();
        let t = tree.clone();
        let other = loom::thread::spawn(move || critical_section(&t, 0..2));
        assert_eq!(leaf_section(&tree, 1), Some(B));
        assert_eq!(other.join().unwrap().node, A);
    });
}

#[test]
fn a_leaf_walker_never_works_under_a_detached_node() {
    loom::model(|| {
        let tree = Tree::new();
        let t = tree.clone();
        // Detach A (and B, C below it) while another thread locks B's page.
        let detacher = loom::thread::spawn(move || detach_a(&t));
        // Before the detach: B; after it: no leaf, and nothing locked.
        let leaf = leaf_section(&tree, 0);
        assert!(leaf == Some(B) || leaf.is_none(), "locked {leaf:?} for page 0");
        detacher.join().unwrap();
    });
}

/// Reclaims B alone, as the reclamation of an emptied leaf does: locks its
/// parent A with the guard forced to level 2 (over B's span), unhooks B,
/// marks it stray and unlocks it.
fn reclaim_b(t: &Tree) {
    let range = 0..2;
    let guard = lock_range(t, &range, 2);
    assert_eq!(guard.node, A, "the guard forced up to B's parent");
    t.touch_held(guard.node, guard.level, guard.base, &range);
    t.nodes[A].entries[0].store(0, Ordering::Release);
    t.nodes[B].stray.store(true, Ordering::Release);
    t.unlock(B);
    unlock_range(t, &guard, &range);
}

#[test]
fn a_leaf_walker_never_works_under_its_reclaimed_leaf() {
    loom::model(|| {
        let tree = Tree::new();
        let t = tree.clone();
        let reclaimer = loom::thread::spawn(move || reclaim_b(&t));
        let leaf = leaf_section(&tree, 1);
        assert!(leaf == Some(B) || leaf.is_none(), "locked {leaf:?} for page 1");
        reclaimer.join().unwrap();
    });
}

#[test]
fn a_range_inside_a_leaf_never_works_under_its_reclaimed_leaf() {
    loom::model(|| {
        let tree = Tree::new();
        let t = tree.clone();
        let reclaimer = loom::thread::spawn(move || reclaim_b(&t));
        // `lock_range`'s shortcut while B is there, its loop (guard A)
        // once B is gone.
        let guard = critical_section(&tree, 0..1);
        assert!(guard.node == B || guard.node == A, "locked {} for 0..1", guard.node);
        reclaimer.join().unwrap();
    });
}
