//! [`AccessError`]: why an access to a context-local field could not be served.

use std::fmt;

/// Why an access to a context-local field failed.
///
/// Every variant names the field as `Struct::field`. The `try_*` methods of
/// [`Field`](crate::Field) return it; the plain methods panic with its
/// [`Display`](fmt::Display) text on misuse (`Destroyed`, `Reentrant`,
/// `Unscoped`) and return `None` for `Unset`.
///
/// # Examples
///
/// ```
/// use context_local::{AccessError, ContextLocal};
///
/// #[derive(ContextLocal)]
/// struct Session {
///     token: String,
/// }
///
/// let err = Session::token().try_get().unwrap_err();
/// assert_eq!(err, AccessError::Unset { field: "Session::token" });
/// assert!(err.to_string().contains("Session::token"));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessError {
    /// The field holds no value here, and no `default` or `init` supplies one.
    Unset {
        /// The field, as `Struct::field`.
        field: &'static str,
    },
    /// The thread's context-local storage is being torn down (the access came
    /// from a destructor running at thread exit).
    Destroyed {
        /// The field, as `Struct::field`.
        field: &'static str,
    },
    /// The field was accessed inside its own `update`/`with` closure, its
    /// struct's `init`, or its own `default`.
    Reentrant {
        /// The field, as `Struct::field`.
        field: &'static str,
    },
    /// A task-scoped field was accessed inside a tokio task that runs without a
    /// context (spawned with plain `tokio::spawn`).
    Unscoped {
        /// The field, as `Struct::field`.
        field: &'static str,
    },
}

impl AccessError {
    /// The field the failed access was made on, as `Struct::field`.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::AccessError;
    ///
    /// let err = AccessError::Unset { field: "Request::user" };
    /// assert_eq!(err.field(), "Request::user");
    /// ```
    pub fn field(&self) -> &'static str {
        match self {
            AccessError::Unset { field }
            | AccessError::Destroyed { field }
            | AccessError::Reentrant { field }
            | AccessError::Unscoped { field } => field,
        }
    }
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::Unset { field } => write!(
                f,
                "context-local `{field}` is not set in this context; \
                 set it first with `{field}().set(..)`, read it with `get()` to handle `None`, \
                 or give the field `#[context_local(default = ..)]`"
            ),
            AccessError::Destroyed { field } => write!(
                f,
                "context-local `{field}` was accessed while this thread's context-local storage \
                 is being destroyed (thread exit); code that can run in a destructor should use \
                 `try_get`/`try_with` and handle `AccessError::Destroyed`"
            ),
            AccessError::Reentrant { field } => write!(
                f,
                "context-local `{field}` was accessed inside its own `update`/`with` closure, \
                 `default` or its struct's `init`; finish that call first, or read the value \
                 before it and pass it in"
            ),
            AccessError::Unscoped { field } => write!(
                f,
                "task-scoped context-local `{field}` was accessed in a tokio task that has no \
                 context of its own (a context installed around a runtime belongs to the code \
                 that installed it, not to the tasks the runtime polls); spawn tasks with \
                 `context_local::task::spawn` or wrap their futures with `.in_current_context()` \
                 / `.in_new_context()`; in a server, put `context_local::tower::ContextLayer` \
                 outermost; run blocking closures with `context_local::task::spawn_blocking` or \
                 `run_blocking`"
            ),
        }
    }
}

impl std::error::Error for AccessError {}

/// The value, or a panic with the error's text at the caller's line.
#[track_caller]
#[inline]
pub(crate) fn expect<R>(result: Result<R, AccessError>) -> R {
    match result {
        Ok(value) => value,
        Err(misuse) => panic!("{misuse}"),
    }
}

/// A plain method's result: unset is `None`, misuse is a panic with the
/// error's text at the caller's line.
#[track_caller]
#[inline]
pub(crate) fn settle<R>(result: Result<R, AccessError>) -> Option<R> {
    match result {
        Ok(value) => Some(value),
        Err(AccessError::Unset { .. }) => None,
        Err(misuse) => panic!("{misuse}"),
    }
}
