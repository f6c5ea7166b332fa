//! Where values live on a thread: the context in effect and the task that
//! installed it, the thread-scoped values, and the fields closures on this
//! thread are using right now.
//!
//! One `thread_local!` holds it all. Its `RefCell` is never borrowed while
//! user code runs: every operation takes what it needs out, releases the
//! borrow, runs the user's code, and puts things back. (A read clones under a
//! shared borrow only values of standard types whose `Clone` runs no user
//! code; see `value::plain_clone`.)
//!
//! Invariants, each stated where it is kept:
//! - A value lent to a closure is kept alive by the closure's own frame (an
//!   `Arc`/`Rc` count, or the value itself), never by a side list: whatever
//!   happens to the slot meanwhile cannot free it.
//! - A busy entry names the context it was made in, so a closure's marks
//!   apply only there, not to whichever context happens to be current.
//! - Everything that writes a slot goes through [`ThreadState::insert`] or
//!   [`ThreadState::remove`], which tell a closure using that slot that its
//!   value was displaced, so it drops the value instead of putting it back.
//! - A context belongs to the task that installed it; task-scoped access from
//!   any other task is `Unscoped`.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use crate::context::Context;
use crate::error::AccessError;
use crate::map::SlotVec;
use crate::running::Owner;
use crate::slot::{Loc, Space};
use crate::value::{LocalBox, Stored, ThreadRc};

/// How a closure on this thread is using a field.
pub(crate) enum Use {
    /// `with` on a value that stays in its slot (the closure holds its own
    /// count of it): reads go on, writes are `Reentrant`.
    Read,
    /// `with` on a `no_inherit` value, moved out to the closure's frame for
    /// the call; nested reads find it here.
    Lent(Rc<LocalBox>),
    /// Moved out by `update`, or being computed by `default`.
    Write,
    /// The struct's `init` is running (on its marker slot).
    Init,
}

/// One field in use by a closure on this thread.
struct Busy {
    /// The context it is used in (0 for thread-scoped fields).
    context: u64,
    loc: Loc,
    how: Use,
    /// Set when something that bypasses the busy checks (a guard restoring
    /// its values, a write-back) rewrote the slot meanwhile.
    displaced: bool,
    /// Which use this is, for ending it.
    token: u64,
}

/// Names one use of a field; returned by [`ThreadState::begin`], given back to
/// [`ThreadState::end`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token(u64);

pub(crate) struct ThreadState {
    /// The context in effect on this thread: the thread's root context, or one
    /// installed by `Context::run` / `InContext`.
    pub(crate) current: Context,
    /// The tokio task that installed `current` (none for the root context).
    pub(crate) owner: Owner,
    thread: SlotVec<ThreadRc>,
    busy: Vec<Busy>,
    next_token: u64,
}

thread_local! {
    static STATE: RefCell<ThreadState> = const {
        RefCell::new(ThreadState {
            current: Context::new(),
            owner: Owner::NONE,
            thread: SlotVec::new(),
            busy: Vec::new(),
            next_token: 0,
        })
    };
}

/// Why the state could not be had at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// Torn down at thread exit.
    Destroyed,
    /// Borrowed by a read running a `Clone` impl on this thread.
    Borrowed,
}

impl Blocked {
    pub(crate) fn error(self, field: &'static str) -> AccessError {
        match self {
            Blocked::Destroyed => AccessError::Destroyed { field },
            Blocked::Borrowed => AccessError::Reentrant { field },
        }
    }
}

/// Runs `f` on this thread's state, borrowed shared, after checking that
/// `space` may be used here. `f` may run a `Clone` impl: user code, which can
/// read (shared borrows nest) but not write.
#[inline]
pub(crate) fn read<R>(
    field: &'static str,
    space: Space,
    f: impl FnOnce(&ThreadState) -> Result<R, AccessError>,
) -> Result<R, AccessError> {
    write_back_dirty();
    STATE
        .try_with(|cell| {
            let state = cell.try_borrow().map_err(|_| AccessError::Reentrant { field })?;
            state.check_scope(field, space)?;
            f(&state)
        })
        .unwrap_or(Err(AccessError::Destroyed { field }))
}

/// Runs `f` on this thread's state, borrowed mutably, after checking that
/// `space` may be used here. `f` must run no user code.
#[inline]
pub(crate) fn write<R>(
    field: &'static str,
    space: Space,
    f: impl FnOnce(&mut ThreadState) -> Result<R, AccessError>,
) -> Result<R, AccessError> {
    let result = with_state(|state| {
        state.check_scope(field, space)?;
        f(state)
    });
    result.unwrap_or_else(|blocked| Err(blocked.error(field)))
}

