//! [`InContext`] and [`FutureExt`]: futures that run in a context of their own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;

use crate::context::Context;
use crate::switch::{drop_inside, Installed};

pin_project! {
    /// A future polled with its own [`Context`] installed, on any executor.
    ///
    /// The context belongs to the task polling the wrapper: a tokio task
    /// polled from inside it by someone else's executor sees no context.
    /// When the wrapper is dropped (finished or not: `select!`, an aborted
    /// task), the inner future and then the context's own values are dropped
    /// with the context installed, so their destructors see its values.
    ///
    /// Made by [`FutureExt::in_context`], [`FutureExt::in_current_context`],
    /// [`FutureExt::in_new_context`] and [`ContextLocal::scope`](crate::ContextLocal::scope).
    /// On every poll the context is swapped in, and swapped back out by a guard
    /// when the poll returns or panics. The inner future is also dropped with
    /// its context installed, so its destructors see its values. Unlike
    /// `tokio::task_local!`'s `TaskLocalFuture`, one wrapper carries every
    /// task-scoped field.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{Context, ContextLocal, FutureExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let fut = async { Request::id().set(3) }.in_new_context();
    /// let mut fut = Box::pin(fut);
    /// (&mut fut).await;
    /// // What the future wrote stayed in its context.
    /// assert_eq!(Request::id().get(), None);
    /// # });
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct InContext<F> {
        context: Context,
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for InContext<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.future.is_some() {
                drop_inside(this.context, || this.future.set(None));
            }
        }
    }
}

impl<F> InContext<F> {
    /// Wraps `future` so that it runs in `context`.
    pub(crate) fn new(future: F, context: Context) -> InContext<F> {
        InContext { context, future: Some(future) }
    }

    /// The context the future runs in (between polls: what it has written so
    /// far).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::FutureExt;
    ///
    /// let fut = async {}.in_new_context();
    /// assert!(fut.context().is_empty());
    /// ```
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The context back, with whatever the future wrote into it. A future that
    /// has not finished is dropped first, with its context installed.
    ///
    /// This takes the wrapper by value, so the inner future must be `Unpin` to
    /// have been polled in place (box it with `Box::pin` first); for a pinned
    /// wrapper use [`take_context`](InContext::take_context).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{ContextLocal, FutureExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let mut fut = Box::pin(async { Request::id().set(11) }).in_new_context();
    /// (&mut fut).await;
    /// let mut ctx = fut.into_context();
    /// assert_eq!(ctx.run(|| Request::id().get()), Some(11));
    /// # });
    /// ```
    pub fn into_context(mut self) -> Context {
        if self.future.is_some() {
            let future = &mut self.future;
            drop_inside(&mut self.context, || *future = None);
        }
        std::mem::take(&mut self.context)
    }

    /// Like [`into_context`](InContext::into_context), for a pinned wrapper:
    /// drops the inner future (inside its context) if it is still there and
    /// takes the context out, leaving an empty one. Polling afterwards panics.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{ContextLocal, FutureExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let fut = async { Request::id().set(12) }.in_new_context();
    /// let mut fut = std::pin::pin!(fut);
    /// fut.as_mut().await;
    /// let mut ctx = fut.take_context();
    /// assert_eq!(ctx.run(|| Request::id().get()), Some(12));
    /// # });
    /// ```
    pub fn take_context(self: Pin<&mut Self>) -> Context {
        let mut this = self.project();
        if this.future.is_some() {
            drop_inside(this.context, || this.future.set(None));
        }
        std::mem::take(this.context)
    }
}

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let _installed = Installed::new(this.context);
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            panic!("`InContext` polled after it completed");
        };
        let output = future.poll(cx);
        if output.is_ready() {
            // Drop the finished future while its context is still installed.
            this.future.set(None);
        }
        output
    }
}

/// Runs futures in a [`Context`]: `contextvars`' `create_task` for Rust.
///
/// Implemented for every [`Future`].
///
/// # Examples
///
/// ```
/// use context_local::{ContextLocal, FutureExt};
///
/// #[derive(ContextLocal)]
/// struct Request {
///     id: u64,
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// Request::id().set(1);
/// let child = async {
///     let seen = Request::id().get();
///     Request::id().set(2);
///     seen
/// };
/// assert_eq!(child.in_current_context().await, Some(1));
/// assert_eq!(Request::id().get(), Some(1)); // the child's write stayed in its snapshot
/// # });
/// ```
pub trait FutureExt: Future + Sized {
    /// Polls `self` with `context` installed, on any executor.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{Context, ContextLocal, FutureExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let mut ctx = Context::new();
    /// ctx.run(|| Request::id().set(8));
    /// assert_eq!(async { Request::id().get() }.in_context(ctx).await, Some(8));
    /// # });
    /// ```
    fn in_context(self, context: Context) -> InContext<Self> {
        InContext::new(self, context)
    }

    /// Polls `self` in an O(1) snapshot of the current context, taken now.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{ContextLocal, FutureExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// Request::id().set(6);
    /// assert_eq!(async { Request::id().get() }.in_current_context().await, Some(6));
    /// # });
    /// ```
    fn in_current_context(self) -> InContext<Self> {
        InContext::new(self, Context::current())
    }

    /// Polls `self` in a new, empty context.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::{ContextLocal, FutureExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct Request {
    ///     id: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// Request::id().set(6);
    /// assert_eq!(async { Request::id().get() }.in_new_context().await, None);
    /// # });
    /// ```
    fn in_new_context(self) -> InContext<Self> {
        InContext::new(self, Context::new())
    }
}

impl<F: Future> FutureExt for F {}
