//! Items used only by code that `#[derive(ContextLocal)]` generates. Not part
//! of the public API: they may change in any release. None of them lets safe
//! code put a value of the wrong type into a field's slot.

use std::fmt;

pub use crate::baggage_codec::{BaggageCodec, BaggageFeatureEnabled, BaggageValue};
pub use crate::cache::Cache;
pub use crate::descriptor::{Batch, ErasedField, FieldDesc, FormatFn, InheritedValue, Parts, StructDesc, TaskValue};
pub use crate::slot::Space;

/// A type a `#[context_local(log)]` field may have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be logged with `#[context_local(log)]`: it does not implement `Display`",
    label = "this field type is not `Display`",
    note = "use `#[context_local(log = \"debug\")]` to log it with `Debug`, or implement `Display` for it"
)]
pub trait LogDisplay: fmt::Display {}

impl<T: fmt::Display + ?Sized> LogDisplay for T {}

/// A type a `#[context_local(log = "debug")]` field may have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be logged with `#[context_local(log = \"debug\")]`: it does not implement `Debug`",
    label = "this field type is not `Debug`",
    note = "derive or implement `Debug` for it, or use `#[context_local(log)]` for a `Display` type"
)]
pub trait LogDebug: fmt::Debug {}

impl<T: fmt::Debug + ?Sized> LogDebug for T {}

/// Writes a `log` field with `Display`.
pub fn display_fmt<T: LogDisplay>(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Display::fmt(value, f)
}

/// Writes a `log = "debug"` field with `Debug`.
pub fn debug_fmt<T: LogDebug>(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Debug::fmt(value, f)
}
