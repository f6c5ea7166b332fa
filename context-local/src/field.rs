//! [`Field`]: the operations on one field of a context-local struct.

mod cached;

use std::any::Any;
use std::fmt;
use std::rc::Rc;
use std::thread::LocalKey;

use crate::cache::Cache;
use crate::descriptor::{ErasedField, FieldDesc};
use crate::error::{expect, settle, AccessError};
use crate::init::run_init;
use crate::slot::{Loc, Space};
use crate::state::{self, with_state, Ending, ThreadState, Token, Use};
use crate::value::{
    drop_contained, drop_each, end_after, plain_clone, Contained, LocalBox, SharedArc, Stored, ThreadRc,
};
use crate::word::is_word;

/// One field of a `#[derive(ContextLocal)]` struct, in whatever context is
/// current where a method is called.
///
/// The derive gives every field an accessor named after it:
/// `RequestContext::user()` returns a `Field<Option<u64>>` for the field
/// `user: Option<u64>`. The `Field` is a `Copy` handle; the value lives in the
/// current task's context (task scope) or the current thread (thread scope).
///
/// Compared with `std::thread_local!`'s `LocalKey<RefCell<T>>`, the methods
/// here never fail with a `RefCell` borrow error: touching a field inside its
/// own [`update`](Field::update) closure is [`AccessError::Reentrant`], and
/// every other field stays usable there. Compared with `tokio::task_local!`,
/// an unset field is `None` rather than a panic, and the value follows the
/// context into spawned children.
///
/// Reads ([`get`](Field::get), [`with`](Field::with),
/// [`update`](Field::update), ...) run the struct's `init` and the field's
/// `default` when they apply; [`is_set`](Field::is_set) does not. Writes
/// ([`set`](Field::set), [`replace`](Field::replace), [`take`](Field::take),
/// [`delete`](Field::delete)) run `init` first, as any first access does, but
/// not `default`.
///
/// The methods other than `try_*` panic, with the [`AccessError`] text, only on
/// misuse: during thread teardown (`Destroyed`), inside the field's own
/// closure or `init` (`Reentrant`), or in a tokio task that has no context
/// (`Unscoped`). An unset field is never a panic.
///
/// # Examples
///
/// ```
/// use context_local::ContextLocal;
///
/// #[derive(ContextLocal)]
/// struct RequestContext {
///     request_id: String,
///     user: Option<u64>,
/// }
///
/// assert_eq!(RequestContext::user().get(), None);
/// RequestContext::user().set(Some(42));
/// assert_eq!(RequestContext::user().get(), Some(Some(42)));
/// RequestContext::request_id().set("req-1".to_string());
/// let len = RequestContext::request_id().with(|id| id.len());
/// assert_eq!(len, Some(5));
/// ```
pub struct Field<T: 'static> {
    desc: &'static FieldDesc<T>,
    /// The field's read cache on each thread. Kept here rather than in the
    /// descriptor so that, the accessor being a `const fn`, the compiler
    /// sees which thread-local it is and inlines the access.
    cache: Option<&'static LocalKey<Cache<T>>>,
}

impl<T: 'static> Clone for Field<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: 'static> Copy for Field<T> {}

impl<T: 'static> fmt::Debug for Field<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Field").field(&self.desc.name).finish()
    }
}

