//! The CortenMM lock protocol, written once over an abstract tree.
//!
//! The page table's cursors use it through `PtTree` in the cursor module; the
//! loom test (`tests/loom_locking.rs`) runs the very same functions over a
//! model tree built from loom atomics, so every interleaving of the
//! protocol on a small configuration is explored.
//!
//! Protocol, for a range `start..end`:
//!
//! 1. From the root, without locks, descend while the range lies strictly
//!    inside one entry that points to a table (a range covering a whole
//!    entry stays at the node holding it, which may need to replace it).
//! 2. Lock the node reached (the guard). If it is stray (detached since we
//!    read its parent's entry), unlock and start again from the root.
//! 3. Lock, parent before child, every existing node below the guard that
//!    intersects the range.
//!
//! Unlocking visits the same nodes, children before parents. Since every
//! cursor takes locks top-down and never waits for an ancestor of a node it
//! holds, cursors cannot deadlock; since overlapping ranges share at least
//! one node they both must lock, they exclude each other.

use core::ops::Range;

/// What the protocol needs from a tree of nodes.
///
/// Addresses are `usize`; a node at `level` has `nr_entries()` entries, each
/// covering `entry_size(level)` bytes; the root is at `nr_levels()`.
pub trait LockTree {
    /// A node handle (cheap to copy).
    type Node: Copy;

    /// The root node.
    fn root(&self) -> Self::Node;
    /// The number of levels; the root is at this level.
    fn nr_levels(&self) -> u8;
    /// Entries per node.
    fn nr_entries(&self) -> usize;
    /// The bytes an entry at `level` covers.
    fn entry_size(&self, level: u8) -> usize;
    /// The index in a node at `level` that `va` selects.
    fn index(&self, va: usize, level: u8) -> usize;
    /// Canonicalises the start address of a node (sign extension).
    fn canonical(&self, va: usize) -> usize;
    /// The child node at `index` of `node` (at `level`), if the entry is a
    /// table. May be called without holding `node`'s lock (inside the
    /// caller's read-side section).
    fn child(&self, node: Self::Node, level: u8, index: usize) -> Option<Self::Node>;
    /// Spins until `node`'s lock is taken.
    fn lock(&self, node: Self::Node);
    /// Releases `node`'s lock.
    fn unlock(&self, node: Self::Node);
    /// Whether `node` was detached.
    fn is_stray(&self, node: Self::Node) -> bool;
}

/// A locked range: the guard node, its level and the lowest address it maps.
#[derive(Clone, Copy, Debug)]
pub struct Guard<N> {
    /// The guard node.
    pub node: N,
    /// Its level.
    pub level: u8,
    /// The lowest address it maps.
    pub base: usize,
}

/// Steps 1–3 of the protocol. `range` is non-empty. The guard is at
/// `min_level` or above, even if the range lies inside one entry of a lower
/// node (used to lock the parent of a node whose span no `Range` can
/// express, at the very top of the address space).
pub fn lock_range<T: LockTree>(tree: &T, range: &Range<usize>, min_level: u8) -> Guard<T::Node> {
    // Most cursors' ranges lie inside one leaf node: where it exists,
    // `lock_leaf` locks the very node the loop below would, with nothing
    // below to lock, for a third of the work.
    if min_level <= 1 {
        if let Some(node) = lock_leaf(tree, range) {
            let span = tree.entry_size(2);
            return Guard { node, level: 1, base: tree.canonical(range.start / span * span) };
        }
    }
    loop {
        let mut node = tree.root();
        let mut level = tree.nr_levels();
        while level > min_level.max(1) {
            let i = tree.index(range.start, level);
            let inside_one_entry = i == tree.index(range.end - 1, level);
            if !inside_one_entry || range.len() >= tree.entry_size(level) {
                break;
            }
            match tree.child(node, level, i) {
                Some(child) => {
                    node = child;
                    level -= 1;
                }
                None => break,
            }
        }
        tree.lock(node);
        if tree.is_stray(node) {
            tree.unlock(node);
            continue;
        }
        let base = if level == tree.nr_levels() {
            0
        } else {
            let span = tree.entry_size(level + 1);
            tree.canonical(range.start / span * span)
        };
        if level > 1 {
            lock_below(tree, node, level, base, range);
        }
        return Guard { node, level, base };
    }
}

/// Steps 1 and 2 of the protocol for a range inside one leaf node's span,
/// short of all of it (so inside one entry, and shorter than it, at every
/// level above), when they end at a leaf: descends from the root through
/// tables only and locks the leaf node reached, starting again if it is
/// stray. Nothing lies below a leaf, so step 3 locks nothing: this is what
/// [`lock_range`] locks for such a range, with less to compute. Returns
/// `None`, having locked nothing, for any other range, or if some entry on
/// the way is not a table (where `lock_range` would lock a higher node).
///
/// The caller releases the leaf with [`LockTree::unlock`].
#[inline]
pub fn lock_leaf<T: LockTree>(tree: &T, range: &Range<usize>) -> Option<T::Node> {
    let span = tree.entry_size(2);
    if range.is_empty() || range.len() >= span || range.start / span != (range.end - 1) / span {
        return None;
    }
    'walk: loop {
        let mut node = tree.root();
        let mut level = tree.nr_levels();
        while level > 1 {
            node = tree.child(node, level, tree.index(range.start, level))?;
            level -= 1;
        }
        tree.lock(node);
        if tree.is_stray(node) {
            tree.unlock(node);
            continue 'walk;
        }
        return Some(node);
    }
}

/// Releases what [`lock_range`] (and the lock holder since) locked.
pub fn unlock_range<T: LockTree>(tree: &T, guard: &Guard<T::Node>, range: &Range<usize>) {
    if guard.level == 1 {
        // A leaf guard (the common case of a small range): nothing below.
        tree.unlock(guard.node);
    } else {
        unlock_below(tree, guard.node, guard.level, guard.base, range);
    }
}

/// The indices of a node at `level` mapping from `base` whose entries
/// intersect `range`.
pub fn entry_indices<T: LockTree>(tree: &T, level: u8, base: usize, range: &Range<usize>) -> Range<usize> {
    let first = if range.start <= base { 0 } else { tree.index(range.start, level) };
    let node_last = base.wrapping_add(tree.entry_size(level + 1).wrapping_sub(1));
    let last = if level == tree.nr_levels() || range.end - 1 < node_last {
        tree.index(range.end - 1, level)
    } else {
        tree.nr_entries() - 1
    };
    first..last + 1
}

fn lock_below<T: LockTree>(tree: &T, node: T::Node, level: u8, base: usize, range: &Range<usize>) {
    if level == 1 {
        return;
    }
    for i in entry_indices(tree, level, base, range) {
        if let Some(child) = tree.child(node, level, i) {
            tree.lock(child);
            let child_base = tree.canonical(base.wrapping_add(i * tree.entry_size(level)));
            lock_below(tree, child, level - 1, child_base, range);
        }
    }
}

fn unlock_below<T: LockTree>(tree: &T, node: T::Node, level: u8, base: usize, range: &Range<usize>) {
    if level > 1 {
        for i in entry_indices(tree, level, base, range) {
            if let Some(child) = tree.child(node, level, i) {
                let child_base = tree.canonical(base.wrapping_add(i * tree.entry_size(level)));
                unlock_below(tree, child, level - 1, child_base, range);
            }
        }
    }
    tree.unlock(node);
}
