//! The [`ContextLocal`] trait: operations on a whole struct, and `init`.

use std::future::Future;
use std::marker::PhantomData;

use crate::context::Context;
use crate::error::AccessError;
use crate::future::{FutureExt, InContext};
use crate::private::{Batch, Parts, StructDesc};
use crate::slot::{Loc, Space, Stored};
use crate::state::{with_state, with_state_raw, Busy, BusyGuard, ThreadState};

/// A struct whose fields live in the current context (task scope) or thread
/// (thread scope). Implemented by `#[derive(ContextLocal)]`; the derive also
/// gives each field an accessor returning a [`Field`](crate::Field).
///
/// # Examples
///
/// ```
/// use context_local::ContextLocal;
///
/// #[derive(ContextLocal, Clone, Debug, PartialEq)]
/// struct RequestContext {
///     request_id: String,
///     user: Option<u64>,
/// }
///
/// {
///     let _entered = RequestContext { request_id: "r1".into(), user: Some(7) }.enter();
///     assert_eq!(RequestContext::user().get(), Some(Some(7)));
///     assert_eq!(
///         RequestContext::current(),
///         Some(RequestContext { request_id: "r1".into(), user: Some(7) })
///     );
/// }
/// // The guard put back what was there before: nothing.
/// assert_eq!(RequestContext::current(), None);
/// ```
pub trait ContextLocal: Sized + 'static {
    #[doc(hidden)]
    fn __descriptor() -> &'static StructDesc;

    #[doc(hidden)]
    fn __store(self, batch: &mut Batch);

    #[doc(hidden)]
    fn __load(parts: &mut Parts) -> Self;

    /// Sets every field from `self` (and marks the struct initialised) until
    /// the returned guard is dropped; dropping it restores the values and init
    /// state that were there before.
    ///
    /// The guard is `!Send`: it belongs to this thread and this context. In
    /// async code use [`ContextLocal::scope`] instead.
    ///
    /// # Panics
    ///
    /// If a field of the struct is in use by an enclosing closure
    /// (`Reentrant`), in a tokio task with no context (`Unscoped`, task scope),
    /// or during thread exit (`Destroyed`).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Txn {
    ///     id: u32,
    /// }
    ///
    /// Txn::id().set(1);
    /// {
    ///     let _guard = Txn { id: 2 }.enter();
    ///     assert_eq!(Txn::id().get(), Some(2));
    /// }
    /// assert_eq!(Txn::id().get(), Some(1));
    /// ```
    #[track_caller]
    fn enter(self) -> Entered<Self> {
        let desc = Self::__descriptor();
        let mut batch = Batch::default();
        self.__store(&mut batch);
        let saved = with_state(desc.name, desc.space(), |state| {
            check_struct_free(state, desc)?;
            let mut saved: Vec<(Loc, Option<Stored>)> = Vec::with_capacity(batch.items.len() + 1);
            for (loc, value) in batch.items.into_iter().chain(desc.marker()) {
                saved.push((loc, state.insert(loc, value)));
            }
            Ok(saved)
        });
        let saved = saved.unwrap_or_else(|misuse| panic!("{misuse}"));
        Entered { saved, _owner: PhantomData, _not_send: PhantomData }
    }

    /// Runs `fut` in a snapshot of the current context with every field set
    /// from `self` (the async form of [`enter`](ContextLocal::enter)).
    ///
    /// # Panics
    ///
    /// If the struct is thread-scoped: thread-scoped values stay with the OS
    /// thread and cannot follow a future; use `enter` inside the thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let id = Request { id: 5 }.scope(async { Request::id().get() }).await;
    /// assert_eq!(id, Some(5));
    /// assert_eq!(Request::id().get(), None);
    /// # });
    /// ```
    #[track_caller]
    fn scope<F: Future>(self, fut: F) -> InContext<F> {
        let desc = Self::__descriptor();
        if desc.space() == Space::Thread {
            panic!(
                "`{}` is thread-scoped, so its values stay with the OS thread and cannot follow a \
                 future; call `enter()` on the thread instead, or make the struct task-scoped \
                 with `#[context_local(scope = \"task\")]`",
                desc.name
            );
        }
        let mut context = Context::current();
        let mut batch = Batch::default();
        self.__store(&mut batch);
        for (loc, value) in batch.items.into_iter().chain(desc.marker()) {
            drop(context.insert(loc, value));
        }
        fut.in_context(context)
    }

    /// A clone of every field (after `init`/`default`); `None` if any field is
    /// unset.
    ///
    /// The values are moved out, cloned as a whole struct and put back, so
    /// `Self: Clone` is all that is needed.
    ///
    /// # Panics
    ///
    /// On misuse, as [`Field::try_get`](crate::Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal, Clone)]
    /// struct Request {
    ///     id: u64,
    ///     #[context_local(default = String::from("anonymous"))]
    ///     user: String,
    /// }
    ///
    /// assert!(Request::current().is_none());
    /// Request::id().set(4);
    /// let now = Request::current().unwrap();
    /// assert_eq!((now.id, now.user.as_str()), (4, "anonymous"));
    /// ```
    #[track_caller]
    fn current() -> Option<Self>
    where
        Self: Clone,
    {
        let value = Self::take()?;
        let copy = value.clone();
        let desc = Self::__descriptor();
        let mut batch = Batch::default();
        value.__store(&mut batch);
        let displaced = with_state(desc.name, desc.space(), |state| Ok(state.insert_all(batch.items)));
        drop(displaced.unwrap_or_else(|misuse| panic!("{misuse}")));
        Some(copy)
    }

    /// Moves every field out (after `init`/`default`). All must be set: else
    /// `None`, and nothing is moved.
    ///
    /// # Panics
    ///
    /// On misuse, as [`Field::try_get`](crate::Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Pair {
    ///     a: u8,
    ///     b: u8,
    /// }
    ///
    /// Pair::a().set(1);
    /// assert!(Pair::take().is_none()); // `b` is unset: nothing moved
    /// assert_eq!(Pair::a().get(), Some(1));
    /// Pair::b().set(2);
    /// let pair = Pair::take().unwrap();
    /// assert_eq!((pair.a, pair.b), (1, 2));
    /// assert!(!Pair::a().is_set());
    /// ```
    #[track_caller]
    fn take() -> Option<Self> {
        let desc = Self::__descriptor();
        let taken = take_fields(desc).unwrap_or_else(|misuse| panic!("{misuse}"))?;
        Some(Self::__load(&mut Parts { items: taken.into_iter() }))
    }

    /// Unsets every field of the struct here and marks it uninitialised, so
    /// `init` runs again on the next access (werkzeug's `release_local`).
    ///
    /// # Panics
    ///
    /// On misuse, as [`Field::try_get`](crate::Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal, Default)]
    /// #[context_local(init)]
    /// struct Scratch {
    ///     notes: Vec<String>,
    /// }
    ///
    /// Scratch::notes().push("x".into());
    /// Scratch::clear();
    /// assert!(!Scratch::notes().is_set());
    /// assert_eq!(Scratch::notes().get(), Some(vec![])); // `init` ran again
    /// ```
    #[track_caller]
    fn clear() {
        let desc = Self::__descriptor();
        let displaced = with_state(desc.name, desc.space(), |state| {
            check_struct_free(state, desc)?;
            let locs = desc.fields.iter().map(|field| field.loc()).chain(desc.init_loc());
            Ok(locs.filter_map(|loc| state.remove(loc)).collect::<Vec<_>>())
        });
        drop(displaced.unwrap_or_else(|misuse| panic!("{misuse}")));
    }
}

