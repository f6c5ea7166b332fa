//! [`Field`]: the operations on one field of a context-local struct.

use std::any::Any;
use std::fmt;

use crate::error::AccessError;
use crate::local::run_init;
use crate::private::FieldDesc;
use crate::slot::{Loc, Stored};
use crate::state::{downcast, downcast_mut, with_state, with_state_raw, with_state_ref, Busy, BusyGuard, ThreadState};
use crate::state::{read_fast, ValuePtr};

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

/// Why a read found no value.
#[derive(Clone, Copy)]
enum Miss {
    /// The struct's `init` has not run in this context.
    Init,
    /// Nothing stored.
    Empty,
}

/// Turns a plain method's result into its return value: unset is `None`,
/// misuse is a panic with the error's text.
#[track_caller]
fn settle<R>(result: Result<R, AccessError>) -> Option<R> {
    match result {
        Ok(value) => Some(value),
        Err(AccessError::Unset { .. }) => None,
        Err(misuse) => panic!("{misuse}"),
    }
}

impl<T: 'static> Field<T> {
    #[doc(hidden)]
    pub const fn __new(desc: &'static FieldDesc<T>) -> Field<T> {
        Field { desc }
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
    /// This is the "must exist" read (AlexBerUtils' `get_threadlocal_var`):
    /// the error names the field.
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
    #[inline]
    pub fn try_get(&self) -> Result<T, AccessError>
    where
        T: Clone,
    {
        self.read(&mut None::<fn() -> T>, false, T::clone)
    }

    /// Stores `value`, dropping the previous one (after the storage is
    /// released, so its destructor may use context-locals).
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
    pub fn set(&self, value: T) {
        let old = self.write(Some(value)).unwrap_or_else(|misuse| panic!("{misuse}"));
        drop(old);
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
        let old = self.write(Some(value)).unwrap_or_else(|misuse| panic!("{misuse}"));
        old.map(Stored::into_value)
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
        let old = self.write(None).unwrap_or_else(|misuse| panic!("{misuse}"));
        old.map(Stored::into_value)
    }

    /// Drops the value, if any; `true` if there was one. Never an error when
    /// unset (AlexBerUtils' `del_threadlocal_var`).
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
        let old = self.write(None).unwrap_or_else(|misuse| panic!("{misuse}"));
        let existed = old.is_some();
        drop(old);
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
        let loc = self.loc();
        let result = with_state(self.desc.name, loc.space, |state| match state.busy(loc) {
            Some(Busy::Write | Busy::Init) => Err(self.reentrant()),
            Some(Busy::Read) | None => Ok(state.contains(loc)),
        });
        result.unwrap_or_else(|misuse| panic!("{misuse}"))
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
    pub fn try_with<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, AccessError> {
        self.lend(f)
    }

    /// Calls `f` with a mutable reference to the value, in place; `None` if the
    /// field is unset and no `default`/`init` applies.
    ///
    /// Inside `f`, any access to this field is [`AccessError::Reentrant`]; other
    /// fields can be used freely. If a snapshot shares the value, it is cloned
    /// first, so the snapshot keeps the old one. The value is moved out of the
    /// context while `f` runs, so a snapshot taken inside `f` (a task spawned
    /// from it, say) does not contain this field.
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
    pub fn try_update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, AccessError> {
        self.modify(None, f)
    }

    /// The value, storing `f()` first if the field is unset (after `init`).
    /// `f` is preferred over the field's `default` (AlexBerUtils'
    /// `threadlocal_var`).
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
        self.read(&mut Some(f), true, T::clone).unwrap_or_else(|misuse| panic!("{misuse}"))
    }

    /// Applies the field's `default` if it is unset (for whole-struct reads).
    pub(crate) fn fill_default(&self) -> Result<(), AccessError> {
        if self.desc.default.is_none() {
            return Ok(());
        }
        match self.read(&mut None::<fn() -> T>, false, |_| ()) {
            Ok(()) | Err(AccessError::Unset { .. }) => Ok(()),
            Err(misuse) => Err(misuse),
        }
    }

    #[inline]
    fn loc(&self) -> Loc {
        self.desc.loc()
    }

    fn reentrant(&self) -> AccessError {
        AccessError::Reentrant { field: self.desc.name }
    }

    fn unset(&self) -> AccessError {
        AccessError::Unset { field: self.desc.name }
    }

    /// Why the value is missing here: `init` still to run, or nothing stored.
    fn miss(&self, state: &ThreadState) -> Result<Miss, AccessError> {
        match self.desc.owner.init_loc() {
            Some(init) if state.busy(init).is_some() => Err(self.reentrant()),
            Some(init) if !state.contains(init) => Ok(Miss::Init),
            _ => Ok(Miss::Empty),
        }
    }

    /// Where the value is, for reading.
    #[inline]
    fn probe<'s>(&self, state: &'s ThreadState, loc: Loc) -> Result<Result<&'s dyn Any, Miss>, AccessError> {
        if let Some(Busy::Write | Busy::Init) = state.busy(loc) {
            return Err(self.reentrant());
        }
        match state.peek(loc) {
            Some(value) => Ok(Ok(value)),
            None => self.miss(state).map(Err),
        }
    }

    /// Runs `op` on the value while the storage is borrowed (`op` is a clone
    /// or a projection, never user code that could reach context-locals).
    ///
    /// The common case (a value is there, no closure is using any field) is
    /// inlined into the caller; everything else is [`read_slow`].
    ///
    /// [`read_slow`]: Field::read_slow
    #[inline(always)]
    fn read<F: FnOnce() -> T, R>(
        &self,
        fallback: &mut Option<F>,
        prefer_fallback: bool,
        op: impl FnOnce(&T) -> R,
    ) -> Result<R, AccessError> {
        let loc = self.loc();
        let mut op = Some(op);
        let fast = read_fast(loc, |value| op.take().map(|op| op(downcast::<T>(value))));
        if let Some(Some(result)) = fast {
            return Ok(result);
        }
        self.read_slow(loc, fallback, prefer_fallback, op)
    }

    #[inline(never)]
    fn read_slow<F: FnOnce() -> T, R>(
        &self,
        loc: Loc,
        fallback: &mut Option<F>,
        prefer_fallback: bool,
        mut op: Option<impl FnOnce(&T) -> R>,
    ) -> Result<R, AccessError> {
        for _ in 0..3 {
            let found = with_state_ref(self.desc.name, loc.space, |state| {
                Ok(match self.probe(state, loc)? {
                    Ok(value) => Ok(op.take().expect("read once")(downcast::<T>(value))),
                    Err(miss) => Err(miss),
                })
            })?;
            match found {
                Ok(result) => return Ok(result),
                Err(miss) => self.resolve(miss, fallback, prefer_fallback)?,
            }
        }
        Err(self.unset())
    }

    /// Makes a missing value appear: runs `init`, or stores the `default` (or
    /// `fallback`); `Unset` when neither applies.
    fn resolve<F: FnOnce() -> T>(
        &self,
        miss: Miss,
        fallback: &mut Option<F>,
        prefer_fallback: bool,
    ) -> Result<(), AccessError> {
        if let Miss::Init = miss {
            return run_init(self.desc.owner, self.desc.name);
        }
        if prefer_fallback || self.desc.default.is_none() {
            if let Some(make) = fallback.take() {
                return self.store_computed(make);
            }
        }
        match self.desc.default {
            Some(make) => self.store_computed(make),
            None => Err(self.unset()),
        }
    }

    /// Stores `make()`, computed with the field marked busy so that `make`
    /// touching this field is `Reentrant` rather than endless recursion.
    fn store_computed(&self, make: impl FnOnce() -> T) -> Result<(), AccessError> {
        let loc = self.loc();
        let name = self.desc.name;
        with_state(name, loc.space, |state| {
            state.check_free(loc, name)?;
            state.push_busy(loc, Busy::Write);
            Ok(())
        })?;
        let value = {
            let _busy = BusyGuard;
            make()
        };
        let stored = (self.desc.wrap)(value).0;
        let unused = with_state(name, loc.space, |state| {
            Ok(if state.contains(loc) { Some(stored) } else { state.insert(loc, stored) })
        })?;
        drop(unused);
        Ok(())
    }

    /// Stores `value`, or empties the slot for `None`; returns what was there.
    fn write(&self, value: Option<T>) -> Result<Option<Stored>, AccessError> {
        let loc = self.loc();
        let name = self.desc.name;
        let mut value = value.map(|value| (self.desc.wrap)(value).0);
        for _ in 0..2 {
            let done = with_state(name, loc.space, |state| {
                state.check_free(loc, name)?;
                if let Miss::Init = self.miss(state)? {
                    return Ok(None);
                }
                Ok(Some(match value.take() {
                    Some(value) => state.insert(loc, value),
                    None => state.remove(loc),
                }))
            })?;
            match done {
                Some(old) => return Ok(old),
                None => run_init(self.desc.owner, name)?,
            }
        }
        Err(self.reentrant())
    }

    /// Moves the value out of storage, runs `op` on it, and puts it back
    /// (also when `op` panics).
    fn modify<R>(&self, fallback: Option<fn() -> T>, op: impl FnOnce(&mut T) -> R) -> Result<R, AccessError> {
        let loc = self.loc();
        let name = self.desc.name;
        let mut fallback = fallback;
        for _ in 0..3 {
            let taken = with_state(name, loc.space, |state| {
                state.check_free(loc, name)?;
                match state.remove(loc) {
                    Some(stored) => {
                        state.push_busy(loc, Busy::Write);
                        Ok(Ok(stored))
                    }
                    None => Ok(Err(self.miss(state)?)),
                }
            })?;
            match taken {
                Ok(stored) => {
                    let mut lease = Lease { loc, value: Some(stored) };
                    let value = lease.value.as_mut().expect("leased value").as_any_mut();
                    return Ok(op(downcast_mut::<T>(value)));
                }
                Err(miss) => self.resolve(miss, &mut fallback, false)?,
            }
        }
        Err(self.unset())
    }

    /// Lends the value to `op` with the storage released, so `op` may use
    /// other fields. The value stays in its slot; a `Busy::Read` entry makes
    /// writes to it `Reentrant` and keeps it alive until `op` returns.
    #[inline]
    fn lend<R>(&self, op: impl FnOnce(&T) -> R) -> Result<R, AccessError> {
        let loc = self.loc();
        for _ in 0..3 {
            let found = with_state(self.desc.name, loc.space, |state| match self.mark_read(state, loc)? {
                Some(ptr) => Ok(Ok(ptr)),
                None => Ok(Err(self.miss(state)?)),
            })?;
            match found {
                Ok(ptr) => return Ok(read_marked(ptr, op)),
                Err(miss) => self.resolve(miss, &mut None::<fn() -> T>, false)?,
            }
        }
        Err(self.unset())
    }

    /// Lends the stored value, if there is one, as [`lend`](Field::lend)
    /// does, but never runs `init` or `default`: for log lines.
    pub(crate) fn with_stored<R>(&self, op: impl FnOnce(&T) -> R) -> Result<Option<R>, AccessError> {
        let loc = self.loc();
        let found = with_state(self.desc.name, loc.space, |state| self.mark_read(state, loc))?;
        Ok(found.map(|ptr| read_marked(ptr, op)))
    }

    /// The address of the stored value, with a `Busy::Read` entry pushed for
    /// it; `None` if nothing is stored.
    #[inline]
    fn mark_read(&self, state: &mut ThreadState, loc: Loc) -> Result<Option<ValuePtr>, AccessError> {
        if let Some(Busy::Write | Busy::Init) = state.busy(loc) {
            return Err(self.reentrant());
        }
        let ptr = state.peek_ptr(loc);
        if ptr.is_some() {
            state.push_busy(loc, Busy::Read);
        }
        Ok(ptr)
    }
}