impl<T: 'static> Field<T> {
    #[doc(hidden)]
    pub const fn __new(desc: &'static FieldDesc<T>) -> Field<T> {
        Field { desc, cache: None }
    }

    /// Whether this thread's cache entry for the field answers right now
    /// (for tests of the cache itself: the cache never changes a result,
    /// only how fast it comes).
    #[doc(hidden)]
    pub fn __cache_answers(&self) -> bool {
        self.cached(true, |_| ()).is_ok()
    }

    /// The field's descriptor.
    #[doc(hidden)]
    pub const fn __desc(&self) -> &'static FieldDesc<T> {
        self.desc
    }

    /// The field's read cache, if it has one (for tests of the cache).
    #[doc(hidden)]
    pub const fn __cache(&self) -> Option<&'static LocalKey<Cache<T>>> {
        self.cache
    }

    /// A field with a read cache. An entry answers only for the field that
    /// filled it, so a cache shared between fields costs speed, never
    /// correctness.
    #[doc(hidden)]
    pub const fn __cached(desc: &'static FieldDesc<T>, cache: &'static LocalKey<Cache<T>>) -> Field<T> {
        Field { desc, cache: Some(cache) }
    }

    /// The field's name, as `Struct::field`: the name errors use.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// assert_eq!(Request::user().name(), "Request::user");
    /// ```
    pub fn name(&self) -> &'static str {
        self.desc.name
    }

    /// A clone of the value, or `None` if it is unset and no `default` or
    /// `init` supplies one.
    ///
    /// # Panics
    ///
    /// On misuse: see [`try_get`](Field::try_get) for the errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    ///     #[context_local(default = 3)]
    ///     retries: u32,
    /// }
    ///
    /// assert_eq!(Request::user().get(), None);
    /// assert_eq!(Request::retries().get(), Some(3));
    /// ```
    #[track_caller]
    #[inline]
    pub fn get(&self) -> Option<T>
    where
        T: Clone,
    {
        settle(self.try_get())
    }

    /// A clone of the value; an unset field is `Err(AccessError::Unset)`.
    ///
    /// This is the "must exist" read: the error names the field.
    ///
    /// # Errors
    ///
    /// [`AccessError::Unset`] when nothing is stored and no `default`/`init`
    /// applies, [`AccessError::Reentrant`] inside this field's own `update`
    /// closure or its struct's `init`, [`AccessError::Unscoped`] in a tokio
    /// task with no context, [`AccessError::Destroyed`] during thread exit.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{AccessError, ContextLocal};
    ///
    /// #[derive(ContextLocal)]
    /// struct Db {
    ///     url: String,
    /// }
    ///
    /// assert_eq!(Db::url().try_get(), Err(AccessError::Unset { field: "Db::url" }));
    /// Db::url().set("sqlite::memory:".into());
    /// assert_eq!(Db::url().try_get().as_deref(), Ok("sqlite::memory:"));
    /// ```
    #[inline(always)]
    pub fn try_get(&self) -> Result<T, AccessError>
    where
        T: Clone,
    {
        if is_word::<T>() {
            return match self.cached_word() {
                Some(value) => Ok(value),
                None => self.get_uncached(T::clone),
            };
        }
        match self.cached(plain_clone::<T>(), T::clone) {
            Ok(value) => Ok(value),
            Err(clone) => self.get_uncached(clone),
        }
    }

    /// Stores `value`, dropping the previous one (after the storage is
    /// released, so its destructor may use context-locals).
    ///
    /// For standard types whose drop nothing but memory can observe
    /// (integers, `String`, `Vec<u64>`, ...), `set` writes into this
    /// thread's cache entry for the field, and the previous value is freed
    /// when the entry is next written back (at the next snapshot, context
    /// switch or other look at the context), not at once.
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_get`](Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// Request::user().set(7);
    /// assert_eq!(Request::user().get(), Some(7));
    /// ```
    #[track_caller]
    #[inline]
    pub fn set(&self, value: T) {
        expect(self.store(value));
    }

    /// Stores `value` and returns the previous value.
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_get`](Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// assert_eq!(Request::user().replace(1), None);
    /// assert_eq!(Request::user().replace(2), Some(1));
    /// ```
    #[track_caller]
    pub fn replace(&self, value: T) -> Option<T> {
        self.unwrap_stored(expect(self.write(Some(value))))
    }

    /// Moves the value out; the field is unset afterwards. A `default` is not
    /// applied: an unset field gives `None`.
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_get`](Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     body: Vec<u8>,
    /// }
    ///
    /// Request::body().set(vec![1, 2]);
    /// assert_eq!(Request::body().take(), Some(vec![1, 2]));
    /// assert!(!Request::body().is_set());
    /// ```
    #[track_caller]
    pub fn take(&self) -> Option<T> {
        self.unwrap_stored(expect(self.write(None)))
    }

    /// Drops the value, if any; `true` if there was one. Never an error when
    /// unset.
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_get`](Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// assert!(!Request::user().delete());
    /// Request::user().set(3);
    /// assert!(Request::user().delete());
    /// ```
    #[track_caller]
    pub fn delete(&self) -> bool {
        let old = expect(self.write(None));
        let existed = old.is_some();
        drop_contained(old);
        existed
    }

    /// Whether a value is stored. Runs neither `init` nor `default`.
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_get`](Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     #[context_local(default = 1)]
    ///     attempt: u32,
    /// }
    ///
    /// assert!(!Request::attempt().is_set());
    /// assert_eq!(Request::attempt().get(), Some(1)); // stores the default
    /// assert!(Request::attempt().is_set());
    /// ```
    #[track_caller]
    pub fn is_set(&self) -> bool {
        expect(self.try_is_set())
    }

    /// Calls `f` with a reference to the value, without cloning it; `None` if
    /// the field is unset (after `init`/`default`).
    ///
    /// Inside `f`, reads of this field work and writes to it are
    /// [`AccessError::Reentrant`]; other fields can be read and written.
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_with`](Field::try_with) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     path: String,
    /// }
    ///
    /// Request::path().set("/users/7".to_string());
    /// assert_eq!(Request::path().with(|p| p.starts_with("/users")), Some(true));
    /// ```
    #[track_caller]
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        settle(self.try_with(f))
    }

    /// Like [`with`](Field::with), with every failure as an error, never a
    /// panic.
    ///
    /// # Errors
    ///
    /// [`AccessError::Unset`] when there is no value (`f` is not called), and
    /// the misuse errors listed at [`try_get`](Field::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{AccessError, ContextLocal};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     path: String,
    /// }
    ///
    /// let err = Request::path().try_with(|p| p.len()).unwrap_err();
    /// assert_eq!(err, AccessError::Unset { field: "Request::path" });
    /// ```
    #[inline]
    pub fn try_with<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, AccessError> {
        match self.cached(false, f) {
            Ok(result) => Ok(result),
            Err(f) => self.with_uncached(f),
        }
    }

    /// Calls `f` with a mutable reference to the value, in place; `None` if the
    /// field is unset and no `default`/`init` applies.
    ///
    /// Inside `f`, any access to this field is [`AccessError::Reentrant`]; other
    /// fields can be used freely. If a snapshot shares the value, it is cloned
    /// first, so the snapshot keeps the old one. The value is moved out of the
    /// context while `f` runs, so a snapshot taken inside `f` (a task spawned
    /// from it, say) does not contain this field. If `f` panics, the value as
    /// `f` left it is put back and the panic goes on.
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_get`](Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     #[context_local(default = Vec::new())]
    ///     trail: Vec<String>,
    /// }
    ///
    /// Request::trail().update(|t| t.push("auth".into()));
    /// Request::trail().update(|t| t.push("db".into()));
    /// assert_eq!(Request::trail().get().unwrap(), ["auth", "db"]);
    /// ```
    #[track_caller]
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        settle(self.try_update(f))
    }

    /// Like [`update`](Field::update), with every failure as an error.
    ///
    /// # Errors
    ///
    /// [`AccessError::Unset`] when there is no value (`f` is not called), and
    /// the misuse errors listed at [`try_get`](Field::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Counter {
    ///     hits: u64,
    /// }
    ///
    /// assert!(Counter::hits().try_update(|h| *h += 1).is_err());
    /// Counter::hits().set(1);
    /// assert_eq!(Counter::hits().try_update(|h| { *h += 1; *h }), Ok(2));
    /// ```
    #[inline]
    pub fn try_update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, AccessError> {
        self.modify(Fill::<fn() -> T>::Default, f)
    }

    /// The value, storing `f()` first if the field is unset (after `init`).
    /// `f` is preferred over the field's `default` (a get-or-create).
    ///
    /// # Panics
    ///
    /// On misuse, as [`try_get`](Field::try_get) describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// #[context_local(scope = "thread")]
    /// struct Buffers {
    ///     names: Vec<String>,
    /// }
    ///
    /// let names = Buffers::names().get_or_insert_with(|| vec!["first".into()]);
    /// assert_eq!(names, ["first"]);
    /// // Already set: `f` does not run again.
    /// let names = Buffers::names().get_or_insert_with(|| unreachable!());
    /// assert_eq!(names, ["first"]);
    /// ```
    #[track_caller]
    pub fn get_or_insert_with(&self, f: impl FnOnce() -> T) -> T
    where
        T: Clone,
    {
        expect(self.read(plain_clone::<T>(), Fill::instead(f), T::clone))
    }

    /// Like [`set`](Field::set), with misuse as an error instead of a panic
    /// (for destructors that may run at thread exit, say).
    ///
    /// # Errors
    ///
    /// The misuse errors listed at [`try_get`](Field::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// assert_eq!(Request::user().try_set(5), Ok(()));
    /// assert_eq!(Request::user().get(), Some(5));
    /// ```
    #[inline]
    pub fn try_set(&self, value: T) -> Result<(), AccessError> {
        self.store(value)
    }

    /// Like [`replace`](Field::replace), with misuse as an error.
    ///
    /// # Errors
    ///
    /// The misuse errors listed at [`try_get`](Field::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// assert_eq!(Request::user().try_replace(1), Ok(None));
    /// assert_eq!(Request::user().try_replace(2), Ok(Some(1)));
    /// ```
    pub fn try_replace(&self, value: T) -> Result<Option<T>, AccessError> {
        self.write(Some(value)).map(|old| self.unwrap_stored(old))
    }

    /// Like [`take`](Field::take), with misuse as an error.
    ///
    /// # Errors
    ///
    /// The misuse errors listed at [`try_get`](Field::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// Request::user().set(4);
    /// assert_eq!(Request::user().try_take(), Ok(Some(4)));
    /// assert_eq!(Request::user().try_take(), Ok(None));
    /// ```
    pub fn try_take(&self) -> Result<Option<T>, AccessError> {
        self.write(None).map(|old| self.unwrap_stored(old))
    }

    /// Like [`delete`](Field::delete), with misuse as an error.
    ///
    /// # Errors
    ///
    /// The misuse errors listed at [`try_get`](Field::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// Request::user().set(4);
    /// assert_eq!(Request::user().try_delete(), Ok(true));
    /// assert_eq!(Request::user().try_delete(), Ok(false));
    /// ```
    pub fn try_delete(&self) -> Result<bool, AccessError> {
        let old = self.write(None)?;
        let existed = old.is_some();
        drop_contained(old);
        Ok(existed)
    }

    /// Like [`is_set`](Field::is_set), with misuse as an error.
    ///
    /// # Errors
    ///
    /// The misuse errors listed at [`try_get`](Field::try_get) (not `Unset`).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     user: u64,
    /// }
    ///
    /// assert_eq!(Request::user().try_is_set(), Ok(false));
    /// ```
    pub fn try_is_set(&self) -> Result<bool, AccessError> {
        let loc = self.loc();
        let (stored, first_access) = state::read(self.desc.name, loc.space, |state| {
            state.check_readable(loc, self.desc.name)?;
            // Inside the struct's own `init` any access to it is `Reentrant`.
            let first_access = match self.desc.owner.init_loc() {
                Some(init) => {
                    state.check_free(init, self.desc.name)?;
                    !state.contains(init)
                }
                None => false,
            };
            Ok((state.contains(loc), first_access))
        })?;
        Ok(stored || (first_access && self.bound_on_first_access()))
    }

    /// Applies the field's `default` if it is unset (for whole-struct reads).
    pub(crate) fn fill_default(&self) -> Result<(), AccessError> {
        if self.desc.default.is_none() {
            return Ok(());
        }
        match self.read(true, Fill::<fn() -> T>::Default, |_| ()) {
            Ok(()) | Err(AccessError::Unset { .. }) => Ok(()),
            Err(misuse) => Err(misuse),
        }
    }

    #[inline]
    fn loc(&self) -> Loc {
        self.desc.loc()
    }

    fn unset(&self) -> AccessError {
        AccessError::Unset { field: self.desc.name }
    }

    /// The value as the field's type. Every value in the slot was stored
    /// through this field's descriptor, so a mismatch means the hidden
    /// items were misused by hand; it is a panic, never a wrong read.
    #[inline]
    fn cast<'v>(&self, value: &'v dyn Any) -> &'v T {
        match value.downcast_ref::<T>() {
            Some(value) => value,
            None => self.mismatch(),
        }
    }

    #[inline]
    fn cast_mut<'v>(&self, value: Option<&'v mut dyn Any>) -> &'v mut T {
        match value.and_then(|value| value.downcast_mut::<T>()) {
            Some(value) => value,
            None => self.mismatch(),
        }
    }

    fn unwrap_stored(&self, old: Option<Stored>) -> Option<T> {
        old.map(|old| old.into_value::<T>().unwrap_or_else(|| self.mismatch()))
    }

    #[cold]
    fn mismatch(&self) -> ! {
        panic!("context-local: the slot of `{}` held a value of another type", self.desc.name)
    }

    /// Why the value is missing here: `init` still to run, or nothing stored.
    fn miss(&self, state: &ThreadState) -> Result<Miss, AccessError> {
        match self.desc.owner.init_loc() {
            Some(init) => {
                state.check_free(init, self.desc.name)?;
                Ok(if state.contains(init) { Miss::Empty } else { Miss::Init })
            }
            None => Ok(Miss::Empty),
        }
    }

    /// Where the value is, for reading.
    #[inline]
    fn probe<'s>(&self, state: &'s ThreadState, loc: Loc) -> Result<Lookup<'s>, AccessError> {
        state.check_readable(loc, self.desc.name)?;
        match state.find(loc) {
            Some(value) => Ok(Lookup::Found(value)),
            None => self.miss(state).map(Lookup::Missing),
        }
    }

    /// Runs `op` (a clone or a projection) on the value, running
    /// `init`/`default`/`fill` first if needed.
    ///
    /// `plain` says that `op` runs only the standard library's code (a clone
    /// of a `u64` or a `String`, say): then it runs with the storage borrowed
    /// shared, inlined into the caller. Otherwise it may be user code (a
    /// `Clone` impl that uses context-locals, drops a guard, drops a context),
    /// so it runs with the storage released, on a value the read holds a count
    /// of (or, for a `no_inherit` value, lends as `with` does).
    #[inline]
    fn read<F: FnOnce() -> T, R>(
        &self,
        plain: bool,
        fill: Fill<F>,
        op: impl FnOnce(&T) -> R,
    ) -> Result<R, AccessError> {
        let loc = self.loc();
        if !plain {
            return self.read_released(loc, fill, op);
        }
        let name = self.desc.name;
        let mut op = Some(op);
        let found = state::read(name, loc.space, |state| {
            state.check_readable(loc, name)?;
            Ok(state.find(loc).and_then(|value| op.take().map(|op| op(self.cast(value)))))
        })?;
        match found {
            Some(result) => Ok(result),
            None => self.read_slow(loc, fill, op),
        }
    }

    #[inline(never)]
    fn read_slow<F: FnOnce() -> T, R>(
        &self,
        loc: Loc,
        mut fill: Fill<F>,
        mut op: Option<impl FnOnce(&T) -> R>,
    ) -> Result<R, AccessError> {
        for _ in 0..PASSES {
            let found = state::read(self.desc.name, loc.space, |state| {
                Ok(match self.probe(state, loc)? {
                    Lookup::Found(value) => Ok(op.take().map(|op| op(self.cast(value)))),
                    Lookup::Missing(miss) => Err(miss),
                })
            })?;
            match found {
                Ok(Some(result)) => return Ok(result),
                Ok(None) => break,
                Err(miss) => self.resolve(miss, &mut fill)?,
            }
        }
        Err(self.unset())
    }

    /// [`read`](Field::read) for an `op` that may run user code: makes the
    /// value appear, then lends it to `op` as [`with`](Field::with) does, with
    /// the storage released (reads of this field work inside `op`, writes to
    /// it are `Reentrant`, everything else works).
    #[inline(never)]
    fn read_released<F: FnOnce() -> T, R>(
        &self,
        loc: Loc,
        fill: Fill<F>,
        op: impl FnOnce(&T) -> R,
    ) -> Result<R, AccessError> {
        self.read_slow(loc, fill, Some(|_: &T| ()))?;
        self.lend(op)
    }

    /// Makes a missing value appear: runs `init`, or stores the `default`
    /// (or the caller's fill); `Unset` when neither applies.
    fn resolve<F: FnOnce() -> T>(&self, miss: Miss, fill: &mut Fill<F>) -> Result<(), AccessError> {
        if let Miss::Init = miss {
            return run_init(self.desc.owner, self.desc.name);
        }
        match (std::mem::replace(fill, Fill::Default), self.desc.default) {
            (Fill::Instead(make), _) => self.store_computed(make.into_inner()),
            (_, Some(make)) => self.store_computed(make),
            (Fill::DefaultOr(make), None) => self.store_computed(make.into_inner()),
            (Fill::Default, None) => Err(self.unset()),
        }
    }

    /// Stores `make()`, computed with the field marked in use so that `make`
    /// touching this field is `Reentrant` rather than endless recursion. A
    /// value stored meanwhile by other means wins.
    fn store_computed(&self, make: impl FnOnce() -> T) -> Result<(), AccessError> {
        let loc = self.loc();
        let name = self.desc.name;
        let token = state::write(name, loc.space, |state| {
            state.check_free(loc, name)?;
            Ok(state.begin(loc, Use::Write))
        })?;
        let value = {
            let _ending = Ending(token);
            make()
        };
        let stored = self.desc.wrap(value);
        let unused = state::write(name, loc.space, |state| {
            Ok(if state.contains(loc) { Some(stored) } else { state.insert(loc, stored) })
        });
        drop_contained(unused?);
        Ok(())
    }

    /// Stores `value`, or empties the slot for `None`; returns what was there.
    fn write(&self, value: Option<T>) -> Result<Option<Stored>, AccessError> {
        let loc = self.loc();
        let name = self.desc.name;
        // Held contained: `init` may panic, and then the value's destructor
        // runs while the thread unwinds.
        let mut value = Contained::maybe(value.map(|value| self.desc.wrap(value)));
        for _ in 0..PASSES {
            let done = state::write(name, loc.space, |state| {
                state.check_free(loc, name)?;
                if let Miss::Init = self.miss(state)? {
                    return Ok(None);
                }
                Ok(Some(match value.take() {
                    Some(value) => state.insert(loc, value),
                    None => state.remove(loc),
                }))
            });
            match done {
                Ok(Some(old)) => return Ok(old),
                Ok(None) => run_init(self.desc.owner, name)?,
                Err(misuse) => return Err(misuse),
            }
        }
        Err(AccessError::Reentrant { field: name })
    }

    fn modify_uncached<F: FnOnce() -> T, R>(
        &self,
        mut fill: Fill<F>,
        op: impl FnOnce(&mut T) -> R,
    ) -> Result<R, AccessError> {
        // `init` or `default` may panic before `op` runs (see `write`).
        let op = Contained::new(op);
        let loc = self.loc();
        let name = self.desc.name;
        for _ in 0..PASSES {
            let taken = state::write(name, loc.space, |state| {
                state.check_free(loc, name)?;
                match state.lease(loc) {
                    Some(lease) => Ok(Ok(lease)),
                    None => Ok(Err(self.miss(state)?)),
                }
            })?;
            match taken {
                Ok((value, token)) => {
                    let mut lease = Lease { loc, token, value: Some(value) };
                    let value = lease.value.as_mut().and_then(Stored::as_any_mut);
                    let result = op.into_inner()(self.cast_mut(value));
                    return Ok(end_after(lease, result));
                }
                Err(miss) => self.resolve(miss, &mut fill)?,
            }
        }
        Err(self.unset())
    }

    /// Lends the value to `op` with the storage released, so `op` may use
    /// other fields. The closure's frame keeps the value alive (a count of
    /// it, or the value itself), whatever happens to the slot meanwhile.
    fn lend<R>(&self, op: impl FnOnce(&T) -> R) -> Result<R, AccessError> {
        // `init` or `default` may panic before `op` runs (see `write`).
        let op = Contained::new(op);
        let loc = self.loc();
        for _ in 0..PASSES {
            let found = state::write(self.desc.name, loc.space, |state| {
                state.check_readable(loc, self.desc.name)?;
                match Hold::take(state, loc) {
                    Some(hold) => Ok(Ok(hold)),
                    None => Ok(Err(self.miss(state)?)),
                }
            })?;
            match found {
                Ok(hold) => {
                    let result = op.into_inner()(self.cast(hold.value()));
                    return Ok(end_after(hold, result));
                }
                Err(miss) => self.resolve(miss, &mut Fill::<fn() -> T>::Default)?,
            }
        }
        Err(self.unset())
    }

    /// Whether the struct's first access here will set this field from a
    /// received baggage member (`is_set` runs neither `init` nor binding).
    #[cfg(feature = "baggage")]
    fn bound_on_first_access(&self) -> bool {
        crate::baggage::would_bind(self.desc)
    }

    #[cfg(not(feature = "baggage"))]
    fn bound_on_first_access(&self) -> bool {
        false
    }

    /// Formats the stored value, if there is one, without running `init` or
    /// `default`: for log lines.
    pub(crate) fn with_stored<R>(&self, op: impl FnOnce(&T) -> R) -> Result<Option<R>, AccessError> {
        let loc = self.loc();
        let name = self.desc.name;
        let hold = state::write(name, loc.space, |state| {
            state.check_readable(loc, name)?;
            Ok(Hold::take(state, loc))
        })?;
        Ok(hold.map(|hold| {
            let result = op(self.cast(hold.value()));
            end_after(hold, result)
        }))
    }
}