/// Fails with `Reentrant` if any field of the struct (or its `init`) is in use
/// by a closure on this thread.
fn check_struct_free(state: &ThreadState, desc: &'static StructDesc) -> Result<(), AccessError> {
    for loc in desc.fields.iter().map(|field| field.loc()).chain(desc.init_loc()) {
        state.check_free(loc, desc.name)?;
    }
    Ok(())
}

/// Moves every field of the struct out, after `init` and defaults; `None` if
/// one is unset.
fn take_fields(desc: &'static StructDesc) -> Result<Option<Vec<Stored>>, AccessError> {
    run_init(desc, desc.name)?;
    for field in desc.fields {
        field.fill_default()?;
    }
    with_state(desc.name, desc.space(), |state| {
        check_struct_free(state, desc)?;
        if !desc.fields.iter().all(|field| state.contains(field.loc())) {
            return Ok(None);
        }
        let taken = desc.fields.iter().map(|field| state.remove(field.loc()).expect("checked above"));
        Ok(Some(taken.collect()))
    })
}

/// Runs the struct's `init` here if it has one that has not run yet.
///
/// `init` runs with the storage released, so it may use other structs; using
/// its own struct is `Reentrant`. If it panics, nothing is stored and the next
/// access runs it again.
pub(crate) fn run_init(desc: &'static StructDesc, field: &'static str) -> Result<(), AccessError> {
    let (Some(init), Some(marker)) = (desc.init, desc.init_loc()) else {
        return Ok(());
    };
    let due = with_state(field, desc.space(), |state| {
        if state.busy(marker).is_some() {
            return Err(AccessError::Reentrant { field });
        }
        if state.contains(marker) {
            return Ok(false);
        }
        state.push_busy(marker, Busy::Init);
        Ok(true)
    })?;
    if !due {
        return Ok(());
    }
    let mut batch = Batch::default();
    {
        let _busy = BusyGuard;
        init(&mut batch);
    }
    let displaced =
        with_state(field, desc.space(), |state| Ok(state.insert_all(batch.items.into_iter().chain(desc.marker()))))?;
    drop(displaced);
    Ok(())
}

/// The guard returned by [`ContextLocal::enter`]: restores what the fields held
/// before when dropped.
///
/// `!Send` and `!Sync`: it restores into the thread (and context) it was made
/// on, so it cannot be held across an `.await` in a task that may move.
///
/// # Examples
///
/// ```
/// use context_local::ContextLocal;
///
/// #[derive(ContextLocal)]
/// #[context_local(scope = "thread")]
/// struct Settings {
///     verbose: bool,
/// }
///
/// let guard = Settings { verbose: true }.enter();
/// assert_eq!(Settings::verbose().get(), Some(true));
/// drop(guard);
/// assert_eq!(Settings::verbose().get(), None);
/// ```
#[must_use = "the values are unset again as soon as the guard is dropped"]
pub struct Entered<S> {
    saved: Vec<(Loc, Option<Stored>)>,
    _owner: PhantomData<fn() -> S>,
    _not_send: PhantomData<*const ()>,
}

impl<S> Drop for Entered<S> {
    fn drop(&mut self) {
        let saved = std::mem::take(&mut self.saved);
        // Restore in reverse, so the first value saved for a slot wins.
        let displaced = with_state_raw(move |state| state.apply(saved.into_iter().rev()));
        drop(displaced);
    }
}

impl<S> std::fmt::Debug for Entered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered").field("fields", &self.saved.len()).finish()
    }
}
