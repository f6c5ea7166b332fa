//! tokio helpers that carry the caller's context into spawned tasks and
//! blocking calls.
//!
//! A task spawned with plain `tokio::spawn` runs with no context: task-scoped
//! access there is [`AccessError::Unscoped`](crate::AccessError::Unscoped), so
//! values never leak between tasks that share a worker thread. Spawn with
//! these functions (or wrap the future with
//! [`FutureExt`](crate::FutureExt)) to give a task a context.
//!
//! With the `tracing` feature, each of them also carries the `tracing` span
//! current at the call into the child (entered on every poll of a task, and
//! around a blocking closure), so the child's events are logged inside it.

#[cfg(feature = "tokio")]
pub use self::with_tokio::*;

#[cfg(feature = "tokio")]
mod with_tokio {
    use std::future::Future;
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

    use tokio::task::JoinHandle;

    use crate::context::Context;
    use crate::future::FutureExt;
    use crate::span::CurrentSpan;
    use crate::state::{peek_state, with_state};
    use crate::value::drop_each;

    /// [`tokio::spawn`], with the child in an O(1) snapshot of the caller's
    /// context.
    ///
    /// # Panics
    ///
    /// As [`tokio::spawn`]: outside a tokio runtime.
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
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// Request::id().set(21);
    /// let child = context_local::task::spawn(async { Request::id().get() });
    /// assert_eq!(child.await.unwrap(), Some(21));
    /// # });
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[track_caller]
    pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(CurrentSpan::capture().wrap(future.in_current_context()))
    }

    /// [`tokio::task::spawn_local`], with the child in an O(1) snapshot of the
    /// caller's context.
    ///
    /// # Panics
    ///
    /// As [`tokio::task::spawn_local`]: outside a `LocalSet`.
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
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let local = tokio::task::LocalSet::new();
    /// local.block_on(&rt, async {
    ///     Request::id().set(4);
    ///     let seen = context_local::task::spawn_local(async { Request::id().get() });
    ///     assert_eq!(seen.await.unwrap(), Some(4));
    /// });
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[track_caller]
    pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        tokio::task::spawn_local(CurrentSpan::capture().wrap(future.in_current_context()))
    }

    /// [`tokio::task::spawn_blocking`], with `f` in an O(1) snapshot of the
    /// caller's context. Nothing `f` writes comes back.
    ///
    /// # Panics
    ///
    /// As [`tokio::task::spawn_blocking`]: outside a tokio runtime.
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
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// Request::id().set(8);
    /// let seen = context_local::task::spawn_blocking(|| {
    ///     Request::id().set(0);
    ///     Request::id().get()
    /// });
    /// assert_eq!(seen.await.unwrap(), Some(0));
    /// assert_eq!(Request::id().get(), Some(8));
    /// # });
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[track_caller]
    pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let span = CurrentSpan::capture();
        let mut context = Context::current();
        tokio::task::spawn_blocking(move || span.run(|| context.run(f)))
    }

    /// Runs `f` on tokio's blocking pool, seeing the caller's values, and
    /// writes what `f` changed back into the caller's context when the future
    /// completes (asgiref's `sync_to_async`).
    ///
    /// `f` starts in a snapshot of the caller's context (taken when the future
    /// is first polled). On completion, every inherited field `f` set or
    /// deleted, every `no_inherit` field it set and every `init` it ran are
    /// applied to the caller's context; other fields the caller changed
    /// meanwhile (in a `join!` branch, say) are kept. If `f` panics, what it
    /// wrote before the panic is written back and the panic resumes in the
    /// caller.
    ///
    /// # Panics
    ///
    /// Resumes `f`'s panic; panics if the runtime shuts down before `f` ran,
    /// or outside a tokio runtime. Panics at the call if called from a tokio
    /// task that has no context of its own (there is nothing to write back
    /// into), and when the future finishes if it was moved to another context
    /// meanwhile.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::ContextLocal;
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    ///     rows: u64,
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// Request::id().set(3);
    /// let id = context_local::task::run_blocking(|| {
    ///     Request::rows().set(10);
    ///     Request::id().get()
    /// })
    /// .await;
    /// assert_eq!(id, Some(3));
    /// assert_eq!(Request::rows().get(), Some(10)); // written back
    /// # });
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[track_caller]
    pub fn run_blocking<F, R>(f: F) -> impl Future<Output = R> + Send
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if peek_state(|state| state.unscoped()).unwrap_or(false) {
            panic!("{}", unscoped_blocking());
        }
        blocking_with_write_back(f, CurrentSpan::capture())
    }

    async fn blocking_with_write_back<F, R>(f: F, span: CurrentSpan) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let started = with_state(|state| (!state.unscoped()).then(|| (state.snapshot(), state.current.id())));
        let (mut context, started_in) = match started {
            Ok(Some(started)) => started,
            // Moved into a task of its own since the call: nothing to read.
            Ok(None) => panic!("{}", unscoped_blocking()),
            Err(_) => (Context::new(), 0),
        };
        let base = context.shared.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| span.run(|| context.run(f))));
            (context, outcome)
        });
        let (after, outcome) = match handle.await {
            Ok(done) => done,
            Err(error) if error.is_panic() => resume_unwind(error.into_panic()),
            Err(_) => panic!("the tokio runtime shut down before `run_blocking`'s closure ran"),
        };
        let mut changes = Some(Context::changes_since(&base, after));
        let applied = with_state(|state| {
            if state.current.id_if_drawn() != started_in || state.unscoped() {
                return None;
            }
            Some(state.apply(changes.take().unwrap_or_default()))
        });
        let unapplied = changes.into_iter().flatten().filter_map(|(_, value)| value);
        match applied {
            Ok(Some(displaced)) => drop_each(displaced.into_iter().chain(unapplied)),
            _ => {
                drop_each(unapplied);
                panic!(
                    "context-local: `run_blocking`'s future finished in another context than the one \
                     it started in, so what its closure wrote could not be written back; await it \
                     in the task that created it"
                );
            }
        }
        match outcome {
            Ok(value) => value,
            Err(panic) => resume_unwind(panic),
        }
    }

    fn unscoped_blocking() -> &'static str {
        "context_local::task::run_blocking was called in a tokio task that has no context of its \
         own, so there is no context to read from and write back into; spawn the task with \
         `context_local::task::spawn` (or wrap its future with `.in_current_context()` / \
         `.in_new_context()`), and in a server put `context_local::tower::ContextLayer` outermost"
    }

    /// Spawning into a [`tokio::task::JoinSet`] with the caller's context.
    ///
    /// Implemented for `JoinSet` only (the trait is sealed).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::task::JoinSetExt;
    /// use context_local::ContextLocal;
    /// use tokio::task::JoinSet;
    ///
    /// #[derive(ContextLocal)]
    /// struct Batch {
    ///     id: u32,
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// Batch::id().set(7);
    /// let mut set = JoinSet::new();
    /// for n in 0..3 {
    ///     set.spawn_in_context(async move { (n, Batch::id().get()) });
    /// }
    /// set.spawn_blocking_in_context(|| (99, Batch::id().get()));
    /// while let Some(done) = set.join_next().await {
    ///     assert_eq!(done.unwrap().1, Some(7));
    /// }
    /// # });
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub trait JoinSetExt<T>: sealed::Sealed {
        /// [`JoinSet::spawn`](tokio::task::JoinSet::spawn), with the task in
        /// a snapshot of the caller's context.
        fn spawn_in_context<F>(&mut self, future: F) -> tokio::task::AbortHandle
        where
            F: Future<Output = T> + Send + 'static,
            T: Send;

        /// [`JoinSet::spawn_blocking`](tokio::task::JoinSet::spawn_blocking),
        /// with the closure in a snapshot of the caller's context.
        fn spawn_blocking_in_context<F>(&mut self, f: F) -> tokio::task::AbortHandle
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send;
    }

    mod sealed {
        /// Only `tokio::task::JoinSet` implements `JoinSetExt`, so methods
        /// can be added to it without breaking anyone.
        pub trait Sealed {}

        impl<T> Sealed for tokio::task::JoinSet<T> {}
    }

    impl<T: 'static> JoinSetExt<T> for tokio::task::JoinSet<T> {
        #[track_caller]
        fn spawn_in_context<F>(&mut self, future: F) -> tokio::task::AbortHandle
        where
            F: Future<Output = T> + Send + 'static,
            T: Send,
        {
            self.spawn(CurrentSpan::capture().wrap(future.in_current_context()))
        }

        #[track_caller]
        fn spawn_blocking_in_context<F>(&mut self, f: F) -> tokio::task::AbortHandle
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send,
        {
            let span = CurrentSpan::capture();
            let mut context = Context::current();
            self.spawn_blocking(move || span.run(|| context.run(f)))
        }
    }
}