/// How many times an access looks again after making a missing value appear:
/// `init`, then `default`, then the read itself.
const PASSES: usize = 3;

/// What an access stores when the field is unset (after `init`).
///
/// The closure is held contained: it may own values, and `init` may panic
/// before it runs.
enum Fill<F> {
    /// The field's `default`, if it has one.
    Default,
    /// The field's `default`, else `F` (`push` starts an empty `Vec`).
    DefaultOr(Contained<F>),
    /// `F`, even if the field has a `default` (`get_or_insert_with`).
    Instead(Contained<F>),
}

impl<F> Fill<F> {
    fn default_or(make: F) -> Self {
        Fill::DefaultOr(Contained::new(make))
    }

    fn instead(make: F) -> Self {
        Fill::Instead(Contained::new(make))
    }
}

/// Why a read found no value.
#[derive(Clone, Copy)]
enum Miss {
    /// The struct's `init` has not run in this context.
    Init,
    /// Nothing stored.
    Empty,
}

/// What a read found.
enum Lookup<'s> {
    Found(&'s dyn Any),
    Missing(Miss),
}

/// A value lent to a `with` closure, held by the closure's frame; ends the
/// use when dropped (also on unwind).
struct Hold {
    token: Token,
    loc: Loc,
    keep: Option<Keep>,
}