/// Runs `f` on this thread's state, borrowed mutably, without scope checks.
/// `f` must run no user code. Every change to the state comes through here,
/// so this is where the read cache goes stale (see `cache.rs`).
#[inline]
pub(crate) fn with_state<R>(f: impl FnOnce(&mut ThreadState) -> R) -> Result<R, Blocked> {
    STATE
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut state) => {
                state.settle_cache();
                Ok(f(&mut state))
            }
            Err(_) => Err(Blocked::Borrowed),
        })
        .unwrap_or(Err(Blocked::Destroyed))
}

/// Runs `f` on this thread's state to fill a cache entry: borrowed mutably
/// (to draw the context's identity, which changes nothing a read sees)
/// without making the cache stale. `f` must run no user code.
#[inline]
pub(crate) fn for_cache<R>(f: impl FnOnce(&mut ThreadState) -> Option<R>) -> Option<R> {
    let filled = STATE.try_with(|cell| {
        let mut state = cell.try_borrow_mut().ok()?;
        if crate::cache::any_dirty() {
            state.write_back_cache();
        }
        f(&mut state)
    });
    filled.ok().flatten()
}

/// Writes the cache's dirty entries back, if there are any, before the
/// state is looked at other than through an entry.
#[inline]
fn write_back_dirty() {
    if crate::cache::any_dirty() {
        let _ = STATE.try_with(|cell| {
            if let Ok(mut state) = cell.try_borrow_mut() {
                state.write_back_cache();
            }
        });
    }
}

/// Runs `f` on this thread's state, borrowed shared, without scope checks.
#[inline]
pub(crate) fn peek_state<R>(f: impl FnOnce(&ThreadState) -> R) -> Result<R, Blocked> {
    write_back_dirty();
    STATE
        .try_with(|cell| match cell.try_borrow() {
            Ok(state) => Ok(f(&state)),
            Err(_) => Err(Blocked::Borrowed),
        })
        .unwrap_or(Err(Blocked::Destroyed))
}

impl ThreadState {
    /// Before a change: the cache's dirty entries go back to their slots and
    /// every entry goes stale (see `cache.rs`).
    #[inline(always)]
    fn settle_cache(&mut self) {
        if !crate::cache::bump() {
            self.settle_listed();
        }
    }

    #[cold]
    #[inline(never)]
    fn settle_listed(&mut self) {
        crate::cache::settle(&mut |loc, context, value| drop(self.write_back(loc, context, value)));
    }

    /// Writes the cache's dirty entries back, leaving them current.
    #[cold]
    fn write_back_cache(&mut self) {
        crate::cache::write_back(&mut |loc, context, value| drop(self.write_back(loc, context, value)));
    }

    /// Stores a value a cache entry held for `loc` in `context`; returns what
    /// is left to drop (the value displaced, or this one if the context is
    /// no longer the one here, which no path allows). Only values of types
    /// whose `Drop` runs no user code come here, so they may be dropped
    /// with the state borrowed.
    fn write_back(&mut self, loc: Loc, context: u64, value: Stored) -> Option<Stored> {
        if self.context_of(loc) != context {
            return Some(value);
        }
        self.insert(loc, value)
    }

    /// Fails with `Unscoped` if a task-scoped access comes from a task other
    /// than the one that installed the current context.
    #[inline]
    pub(crate) fn check_scope(&self, field: &'static str, space: Space) -> Result<(), AccessError> {
        if space != Space::Thread && self.unscoped() {
            return Err(AccessError::Unscoped { field });
        }
        Ok(())
    }

    /// Whether the task running now is not the one the current context
    /// belongs to (a tokio task polled inside someone else's context, or in
    /// the thread's root context).
    #[inline]
    pub(crate) fn unscoped(&self) -> bool {
        self.owner != Owner::running()
    }

    /// The context a use of `loc` is keyed by (0 for thread scope).
    #[inline]
    fn context_of(&self, loc: Loc) -> u64 {
        match loc.space {
            Space::Thread => 0,
            _ => self.current.id_if_drawn(),
        }
    }

    /// The innermost use of `loc` in the current context.
    #[inline]
    fn use_of(&self, loc: Loc) -> Option<&Busy> {
        if self.busy.is_empty() {
            return None;
        }
        let context = self.context_of(loc);
        self.busy.iter().rev().find(|busy| busy.loc == loc && busy.context == context)
    }

