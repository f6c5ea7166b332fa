//! Fields that cross process boundaries as W3C Baggage (feature `baggage`).
//!
//! Mark a task-scoped field `#[context_local(baggage)]` (member key: the
//! accessor's name) or `#[context_local(baggage = "key")]`; its type must be
//! `Display + FromStr`. The value goes out as its `Display` text and comes
//! back through `FromStr`, in the `baggage` HTTP header that every
//! OpenTelemetry SDK reads and forwards.
//!
//! - [`to_header`] renders the current context as one `baggage` header value.
//! - [`extract`] turns received header values into a new [`Context`].
//! - With the `tower` feature, `tower::ContextLayer::baggage` does the
//!   extracting for a server and `tower::PropagateLayer` the rendering for a
//!   client; with `opentelemetry`, `opentelemetry::BaggagePropagator` plugs
//!   into OpenTelemetry's propagators.
//!
//! What goes out, in this order: the baggage fields set in the current
//! context (structs in the order the process first used them, fields in
//! declaration order), then the received members that belong to no field,
//! byte for byte as they came in (properties included). Each key goes out
//! once: when several received members share a key, a field takes the first
//! whose value parses (its properties are not kept: the field's value goes
//! out), and of two structs with the same key the first one used wins. Values are percent-encoded outside the `baggage-octet` range, and `%`
//! always. At most [`MAX_MEMBERS`] members and [`MAX_BYTES`] bytes go out: the
//! first member that would exceed either, and every one after it, is dropped
//! whole.
//!
//! What comes in: every header value given, as one list. Invalid members are
//! skipped, the others kept. Values are percent-decoded, invalid UTF-8 as
//! U+FFFD. A member whose value does not parse (`FromStr`) leaves its field
//! unset and is forwarded like a member no field claims. Received members are
//! bound to a struct's fields on the struct's first access in the context,
//! when its `init` runs; `is_set` runs neither, but already says `true` for a
//! field a received member will set.
//!
//! # Examples
//!
//! A message queue, with header maps instead of HTTP:
//!
//! ```
//! use context_local::{baggage, ContextLocal};
//!
//! #[derive(ContextLocal)]
//! struct Job {
//!     #[context_local(baggage)]
//!     tenant: String,
//!     #[context_local(baggage = "user.id")]
//!     user: u64,
//! }
//!
//! // Producer: the current context as a header.
//! Job::tenant().set("acme, inc.".into());
//! Job::user().set(42);
//! let header = baggage::to_header().unwrap();
//! assert_eq!(header, "tenant=acme%2C%20inc.,user.id=42");
//!
//! // Consumer: a context holding what the header carries, plus a member
//! // this process does not know, which it forwards unchanged.
//! let mut context = baggage::extract([header.as_str(), "region=eu;ttl=3"]);
//! context.run(|| {
//!     assert_eq!(Job::tenant().get().as_deref(), Some("acme, inc."));
//!     assert_eq!(Job::user().get(), Some(42));
//!     assert_eq!(baggage::to_header().unwrap(), "tenant=acme%2C%20inc.,user.id=42,region=eu;ttl=3");
//! });
//! ```

mod fields;
pub(crate) use self::fields::{bind_received, register, would_bind};
mod outgoing;
mod wire;

pub use self::outgoing::{MAX_BYTES, MAX_MEMBERS};
pub(crate) use self::wire::{Member, Received};

use crate::Context;

/// The current context as a `baggage` header value; `None` when there is
/// nothing to send.
///
/// Runs no `init` and no `default`. A struct not used yet in this context
/// sends the received members it will bind, as its fields will send them;
/// a struct no code in the process has used yet is not known here, and its
/// members go out as received, after the fields. Fields that cannot be read
/// here (inside their own `update`, in a tokio task without a context) are
/// left out, and so is a value whose `Display` panics.
///
/// # Examples
///
/// ```
/// use context_local::{baggage, ContextLocal};
///
/// #[derive(ContextLocal)]
/// struct Request {
///     #[context_local(baggage)]
///     tenant: String,
/// }
///
/// assert_eq!(baggage::to_header(), None);
/// Request::tenant().set("50%".into());
/// assert_eq!(baggage::to_header().as_deref(), Some("tenant=50%25"));
/// ```
pub fn to_header() -> Option<String> {
    header_with(&[])
}

/// `to_header`, merged with `own` members that win on the same key (a
/// request's own `baggage` header).
pub(crate) fn header_with(own: &[Member]) -> Option<String> {
    let mut out = outgoing::Outgoing::with_overrides(own);
    fields::offer(&mut out);
    out.finish()
}

/// `to_header`, followed by `extra` members whose keys were not written
/// (an OpenTelemetry context's own `Baggage`).
#[cfg(feature = "opentelemetry")]
pub(crate) fn header_then(extra: &[Member]) -> Option<String> {
    let mut out = outgoing::Outgoing::new();
    fields::offer(&mut out);
    for member in extra {
        out.offer_member(member);
    }
    out.finish()
}

/// A new context holding what the given `baggage` header values carry: the
/// baggage fields they set, and every other valid member, kept so that
/// [`to_header`] inside the context forwards it.
///
/// Give every `baggage` header of a message: they are one list.
///
/// # Examples
///
/// ```
/// use context_local::{baggage, ContextLocal};
///
/// #[derive(ContextLocal)]
/// struct Request {
///     #[context_local(baggage = "user.id")]
///     user: u64,
/// }
///
/// let mut context = baggage::extract(["user.id = 7 , broken member", "trace=on;p"]);
/// assert_eq!(context.run(|| Request::user().get()), Some(7));
/// assert_eq!(context.run(baggage::to_header).as_deref(), Some("user.id=7,trace=on;p"));
/// ```
pub fn extract<'a>(values: impl IntoIterator<Item = &'a str>) -> Context {
    let received = Received::parse(values);
    let mut context = Context::new();
    context.run(|| receive(received));
    context
}

/// Stores received members in the current context.
pub(crate) fn receive(received: Received) {
    if !received.is_empty() {
        fields::receive(received);
    }
}