/// What keeps a lent value alive.
enum Keep {
    /// An inherited value: a count of it; the value stays in its slot.
    Shared(SharedArc),
    /// A thread-scoped value: likewise.
    Thread(ThreadRc),
    /// A `no_inherit` value, moved out to the frame for the call (`lender`),
    /// or a count of one lent by an enclosing `with` of the same field.
    Local { value: Rc<LocalBox>, lender: bool },
}

impl Keep {
    #[inline]
    fn value(&self) -> &dyn Any {
        match self {
            Keep::Shared(value) => &**value as &dyn Any,
            Keep::Thread(value) => &**value,
            Keep::Local { value, .. } => &***value as &dyn Any,
        }
    }
}

impl Hold {
    /// Marks `loc` in use for reading and takes what keeps its value alive.
    #[inline]
    fn take(state: &mut ThreadState, loc: Loc) -> Option<Hold> {
        let keep = match loc.space {
            Space::Shared => Keep::Shared(state.current.get_shared(loc.index)?.clone()),
            Space::Thread => Keep::Thread(state.thread_rc(loc.index)?.clone()),
            Space::Local => match state.lend_local(loc) {
                Some((value, token)) => {
                    return Some(Hold { token, loc, keep: Some(Keep::Local { value, lender: true }) })
                }
                None => Keep::Local { value: state.lent_local(loc)?, lender: false },
            },
        };
        Some(Hold { token: state.begin(loc, Use::Read), loc, keep: Some(keep) })
    }

