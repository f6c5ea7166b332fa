//! A per-field, per-thread cache: the fast path of `get`, `with` and `set`.
//!
//! The derive gives every field a `thread_local!` [`Cache`] of its own type.
//! A read that finds the entry current reads from it: one generation number
//! and one entry, no walk through the context's map and no downcast. Anything
//! else takes the full path and refills the entry.
//!
//! An entry holds a count of the value (`Arc`/`Rc`) taken from the slot, or
//! for a scalar type (`word.rs`) a copy of it, and says when it was taken:
//! the thread's generation number then, the task that owned the context (the
//! access checks it is still that task), the field (so an entry only ever
//! answers for its own field), and the context. For a scalar type the cache
//! also keeps the value as a `u64` beside the entry, named by the field and
//! cleared by every change of the thread's state, which `get` reads without
//! borrowing the entry or reading the generation (see [`Word`]).
//!
//! For a type whose `Clone` and `Drop` run no user code and whose values own
//! what they hold alone (integers, `String`, ...: see `value::unseen_drop`),
//! `set` and `update` write into a current entry instead of the slot: the
//! entry then holds the value itself and is *dirty*, and the value it
//! replaced stays in the slot until the entry is written back. Nothing but
//! memory can tell when such a value is dropped, and every path that looks
//! at the slot writes dirty entries back first.
//!
//! Invariants, each kept here:
//! - Every change to the thread's state (any write, any context installed or
//!   put back, any use of a field begun or ended) starts with [`settle`],
//!   which writes dirty entries back, bumps the generation and lets go of
//!   every entry that is not lent to a closure right now. So a clean current
//!   entry's slot still holds the value, and letting go of the entry's count
//!   never drops a value: dropping happens exactly when it would without the
//!   cache. Every read of the state that is not a change writes dirty entries
//!   back first ([`write_back`]), so it sees what the entries say.
//! - An entry lent to a closure (`with`, or a `Clone` run by `get`) keeps its
//!   value until the closure returns, like the count a `with` frame holds on
//!   the full path; [`lent_here`] tells writes that the field is in use, so
//!   they are `Reentrant` as they would be there. A dirty entry is never lent
//!   to user code (`with` writes it back first), so it is always there to
//!   write back.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::LocalKey;

use crate::running::Owner;
use crate::slot::{Loc, Space};
use crate::value::{drop_contained, drop_each, end_after, SharedArc, Stored};
use crate::word::{copy_of, from_word, is_word, to_word};

/// The value an entry holds.
pub(crate) enum Held<T: 'static> {
    /// A count of an inherited task-scoped value.
    Shared(Arc<T>),
    /// A count of a thread-scoped value.
    Thread(Rc<T>),
    /// A copy of a scalar value its slot also holds (`word.rs`): no count
    /// to take or give back.
    Copied(T),
    /// A value `set` wrote here and not yet into the slot (dirty).
    Owned(T),
}

impl<T> Held<T> {
    #[inline]
    fn value(&self) -> &T {
        match self {
            Held::Shared(value) => value,
            Held::Thread(value) => value,
            Held::Copied(value) => value,
            Held::Owned(value) => value,
        }
    }
}

/// A value read in the current context, and when it was read.
pub(crate) struct Entry<T: 'static> {
    /// The thread's generation number when the entry was filled.
    pub(crate) generation: u64,
    /// The task that owned the context then (checked for task scope).
    pub(crate) owner: Owner,
    /// The field the entry answers for (its descriptor's address: a
    /// `static`, so one address per field).
    pub(crate) field: usize,
    /// How the field's values are stored, for writing back.
    pub(crate) forms: &'static Forms<T>,
    /// The slot and the context it was read in (0 for thread scope): what a
    /// write checks to know the field is lent here, and where a dirty value
    /// goes back.
    pub(crate) loc: Loc,
    pub(crate) context: u64,
    /// Whether `set` may write here: nothing used the field and the struct's
    /// `init` had run when the entry was filled.
    pub(crate) writable: bool,
    pub(crate) held: Held<T>,
}