/// Runs `op` on the value `ptr` points at, then pops the `Busy::Read` entry
/// that [`Field::mark_read`] pushed for it.
#[inline]
fn read_marked<T: 'static, R>(ptr: ValuePtr, op: impl FnOnce(&T) -> R) -> R {
    let _busy = BusyGuard;
    // SAFETY: `ptr` was read from the slot of a field of type `T` under the
    // borrow that pushed the `Busy::Read` entry `_busy` pops after `op`
    // returns (or unwinds); the entry keeps the value alive and unchanged
    // meanwhile (see `ValuePtr::get`).
    #[allow(unsafe_code)]
    let value = unsafe { ptr.get::<T>() };
    op(value)
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
        let pushed = self.modify(Some(Vec::new), |stack| stack.push(value));
        pushed.unwrap_or_else(|misuse| panic!("{misuse}"));
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
        settle(self.modify(None, Vec::pop)).flatten()
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
        settle(self.read(&mut None::<fn() -> Vec<E>>, false, |stack| stack.last().cloned())).flatten()
    }
}

/// A value moved out of storage by `update`; put back when dropped.
struct Lease {
    loc: Loc,
    value: Option<Stored>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        end_use(self.loc, self.value.take());
    }
}

/// Ends the innermost busy use and puts `value` back into `loc`.
fn end_use(loc: Loc, value: Option<Stored>) {
    let displaced = with_state_raw(|state| {
        let ended = state.pop_busy();
        (ended, value.and_then(|value| state.insert(loc, value)))
    });
    drop(displaced);
}
