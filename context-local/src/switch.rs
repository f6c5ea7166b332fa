//! What happens when the context in effect changes: installing a context for
//! a while ([`Context::run`], `InContext`'s polls), taking a snapshot of the
//! current one, and dropping a context's values inside it.

use crate::context::Context;
use crate::running::Owner;
use crate::state::{peek_state, state_alive, with_state, Blocked};
use crate::value::Drops;

impl Context {
    /// An O(1) snapshot of the context in effect on this thread.
    ///
    /// It holds the inherited task-scoped values (not the `no_inherit` ones)
    /// and which structs have run `init`. Inside a tokio task that has no
    /// context of its own the snapshot is empty, so nothing leaks from
    /// whatever context is installed around it. It works everywhere, also
    /// inside a `Clone` impl run by a read.
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
        let snapshot = peek_state(|state| if state.unscoped() { Context::new() } else { state.snapshot() });
        snapshot.unwrap_or_default()
    }

    /// Runs `f` with `self` as the current context, then puts the previous
    /// context back, also when `f` panics. Writes made by `f` stay in `self`.
    ///
    /// The context belongs to the tokio task (if any) that calls `run`: another
    /// task polled inside `f` (by a `block_on`, say) sees no context.
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
}

/// Keeps a context installed on this thread, owned by the task running now;
/// puts the previous context and owner back when dropped.
pub(crate) struct Installed<'a> {
    context: &'a mut Context,
    previous: Owner,
    active: bool,
}

impl<'a> Installed<'a> {
    /// Installs `context`.
    ///
    /// # Panics
    ///
    /// If the state is borrowed by a read running a `Clone` impl. During
    /// thread exit nothing is installed (every access there is `Destroyed`).
    #[track_caller]
    #[inline]
    pub(crate) fn new(context: &'a mut Context) -> Installed<'a> {
        match Installed::try_new(context) {
            Ok(installed) => installed,
            Err((context, Blocked::Destroyed)) => Installed { context, previous: Owner::NONE, active: false },
            Err((_, Blocked::Borrowed)) => panic!(
                "context-local: a context cannot be installed from inside a `Clone` impl of a \
                 context-local value that is being read; clone the value first and install the \
                 context afterwards"
            ),
        }
    }

    /// Installs `context` if the state can be had. Always inlined: returned
    /// through the stack, the guard's words were written and read back in
    /// different widths, a stall on every poll (seen with `perf annotate`).
    #[inline(always)]
    pub(crate) fn try_new(context: &'a mut Context) -> Result<Installed<'a>, (&'a mut Context, Blocked)> {
        let owner = Owner::running();
        let swapped = with_state(|state| {
            state.current.swap(context);
            std::mem::replace(&mut state.owner, owner)
        });
        match swapped {
            Ok(previous) => Ok(Installed { context, previous, active: true }),
            Err(blocked) => Err((context, blocked)),
        }
    }
}

impl Drop for Installed<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.active {
            let _ = with_state(|state| {
                state.current.swap(self.context);
                state.owner = self.previous;
            });
        }
    }
}

/// Runs `drop` (dropping a future, stream or body that belongs to `context`)
/// with `context` installed if it can be; otherwise (thread exit, or inside a
/// `Clone` impl a read is running) where it is, rather than panicking in a
/// destructor.
/// A panic from `drop` propagates, except while the thread is already
/// unwinding (a second panic would abort the process).
pub(crate) fn drop_inside(context: &mut Context, drop: impl FnOnce()) {
    let installed = Installed::try_new(context).ok();
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(drop));
    std::mem::drop(installed);
    if let Err(panic) = dropped {
        if !std::thread::panicking() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// How many times dropping a context looks for values again, for destructors
/// that store new values into the context they are dropped in.
const DROP_ROUNDS: usize = 8;

impl Drop for Context {
    /// Drops the values this context owns one at a time with the context
    /// installed, so a destructor that reads context-locals sees this
    /// context's other values (not the caller's). Each destructor is contained
    /// on its own; the first panic is resumed afterwards, unless the thread is
    /// unwinding or exiting.
    fn drop(&mut self) {
        if self.owned_locs().is_empty() {
            return;
        }
        let mut drops = Drops::default();
        if let Ok(installed) = Installed::try_new(self) {
            drop_installed_values(&mut drops);
            drop(installed);
        }
        // Whatever could not be dropped inside (the state was unavailable).
        drops.drop_all(self.take_all());
        if state_alive() {
            drops.finish();
        } else {
            drops.swallow();
        }
    }
}

/// Drops the installed context's values one at a time.
fn drop_installed_values(drops: &mut Drops) {
    for _ in 0..DROP_ROUNDS {
        let Ok(locs) = with_state(|state| state.current.owned_locs()) else {
            return;
        };
        if locs.is_empty() {
            return;
        }
        for loc in locs {
            if let Ok(Some(value)) = with_state(|state| state.remove(loc)) {
                drops.drop_one(value);
            }
        }
    }
}
