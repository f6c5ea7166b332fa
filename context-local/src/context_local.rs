//! The [`ContextLocal`] trait: operations on a whole struct, and `init`.

use std::future::Future;
use std::marker::PhantomData;

use crate::context::Context;
use crate::descriptor::{Batch, Parts, StructDesc};
use crate::error::{expect, AccessError};
use crate::future::{FutureExt, InContext};
use crate::init::run_init;
use crate::slot::{Loc, Space};
use crate::state::{self, with_state, Blocked, ThreadState};
use crate::value::{drop_each, end_after, Each, Stored};

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
        let mut items = Some(batch.with_marker(desc));
        let entered = state::write(desc.name, desc.space(), |state| {
            check_struct_free(state, desc)?;
            let context = match desc.space() {
                Space::Thread => 0,
                _ => state.current.id(),
            };
            let items = items.take().unwrap_or_default();
            let saved = items.into_iter().map(|(loc, value)| (loc, state.insert(loc, value))).collect();
            Ok((context, saved))
        });
        drop_each(items.into_iter().flatten().map(|(_, value)| value));
        let (context, saved) = expect(entered);
        Entered { context, space: desc.space(), saved, _owner: PhantomData, _not_send: PhantomData }
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
        drop_each(batch.with_marker(desc).into_iter().filter_map(|(loc, value)| context.insert(loc, value)));
        fut.in_context(context)
    }

    /// A clone of every field (after `init`/`default`); `None` if any field is
    /// unset.
    ///
    /// For a task-scoped struct whose fields are all inherited, each field is
    /// cloned on its own while every value stays in place, so a field's
    /// `Clone` impl may read its siblings. Otherwise the values are moved
    /// out, cloned as a whole struct and put back (also if `Clone` panics),
    /// so `Self: Clone` is all that is needed.
    ///
    /// # Panics
    ///
    /// On misuse, as [`Field::try_get`](crate::Field::try_get) describes, and
    /// if a `Clone` impl panics (nothing is lost then).
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
        let desc = Self::__descriptor();
        // Misuse first, before `init` or a `default` runs.
        expect(state::read(desc.name, desc.space(), |state| check_struct_readable(state, desc)));
        expect(prepare(desc));
        if desc.all_shared() {
            // Hold a count of every value while each is cloned (with the
            // storage released), so a `Clone` that rewrites a field frees
            // nothing it is still to clone; let go of them afterwards, each
            // destructor contained.
            let held = Each(expect(shared_counts(desc))?);
            let copies: Vec<Stored> = held.0.iter().filter_map(Stored::share).collect();
            let value = Self::__load(&mut Parts { items: copies.into_iter() });
            return Some(end_after(held, value));
        }
        let taken = expect(take_fields(desc))?;
        let value = PutBack::<Self>(Some(Self::__load(&mut Parts { items: taken.into_iter() })));
        let copy = value.0.clone();
        end_after(value, copy)
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
        // Misuse first, before `init` or a `default` runs.
        expect(state::read(desc.name, desc.space(), |state| check_struct_free(state, desc)));
        expect(prepare(desc));
        let taken = expect(take_fields(desc))?;
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
        let removed = state::write(desc.name, desc.space(), |state| {
            check_struct_free(state, desc)?;
            Ok(desc.locs().filter_map(|loc| state.remove(loc)).collect::<Vec<_>>())
        });
        drop_each(expect(removed));
    }
}

/// Fails with `Reentrant` if any field of the struct (or its `init`) is in use
/// by a closure here.
fn check_struct_free(state: &ThreadState, desc: &'static StructDesc) -> Result<(), AccessError> {
    for loc in desc.locs() {
        state.check_free(loc, desc.name)?;
    }
    Ok(())
}

/// Fails with `Reentrant` if a closure here is using any field of the struct
/// (or its `init`) in a way that rules out reading it.
fn check_struct_readable(state: &ThreadState, desc: &'static StructDesc) -> Result<(), AccessError> {
    desc.locs().try_for_each(|loc| state.check_readable(loc, desc.name))
}

