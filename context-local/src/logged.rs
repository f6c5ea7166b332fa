//! Fields marked `#[context_local(log)]`, for log lines: each registers
//! itself the first time it is used in the process (a field never used has
//! no value anywhere), and [`log_fields`] renders the ones set here.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// A field that appears in log lines.
pub(crate) trait LoggedField: Sync {
    /// The field's key and its value in the current context, formatted;
    /// `None` when it has no value here (or cannot be read right now).
    fn render(&'static self) -> Option<(&'static str, String)>;
}

static FIELDS: Mutex<Vec<&'static dyn LoggedField>> = Mutex::new(Vec::new());
static ANY: AtomicBool = AtomicBool::new(false);

pub(crate) fn register(field: &'static dyn LoggedField) {
    FIELDS.lock().unwrap_or_else(PoisonError::into_inner).push(field);
    ANY.store(true, Ordering::Release);
}

/// Every `#[context_local(log)]` field that has a value where this is called,
/// as `(key, formatted value)` pairs in the order the fields were first used.
///
/// This is what the `tracing` and `log` integrations add to each line; call
/// it to add the same fields to any other output. A field that is unset,
/// or is being written by a closure on this thread right now, is left out;
/// `init` and `default` are not run.
///
/// # Examples
///
/// ```
/// use context_local::{log_fields, ContextLocal};
///
/// #[derive(ContextLocal)]
/// struct Request {
///     #[context_local(log)]
///     request_id: String,
///     #[context_local(log = "debug")]
///     user: Option<u64>,
///     secret: String, // not logged
/// }
///
/// Request::request_id().set("req-7".into());
/// Request::user().set(Some(42));
/// Request::secret().set("hunter2".into());
/// assert_eq!(log_fields(), [("request_id", "req-7".to_string()), ("user", "Some(42)".to_string())]);
/// ```
pub fn log_fields() -> Vec<(&'static str, String)> {
    if !ANY.load(Ordering::Acquire) {
        return Vec::new();
    }
    // A field's `Display` that itself logs would come back here, and again
    // for its own line, until the stack overflows: the nested line gets no
    // context fields instead.
    let Some(_rendering) = Rendering::enter() else {
        return Vec::new();
    };
    let fields = FIELDS.lock().unwrap_or_else(PoisonError::into_inner).clone();
    fields.into_iter().filter_map(|field| field.render()).collect()
}

thread_local! {
    static RENDERING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as rendering log fields; `None` if it already is.
struct Rendering;

impl Rendering {
    fn enter() -> Option<Rendering> {
        let busy = RENDERING.try_with(|flag| flag.replace(true)).unwrap_or(true);
        (!busy).then_some(Rendering)
    }
}

impl Drop for Rendering {
    fn drop(&mut self) {
        let _ = RENDERING.try_with(|flag| flag.set(false));
    }
}
