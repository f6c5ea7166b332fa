//! Context fields on every `tracing` event (feature `tracing`).
//!
//! Fields marked `#[context_local(log)]` (formatted with `Display`, or `Debug`
//! with `log = "debug"`) go on each line that `tracing_subscriber::fmt`
//! writes, read on the thread that emits the event, so each line carries the
//! values of the task or thread that logged it (what a logging `Filter` that
//! adds context to records does in Python).
//!
//! [`ContextFields`] wraps one of tracing-subscriber's formats:
//!
//! | wrapped format | what a line gets |
//! |---|---|
//! | `fmt::format()` (full), `format().compact()` | ` key=value` appended, quoted when the value has spaces, `"` or `=` |
//! | `format().json()`, with or without `flatten_event(true)` | a string member `"key":"value"` of the line's top-level object |
//!
//! A field that is unset where the event is emitted gives nothing. Any
//! other format (`pretty()`, a `FormatEvent` of your own) does not compile:
//! call [`log_fields`] from your own `FormatEvent` instead.
//!
//! Colours follow the writer the layer gives (`fmt().with_ansi(..)`, set
//! before `event_format`), for lines with and without context fields alike;
//! a `with_ansi` on the wrapped format itself is replaced by that setting.
//! A line that carries context fields is formatted into a buffer first, so
//! tracing-subscriber's sanitising of escape sequences in values stays on
//! for it even where the layer turned it off.
//!
//! # Examples
//!
//! ```
//! use context_local::tracing::ContextFields;
//! use context_local::ContextLocal;
//! # use std::sync::{Arc, Mutex};
//! # /// Keeps what the subscriber writes.
//! # #[derive(Clone, Default)]
//! # struct Lines(Arc<Mutex<Vec<u8>>>);
//! # impl std::io::Write for Lines {
//! #     fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(buf) }
//! #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! # }
//! # impl Lines {
//! #     fn text(&self) -> String { String::from_utf8(self.0.lock().unwrap().clone()).unwrap() }
//! # }
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     #[context_local(log)]
//!     request_id: String,
//! }
//!
//! let lines = Lines::default();
//! # let out = lines.clone();
//! let subscriber = tracing_subscriber::fmt()
//!     .with_ansi(false)
//!     .event_format(ContextFields::new(tracing_subscriber::fmt::format().without_time()))
//! #   .with_writer(move || out.clone())
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || {
//!     RequestContext::request_id().set("req-7".into());
//!     tracing::info!("charging the card");
//! });
//! assert!(lines.text().ends_with("charging the card request_id=req-7\n"));
//! ```
//!
//! JSON, one object per line (`.json()` on the builder makes span fields
//! JSON too):
//!
//! ```
//! use context_local::tracing::ContextFields;
//! use context_local::ContextLocal;
//! # use std::sync::{Arc, Mutex};
//! # #[derive(Clone, Default)]
//! # struct Lines(Arc<Mutex<Vec<u8>>>);
//! # impl std::io::Write for Lines {
//! #     fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(buf) }
//! #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! # }
//! # impl Lines {
//! #     fn text(&self) -> String { String::from_utf8(self.0.lock().unwrap().clone()).unwrap() }
//! # }
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     #[context_local(log)]
//!     request_id: String,
//! }
//!
//! let lines = Lines::default();
//! # let out = lines.clone();
//! let subscriber = tracing_subscriber::fmt()
//!     .json()
//!     .event_format(ContextFields::new(tracing_subscriber::fmt::format().json().flatten_event(true)))
//! #   .with_writer(move || out.clone())
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || {
//!     RequestContext::request_id().set("req \"7\"".into());
//!     tracing::info!("charging the card");
//! });
//! // {"timestamp":"..","level":"INFO","message":"charging the card","target":"..","request_id":"req \"7\""}
//! assert!(lines.text().ends_with(r#","request_id":"req \"7\""}
//! "#));
//! ```

use std::fmt;

use tracing_core::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Compact, Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::log_fields;

/// A `FormatEvent` that adds the context's `log` fields to each line the
/// wrapped format writes. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ContextFields<E = Format<Full, SystemTime>> {
    /// The wrapped format with colours off, for writers without ANSI.
    plain: E,
    /// The wrapped format with colours on.
    coloured: E,
}

impl ContextFields {
    /// Wraps `inner`: `tracing_subscriber::fmt::format()`, `format().compact()`
    /// or `format().json()`, with any of their options.
    ///
    /// Other formats are a compile error, since the fields could not be
    /// added to their lines without risking malformed output.
    pub fn new<E: SupportedFormat>(inner: E) -> ContextFields<E> {
        ContextFields { plain: inner.clone().with_colours(false), coloured: inner.with_colours(true) }
    }
}

impl Default for ContextFields {
    fn default() -> Self {
        ContextFields::new(Format::default())
    }
}

impl<S, N, E> FormatEvent<S, N> for ContextFields<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: SupportedFormat + FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // The wrapped format is told the writer's colour setting explicitly,
        // since the line with context fields is written to a `String` first
        // and a `Writer` over a `String` never has colours of its own: lines
        // with and without fields come out alike.
        let inner = if writer.has_ansi_escapes() { &self.coloured } else { &self.plain };
        let fields = log_fields();
        if fields.is_empty() {
            return inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        inner.format_event(ctx, Writer::new(&mut line), event)?;
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line.as_str(), ""),
        };
        match E::SHAPE {
            Shape::Text => write_text(&mut writer, body, &fields)?,
            Shape::Json => write_json(&mut writer, body, &fields)?,
        }
        writer.write_str(newline)
    }
}

