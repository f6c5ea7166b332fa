//! [`Context`]: a set of task-scoped values, snapshots of it, and running code
//! inside one.

use std::fmt;

use crate::map::{BoxedSlots, SharedMap};
use crate::slot::{type_mismatch, Loc, Space, Stored};
use crate::state::{with_state_raw, ThreadState};

/// A set of task-scoped context-local values: what `contextvars.Context` is to
/// Python.
///
/// Every OS thread has a root context; [`Context::run`] and the futures made by
/// [`FutureExt`](crate::FutureExt) install another one for a while. Task-scoped
/// fields read and write whichever context is installed. Thread-scoped fields
/// ignore contexts.
///
/// Unlike `tokio::task_local!`, which binds one value for one future, a
/// `Context` holds every task-scoped field at once and can be snapshotted
/// ([`Context::current`]) in O(1) and handed to another task or thread: a
/// write on either side afterwards is invisible to the other. Fields marked
/// `no_inherit` (and structs with `inherit = false`) are left out of
/// snapshots.
///
/// # Examples
///
/// ```
/// use context_local::{Context, ContextLocal};
///
/// #[derive(ContextLocal)]
/// struct Request {
///     id: u64,
/// }
///
/// Request::id().set(1);
/// let mut snapshot = Context::current();
/// Request::id().set(2);
///
/// // The snapshot kept the value it had when it was taken...
/// assert_eq!(snapshot.run(|| Request::id().get()), Some(1));
/// // ...and writes inside it stay in it.
/// snapshot.run(|| Request::id().set(3));
/// assert_eq!(Request::id().get(), Some(2));
/// assert_eq!(snapshot.run(|| Request::id().get()), Some(3));
/// ```
#[derive(Default)]
pub struct Context {
    pub(crate) shared: SharedMap,
    pub(crate) local: BoxedSlots<Box<dyn std::any::Any + Send>>,
}

impl Context {
    /// An empty context: every task-scoped field is unset and every `init`
    /// will run again in it.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{Context, ContextLocal};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// Request::id().set(7);
    /// assert_eq!(Context::new().run(|| Request::id().get()), None);
    /// ```
    pub const fn new() -> Context {
        Context { shared: SharedMap::new(), local: BoxedSlots::new() }
    }

    /// An O(1) snapshot of the context in effect on this thread.
    ///
    /// It holds the inherited task-scoped values (not the `no_inherit` ones)
    /// and which structs have run `init`. Inside a tokio task that runs with no
    /// context the snapshot is empty, so nothing leaks from the worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{Context, ContextLocal};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// Request::id().set(1);
    /// let mut child = Context::current();
    /// child.run(|| Request::id().set(2));
    /// assert_eq!(Request::id().get(), Some(1));
    /// ```
    pub fn current() -> Context {
        with_state_raw(|state| state.snapshot()).unwrap_or_default()
    }

    /// A snapshot of this context: what [`Context::current`] would return
    /// while `self` is installed.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{Context, ContextLocal};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// let mut ctx = Context::new();
    /// ctx.run(|| Request::id().set(5));
    /// let mut copy = ctx.snapshot();
    /// assert_eq!(copy.run(|| Request::id().get()), Some(5));
    /// ```
    pub fn snapshot(&self) -> Context {
        Context { shared: self.shared.clone(), local: BoxedSlots::new() }
    }

