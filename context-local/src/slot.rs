//! Slot numbers: which slot a field owns.
//!
//! Every field (and every struct's "initialised" marker) gets a slot number
//! once, the first time it is used, from one counter per [`Space`]. The number
//! indexes the storage directly, so an access never hashes.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Where a slot's values live.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Task scope, inherited: the context's persistent map, shared by snapshots.
    Shared,
    /// Task scope, not inherited: owned by one context, absent from snapshots.
    Local,
    /// Thread scope: owned by the OS thread, ignores contexts.
    Thread,
}

static COUNTERS: [AtomicUsize; 3] = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];

const UNASSIGNED: usize = usize::MAX;

/// A slot number assigned lazily, once, from its space's counter.
#[doc(hidden)]
#[derive(Debug)]
pub struct SlotCell {
    space: Space,
    index: AtomicUsize,
}

impl SlotCell {
    /// A cell whose number is drawn on first use.
    pub const fn new(space: Space) -> SlotCell {
        SlotCell { space, index: AtomicUsize::new(UNASSIGNED) }
    }

    /// The space the slot belongs to.
    pub(crate) fn space(&self) -> Space {
        self.space
    }

    /// The slot's location, assigning its number if this is the first use.
    #[inline]
    pub(crate) fn loc(&self) -> Loc {
        self.loc_or_first(|| {})
    }

    /// As [`loc`](SlotCell::loc); `first` runs once in the process, on the
    /// thread whose call assigned the number.
    #[inline]
    pub(crate) fn loc_or_first(&self, first: impl FnOnce()) -> Loc {
        let index = slot_number(&COUNTERS[self.space as usize], &self.index, first);
        Loc { space: self.space, index }
    }
}

/// The atomic operations slot numbering uses; implemented for std's
/// `AtomicUsize`, and for loom's under `cfg(loom)` so the model checker runs
/// the same algorithm.
pub(crate) trait Counter {
    fn get(&self) -> usize;
    fn take_next(&self) -> usize;
    /// Stores `fresh` if nothing is stored yet; the stored number otherwise.
    fn claim(&self, fresh: usize) -> Result<usize, usize>;
}

/// Implements [`Counter`] for an `AtomicUsize` type (std's; loom's in the
/// loom tests) with the same orderings.
macro_rules! impl_counter {
    ($atomic:ty, $ordering:path) => {
        impl Counter for $atomic {
            #[inline]
            fn get(&self) -> usize {
                self.load($ordering)
            }

            fn take_next(&self) -> usize {
                self.fetch_add(1, $ordering)
            }

            fn claim(&self, fresh: usize) -> Result<usize, usize> {
                self.compare_exchange(UNASSIGNED, fresh, $ordering, $ordering)
            }
        }
    };
}

impl_counter!(AtomicUsize, Ordering::Relaxed);

/// The number in `cell`, drawing one from `counter` on first use. Two threads
/// may race to assign: the first store wins and the loser's number stays
/// unused, so every thread agrees on one number; `first` runs once, on the
/// winner.
#[inline]
pub(crate) fn slot_number<C: Counter>(counter: &C, cell: &C, first: impl FnOnce()) -> usize {
    match cell.get() {
        UNASSIGNED => assign(counter, cell, first),
        index => index,
    }
}

#[cold]
fn assign<C: Counter>(counter: &C, cell: &C, first: impl FnOnce()) -> usize {
    let fresh = counter.take_next();
    match cell.claim(fresh) {
        Ok(_) => {
            first();
            fresh
        }
        Err(winner) => winner,
    }
}

/// A slot: its space and its number in that space.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub(crate) space: Space,
    pub(crate) index: usize,
}

/// Model checking with loom: `RUSTFLAGS="--cfg loom" cargo test -p
/// context-local --no-default-features --lib loom` (a CI step).
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;

    use super::{slot_number, Counter, UNASSIGNED};

    impl_counter!(AtomicUsize, Ordering::Relaxed);

    /// Numbers one cell from `thread`, counting the `first` callbacks.
    fn number(counter: &AtomicUsize, cell: &AtomicUsize, firsts: &AtomicUsize) -> usize {
        slot_number(counter, cell, || {
            firsts.fetch_add(1, Ordering::Relaxed);
        })
    }

    #[test]
    fn loom_racing_threads_agree_on_one_slot_number() {
        loom::model(|| {
            let shared = Arc::new((AtomicUsize::new(0), AtomicUsize::new(UNASSIGNED), AtomicUsize::new(0)));
            let other = shared.clone();
            let theirs = loom::thread::spawn(move || number(&other.0, &other.1, &other.2));
            let mine = number(&shared.0, &shared.1, &shared.2);
            let theirs = theirs.join().expect("thread");
            assert_eq!(mine, theirs, "every thread sees one number");
            assert!(mine < 2);
            assert_eq!(shared.2.load(Ordering::Relaxed), 1, "`first` runs once");
            assert_eq!(number(&shared.0, &shared.1, &shared.2), mine, "and it never changes");
        });
    }

    #[test]
    fn loom_different_fields_never_share_a_number() {
        loom::model(|| {
            let shared = Arc::new((AtomicUsize::new(0), AtomicUsize::new(UNASSIGNED), AtomicUsize::new(UNASSIGNED)));
            let other = shared.clone();
            let firsts = Arc::new(AtomicUsize::new(0));
            let their_firsts = firsts.clone();
            let theirs = loom::thread::spawn(move || number(&other.0, &other.2, &their_firsts));
            let mine = number(&shared.0, &shared.1, &firsts);
            let theirs = theirs.join().expect("thread");
            assert_ne!(mine, theirs);
            assert_eq!(firsts.load(Ordering::Relaxed), 2);
        });
    }
}