/// Runs `init` and every field's `default`, for whole-struct reads.
fn prepare(desc: &'static StructDesc) -> Result<(), AccessError> {
    run_init(desc, desc.name)?;
    desc.fields.iter().try_for_each(|field| field.fill_default())
}

/// Moves every field of the struct out; `None` (and nothing moved) if one is
/// unset.
fn take_fields(desc: &'static StructDesc) -> Result<Option<Vec<Stored>>, AccessError> {
    state::write(desc.name, desc.space(), |state| {
        check_struct_free(state, desc)?;
        if !desc.fields.iter().all(|field| state.contains(field.loc())) {
            return Ok(None);
        }
        Ok(Some(desc.fields.iter().filter_map(|field| state.remove(field.loc())).collect()))
    })
}

/// A count of every field's value (all inherited), to clone them one by one
/// outside any borrow; `None` if one is unset.
fn shared_counts(desc: &'static StructDesc) -> Result<Option<Vec<Stored>>, AccessError> {
    state::read(desc.name, desc.space(), |state| {
        check_struct_readable(state, desc)?;
        let counts = desc.fields.iter().map(|field| state.current.get_shared(field.loc().index).cloned());
        Ok(counts.map(|count| count.map(Stored::Shared)).collect())
    })
}

/// A struct moved out of storage for cloning; its values go back when this
/// is dropped (also if the clone panics).
struct PutBack<S: ContextLocal>(Option<S>);

impl<S: ContextLocal> Drop for PutBack<S> {
    fn drop(&mut self) {
        let Some(value) = self.0.take() else {
            return;
        };
        let mut batch = Batch::default();
        value.__store(&mut batch);
        let mut items = Some(batch.into_items());
        let displaced = with_state(|state| state.apply(items.take().into_iter().flatten().map(|(l, v)| (l, Some(v)))));
        drop_each(displaced.unwrap_or_default().into_iter().chain(items.into_iter().flatten().map(|(_, v)| v)));
    }
}

/// The guard returned by [`ContextLocal::enter`]: restores what the fields held
/// before when dropped.
///
/// `!Send` and `!Sync`: it restores into the thread it was made on, and for a
/// task-scoped struct only into the context it was made in (like a
/// `contextvars` token). Dropped while another context is current (another
/// task's, a snapshot, a context installed with `Context::run`), it changes
/// nothing there (the guard's own context keeps the values it set); debug
/// builds say so on stderr.
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
    /// The context entered (0 for a thread-scoped struct).
    context: u64,
    space: Space,
    saved: Vec<(Loc, Option<Stored>)>,
    _owner: PhantomData<fn() -> S>,
    _not_send: PhantomData<*const ()>,
}

impl<S> Drop for Entered<S> {
    fn drop(&mut self) {
        let mut saved = std::mem::take(&mut self.saved);
        let (context, space) = (self.context, self.space);
        let restored = with_state(|state| {
            let here = space == Space::Thread || (state.current.id_if_drawn() == context && !state.unscoped());
            if !here {
                return None;
            }
            // Restore in reverse, so the first value saved for a slot wins.
            Some(state.apply(std::mem::take(&mut saved).into_iter().rev()))
        });
        let leftovers = saved.into_iter().filter_map(|(_, value)| value);
        match restored {
            Ok(Some(displaced)) => drop_each(displaced.into_iter().chain(leftovers)),
            Ok(None) => {
                if cfg!(debug_assertions) {
                    eprintln!(
                        "context-local: an `Entered` guard was dropped outside the context it was \
                         made in; nothing was restored there"
                    );
                }
                drop_each(leftovers);
            }
            Err(Blocked::Destroyed) => drop_each(leftovers),
            Err(Blocked::Borrowed) => {
                drop_each(leftovers);
                let reason = "context-local: an `Entered` guard was dropped inside a `Clone` impl \
                              that a read of a context-local value is running, so it could not \
                              restore the previous values; drop the guard outside the `Clone` impl";
                if std::thread::panicking() {
                    eprintln!("{reason}");
                } else {
                    panic!("{reason}");
                }
            }
        }
    }
}

impl<S> std::fmt::Debug for Entered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered").field("fields", &self.saved.len()).finish()
    }
}