    /// Fails with `Reentrant` if a closure is using `loc` here in a way that
    /// rules out reading it (`update`, `default`, `init`).
    #[inline]
    pub(crate) fn check_readable(&self, loc: Loc, field: &'static str) -> Result<(), AccessError> {
        match self.use_of(loc) {
            Some(Busy { how: Use::Write | Use::Init, .. }) => Err(AccessError::Reentrant { field }),
            _ if crate::cache::leased_here(loc, self.context_of(loc)) => Err(AccessError::Reentrant { field }),
            _ => Ok(()),
        }
    }

    /// A snapshot of the current context, without the values `update`
    /// closures have out of it right now through the cache (as they would
    /// be out of the slot on the full path).
    pub(crate) fn snapshot(&self) -> Context {
        let mut snapshot = self.current.snapshot();
        for loc in crate::cache::leased_in(self.current.id_if_drawn()) {
            // A count the context also holds: no user code runs.
            drop(snapshot.remove(loc));
        }
        snapshot
    }

    /// Fails with `Reentrant` if a closure is using `loc` here at all (on
    /// the full path, or through the read cache).
    #[inline]
    pub(crate) fn check_free(&self, loc: Loc, field: &'static str) -> Result<(), AccessError> {
        if self.use_of(loc).is_some() || crate::cache::lent_here(loc, self.context_of(loc)) {
            return Err(AccessError::Reentrant { field });
        }
        Ok(())
    }

    /// The context a cache entry for `loc` is read in, its identity drawn
    /// now if need be (0 for thread scope).
    pub(crate) fn context_for_cache(&mut self, loc: Loc) -> u64 {
        match loc.space {
            Space::Thread => 0,
            _ => self.current.id(),
        }
    }

    /// The value in `loc` here, for reading: in its slot, or lent to a
    /// `with` closure that is still running.
    #[inline]
    pub(crate) fn find(&self, loc: Loc) -> Option<&dyn Any> {
        let stored = match loc.space {
            Space::Thread => self.thread.get(loc.index).map(|rc| &**rc),
            _ => self.current.get(loc),
        };
        stored.or_else(|| self.lent(loc))
    }

    fn lent(&self, loc: Loc) -> Option<&dyn Any> {
        self.lent_entry(loc).map(|value| &***value as &dyn Any)
    }

    /// The `no_inherit` value a `with` moved out of `loc` here, if it is still
    /// the field's value (nested reads of it hold only `Read` marks).
    fn lent_entry(&self, loc: Loc) -> Option<&Rc<LocalBox>> {
        if self.busy.is_empty() {
            return None;
        }
        let context = self.context_of(loc);
        let lent = self.busy.iter().rev().filter(|busy| busy.loc == loc && busy.context == context);
        lent.filter_map(|busy| match busy {
            Busy { how: Use::Lent(value), displaced: false, .. } => Some(value),
            _ => None,
        })
        .next()
    }

    /// Whether a value is there (see [`find`](ThreadState::find)).
    #[inline]
    pub(crate) fn contains(&self, loc: Loc) -> bool {
        self.find(loc).is_some()
    }

    /// The thread-scoped value in `loc` itself, to hold it past the borrow.
    pub(crate) fn thread_rc(&self, index: usize) -> Option<&ThreadRc> {
        self.thread.get(index)
    }

    /// Stores `value` in `loc`; returns the value displaced, to be dropped
    /// after the borrow ends. A closure using the slot is told.
    pub(crate) fn insert(&mut self, loc: Loc, value: Stored) -> Option<Stored> {
        self.mark_displaced(loc);
        match (loc.space, value) {
            (Space::Thread, Stored::Thread(rc)) => self.thread.insert(loc.index, rc).map(Stored::Thread),
            (Space::Thread, value) => Some(value),
            (_, value) => self.current.insert(loc, value),
        }
    }

    /// Empties `loc`; returns the value. A closure using the slot is told.
    pub(crate) fn remove(&mut self, loc: Loc) -> Option<Stored> {
        self.mark_displaced(loc);
        self.take_slot(loc)
    }

