//! The per-thread state: the context in effect, the thread-scoped values, and
//! the fields that a closure on this thread is using right now.
//!
//! One `thread_local!` holds it all, so finding the current context is one
//! thread-local load. The `RefCell` around it is never borrowed while user
//! code runs (closures, `init`, `default`, destructors): every operation takes
//! what it needs out, releases the borrow, and puts it back. A field in use by
//! a closure is recorded in `busy`, so touching it again is an
//! [`AccessError::Reentrant`], never a `RefCell` panic.
//!
//! This is the one module with `unsafe` code, for the two things the
//! benchmarks showed pay (issue 3): a read casts the stored value to the
//! field's type without a `TypeId` check, since the slot number proves the
//! type ([`downcast`]); and `with` lends the value by address instead of
//! cloning its `Arc` ([`ValuePtr`]). What keeps a lent value alive is the
//! `Busy::Read` entry: every path that takes a value out of the current
//! context or the thread's slots goes through [`ThreadState::insert`] or
//! [`ThreadState::remove`], and those park a value that is being read in its
//! entry until the read ends, instead of handing it back to be dropped.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::context::Context;
use crate::error::AccessError;
use crate::map::SlotVec;
use crate::slot::{type_mismatch, Loc, Space, Stored};

/// How a closure on this thread is using a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Busy {
    /// Read by `with`: other reads may go on; writes are `Reentrant`. A
    /// value displaced from the slot meanwhile (a guard of `enter` dropped
    /// inside the closure, say) is parked, alive, until the read ends.
    Read,
    /// Moved out by `update`, or being computed by `default`.
    Write,
    /// The struct's `init` is running.
    Init,
}

#[derive(Clone, Copy)]
struct BusyEntry {
    loc: Loc,
    depth: usize,
    kind: Busy,
}

pub(crate) struct ThreadState {
    /// The context in effect on this thread: the thread's root context, or one
    /// installed by `Context::run` / `InContext`.
    pub(crate) current: Context,
    /// How many contexts are installed on top of the root one.
    pub(crate) depth: usize,
    thread: SlotVec<Box<dyn Any>>,
    busy: Vec<BusyEntry>,
    /// Values displaced while being read, with the position in `busy` of the
    /// read that keeps them alive.
    parked: Vec<(usize, Stored)>,
}

/// The thread-local: the state, and the flag that stands in for a shared
/// borrow of it during a fast read (one thread-local, so one lookup).
struct Tls {
    cell: RefCell<ThreadState>,
    /// Set while [`read_fast`] runs a `Clone` impl on a value it reads
    /// without a `RefCell` borrow; mutable access is refused meanwhile.
    reading: Cell<bool>,
}

thread_local! {
    static STATE: Tls = const {
        Tls {
            cell: RefCell::new(ThreadState {
                current: Context::new(),
                depth: 0,
                thread: SlotVec::new(),
                busy: Vec::new(),
                parked: Vec::new(),
            }),
            reading: Cell::new(false),
        }
    };
}

/// Marks a fast read in progress; clears the mark when dropped (also when
/// the `Clone` impl panics).
struct ReadingGuard<'a>(&'a Cell<bool>);

