//! [`Context`] as a value: the task-scoped values it holds, its identity, and
//! snapshots of it. Installing one on a thread is `switch.rs`'s business.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::map::{BoxedSlots, SharedMap};
use crate::slot::{Loc, Space};
use crate::value::{LocalBox, SharedArc, Stored};

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
    pub(crate) local: BoxedSlots<LocalBox>,
    /// Which context this is, for guards and closures that must act only in
    /// the context they started in; drawn on first need (0: not yet).
    id: u64,
}

/// The source of context identities (0 is never drawn).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
        Context { shared: SharedMap::new(), local: BoxedSlots::new(), id: 0 }
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
        Context { shared: self.shared.clone(), local: BoxedSlots::new(), id: 0 }
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
        let emptied = Context { shared: SharedMap::new(), local: BoxedSlots::new(), id: self.id };
        drop(std::mem::replace(self, emptied));
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
        std::mem::swap(&mut self.id, &mut other.id);
    }

    /// This context's identity, drawn the first time it is asked for.
    pub(crate) fn id(&mut self) -> u64 {
        if self.id == 0 {
            self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        }
        self.id
    }

    /// This context's identity if one was drawn (0 otherwise: then nothing
    /// can refer to it yet).
    #[inline]
    pub(crate) fn id_if_drawn(&self) -> u64 {
        self.id
    }

    /// Where the values are whose destructors dropping this context would
    /// run, in the order to drop them one at a time: the context's own
    /// (`no_inherit`) values first, typically connections and other resources
    /// whose destructors log with the inherited values, which are still there
    /// then. Values a snapshot shares are left out: dropping this context does
    /// not drop them.
    pub(crate) fn owned_locs(&self) -> Vec<Loc> {
        let local = self.local.indices().into_iter().map(|index| Loc { space: Space::Local, index });
        let shared = self.shared.owned_values().into_iter().map(|index| Loc { space: Space::Shared, index });
        local.chain(shared).collect()
    }

    /// Stores `value` in `loc`; the value displaced, if any. A value of the
    /// wrong space (impossible through `FieldDesc`) is handed back untouched.
    pub(crate) fn insert(&mut self, loc: Loc, value: Stored) -> Option<Stored> {
        match (loc.space, value) {
            (Space::Shared, Stored::Shared(arc)) => self.shared.insert(loc.index, arc).map(Stored::Shared),
            (Space::Local, Stored::Local(boxed)) => self.local.insert(loc.index, boxed).map(Stored::Local),
            (_, value) => Some(value),
        }
    }

    pub(crate) fn remove(&mut self, loc: Loc) -> Option<Stored> {
        match loc.space {
            Space::Shared => self.shared.remove(loc.index).map(Stored::Shared),
            Space::Local => self.local.remove(loc.index).map(Stored::Local),
            Space::Thread => None,
        }
    }

    /// The value in `loc`, for reading.
    #[inline]
    pub(crate) fn get(&self, loc: Loc) -> Option<&dyn std::any::Any> {
        match loc.space {
            Space::Shared => self.shared.get(loc.index).map(|arc| &**arc as &dyn std::any::Any),
            Space::Local => self.local.get(loc.index).map(|boxed| &**boxed as &dyn std::any::Any),
            Space::Thread => None,
        }
    }

    /// The shared value in `loc` itself, for holding it past a borrow.
    #[inline]
    pub(crate) fn get_shared(&self, index: usize) -> Option<&SharedArc> {
        self.shared.get(index)
    }

    /// Takes every value out, for dropping without installing the context.
    pub(crate) fn take_all(&mut self) -> Vec<Stored> {
        let locs = self.owned_locs();
        locs.into_iter().filter_map(|loc| self.remove(loc)).collect()
    }

    /// What changed from `base` (the snapshot `after` started from) to
    /// `after`: the writes to make to another context so it gets them too.
    /// Fields `after` did not touch are left out, so concurrent writes to
    /// them elsewhere survive.
    #[cfg(feature = "tokio")]
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