/// A format [`ContextFields`] can add fields to: tracing-subscriber's
/// `Format` in its full, compact and JSON forms. Sealed.
#[diagnostic::on_unimplemented(
    message = "`ContextFields` cannot add context fields to lines of `{Self}`",
    label = "not one of tracing-subscriber's full, compact or JSON formats",
    note = "wrap `tracing_subscriber::fmt::format()`, `format().compact()` or `format().json()`; \
            in a `FormatEvent` of your own, call `context_local::log_fields()`"
)]
pub trait SupportedFormat: sealed::Sealed + Clone {}

impl<T: Clone> SupportedFormat for Format<Full, T> {}
impl<T: Clone> SupportedFormat for Format<Compact, T> {}
impl<T: Clone> SupportedFormat for Format<Json, T> {}

mod sealed {
    use tracing_subscriber::fmt::format::{Compact, Format, Full, Json};

    /// What kind of line a format writes.
    pub enum Shape {
        /// One line of text.
        Text,
        /// One JSON object.
        Json,
    }

    pub trait Sealed: Sized {
        const SHAPE: Shape;

        fn with_colours(self, ansi: bool) -> Self;
    }

    impl<T> Sealed for Format<Full, T> {
        const SHAPE: Shape = Shape::Text;

        fn with_colours(self, ansi: bool) -> Self {
            self.with_ansi(ansi)
        }
    }

    impl<T> Sealed for Format<Compact, T> {
        const SHAPE: Shape = Shape::Text;

        fn with_colours(self, ansi: bool) -> Self {
            self.with_ansi(ansi)
        }
    }

    impl<T> Sealed for Format<Json, T> {
        const SHAPE: Shape = Shape::Json;

        // JSON lines never have colours.
        fn with_colours(self, _ansi: bool) -> Self {
            self
        }
    }
}

use sealed::Shape;

/// The text line, then ` key=value` for each field.
fn write_text(out: &mut Writer<'_>, line: &str, fields: &[(&'static str, String)]) -> fmt::Result {
    out.write_str(line)?;
    for (key, value) in fields {
        write!(out, " {key}=")?;
        write_value(out, value)?;
    }
    Ok(())
}

/// Writes `value` as is, or quoted when it would not read back as one token.
pub(crate) fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
        out.write_str(value)
    } else {
        write!(out, "{value:?}")
    }
}

/// The JSON object `line` with a string member added for each field.
///
/// The members are inserted into the wrapped format's own text rather than
/// re-serialising a parsed object: the line keeps its bytes and its member
/// order (a `serde_json::Map` would sort the keys unless the whole program
/// enabled serde_json's `preserve_order`), and nothing is allocated per
/// member. The line is still parsed once, without building values, to check
/// that it is one JSON object and to learn its top-level keys: a field whose
/// key the line already has (an event field of the same name with
/// `flatten_event(true)`, or a member such as `level`) is left out rather
/// than written twice, as is a second field with the same key. Anything but
/// an object is an error, never a malformed line.
fn write_json(out: &mut Writer<'_>, line: &str, fields: &[(&'static str, String)]) -> fmt::Result {
    let (mut has_members, mut present) = object_keys(line, fields).map_err(|_| fmt::Error)?;
    let Some(open) = line.trim_end().strip_suffix('}') else {
        return Err(fmt::Error);
    };
    out.write_str(open)?;
    for (index, (key, value)) in fields.iter().enumerate() {
        // Whether written now or already there, a later field with the same
        // key is left out.
        for (later, (other, _)) in fields.iter().enumerate().skip(index + 1) {
            present[later] |= other == key;
        }
        if present[index] {
            continue;
        }
        if has_members {
            out.write_char(',')?;
        }
        has_members = true;
        write_json_string(out, key)?;
        out.write_char(':')?;
        write_json_string(out, value)?;
    }
    out.write_char('}')
}

fn write_json_string(out: &mut Writer<'_>, text: &str) -> fmt::Result {
    out.write_str(&serde_json::to_string(text).map_err(|_| fmt::Error)?)
}

/// Whether `line`, which must be exactly one JSON object, has any member,
/// and which of `fields`' keys it has at its top level.
fn object_keys(line: &str, fields: &[(&'static str, String)]) -> Result<(bool, Vec<bool>), serde_json::Error> {
    use serde::Deserializer as _;

    let mut parser = serde_json::Deserializer::from_str(line);
    let keys = parser.deserialize_map(ObjectKeys { fields })?;
    parser.end()?;
    Ok(keys)
}

/// Visits a JSON object, noting which of the fields' keys it has.
struct ObjectKeys<'a> {
    fields: &'a [(&'static str, String)],
}

impl<'de> serde::de::Visitor<'de> for ObjectKeys<'_> {
    type Value = (bool, Vec<bool>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut present = vec![false; self.fields.len()];
        let mut has_members = false;
        while let Some(found) = map.next_key_seed(KeyIndex { fields: self.fields })? {
            has_members = true;
            if let Some(index) = found {
                present[index] = true;
            }
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok((has_members, present))
    }
}

/// A key of the object: the position of the first field with that key.
struct KeyIndex<'a> {
    fields: &'a [(&'static str, String)],
}

impl<'de> serde::de::DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, keys: D) -> Result<Self::Value, D::Error> {
        keys.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.fields.iter().position(|(field, _)| *field == key))
    }
}