    #[inline]
    fn value(&self) -> &dyn Any {
        match &self.keep {
            Some(keep) => keep.value(),
            None => &(),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let (token, loc) = (self.token, self.loc);
        match self.keep.take() {
            Some(Keep::Local { value, lender: true }) => {
                let mut value = Some(value);
                let leftover = with_state(|state| state.end_lend(loc, token, value.take().expect("once")));
                drop_contained((leftover, value));
            }
            keep => {
                let entry = with_state(|state| state.end(token).1);
                // The frame's own count may be the last one (the slot was
                // rewritten meanwhile): dropped here, contained.
                drop_contained((entry, keep));
            }
        }
    }
}

/// A value moved out of storage by `update`; put back when dropped (also on
/// unwind), unless the slot was rewritten meanwhile.
struct Lease {
    loc: Loc,
    token: Token,
    value: Option<Stored>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (loc, token) = (self.loc, self.token);
        let Some(value) = self.value.take() else {
            return;
        };
        let mut value = Some(value);
        let leftovers = with_state(|state| state.put_back(loc, token, value.take().expect("once")));
        drop_each(leftovers.unwrap_or_default().into_iter().chain(value));
    }
}

impl<T: 'static> ErasedField for FieldDesc<T> {
    fn loc(&'static self) -> Loc {
        FieldDesc::loc(self)
    }

    fn fill_default(&'static self) -> Result<(), AccessError> {
        Field::__new(self).fill_default()
    }

    fn baggage_key(&'static self) -> Option<&'static str> {
        self.baggage.map(|codec| codec.key)
    }

    fn bind_baggage(&'static self, value: &str, batch: &mut crate::descriptor::Batch) -> bool {
        match self.baggage.and_then(|codec| (codec.parse)(value)) {
            Some(parsed) => {
                batch.put(self, parsed);
                true
            }
            None => false,
        }
    }

    fn parses_baggage(&'static self, value: &str) -> bool {
        self.baggage.and_then(|codec| (codec.parse)(value)).is_some()
    }

    fn reencode_baggage(&'static self, value: &str) -> Option<String> {
        let codec = self.baggage?;
        let parsed = (codec.parse)(value)?;
        let text = Formatted(&parsed, codec.render).text();
        drop_contained(parsed);
        text
    }

    fn render_baggage(&'static self) -> Option<String> {
        let codec = self.baggage?;
        Field::__new(self).with_stored(|value| Formatted(value, codec.render).text()).ok()??
    }
}

