//! A per-field, per-thread read cache: the fast path of `get` and `with`.
//!
//! The derive gives every field a `thread_local!` [`Cache`] of its own type.
//! A read that finds the entry current reads from it: one generation number
//! and one entry, no walk through the context's map and no downcast. Anything
//! else takes the full path and refills the entry.
//!
//! An entry holds a count of the value (`Arc`/`Rc`), taken from the slot, and
//! says when it was taken: the thread's generation number then, the task
//! that owned the context (the read checks it is still that task), the field
//! (so an entry can only ever answer for its own field), and the context.
//!
//! Invariants, each kept here:
//! - Every change to the thread's state (any write, any context installed or
//!   put back, any use of a field begun or ended) starts with
//!   [`invalidate`], which bumps the generation and lets go of every entry
//!   that is not lent to a closure right now. So a current entry's slot still
//!   holds the value, and letting go of the entry's count never drops a
//!   value: dropping happens exactly when it would without the cache.
//! - An entry lent to a closure (`with`, or a `Clone` run by `get`) keeps its
//!   count until the closure returns, like the count a `with` frame holds on
//!   the full path; [`lent_here`] tells writes that the field is in use, so
//!   they are `Reentrant` as they would be there.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::LocalKey;

use crate::running::Owner;
use crate::slot::Loc;
use crate::value::{drop_contained, drop_each, end_after, Drops};

/// The count of the value an entry holds.
pub(crate) enum Held<T: 'static> {
    /// An inherited task-scoped value.
    Shared(Arc<T>),
    /// A thread-scoped value.
    Thread(Rc<T>),
}

impl<T> Held<T> {
    #[inline]
    fn value(&self) -> &T {
        match self {
            Held::Shared(value) => value,
            Held::Thread(value) => value,
        }
    }
}

/// A value read in the current context, and when it was read.
pub(crate) struct Entry<T: 'static> {
    /// The thread's generation number when the entry was filled.
    pub(crate) generation: u64,
    /// The task that owned the context then (checked for task scope).
    pub(crate) owner: Owner,
    /// The field the entry answers for (its descriptor's address).
    pub(crate) field: usize,
    /// The slot and the context it was read in (0 for thread scope): what a
    /// write checks to know the field is lent here.
    pub(crate) loc: Loc,
    pub(crate) context: u64,
    pub(crate) held: Held<T>,
}

/// One field's cache on one thread. Made only by the derive, one per field.
#[doc(hidden)]
pub struct Cache<T: 'static> {
    entry: RefCell<Option<Entry<T>>>,
    /// Whether the entry is in this thread's list of filled entries.
    listed: Cell<bool>,
}

impl<T: 'static> Cache<T> {
    /// An empty cache.
    pub const fn new() -> Cache<T> {
        Cache { entry: RefCell::new(None), listed: Cell::new(false) }
    }
}

impl<T: 'static> Drop for Cache<T> {
    /// At thread exit: the state let go of the entry first if it was still
    /// alive, so this count is not the last; contained all the same, as a
    /// panic here would abort the process.
    fn drop(&mut self) {
        let mut drops = Drops::default();
        drops.drop_one(self.entry.get_mut().take());
        drops.swallow();
    }
}

impl<T: 'static> Default for Cache<T> {
    fn default() -> Self {
        Cache::new()
    }
}

/// How many entries one thread lists at a time; a read of a field beyond
/// that takes the full path until the next change of state lets go of them.
const ROOM: usize = 32;

/// The thread's generation number and its filled entries (those filled since
/// the last change of state, and those still lent to a closure). Needs no
/// destructor, so it outlives every other thread-local of the library at
/// thread exit.
struct Generation {
    number: Cell<u64>,
    len: Cell<usize>,
    filled: [Cell<Option<&'static dyn Listed>>; ROOM],
}

thread_local! {
    static GENERATION: Generation = const {
        Generation { number: Cell::new(1), len: Cell::new(0), filled: [const { Cell::new(None) }; ROOM] }
    };
}

/// This thread's generation number.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.with(|generation| generation.number.get())
}

#[inline]
fn current_generation() -> u64 {
    generation()
}

/// Makes every entry on this thread stale and lets go of those not lent to a
/// closure. Called before anything changes the thread's state.
#[inline]
pub(crate) fn invalidate() {
    let any = GENERATION.with(|generation| {
        generation.number.set(generation.number.get() + 1);
        generation.len.get() != 0
    });
    if any {
        let_go();
    }
}

/// Empties the listed entries, keeping those lent to a closure listed.
#[cold]
fn let_go() {
    GENERATION.with(|generation| {
        let len = generation.len.replace(0);
        for at in 0..len {
            let Some(entry) = generation.filled[at].take() else { continue };
            // `empty` may run no user code that lists an entry: the count it
            // drops is not the last (the slot still holds one).
            if !entry.empty() {
                let keep = generation.len.get();
                generation.filled[keep].set(Some(entry));
                generation.len.set(keep + 1);
            }
        }
    });
}

/// Lists an entry; `false` if there is no room.
fn list(entry: &'static dyn Listed) -> bool {
    GENERATION.with(|generation| {
        let len = generation.len.get();
        if len == ROOM {
            return false;
        }
        generation.filled[len].set(Some(entry));
        generation.len.set(len + 1);
        true
    })
}