/// How a field's values are stored: kept in the field's descriptor, read
/// by its cache entries to fill, write back and `update`.
pub(crate) struct Forms<T: 'static> {
    /// A value as its slot stores it.
    pub(crate) wrap: fn(T) -> Stored,
    /// For an inherited field: a stored count as `Arc<T>` (the downcast
    /// needs `T: Send + Sync`, which only an inherited field's constructor
    /// can name); `None` for the others.
    pub(crate) typed_arc: fn(SharedArc) -> Option<Arc<T>>,
    /// For an inherited field: a typed count as the map stores it.
    pub(crate) share: Option<fn(Arc<T>) -> SharedArc>,
    /// For an inherited field: `T::clone`.
    pub(crate) unshare: Option<fn(&T) -> T>,
}

impl<T: 'static> Forms<T> {
    /// The forms of a field whose values are not shared between contexts.
    pub(crate) const fn owned(wrap: fn(T) -> Stored) -> Forms<T> {
        Forms { wrap, typed_arc: |_| None, share: None, unshare: None }
    }
}

impl<T> Entry<T> {
    /// Whether the entry answers for `field` now.
    #[inline(always)]
    fn answers(&self, generation: u64, field: usize, check_owner: bool) -> bool {
        let owned = !check_owner || self.owner == Owner::running();
        self.generation == generation && self.field == field && owned
    }
}

/// Takes a dirty entry's value out, as the slot stores it, with where it
/// goes back; `keep` leaves a clean entry holding a count of it (still
/// current), otherwise the entry is emptied.
fn take_dirty<T: 'static>(slot: &mut Option<Entry<T>>, keep: bool) -> Option<(Loc, u64, Stored)> {
    if !matches!(slot, Some(Entry { held: Held::Owned(_), .. })) {
        return None;
    }
    let Entry { generation, owner, field, forms, loc, context, writable, held } = slot.take()?;
    let Held::Owned(value) = held else { return None };
    let copy = if keep { copy_of::<T>(&value) } else { None };
    let (kept, stored) = match (keep, loc.space, forms.share) {
        (true, _, _) if copy.is_some() => (copy.map(Held::Copied), (forms.wrap)(value)),
        (true, Space::Shared, Some(share)) => {
            let count = Arc::new(value);
            (Some(Held::Shared(count.clone())), Stored::Shared(share(count)))
        }
        (true, Space::Thread, _) => {
            let count = Rc::new(value);
            (Some(Held::Thread(count.clone())), Stored::Thread(count))
        }
        _ => (None, (forms.wrap)(value)),
    };
    *slot = kept.map(|held| Entry { generation, owner, field, forms, loc, context, writable, held });
    Some((loc, context, stored))
}

/// One field's cache on one thread. Made only by the derive, one per field.
///
/// It has no destructor, so reaching it costs no check that the thread is
/// exiting: at thread exit the state's teardown lets go of every filled
/// entry (every filled entry is listed), before any value is dropped.
#[doc(hidden)]
pub struct Cache<T: 'static> {
    entry: ManuallyDrop<RefCell<Option<Entry<T>>>>,
    /// Whether the entry is in this thread's list of filled entries.
    listed: Cell<bool>,
    /// While `update` has the entry's value: the slot and context (the
    /// entry itself is borrowed then).
    leased: Cell<Option<(Loc, u64)>>,
    /// Set when the slot was rewritten while `update` had the entry's value
    /// (a guard restoring it, say): the later write wins, the entry's value
    /// is dropped instead of written back.
    displaced: Cell<bool>,
    /// For a scalar type: a copy of the entry's value.
    word: Word,
}

/// A copy of a current entry's scalar value (see `word.rs`), read without
/// borrowing the entry and without the thread's generation: `field` names a
/// field only while the entry is current for it, holds the value `bits`
/// stands for, was filled for `owner`, and no `update` has it. It is set
/// only from a current entry, and cleared (0) by every change of the entry,
/// by every lease, and by every change of the thread's state: each one lets
/// go of every listed cache, and a cache with a word is listed.
struct Word {
    bits: Cell<u64>,
    field: Cell<usize>,
    owner: Cell<Owner>,
}

