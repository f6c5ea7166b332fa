//! Rayon jobs that carry the submitter's context (feature `rayon`).
//!
//! A rayon worker runs jobs from many callers; work stealing can even run
//! another caller's job on the thread in the middle of yours. Each function
//! here runs the job in a snapshot of the context it was submitted from (as
//! [`task::spawn`](crate::task) does for tokio tasks), and restores whatever
//! the worker had afterwards, so nothing one job sets is seen by the next.
//! While these functions wait for their jobs, an empty context is installed,
//! so a job stolen meanwhile does not see the waiting caller's values. Plain
//! rayon calls (`rayon::join`, `par_iter()` without the adaptor) inside a job
//! wait with the job's context installed: use the functions here inside jobs
//! that carry request values.
//! Writes inside a job stay in its snapshot, as with `contextvars`'
//! `copy_context().run`. Thread-scoped values belong to the worker thread and
//! are not carried. With the `tracing` feature, each job and item also runs
//! inside the `tracing` span current where it was submitted (where the
//! adaptor was created, for the iterator adaptor).
//!
//! # Examples
//!
//! ```
//! use context_local::ContextLocal;
//! use rayon::prelude::*;
//! use context_local::rayon::ParallelIteratorExt;
//!
//! #[derive(ContextLocal)]
//! struct Job {
//!     tenant: String,
//! }
//!
//! Job::tenant().set("acme".into());
//! let tenants: Vec<String> = (0..100)
//!     .into_par_iter()
//!     .in_current_context()
//!     .map(|_| Job::tenant().get().unwrap_or_default())
//!     .collect();
//! assert!(tenants.iter().all(|t| t == "acme"));
//!
//! let (a, b) = context_local::rayon::join(|| Job::tenant().get(), || Job::tenant().get());
//! assert_eq!((a.as_deref(), b.as_deref()), (Some("acme"), Some("acme")));
//! ```

use rayon::iter::plumbing::{Consumer, Folder, Reducer, UnindexedConsumer};
use rayon::iter::ParallelIterator;

use crate::span::CurrentSpan;
use crate::Context;

/// Runs a blocking rayon call in an empty context. While a worker waits for
/// the jobs it started, rayon may run other callers' jobs on it (work
/// stealing); they must not see the waiting caller's values.
fn while_waiting<R>(call: impl FnOnce() -> R) -> R {
    Context::new().run(call)
}

/// `rayon::spawn`, with `job` run in a snapshot of the current context.
pub fn spawn<F>(job: F)
where
    F: FnOnce() + Send + 'static,
{
    let (span, mut context) = (CurrentSpan::capture(), Context::current());
    rayon::spawn(move || span.run(|| context.run(job)));
}

/// `rayon::join`, with each closure run in its own snapshot of the current
/// context.
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let (mut for_a, mut for_b) = (Context::current(), Context::current());
    let (span_a, span_b) = (CurrentSpan::capture(), CurrentSpan::capture());
    while_waiting(|| rayon::join(move || span_a.run(|| for_a.run(a)), move || span_b.run(|| for_b.run(b))))
}

/// `ThreadPool::install`, with `op` run in a snapshot of the current context.
pub fn install<OP, R>(pool: &rayon::ThreadPool, op: OP) -> R
where
    OP: FnOnce() -> R + Send,
    R: Send,
{
    let (span, mut context) = (CurrentSpan::capture(), Context::current());
    while_waiting(|| pool.install(move || span.run(|| context.run(op))))
}

/// `rayon::scope`, with `op` and every job spawned through the [`Scope`] run
/// in a snapshot of the context it was spawned from.
pub fn scope<'scope, OP, R>(op: OP) -> R
where
    OP: FnOnce(&Scope<'_, 'scope>) -> R + Send,
    R: Send,
{
    let (span, mut context) = (CurrentSpan::capture(), Context::current());
    while_waiting(|| rayon::scope(move |inner| span.run(|| context.run(|| op(&Scope { inner })))))
}

/// A `rayon::Scope` whose jobs carry the spawner's context.
#[derive(Debug)]
pub struct Scope<'s, 'scope> {
    inner: &'s rayon::Scope<'scope>,
}

impl<'scope> Scope<'_, 'scope> {
    /// `rayon::Scope::spawn`, with `body` run in a snapshot of the current
    /// context.
    pub fn spawn<BODY>(&self, body: BODY)
    where
        BODY: FnOnce(&Scope<'_, 'scope>) + Send + 'scope,
    {
        let (span, mut context) = (CurrentSpan::capture(), Context::current());
        self.inner.spawn(move |inner| span.run(|| context.run(|| body(&Scope { inner }))));
    }
}

