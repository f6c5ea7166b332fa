//! How a `#[context_local(baggage)]` field's value becomes a W3C Baggage
//! member value and back: its own `Display` and `FromStr`, picked by the type
//! itself, so a field's descriptor can only ever parse into its own type.

use std::fmt;
use std::str::FromStr;

/// The member key and the field type's conversions.
pub struct BaggageCodec<T: 'static> {
    pub(crate) key: &'static str,
    pub(crate) render: fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result,
    pub(crate) parse: fn(&str) -> Option<T>,
}

impl<T: 'static> Clone for BaggageCodec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: 'static> Copy for BaggageCodec<T> {}

/// A type a `#[context_local(baggage)]` field may have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel as W3C Baggage with `#[context_local(baggage)]`: it must be `Display + FromStr`",
    label = "this field type is not `Display + FromStr`",
    note = "the value is sent as its `Display` text and parsed back with `FromStr`; use `String`, a number, or implement both for the type"
)]
pub trait BaggageValue: fmt::Display + FromStr + 'static {}

impl<T: fmt::Display + FromStr + 'static> BaggageValue for T {}

/// Stands for the `baggage` cargo feature when it is off: nothing implements
/// it, so a `#[context_local(baggage)]` field is a compile error that says
/// what to enable instead of an attribute that silently does nothing.
#[diagnostic::on_unimplemented(
    message = "`#[context_local(baggage)]` needs the `baggage` feature of context-local",
    label = "this field is marked `baggage`",
    note = "enable it: context-local = {{ version = \"0.1\", features = [\"baggage\"] }}"
)]
pub trait BaggageFeatureEnabled {}

#[cfg(feature = "baggage")]
impl<T: ?Sized> BaggageFeatureEnabled for T {}

impl<T: 'static> BaggageCodec<T> {
    /// The codec of a field whose member key is `key`.
    ///
    /// # Panics
    ///
    /// If `key` is not an RFC 7230 token (at compile time, in a `static`):
    /// the derive rejects such keys first, with an error at the attribute.
    pub const fn new(key: &'static str) -> BaggageCodec<T>
    where
        T: BaggageValue + BaggageFeatureEnabled,
    {
        assert!(is_token(key.as_bytes()), "context-local: a baggage key must be an RFC 7230 token");
        BaggageCodec { key, render: render::<T>, parse: parse::<T> }
    }
}

fn render<T: fmt::Display>(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Display::fmt(value, f)
}

fn parse<T: FromStr>(text: &str) -> Option<T> {
    text.parse().ok()
}

/// Whether `bytes` is an RFC 7230 `token` (section 3.2.6): one or more
/// `tchar`s.
pub(crate) const fn is_token(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if !is_tchar(bytes[i]) {
            return false;
        }
        i += 1;
    }
    true
}

/// `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
/// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA`
pub(crate) const fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}