impl<T: 'static> Cache<T> {
    /// An empty cache.
    pub const fn new() -> Cache<T> {
        Cache {
            entry: ManuallyDrop::new(RefCell::new(None)),
            listed: Cell::new(false),
            leased: Cell::new(None),
            displaced: Cell::new(false),
            word: Word { bits: Cell::new(0), field: Cell::new(0), owner: Cell::new(Owner::NONE) },
        }
    }

    /// Makes the word a copy of `entry`'s value, if its type is a scalar
    /// and the entry is current.
    #[inline(always)]
    fn copy_word(&self, entry: &Entry<T>) {
        match to_word(entry.held.value()) {
            Some(bits) if entry.generation == generation() => {
                self.word.bits.set(bits);
                self.word.owner.set(entry.owner);
                self.word.field.set(entry.field);
            }
            _ => self.forget_word(),
        }
    }

    /// The word is no longer a copy of anything.
    #[inline(always)]
    fn forget_word(&self) {
        self.word.field.set(0);
    }
}

impl<T: 'static> Default for Cache<T> {
    fn default() -> Self {
        Cache::new()
    }
}

/// How many entries one thread lists at a time; a field beyond that takes
/// the full path until the next change of state lets go of them.
const ROOM: usize = 32;

/// The thread's generation number and its filled entries (those filled since
/// the last change of state, and those still lent to a closure). Needs no
/// destructor, so it outlives every other thread-local of the library at
/// thread exit.
struct Generation {
    number: Cell<u64>,
    /// Whether some listed entry may be dirty.
    dirty: Cell<bool>,
    /// How many `update`s have an entry's value right now.
    leases: Cell<usize>,
    len: Cell<usize>,
    filled: [Cell<Option<&'static dyn Listed>>; ROOM],
}

thread_local! {
    static GENERATION: Generation = const {
        Generation {
            number: Cell::new(1),
            dirty: Cell::new(false),
            leases: Cell::new(0),
            len: Cell::new(0),
            filled: [const { Cell::new(None) }; ROOM],
        }
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

/// Where a dirty value goes back: called with the slot, the context the
/// entry was filled in, and the value as the slot stores it.
pub(crate) type WriteBack<'a> = &'a mut dyn FnMut(Loc, u64, Stored);

/// Before a change of the thread's state: makes every entry stale. `false`
/// if some are listed: then [`settle`] must run too.
#[inline(always)]
pub(crate) fn bump() -> bool {
    GENERATION.with(|generation| {
        generation.number.set(generation.number.get() + 1);
        generation.len.get() == 0
    })
}

/// After [`bump`] found entries listed: writes dirty entries back and lets
/// go of those not lent to a closure.
pub(crate) fn settle(write_back: WriteBack<'_>) {
    GENERATION.with(|generation| generation.dirty.set(false));
    let_go(write_back);
}

/// Empties the listed entries (writing dirty ones back), keeping those lent
/// to a closure listed.
#[cold]
fn let_go(write_back: WriteBack<'_>) {
    GENERATION.with(|generation| {
        let len = generation.len.replace(0);
        for at in 0..len {
            let Some(entry) = generation.filled[at].take() else { continue };
            // Runs no user code: a count it drops is not the last (the slot
            // still holds one), a dirty value goes back to its slot.
            if !entry.settle(write_back) {
                let keep = generation.len.get();
                generation.filled[keep].set(Some(entry));
                generation.len.set(keep + 1);
                // `update` may have it, dirty: written back when it returns.
                generation.dirty.set(true);
            }
        }
    });
}

/// Whether some entry may hold a value its slot does not have yet.
#[inline]
pub(crate) fn any_dirty() -> bool {
    GENERATION.with(|generation| generation.dirty.get())
}

/// Writes dirty entries back, leaving them current and clean: before the
/// state is read other than through an entry.
#[cold]
pub(crate) fn write_back(write_back: WriteBack<'_>) {
    GENERATION.with(|generation| {
        let mut still = false;
        for entry in &generation.filled[..generation.len.get()] {
            if let Some(entry) = entry.get() {
                still |= !entry.write_back(write_back);
            }
        }
        generation.dirty.set(still);
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
    lent(loc, context).is_some()
}

/// Whether `update` has the value of the field in `loc`, in the context
/// `context`, through a cache entry: then the field is out of the context
/// while its closure runs.
pub(crate) fn leased_here(loc: Loc, context: u64) -> bool {
    GENERATION.with(|generation| generation.leases.get() != 0) && lent(loc, context) == Some(Lent::Leased)
}

fn lent(loc: Loc, context: u64) -> Option<Lent> {
    GENERATION.with(|generation| {
        let listed = generation.filled[..generation.len.get()].iter();
        listed.filter_map(Cell::get).find_map(|entry| match entry.lent() {
            Some((at, within, how)) if at == loc && within == context => Some(how),
            _ => None,
        })
    })
}

/// The slots `update` has the values of, in the context `context`.
pub(crate) fn leased_in(context: u64) -> Vec<Loc> {
    GENERATION.with(|generation| {
        if generation.leases.get() == 0 {
            return Vec::new();
        }
        let listed = generation.filled[..generation.len.get()].iter();
        let lent = listed.filter_map(Cell::get).filter_map(|entry| entry.lent());
        lent.filter(|(_, within, how)| *within == context && *how == Lent::Leased).map(|(loc, ..)| loc).collect()
    })
}

/// Tells an `update` that has the value of `loc` in `context` that the slot
/// was rewritten meanwhile.
pub(crate) fn displace(loc: Loc, context: u64) {
    GENERATION.with(|generation| {
        if generation.leases.get() == 0 {
            return;
        }
        for entry in generation.filled[..generation.len.get()].iter().filter_map(Cell::get) {
            if entry.lent() == Some((loc, context, Lent::Leased)) {
                entry.displace();
            }
        }
    });
}

/// How a closure has an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lent {
    /// `with` (or a `Clone` run by `get`): reads go on.
    Read,
    /// `update`: the value is out of the context until it returns.
    Leased,
}

/// A filled entry, seen without its type.
trait Listed {
    /// Lets go of the entry, writing a dirty value back; `false` if it is
    /// lent to a closure (then it stays until the closure returns).
    fn settle(&'static self, write_back: WriteBack<'_>) -> bool;
    /// Writes a dirty value back, keeping the entry current and clean;
    /// `false` if it is lent and stays dirty.
    fn write_back(&'static self, write_back: WriteBack<'_>) -> bool;
    /// Where, in which context and how the entry is lent to a closure.
    fn lent(&'static self) -> Option<(Loc, u64, Lent)>;
    /// See [`displace`].
    fn displace(&'static self);
}

impl<T: 'static> Listed for LocalKey<Cache<T>> {
    fn settle(&'static self, write_back: WriteBack<'_>) -> bool {
        let taken = self.try_with(|cache| {
            // Also when the entry is lent: the word must not outlive the
            // change of state.
            cache.forget_word();
            match cache.entry.try_borrow_mut() {
                Ok(mut slot) => {
                    cache.listed.set(false);
                    let dirty = take_dirty(&mut slot, false);
                    let displaced = cache.displaced.replace(false);
                    Ok((dirty, displaced, slot.take()))
                }
                Err(_) => Err(()),
            }
        });
        match taken {
            Ok(Ok((dirty, displaced, entry))) => {
                match dirty {
                    // A value of a type whose `Drop` runs no user code.
                    Some((.., value)) if displaced => drop(value),
                    Some((loc, context, value)) => write_back(loc, context, value),
                    None => {}
                }
                // A count the slot also holds: no user code runs.
                drop_contained(entry);
                true
            }
            Ok(Err(())) => false,
            Err(_) => true,
        }
    }

    fn write_back(&'static self, write_back: WriteBack<'_>) -> bool {
        let dirty = self.try_with(|cache| match cache.entry.try_borrow_mut() {
            Ok(mut slot) => Ok(take_dirty(&mut slot, true)),
            Err(_) => Err(()),
        });
        match dirty {
            Ok(Ok(Some((loc, context, value)))) => {
                write_back(loc, context, value);
                true
            }
            Ok(Ok(None)) | Err(_) => true,
            Ok(Err(())) => false,
        }
    }

    fn lent(&'static self) -> Option<(Loc, u64, Lent)> {
        self.try_with(|cache| {
            if cache.entry.try_borrow_mut().is_ok() {
                return None;
            }
            match cache.entry.try_borrow() {
                Ok(entry) => entry.as_ref().map(|e| (e.loc, e.context, Lent::Read)),
                Err(_) => cache.leased.get().map(|(loc, context)| (loc, context, Lent::Leased)),
            }
        })
        .ok()
        .flatten()
    }

    fn displace(&'static self) {
        let _ = self.try_with(|cache| cache.displaced.set(true));
    }
}

/// Whether two keys name the same cache (on this thread, so on every
/// thread): a `thread_local!` key is a constant, so its address may differ
/// where it is named; the object it leads to does not.
pub(crate) fn same_cache<T: 'static>(a: &'static LocalKey<Cache<T>>, b: &'static LocalKey<Cache<T>>) -> bool {
    let address = |key: &'static LocalKey<Cache<T>>| key.try_with(|cache| std::ptr::from_ref(cache) as usize).ok();
    matches!((address(a), address(b)), (Some(a), Some(b)) if a == b)
}

/// Stores `entry` in `key`'s cache and lists it. `false` if the cache is
/// lent to a closure or the list is full (then the entry is dropped: a count
/// the slot also holds). Inlined, so the entry is built where it is stored.
#[inline(always)]
pub(crate) fn fill<T: 'static>(key: &'static LocalKey<Cache<T>>, entry: Entry<T>) -> bool {
    let placed = key.with(|cache| {
        let Ok(mut slot) = cache.entry.try_borrow_mut() else { return Err(entry) };
        if !cache.listed.get() {
            if !list(key) {
                return Err(entry);
            }
            cache.listed.set(true);
        }
        cache.copy_word(&entry);
        Ok(slot.replace(entry))
    });
    match placed {
        Ok(old) => {
            drop_each(old);
            true
        }
        Err(entry) => {
            drop_contained(entry);
            false
        }
    }
}

/// The field's value from `key`'s word, if it is current for `field` (and,
/// `check_owner`, the task running now owns the context): a scalar read
/// that borrows nothing.
#[inline(always)]
pub(crate) fn read_word<T: 'static>(key: &'static LocalKey<Cache<T>>, field: usize, check_owner: bool) -> Option<T> {
    if !is_word::<T>() {
        return None;
    }
    key.with(|cache| {
        let word = &cache.word;
        if word.field.get() != field {
            return None;
        }
        if check_owner && word.owner.get() != Owner::running() {
            return None;
        }
        from_word(word.bits.get())
    })
}

/// Runs `op` on the cached value if `key`'s entry is current for `field`
/// (`check_owner`: for task scope, also that the task running now owns the
/// context). `dirty`: whether `op` may read a value not yet written back
/// (only if it runs no user code). Gives `op` back otherwise. Always
/// inlined: the accessor names `key` as a constant, so the thread-local
/// access compiles to a direct one.
#[inline(always)]
pub(crate) fn read<T: 'static, R, F: FnOnce(&T) -> R>(
    key: &'static LocalKey<Cache<T>>,
    field: usize,
    check_owner: bool,
    dirty: bool,
    op: F,
) -> Result<R, F> {
    let generation = generation();
    let mut op = Some(op);
    // `try_with`, though a cache is always there (it has no destructor):
    // with `with` (and its panic branch) `with(len)` and `set` took 2 ns
    // longer in the benches, and a switch after reads 10 ns.
    let done = key.try_with(|cache| {
        // Declared first, so dropped after the borrow of the entry ends
        // (also when `op` panics).
        let stale = Stale { key, generation };
        let result = {
            let entry = cache.entry.try_borrow().ok()?;
            let entry = entry.as_ref()?;
            if !entry.answers(generation, field, check_owner) || (!dirty && matches!(entry.held, Held::Owned(_))) {
                return None;
            }
            op.take()?(entry.held.value())
        };
        // An `op` that runs no user code (`dirty`) cannot change the state.
        if dirty || current_generation() == stale.generation {
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

/// Stores `value` in `key`'s entry if it is current and writable for
/// `field` (see [`read`]); the entry is dirty afterwards. Gives `value` back
/// otherwise. Only for types whose `Drop` runs no user code: the value it
/// replaces is dropped here.
#[inline(always)]
pub(crate) fn write<T: 'static>(
    key: &'static LocalKey<Cache<T>>,
    field: usize,
    check_owner: bool,
    value: T,
) -> Result<(), T> {
    let generation = generation();
    let mut value = Some(value);
    let old = key.try_with(|cache| {
        let mut entry = cache.entry.try_borrow_mut().ok()?;
        let entry = entry.as_mut()?;
        if !entry.answers(generation, field, check_owner) || !entry.writable {
            return None;
        }
        let old = std::mem::replace(&mut entry.held, Held::Owned(value.take()?));
        if is_word::<T>() {
            cache.copy_word(entry);
        }
        Some(old)
    });
    match old {
        Ok(Some(old)) => {
            GENERATION.with(|generation| generation.dirty.set(true));
            drop(old);
            Ok(())
        }
        _ => Err(value.take().expect("`value` is given back when it was not stored")),
    }
}

/// Runs `op` on the value in `key`'s entry, in place, if the entry is
/// current and writable for `field` (see [`write`]); the entry is dirty
/// afterwards. While `op` runs the entry is borrowed: the field is in use
/// (`Reentrant`) and out of the context (snapshots leave it out). Gives `op`
/// back otherwise. Only for types whose `Clone` and `Drop` run no user code.
///
/// `settle` runs after `op` if the thread's state changed meanwhile (also
/// when `op` panics), so the value goes back to its slot at once (or is
/// dropped, if the slot was rewritten meanwhile).
#[inline(always)]
pub(crate) fn update<T: 'static, R, F: FnOnce(&mut T) -> R>(
    key: &'static LocalKey<Cache<T>>,
    field: usize,
    check_owner: bool,
    settle: fn(),
    op: F,
) -> Result<R, F> {
    let generation = generation();
    let mut op = Some(op);
    let done = key.try_with(|cache| {
        // Declared first, so dropped after the borrow of the entry ends; set
        // once the value is leased (a nested `update` that finds the entry
        // borrowed must not end the outer one's lease).
        let after;
        let result = {
            let mut slot = cache.entry.try_borrow_mut().ok()?;
            let entry = slot.as_mut()?;
            if !entry.answers(generation, field, check_owner) || !entry.writable {
                return None;
            }
            let unshared = match &entry.held {
                Held::Owned(_) => None,
                Held::Shared(count) => Some(entry.forms.unshare?(count)),
                Held::Copied(value) => Some(copy_of::<T>(value)?),
                Held::Thread(_) => return None,
            };
            if let Some(value) = unshared {
                // A count the slot also holds: no user code runs.
                drop(std::mem::replace(&mut entry.held, Held::Owned(value)));
            }
            let Held::Owned(value) = &mut entry.held else { return None };
            GENERATION.with(|generation| {
                generation.dirty.set(true);
                generation.leases.set(generation.leases.get() + 1);
            });
            cache.leased.set(Some((entry.loc, entry.context)));
            cache.forget_word();
            after = Leased { cache, generation, settle };
            let result = op.take()?(value);
            if is_word::<T>() {
                // Stale at once if `op` changed the thread's state.
                cache.copy_word(entry);
            }
            result
        };
        if current_generation() == generation {
            // Nothing to settle: ending the lease runs no user code.
            drop(after);
            return Some(result);
        }
        Some(end_after(after, result))
    });
    match done {
        Ok(Some(result)) => Ok(result),
        _ => Err(op.take().expect("`op` is given back when it did not run")),
    }
}

/// Ends an `update` through an entry (see [`update`]).
struct Leased<'c, T: 'static> {
    cache: &'c Cache<T>,
    generation: u64,
    settle: fn(),
}

impl<T: 'static> Drop for Leased<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.cache.leased.set(None);
        GENERATION.with(|generation| generation.leases.set(generation.leases.get() - 1));
        if generation() != self.generation {
            (self.settle)();
        }
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
        // still be lent to an enclosing closure, then it stays listed. A
        // stale entry is never dirty (see `settle`).
        let stale = self.key.try_with(|cache| {
            let mut entry = cache.entry.try_borrow_mut().ok()?;
            if entry.as_ref().is_some_and(|entry| entry.generation != generation()) {
                cache.forget_word();
                entry.take()
            } else {
                None
            }
        });
        drop_each(stale.ok().flatten());
    }
}