    /// Empties `loc` for a closure that is about to use the value itself.
    fn take_slot(&mut self, loc: Loc) -> Option<Stored> {
        match loc.space {
            Space::Thread => self.thread.remove(loc.index).map(Stored::Thread),
            _ => self.current.remove(loc),
        }
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

    fn mark_displaced(&mut self, loc: Loc) {
        let context = self.context_of(loc);
        crate::cache::displace(loc, context);
        if self.busy.is_empty() {
            return;
        }
        for busy in self.busy.iter_mut().filter(|busy| busy.loc == loc && busy.context == context) {
            if matches!(busy.how, Use::Lent(_) | Use::Write) {
                busy.displaced = true;
            }
        }
    }

    /// Records that a closure uses `loc` here from now on.
    pub(crate) fn begin(&mut self, loc: Loc, how: Use) -> Token {
        let context = match loc.space {
            Space::Thread => 0,
            _ => self.current.id(),
        };
        self.next_token += 1;
        let token = self.next_token;
        self.busy.push(Busy { context, loc, how, displaced: false, token });
        Token(token)
    }

    /// Moves the value out of `loc` for `update`, marking the slot in use.
    pub(crate) fn lease(&mut self, loc: Loc) -> Option<(Stored, Token)> {
        let value = self.take_slot(loc)?;
        Some((value, self.begin(loc, Use::Write)))
    }

    /// Moves a `no_inherit` value out of `loc` for `with`, into a count the
    /// closure's frame holds; nested reads find it through the busy entry.
    pub(crate) fn lend_local(&mut self, loc: Loc) -> Option<(Rc<LocalBox>, Token)> {
        let Some(Stored::Local(boxed)) = self.take_slot(loc) else {
            return None;
        };
        let value = Rc::new(boxed);
        let token = self.begin(loc, Use::Lent(value.clone()));
        Some((value, token))
    }

    /// Inside a `with` of a `no_inherit` value, a count of the value it lent.
    pub(crate) fn lent_local(&self, loc: Loc) -> Option<Rc<LocalBox>> {
        self.lent_entry(loc).cloned()
    }

    /// Ends the use of a `with` that moved a `no_inherit` value out: puts it
    /// back unless the slot was rewritten meanwhile; returns it otherwise, to
    /// be dropped after the borrow ends.
    pub(crate) fn end_lend(&mut self, loc: Loc, token: Token, value: Rc<LocalBox>) -> Option<LocalBox> {
        let (displaced, entry) = self.end(token);
        // The entry's count is not the last (`value` is another): dropping it
        // runs no user code.
        drop(entry);
        let value = Rc::try_unwrap(value).ok()?;
        if displaced {
            return Some(value);
        }
        match self.current.insert(loc, Stored::Local(value)) {
            Some(Stored::Local(value)) => Some(value),
            _ => None,
        }
    }

    /// Ends a use. Returns whether the slot was rewritten meanwhile (then the
    /// closure's value must not be put back) and the entry's own hold on a
    /// lent value, to be dropped after the borrow ends.
    pub(crate) fn end(&mut self, token: Token) -> (bool, Option<Use>) {
        match self.busy.iter().rposition(|busy| busy.token == token.0) {
            Some(at) => {
                let busy = self.busy.remove(at);
                (busy.displaced, Some(busy.how))
            }
            None => (true, None),
        }
    }

    /// Puts a closure's value back into `loc` when its use ends, unless the
    /// slot was rewritten meanwhile; returns what is left to drop.
    pub(crate) fn put_back(&mut self, loc: Loc, token: Token, value: Stored) -> Vec<Stored> {
        let (displaced, _entry) = self.end(token);
        if displaced {
            return vec![value];
        }
        match loc.space {
            Space::Thread => self.insert_quiet(loc, value),
            _ => self.current.insert(loc, value).into_iter().collect(),
        }
    }

    fn insert_quiet(&mut self, loc: Loc, value: Stored) -> Vec<Stored> {
        match value {
            Stored::Thread(rc) => self.thread.insert(loc.index, rc).map(Stored::Thread).into_iter().collect(),
            value => vec![value],
        }
    }

    /// Takes every thread-scoped value out (thread exit).
    fn take_thread_values(&mut self) -> Vec<ThreadRc> {
        self.thread.drain().map(|(_, value)| value).collect()
    }
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        // No cache entry may answer from here on. Their dirty values are of
        // types whose `Drop` runs no user code: dropped, not written back.
        crate::cache::bump();
        crate::cache::settle(&mut |_, _, value| drop(value));
        // The thread is exiting and this thread-local is marked destroyed, so
        // any access from the destructors below is `Destroyed`, and installing
        // a context is impossible: the current context drops its values one by
        // one where it is (see `Context`'s `Drop`), then the thread's values
        // go, each destructor contained on its own.
        drop(std::mem::take(&mut self.current));
        let mut drops = crate::value::Drops::default();
        drops.drop_all(self.take_thread_values());
        drops.swallow();
    }
}

/// Ends a use that holds no value when dropped (also on unwind).
pub(crate) struct Ending(pub(crate) Token);

impl Drop for Ending {
    fn drop(&mut self) {
        let token = self.0;
        let entry = with_state(|state| state.end(token).1);
        crate::value::drop_contained(entry);
    }
}

/// Whether this thread's state is still usable (not torn down at thread exit).
pub(crate) fn state_alive() -> bool {
    STATE.try_with(|_| ()).is_ok()
}