impl<T: 'static> crate::logged::LoggedField for FieldDesc<T> {
    fn render(&'static self) -> Option<(&'static str, String)> {
        let (key, format) = self.log?;
        let value = Field::__new(self).with_stored(|value| Formatted(value, format).text()).ok()???;
        Some((key, value))
    }
}

/// A value with the formatting function its field was marked with.
struct Formatted<'a, T>(&'a T, crate::descriptor::FormatFn<T>);

impl<T> Formatted<'_, T> {
    /// The text; `None` if the formatting code panicked or failed. Contained:
    /// a log line (also one written by a destructor while the thread
    /// unwinds) or a header must not panic because of one field.
    fn text(&self) -> Option<String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            use std::fmt::Write as _;
            let mut text = String::new();
            write!(text, "{self}").ok().map(|()| text)
        }))
        .ok()
        .flatten()
    }
}

impl<T> fmt::Display for Formatted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.1)(self.0, f)
    }
}

impl<E: 'static> Field<Vec<E>> {
    /// Pushes `value` onto the stack, starting from the field's `default` or
    /// an empty `Vec` if it is unset (werkzeug's `LocalStack.push`).
    ///
    /// # Panics
    ///
    /// On misuse, as [`Field::try_get`] describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Stack {
    ///     frames: Vec<&'static str>,
    /// }
    ///
    /// Stack::frames().push("outer");
    /// Stack::frames().push("inner");
    /// assert_eq!(Stack::frames().top(), Some("inner"));
    /// assert_eq!(Stack::frames().pop(), Some("inner"));
    /// assert_eq!(Stack::frames().pop(), Some("outer"));
    /// assert_eq!(Stack::frames().pop(), None);
    /// ```
    #[track_caller]
    pub fn push(&self, value: E) {
        expect(self.modify(Fill::default_or(Vec::new), |stack| stack.push(value)));
    }

    /// Removes and returns the top of the stack; `None` if it is empty or unset.
    ///
    /// # Panics
    ///
    /// On misuse, as [`Field::try_get`] describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Stack {
    ///     frames: Vec<u8>,
    /// }
    ///
    /// assert_eq!(Stack::frames().pop(), None);
    /// Stack::frames().push(1);
    /// assert_eq!(Stack::frames().pop(), Some(1));
    /// ```
    #[track_caller]
    pub fn pop(&self) -> Option<E> {
        settle(self.modify(Fill::<fn() -> Vec<E>>::Default, Vec::pop)).flatten()
    }

    /// A clone of the top of the stack; `None` if it is empty or unset.
    ///
    /// # Panics
    ///
    /// On misuse, as [`Field::try_get`] describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Stack {
    ///     frames: Vec<String>,
    /// }
    ///
    /// Stack::frames().push("a".into());
    /// assert_eq!(Stack::frames().top().as_deref(), Some("a"));
    /// ```
    #[track_caller]
    pub fn top(&self) -> Option<E>
    where
        E: Clone,
    {
        settle(self.read(plain_clone::<E>(), Fill::<fn() -> Vec<E>>::Default, |stack| stack.last().cloned())).flatten()
    }
}
