//! Which tokio task is running on this thread: the owner of a context
//! installed here, and what a task-scoped access is checked against.
//!
//! A context installed by `Context::run` or by polling an `InContext` belongs
//! to the task that installed it (or to no task, outside any tokio task).
//! Task-scoped access is allowed only while that same task runs, so a task
//! polled inside someone else's context (a plain `tokio::spawn`ed task run by
//! a `block_on` inside `ctx.run`, say) sees no context at all.

/// The tokio task running now, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Owner(#[cfg(feature = "tokio")] Option<tokio::task::Id>);

impl Owner {
    /// The task running on this thread right now.
    #[inline]
    pub(crate) fn running() -> Owner {
        #[cfg(feature = "tokio")]
        {
            Owner(tokio::task::try_id())
        }
        #[cfg(not(feature = "tokio"))]
        {
            Owner()
        }
    }

    /// No task: the owner of every thread's root context.
    pub(crate) const NONE: Owner = Owner(
        #[cfg(feature = "tokio")]
        None,
    );
}
