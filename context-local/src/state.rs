//! The per-thread state: the context in effect, the thread-scoped values, and
//! the fields that a closure on this thread is using right now.
//!
//! One `thread_local!` holds it all, so finding the current context is one
//! thread-local load. The `RefCell` around it is never borrowed while user
//! code runs (closures, `init`, `default`, destructors): every operation takes
//! what it needs out, releases the borrow, and puts it back. A field in use by
//! a closure is recorded in `busy`, so touching it again is an
//! [`AccessError::Reentrant`], never a `RefCell` panic.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::context::Context;
use crate::error::AccessError;
use crate::map::SlotVec;
use crate::slot::{type_mismatch, Loc, Space, Stored};

/// How a closure on this thread is using a slot.
pub(crate) enum Busy {
    /// Read by `with`: other reads may go on. A value that is not shared
    /// (`Local`/`Thread`) is lent out of its slot and kept here meanwhile.
    Read(Option<Rc<Stored>>),
    /// Moved out by `update`, or being computed by `default`.
    Write,
    /// The struct's `init` is running.
    Init,
}

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
}

thread_local! {
    static STATE: RefCell<ThreadState> = const {
        RefCell::new(ThreadState {
            current: Context::new(),
            depth: 0,
            thread: SlotVec::new(),
            busy: Vec::new(),
        })
    };
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
        .try_with(|cell| {
            let mut state = cell.try_borrow_mut().map_err(|_| AccessError::Reentrant { field })?;
            if space != Space::Thread {
                state.check_scoped(field)?;
            }
            f(&mut state)
        })
        .unwrap_or(Err(AccessError::Destroyed { field }))
}

/// Runs `f` on this thread's state without scope checks; `None` once the
/// state is destroyed (or, from inside a `Clone` impl of a stored value,
/// borrowed).
pub(crate) fn with_state_raw<R>(f: impl FnOnce(&mut ThreadState) -> R) -> Option<R> {
    STATE.try_with(|cell| cell.try_borrow_mut().ok().map(|mut state| f(&mut state))).ok().flatten()
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
    pub(crate) fn unscoped(&self) -> bool {
        self.depth == 0 && crate::task::in_runtime_task()
    }

    /// The stored value in `loc`, for reading.
    #[inline]
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

    pub(crate) fn insert(&mut self, loc: Loc, value: Stored) -> Option<Stored> {
        match (loc.space, value) {
            (Space::Thread, Stored::Thread(boxed)) => self.thread.insert(loc.index, boxed).map(Stored::Thread),
            (_, value) => self.current.insert(loc, value),
        }
    }

    /// Stores every value, returning the ones displaced (for dropping outside
    /// the borrow).
    pub(crate) fn insert_all(&mut self, items: impl IntoIterator<Item = (Loc, Stored)>) -> Vec<Stored> {
        items.into_iter().filter_map(|(loc, value)| self.insert(loc, value)).collect()
    }

    pub(crate) fn remove(&mut self, loc: Loc) -> Option<Stored> {
        match loc.space {
            Space::Thread => self.thread.remove(loc.index).map(Stored::Thread),
            _ => self.current.remove(loc),
        }
    }

    /// How a closure on this thread is using `loc` in the current context.
    #[inline]
    pub(crate) fn busy(&self, loc: Loc) -> Option<&Busy> {
        if self.busy.is_empty() {
            return None;
        }
        self.busy
            .iter()
            .rev()
            .find(|entry| entry.loc == loc && (loc.space == Space::Thread || entry.depth == self.depth))
            .map(|entry| &entry.kind)
    }

    /// Fails with `Reentrant` if a closure here is using `loc` at all.
    #[inline]
    pub(crate) fn check_free(&self, loc: Loc, field: &'static str) -> Result<(), AccessError> {
        match self.busy(loc) {
            None => Ok(()),
            Some(_) => Err(AccessError::Reentrant { field }),
        }
    }

    pub(crate) fn push_busy(&mut self, loc: Loc, kind: Busy) {
        self.busy.push(BusyEntry { loc, depth: self.depth, kind });
    }

    /// Ends the innermost use; uses end in reverse order, also when unwinding.
    pub(crate) fn pop_busy(&mut self) -> Option<Busy> {
        self.busy.pop().map(|entry| entry.kind)
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
    fn drop(&mut self) {
        with_state_raw(|state| state.pop_busy());
    }
}

/// Downcasts a value read from `loc`'s slot, whose number proves its type.
#[inline]
pub(crate) fn downcast<T: 'static>(value: &dyn Any) -> &T {
    value.downcast_ref::<T>().unwrap_or_else(|| type_mismatch())
}

/// Downcasts a value being written through `loc`'s slot.
#[inline]
pub(crate) fn downcast_mut<T: 'static>(value: &mut dyn Any) -> &mut T {
    value.downcast_mut::<T>().unwrap_or_else(|| type_mismatch())
}

/// Whether this thread's state is still usable (not torn down at thread exit).
pub(crate) fn state_alive() -> bool {
    STATE.try_with(|_| ()).is_ok()
}