    /// Runs `f` with `self` as the current context, then puts the previous
    /// context back, also when `f` panics. Writes made by `f` stay in `self`.
    ///
    /// # Panics
    ///
    /// Panics if called from a `Clone` impl of a context-local value while
    /// that value is being read (the context cannot be swapped then).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{Context, ContextLocal};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// let mut ctx = Context::new();
    /// ctx.run(|| Request::id().set(9));
    /// assert_eq!(Request::id().get(), None);
    /// assert_eq!(ctx.run(|| Request::id().get()), Some(9));
    /// ```
    #[track_caller]
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _installed = Installed::new(self);
        f()
    }

    /// Drops every value in this context (werkzeug's `LocalManager.cleanup`).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{Context, ContextLocal};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// let mut ctx = Context::new();
    /// ctx.run(|| Request::id().set(9));
    /// ctx.clear();
    /// assert!(ctx.is_empty());
    /// assert_eq!(ctx.run(|| Request::id().get()), None);
    /// ```
    pub fn clear(&mut self) {
        let taken = std::mem::take(self);
        drop(taken);
    }

    /// Whether the context holds no value (and no struct has run `init` in it).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(context_local::Context::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.local.is_empty()
    }

    /// Exchanges the contents of two contexts, field by field (cheaper than
    /// a whole-struct `mem::swap`, which the compiler routes through stack
    /// copies).
    #[inline]
    pub(crate) fn swap(&mut self, other: &mut Context) {
        std::mem::swap(&mut self.shared, &mut other.shared);
        std::mem::swap(&mut self.local, &mut other.local);
    }

    pub(crate) fn insert(&mut self, loc: Loc, value: Stored) -> Option<Stored> {
        match (loc.space, value) {
            (Space::Shared, Stored::Shared(arc)) => self.shared.insert(loc.index, arc).map(Stored::Shared),
            (Space::Local, Stored::Local(boxed)) => self.local.insert(loc.index, boxed).map(Stored::Local),
            _ => type_mismatch(),
        }
    }

    pub(crate) fn remove(&mut self, loc: Loc) -> Option<Stored> {
        match loc.space {
            Space::Shared => self.shared.remove(loc.index).map(Stored::Shared),
            Space::Local => self.local.remove(loc.index).map(Stored::Local),
            Space::Thread => type_mismatch(),
        }
    }

    /// What changed from `base` (the snapshot `after` started from) to
    /// `after`: the writes to make to another context so it gets them too.
    /// Fields `after` did not touch are left out, so concurrent writes to
    /// them elsewhere survive.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn changes_since(base: &SharedMap, mut after: Context) -> Vec<(Loc, Option<Stored>)> {
        let mut changes = Vec::new();
        if !base.same_as(&after.shared) {
            let before = base.entries();
            let now = after.shared.entries();
            for (index, value) in &now {
                let unchanged = before
                    .binary_search_by_key(index, |(i, _)| *i)
                    .is_ok_and(|at| std::sync::Arc::ptr_eq(&before[at].1, value));
                if !unchanged {
                    changes.push((Loc { space: Space::Shared, index: *index }, Some(Stored::Shared(value.clone()))));
                }
            }
            for (index, _) in &before {
                if now.binary_search_by_key(index, |(i, _)| *i).is_err() {
                    changes.push((Loc { space: Space::Shared, index: *index }, None));
                }
            }
        }
        for (index, value) in after.local.drain() {
            changes.push((Loc { space: Space::Local, index }, Some(Stored::Local(value))));
        }
        changes
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("shared_values", &self.shared.entries().len())
            .field("is_empty", &self.is_empty())
            .finish()
    }
}

impl ThreadState {
    pub(crate) fn snapshot(&self) -> Context {
        if self.unscoped() {
            Context::new()
        } else {
            self.current.snapshot()
        }
    }
}

/// Keeps a context installed on this thread; puts the previous one back when
/// dropped.
pub(crate) struct Installed<'a> {
    context: &'a mut Context,
    active: bool,
}

impl<'a> Installed<'a> {
    #[track_caller]
    #[inline]
    pub(crate) fn new(context: &'a mut Context) -> Installed<'a> {
        let active = with_state_raw(|state| {
            state.current.swap(context);
            state.depth += 1;
        })
        .is_some();
        if !active && crate::state::state_alive() {
            panic!(
                "context-local: a context cannot be installed from inside a `Clone` impl of a \
                 context-local value that is being read; clone the value first and install the \
                 context afterwards"
            );
        }
        Installed { context, active }
    }
}

impl Drop for Installed<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.active {
            with_state_raw(|state| {
                state.current.swap(self.context);
                state.depth -= 1;
            });
        }
    }
}
