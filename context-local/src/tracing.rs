//! Context fields on every `tracing` event (feature `tracing`).
//!
//! Fields marked `#[context_local(log)]` (formatted with `Display`, or `Debug`
//! with `log = "debug"`) are appended to each line that
//! `tracing_subscriber::fmt` writes, as `key=value`, read on the thread that
//! emits the event, so each line carries the values of the task or thread
//! that logged it: the seed's logging `ContextFilter`.
//!
//! [`ContextFields`] wraps any `FormatEvent` (the default `Format` if none
//! is given). It formats the wrapped output without ANSI colours, since it
//! has to append to it; JSON output is not covered (tracing-subscriber's JSON
//! formatter cannot be extended from outside without re-implementing it).
//!
//! # Examples
//!
//! ```
//! use context_local::tracing::ContextFields;
//! use context_local::ContextLocal;
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     #[context_local(log)]
//!     request_id: String,
//! }
//!
//! let subscriber = tracing_subscriber::fmt()
//!     .event_format(ContextFields::new(tracing_subscriber::fmt::format().without_time()))
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || {
//!     RequestContext::request_id().set("req-7".into());
//!     tracing::info!("charging the card"); // "... charging the card request_id=req-7"
//! });
//! ```

use std::fmt;

use tracing_core::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::log_fields;

/// A `FormatEvent` that appends the context's `log` fields to each line the
/// wrapped formatter writes. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ContextFields<E = Format<Full, SystemTime>> {
    inner: E,
}

impl ContextFields {
    /// Wraps `inner`, e.g. `tracing_subscriber::fmt::format()` or
    /// `format().compact()`.
    pub fn new<E>(inner: E) -> ContextFields<E> {
        ContextFields { inner }
    }
}

impl Default for ContextFields {
    fn default() -> Self {
        ContextFields { inner: Format::default() }
    }
}

impl<S, N, E> FormatEvent<S, N> for ContextFields<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let fields = log_fields();
        if fields.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line.as_str(), ""),
        };
        writer.write_str(body)?;
        for (key, value) in &fields {
            write!(writer, " {key}=")?;
            write_value(&mut writer, value)?;
        }
        writer.write_str(newline)
    }
}

/// Writes `value` as is, or quoted when it would not read back as one token.
pub(crate) fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
        out.write_str(value)
    } else {
        write!(out, "{value:?}")
    }
}
