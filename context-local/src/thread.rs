//! `std::thread` helpers that carry the caller's context into the new thread.

use std::thread::JoinHandle;

use crate::context::Context;
use crate::span::CurrentSpan;

/// [`std::thread::spawn`], with `f` running in an O(1) snapshot of the
/// caller's context.
///
/// The new thread sees the caller's inherited task-scoped values; what it
/// writes stays in its snapshot. Thread-scoped values are never carried: the
/// new thread starts with its own. With the `tracing` feature, `f` also
/// runs inside the `tracing` span current at the call.
///
/// # Panics
///
/// As [`std::thread::spawn`]: if the OS cannot create a thread.
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
/// Request::id().set(12);
/// let seen = context_local::thread::spawn(|| {
///     let seen = Request::id().get();
///     Request::id().set(99);
///     seen
/// })
/// .join()
/// .unwrap();
/// assert_eq!(seen, Some(12));
/// assert_eq!(Request::id().get(), Some(12));
///
/// // A plain std thread starts with an empty root context.
/// assert_eq!(std::thread::spawn(|| Request::id().get()).join().unwrap(), None);
/// ```
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = CurrentSpan::capture();
    let mut context = Context::current();
    std::thread::spawn(move || span.run(|| context.run(f)))
}