/// Whether a closure on this thread is using the field in `loc`, in the
/// context `context`, through a cache entry.
pub(crate) fn lent_here(loc: Loc, context: u64) -> bool {
    GENERATION.with(|generation| {
        let listed = generation.filled[..generation.len.get()].iter();
        listed.filter_map(|entry| entry.get()).any(|entry| entry.lent() == Some((loc, context)))
    })
}

/// A filled entry, seen without its type.
trait Listed {
    /// Lets go of the entry; `false` if it is lent to a closure (then it
    /// stays until the closure returns). The count dropped is not the last
    /// (the slot still holds one): no user code runs.
    fn empty(&'static self) -> bool;
    /// Where and in which context the entry is lent to a closure, if it is.
    fn lent(&'static self) -> Option<(Loc, u64)>;
}

impl<T: 'static> Listed for LocalKey<Cache<T>> {
    fn empty(&'static self) -> bool {
        let taken = self.try_with(|cache| match cache.entry.try_borrow_mut() {
            Ok(mut entry) => {
                cache.listed.set(false);
                Ok(entry.take())
            }
            Err(_) => Err(()),
        });
        match taken {
            Ok(Ok(entry)) => {
                drop_contained(entry);
                true
            }
            Ok(Err(())) => false,
            Err(_) => true,
        }
    }

    fn lent(&'static self) -> Option<(Loc, u64)> {
        self.try_with(|cache| match cache.entry.try_borrow_mut() {
            Ok(_) => None,
            Err(_) => cache.entry.try_borrow().ok().and_then(|entry| entry.as_ref().map(|e| (e.loc, e.context))),
        })
        .ok()
        .flatten()
    }
}

/// Stores `entry` in `key`'s cache and lists it. `false` if the cache is
/// lent to a closure or torn down (then the entry is dropped: a count the
/// slot also holds).
pub(crate) fn fill<T: 'static>(key: &'static LocalKey<Cache<T>>, entry: Entry<T>) -> bool {
    let mut entry = Some(entry);
    let stored = key.try_with(|cache| {
        let Ok(mut slot) = cache.entry.try_borrow_mut() else { return None };
        let old = std::mem::replace(&mut *slot, entry.take());
        let first = !cache.listed.replace(true);
        Some((old, first))
    });
    let Ok(Some((old, first))) = stored else {
        drop_each(entry);
        return false;
    };
    if first && !list(key) {
        // Not listed, so nothing would let go of it: empty it again.
        drop_each(key.empty_now());
        drop_each(old);
        return false;
    }
    drop_each(old);
    true
}

trait EmptyNow<T: 'static> {
    fn empty_now(&'static self) -> Option<Entry<T>>;
}

impl<T: 'static> EmptyNow<T> for LocalKey<Cache<T>> {
    fn empty_now(&'static self) -> Option<Entry<T>> {
        self.try_with(|cache| {
            cache.listed.set(false);
            cache.entry.try_borrow_mut().ok().and_then(|mut entry| entry.take())
        })
        .ok()
        .flatten()
    }
}

/// Runs `op` on the cached value if `key`'s entry is current for `field`
/// (`check_owner`: for task scope, also that the task running now owns the
/// context). Gives `op` back otherwise. Always inlined: the accessor names
/// `key` as a constant, so the thread-local access compiles to a direct one.
#[inline(always)]
pub(crate) fn read<T: 'static, R, F: FnOnce(&T) -> R>(
    key: &'static LocalKey<Cache<T>>,
    field: usize,
    check_owner: bool,
    op: F,
) -> Result<R, F> {
    let generation = generation();
    let mut op = Some(op);
    let done = key.try_with(|cache| {
        // Declared first, so dropped after the borrow of the entry ends
        // (also when `op` panics).
        let stale = Stale { key, generation };
        let result = {
            let entry = cache.entry.try_borrow().ok()?;
            let entry = entry.as_ref()?;
            let owned = !check_owner || entry.owner == Owner::running();
            if entry.generation != generation || entry.field != field || !owned {
                return None;
            }
            op.take()?(entry.held.value())
        };
        if current_generation() == stale.generation {
            std::mem::forget(stale);
            return Some(result);
        }
        // Letting go of a stale entry may drop its value, whose destructor
        // may panic: then the result is dropped too.
        Some(end_after(stale, result))
    });
    match done {
        Ok(Some(result)) => Ok(result),
        _ => Err(op.take().expect("`op` is given back when it did not run")),
    }
}

/// Lets go of an entry that went stale while it was lent (the thread's state
/// changed inside the closure), once the closure is done with it; also when
/// it panics. Without this the entry's count could keep a value alive after
/// its slot let go of it.
struct Stale<T: 'static> {
    key: &'static LocalKey<Cache<T>>,
    generation: u64,
}

impl<T: 'static> Drop for Stale<T> {
    #[inline]
    fn drop(&mut self) {
        if generation() != self.generation {
            self.let_go();
        }
    }
}

impl<T: 'static> Stale<T> {
    #[cold]
    fn let_go(&self) {
        // Dropped by `read` after its borrow of the entry ends: the entry may
        // still be lent to an enclosing closure, then it stays listed.
        let stale = self.key.try_with(|cache| {
            let mut entry = cache.entry.try_borrow_mut().ok()?;
            if entry.as_ref().is_some_and(|entry| entry.generation != generation()) {
                entry.take()
            } else {
                None
            }
        });
        drop_each(stale.ok().flatten());
    }
}