/// Runs a parallel iterator's downstream work in the caller's context.
pub trait ParallelIteratorExt: ParallelIterator {
    /// Every closure after this adaptor (`map`, `for_each`, ...) runs in a
    /// snapshot of the context current here, on whichever worker runs it.
    fn in_current_context(self) -> InContextIter<Self> {
        InContextIter { base: self, context: Context::current(), span: CurrentSpan::capture() }
    }
}

impl<I: ParallelIterator> ParallelIteratorExt for I {}

/// The adaptor [`ParallelIteratorExt::in_current_context`] returns.
#[derive(Debug)]
pub struct InContextIter<I> {
    base: I,
    context: Context,
    span: CurrentSpan,
}

impl<I: ParallelIterator> ParallelIterator for InContextIter<I> {
    type Item = I::Item;

    fn drive_unindexed<C>(self, consumer: C) -> C::Result
    where
        C: UnindexedConsumer<Self::Item>,
    {
        let consumer = ContextConsumer { base: consumer, context: self.context, span: self.span };
        while_waiting(|| self.base.drive_unindexed(consumer))
    }

    fn opt_len(&self) -> Option<usize> {
        self.base.opt_len()
    }
}

/// Hands each piece of work a snapshot of the context, and the span.
struct ContextConsumer<C> {
    base: C,
    context: Context,
    span: CurrentSpan,
}

impl<T, C: Consumer<T>> Consumer<T> for ContextConsumer<C> {
    type Folder = ContextFolder<C::Folder>;
    type Reducer = ContextReducer<C::Reducer>;
    type Result = C::Result;

    fn split_at(self, index: usize) -> (Self, Self, Self::Reducer) {
        let (left, right, reducer) = self.base.split_at(index);
        let reducer = ContextReducer { base: reducer, context: self.context.snapshot(), span: self.span.clone() };
        let right = ContextConsumer { base: right, context: self.context.snapshot(), span: self.span.clone() };
        (ContextConsumer { base: left, context: self.context, span: self.span }, right, reducer)
    }

    /// Making the folder may run user code too (`fold`'s identity closure).
    fn into_folder(self) -> Self::Folder {
        let ContextConsumer { base, context, span } = self;
        let base = span.run(|| context.snapshot().run(|| base.into_folder()));
        ContextFolder { base, context, span }
    }

    fn full(&self) -> bool {
        self.base.full()
    }
}

impl<T, C: UnindexedConsumer<T>> UnindexedConsumer<T> for ContextConsumer<C> {
    fn split_off_left(&self) -> Self {
        ContextConsumer { base: self.base.split_off_left(), context: self.context.snapshot(), span: self.span.clone() }
    }

    fn to_reducer(&self) -> Self::Reducer {
        ContextReducer { base: self.base.to_reducer(), context: self.context.snapshot(), span: self.span.clone() }
    }
}

/// Runs the downstream reducer (`reduce`, `sum`, the halves of `collect`, ...)
/// in a snapshot of the submitter's context.
struct ContextReducer<R> {
    base: R,
    context: Context,
    span: CurrentSpan,
}

impl<T, R: Reducer<T>> Reducer<T> for ContextReducer<R> {
    fn reduce(self, left: T, right: T) -> T {
        let ContextReducer { base, context, span } = self;
        span.run(|| context.snapshot().run(|| base.reduce(left, right)))
    }
}

/// Runs the downstream folder's work inside the context.
struct ContextFolder<F> {
    base: F,
    context: Context,
    span: CurrentSpan,
}

impl<T, F: Folder<T>> Folder<T> for ContextFolder<F> {
    type Result = F::Result;

    /// Each item starts from the submitter's values: writes made while
    /// processing one item are not seen by the next.
    fn consume(self, item: T) -> Self {
        let ContextFolder { base, context, span } = self;
        let base = span.run(|| context.snapshot().run(|| base.consume(item)));
        ContextFolder { base, context, span }
    }

    fn consume_iter<I>(self, iter: I) -> Self
    where
        I: IntoIterator<Item = T>,
    {
        iter.into_iter().fold(self, Folder::consume)
    }

    fn complete(self) -> Self::Result {
        let ContextFolder { base, context, span } = self;
        span.run(|| context.snapshot().run(|| base.complete()))
    }

    fn full(&self) -> bool {
        self.base.full()
    }
}