impl<'a> ReadingGuard<'a> {
    #[inline(always)]
    fn set(flag: &'a Cell<bool>) -> ReadingGuard<'a> {
        flag.set(true);
        ReadingGuard(flag)
    }
}

impl Drop for ReadingGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Runs `f` on this thread's state, checking that `space` may be used here.
///
/// `field` names the access in errors: the state is being destroyed
/// (`Destroyed`), is borrowed by a `Clone` impl running inside an access
/// (`Reentrant`), or a task-scoped access comes from a tokio task with no
/// context (`Unscoped`).
#[inline]
pub(crate) fn with_state<R>(
    field: &'static str,
    space: Space,
    f: impl FnOnce(&mut ThreadState) -> Result<R, AccessError>,
) -> Result<R, AccessError> {
    STATE
        .try_with(|tls| {
            if tls.reading.get() {
                return Err(AccessError::Reentrant { field });
            }
            let mut state = tls.cell.try_borrow_mut().map_err(|_| AccessError::Reentrant { field })?;
            if space != Space::Thread {
                state.check_scoped(field)?;
            }
            f(&mut state)
        })
        .unwrap_or(Err(AccessError::Destroyed { field }))
}

/// Like [`with_state`], for reads that run no user code but `Clone`: the
/// state is borrowed shared, so a `Clone` impl may read other fields.
#[inline]
pub(crate) fn with_state_ref<R>(
    field: &'static str,
    space: Space,
    f: impl FnOnce(&ThreadState) -> Result<R, AccessError>,
) -> Result<R, AccessError> {
    STATE
        .try_with(|tls| {
            let state = tls.cell.try_borrow().map_err(|_| AccessError::Reentrant { field })?;
            if space != Space::Thread {
                state.check_scoped(field)?;
            }
            f(&state)
        })
        .unwrap_or(Err(AccessError::Destroyed { field }))
}

/// Runs `f` on the value in `loc` in the common case, cheaply: the state is
/// alive and not borrowed, no closure on this thread is using a field, the
/// access is in scope, and a value is stored. `None` sends the caller to its
/// full path, which handles every other case.
///
/// The state is read without a `RefCell` borrow: counting the borrow in and
/// out makes every read wait on the previous one's store to the counter, which
/// the benchmarks showed to be most of a read's cost. A flag (`READING`) that
/// only ever gets constants stored stands in for the borrow while `f` (a
/// `Clone` impl: user code) runs, and every mutable access refuses to start
/// while it is set.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn read_fast<R>(loc: Loc, f: impl FnOnce(&dyn Any) -> R) -> Option<R> {
    STATE
        .try_with(|tls| {
            if tls.reading.get() {
                // A `Clone` impl reading another field: the full path borrows.
                return None;
            }
            // SAFETY: the reference lives until this closure returns. No
            // mutable borrow exists now (`try_borrow_unguarded` checks), and
            // none can start before we return: the code below runs no user
            // code until `ReadingGuard::set`, and from then on every mutable
            // borrow of `STATE` (only `with_state` and `with_state_raw` take
            // one) refuses to start while `READING` is set. The guard clears
            // it only when `f` has returned or unwound.
            let state = unsafe { tls.cell.try_borrow_unguarded() }.ok()?;
            // At depth 0 a task-scoped read must first rule out an unscoped
            // tokio task, which the full path does.
            if !state.busy.is_empty() || (loc.space != Space::Thread && state.depth == 0) {
                return None;
            }
            let value = state.peek(loc)?;
            let _reading = ReadingGuard::set(&tls.reading);
            Some(f(value))
        })
        .ok()
        .flatten()
}

/// Runs `f` on this thread's state without scope checks; `None` once the
/// state is destroyed (or, from inside a `Clone` impl of a stored value,
/// borrowed).
#[inline]
pub(crate) fn with_state_raw<R>(f: impl FnOnce(&mut ThreadState) -> R) -> Option<R> {
    STATE
        .try_with(|tls| {
            if tls.reading.get() {
                return None;
            }
            tls.cell.try_borrow_mut().ok().map(|mut state| f(&mut state))
        })
        .ok()
        .flatten()
}

impl ThreadState {
    #[inline]
    fn check_scoped(&self, field: &'static str) -> Result<(), AccessError> {
        if self.unscoped() {
            Err(AccessError::Unscoped { field })
        } else {
            Ok(())
        }
    }

    /// Whether a tokio task with no context is running here (task-scoped
    /// values must not be read from the thread's root context then).
    #[inline]
    pub(crate) fn unscoped(&self) -> bool {
        self.depth == 0 && crate::task::in_runtime_task()
    }

    /// The stored value in `loc`, for reading.
    #[inline(always)]
    pub(crate) fn peek(&self, loc: Loc) -> Option<&dyn Any> {
        match loc.space {
            Space::Shared => self.current.shared.get(loc.index).map(|arc| &**arc as &dyn Any),
            Space::Local => self.current.local.get(loc.index).map(|boxed| &**boxed as &dyn Any),
            Space::Thread => self.thread.get(loc.index).map(|boxed| &**boxed),
        }
    }

    #[inline]
    pub(crate) fn contains(&self, loc: Loc) -> bool {
        self.peek(loc).is_some()
    }

    /// The address of the value stored in `loc`, for lending it to `with`.
    #[inline]
    pub(crate) fn peek_ptr(&self, loc: Loc) -> Option<ValuePtr> {
        self.peek(loc).map(|value| ValuePtr(value as *const dyn Any as *const ()))
    }

    /// Stores `value` in `loc`; returns the value displaced, to be dropped
    /// after the borrow ends. A displaced value that a `with` closure is
    /// reading is parked in its busy entry instead (see the module docs).
    pub(crate) fn insert(&mut self, loc: Loc, value: Stored) -> Option<Stored> {
        let old = match (loc.space, value) {
            (Space::Thread, Stored::Thread(boxed)) => self.thread.insert(loc.index, boxed).map(Stored::Thread),
            (_, value) => self.current.insert(loc, value),
        };
        self.park_if_read(loc, old)
    }

    /// Stores every value, returning the ones displaced (for dropping outside
    /// the borrow).
    pub(crate) fn insert_all(&mut self, items: impl IntoIterator<Item = (Loc, Stored)>) -> Vec<Stored> {
        items.into_iter().filter_map(|(loc, value)| self.insert(loc, value)).collect()
    }

    /// Makes each write (`None` empties the slot); returns the values
    /// displaced, for dropping after the borrow ends.
    pub(crate) fn apply(&mut self, changes: impl IntoIterator<Item = (Loc, Option<Stored>)>) -> Vec<Stored> {
        let applied = changes.into_iter().map(|(loc, value)| match value {
            Some(value) => self.insert(loc, value),
            None => self.remove(loc),
        });
        applied.flatten().collect()
    }

    /// Empties `loc`; returns the value, unless a `with` closure is reading
    /// it: then it is parked until the read ends and `None` is returned. A
    /// caller that hands the value to the user checks [`check_free`] first,
    /// so it never sees the parked case.
    ///
    /// [`check_free`]: ThreadState::check_free
    pub(crate) fn remove(&mut self, loc: Loc) -> Option<Stored> {
        let old = match loc.space {
            Space::Thread => self.thread.remove(loc.index).map(Stored::Thread),
            _ => self.current.remove(loc),
        };
        self.park_if_read(loc, old)
    }

    #[inline]
    fn park_if_read(&mut self, loc: Loc, old: Option<Stored>) -> Option<Stored> {
        let old = old?;
        if self.busy.is_empty() {
            return Some(old);
        }
        let depth = self.depth;
        let reading = self.busy.iter().rposition(|entry| {
            entry.loc == loc && (loc.space == Space::Thread || entry.depth == depth) && entry.kind == Busy::Read
        });
        match reading {
            Some(at) => {
                self.parked.push((at, old));
                None
            }
            None => Some(old),
        }
    }

    /// How a closure on this thread is using `loc` in the current context.
    #[inline]
    pub(crate) fn busy(&self, loc: Loc) -> Option<Busy> {
        if self.busy.is_empty() {
            return None;
        }
        self.busy
            .iter()
            .rev()
            .find(|entry| entry.loc == loc && (loc.space == Space::Thread || entry.depth == self.depth))
            .map(|entry| entry.kind)
    }

    /// Fails with `Reentrant` if a closure here is using `loc` at all.
    #[inline]
    pub(crate) fn check_free(&self, loc: Loc, field: &'static str) -> Result<(), AccessError> {
        match self.busy(loc) {
            None => Ok(()),
            Some(_) => Err(AccessError::Reentrant { field }),
        }
    }

    #[inline]
    pub(crate) fn push_busy(&mut self, loc: Loc, kind: Busy) {
        self.busy.push(BusyEntry { loc, depth: self.depth, kind });
    }

    /// Ends the innermost use; uses end in reverse order, also when unwinding.
    /// Returns the values parked by it, to be dropped after the borrow ends.
    #[inline]
    pub(crate) fn pop_busy(&mut self) -> Vec<Stored> {
        self.busy.pop();
        let live = self.busy.len();
        match self.parked.iter().position(|(at, _)| *at >= live) {
            Some(first) => self.parked.drain(first..).map(|(_, value)| value).collect(),
            None => Vec::new(),
        }
    }
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        // The thread is exiting and this thread-local is marked destroyed, so
        // any access from the destructors below is `Destroyed`. A destructor
        // that panics must not abort the process: each value is dropped on
        // its own, and a panic is contained to it.
        let mut context = std::mem::take(&mut self.current);
        for (_, value) in context.local.drain() {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(value)));
        }
        let _ = catch_unwind(AssertUnwindSafe(|| drop(context)));
        for (_, value) in self.thread.drain() {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(value)));
        }
    }
}

/// Pops the innermost busy entry when dropped (also on unwind).
pub(crate) struct BusyGuard;

impl Drop for BusyGuard {
    #[inline]
    fn drop(&mut self) {
        with_state_raw(|state| state.pop_busy());
    }
}

/// Casts a value read from a field's slot to the field's type `T`.
///
/// Every value in a slot was stored through the one `FieldDesc<T>` that owns
/// the slot number (`SlotCell` numbers are unique, and `FieldDesc::wrap` is a
/// `fn(T) -> Erased`), so the slot proves the type and the `TypeId` check,
/// a call through the vtable, is left to debug builds (every test runs them).
///
/// `T` must be the type of the field that owns the slot `value` was read from.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn downcast<T: 'static>(value: &dyn Any) -> &T {
    if cfg!(debug_assertions) && !value.is::<T>() {
        type_mismatch();
    }
    // SAFETY: `value` came from the slot of a `FieldDesc<T>`, which only ever
    // stores a `T` (see above; debug builds check it). A `&dyn Any` to a `T`
    // points at the `T`, so dropping the metadata gives a valid `&T` with the
    // same lifetime.
    unsafe { &*(value as *const dyn Any as *const T) }
}

/// Casts a value being written through a field's slot; as [`downcast`].
#[inline]
#[allow(unsafe_code)]
pub(crate) fn downcast_mut<T: 'static>(value: &mut dyn Any) -> &mut T {
    if cfg!(debug_assertions) && !(*value).is::<T>() {
        type_mismatch();
    }
    // SAFETY: as in `downcast`: the slot proves the value is a `T`, and the
    // unique borrow of the `dyn Any` becomes a unique borrow of the `T`.
    unsafe { &mut *(value as *mut dyn Any as *mut T) }
}

/// The address of a value lent to a `with` closure while the state is not
/// borrowed.
#[derive(Clone, Copy)]
pub(crate) struct ValuePtr(*const ());

impl ValuePtr {
    /// The value as the field's type.
    ///
    /// # Safety
    ///
    /// `T` must be the type of the field whose slot the pointer was read from,
    /// and a `Busy::Read` entry for that slot, pushed under the same borrow
    /// that read the pointer, must stay on the busy list for as long as the
    /// reference is used. The entry keeps the value alive: the only ways a
    /// value leaves the current context or the thread's slots are
    /// `ThreadState::insert` and `remove`, which park a read value in its
    /// entry rather than hand it back; writes through `Field` fail with
    /// `Reentrant` first; and a context that is not current cannot be reached
    /// by the closure (`Context::run` and `InContext` hold it mutably
    /// borrowed until the closure's frame is gone). Values live in their own
    /// heap allocation (`Arc` or `Box`), so the map or vector holding them may
    /// move or copy its entries without moving the value.
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) unsafe fn get<'a, T: 'static>(self) -> &'a T {
        // SAFETY: the caller upholds the contract above: the pointer is the
        // address of a live `T` that nothing frees or mutates while `'a` lasts.
        unsafe { &*(self.0 as *const T) }
    }
}

/// Whether this thread's state is still usable (not torn down at thread exit).
pub(crate) fn state_alive() -> bool {
    STATE.try_with(|_| ()).is_ok()
}
