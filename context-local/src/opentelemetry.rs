//! OpenTelemetry's propagators, spec-exact (feature `opentelemetry`).
//!
//! [`BaggagePropagator`] implements
//! [`TextMapPropagator`] for
//! the `baggage` field. It composes with `TraceContextPropagator` in a
//! `TextMapCompositePropagator`, and can be the global propagator, so one
//! propagator carries both traces and context-local fields. [`from_otel`]
//! turns an OpenTelemetry context it extracted into a context-local
//! [`Context`].
//!
//! Unlike the SDK's own `BaggagePropagator` (0.33), this one reads every
//! `baggage` header of a carrier (through `Extractor::get_all`), percent-encodes
//! `%` and `\` and every other byte outside `baggage-octet`, decodes invalid
//! UTF-8 to U+FFFD instead of dropping the member, keeps a value's `=` signs,
//! and writes members in a stable order.
//!
//! # Examples
//!
//! ```
//! use std::collections::HashMap;
//!
//! use context_local::opentelemetry::{from_otel, BaggagePropagator};
//! use context_local::ContextLocal;
//! use opentelemetry::baggage::BaggageExt;
//! use opentelemetry::propagation::TextMapPropagator;
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     #[context_local(baggage)]
//!     tenant: String,
//! }
//!
//! let propagator = BaggagePropagator::new();
//! let carrier = HashMap::from([("baggage".to_string(), "tenant=acme,region=eu".to_string())]);
//! let otel = propagator.extract_with_context(&opentelemetry::Context::new(), &carrier);
//! assert_eq!(otel.baggage().get("region").map(|v| v.as_str()), Some("eu"));
//!
//! let mut context = from_otel(&otel);
//! context.run(|| {
//!     assert_eq!(RequestContext::tenant().get().as_deref(), Some("acme"));
//!     let mut out = HashMap::new();
//!     propagator.inject_context(&opentelemetry::Context::new(), &mut out);
//!     assert_eq!(out["baggage"], "tenant=acme,region=eu");
//! });
//! ```

use std::sync::OnceLock;

use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};

use crate::baggage::{header_then, receive, Member, Received};
use crate::Context;

const BAGGAGE: &str = "baggage";

/// A W3C Baggage [`TextMapPropagator`] that carries context-local fields too.
///
/// - `inject_context(cx, injector)` sets one `baggage` field: the current
///   context-local context's members (as
///   [`baggage::to_header`](crate::baggage::to_header) renders them), then the
///   members of `cx`'s own `Baggage` whose keys were not written yet (those it
///   extracted in the order received, others by key), within the limits.
/// - `extract_with_context(cx, extractor)` returns `cx` with its `Baggage`
///   filled from every `baggage` value of the carrier, as the SDK's
///   propagator does; pass it to [`from_otel`] for the context-local side.
/// - `fields()` is `["baggage"]`.
#[derive(Clone, Debug, Default)]
pub struct BaggagePropagator {
    _private: (),
}

impl BaggagePropagator {
    /// The propagator.
    pub fn new() -> BaggagePropagator {
        BaggagePropagator { _private: () }
    }
}

/// The members an extraction received, kept in the OpenTelemetry context
/// beside its `Baggage` so that they go on byte for byte and in order.
#[derive(Debug)]
struct Extracted(Received);

impl TextMapPropagator for BaggagePropagator {
    fn inject_context(&self, cx: &opentelemetry::Context, injector: &mut dyn Injector) {
        if let Some(header) = header_then(&members_of(cx)) {
            injector.set(BAGGAGE, header);
        }
    }

    fn extract_with_context(&self, cx: &opentelemetry::Context, extractor: &dyn Extractor) -> opentelemetry::Context {
        let Some(values) = extractor.get_all(BAGGAGE) else {
            return cx.clone();
        };
        let received = Received::parse(values);
        let mut seen: Vec<&str> = Vec::new();
        let mut entries = Vec::new();
        for member in received.members() {
            if !seen.contains(&member.key()) {
                seen.push(member.key());
                entries.push(KeyValueMetadata::new(
                    member.key().to_owned(),
                    member.value().to_owned(),
                    member.properties(),
                ));
            }
        }
        cx.with_baggage(entries).with_value(Extracted(received))
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 1]> = OnceLock::new();
        FieldIter::new(FIELDS.get_or_init(|| [BAGGAGE.to_owned()]))
    }
}

/// A context-local [`Context`] holding the `Baggage` of an OpenTelemetry
/// context: the `#[context_local(baggage)]` fields its members set, and the
/// other members, kept for forwarding.
///
/// Members [`BaggagePropagator`] extracted and that are unchanged are kept
/// byte for byte and in the order received; others are written from their
/// key, value and metadata, ordered by key.
///
/// # Examples
///
/// ```
/// use context_local::opentelemetry::from_otel;
/// use context_local::ContextLocal;
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::KeyValue;
///
/// #[derive(ContextLocal)]
/// struct RequestContext {
///     #[context_local(baggage = "user.id")]
///     user: u64,
/// }
///
/// let otel = opentelemetry::Context::new().with_baggage([KeyValue::new("user.id", "7"), KeyValue::new("a b", "c")]);
/// let mut context = from_otel(&otel);
/// assert_eq!(context.run(|| RequestContext::user().get()), Some(7));
/// assert_eq!(context.run(context_local::baggage::to_header).as_deref(), Some("user.id=7"));
/// ```
pub fn from_otel(cx: &opentelemetry::Context) -> Context {
    let received = Received::from_members(members_of(cx));
    let mut context = Context::new();
    context.run(|| receive(received));
    context
}

/// The members of `cx`'s `Baggage`: those extracted and unchanged as
/// received, then the others by key. Entries whose key is not a token are
/// left out, and metadata that is not property syntax is dropped.
fn members_of(cx: &opentelemetry::Context) -> Vec<Member> {
    let baggage = cx.baggage();
    let mut members: Vec<Member> = Vec::with_capacity(baggage.len());
    if let Some(Extracted(received)) = cx.get::<Extracted>() {
        for member in received.members() {
            let unchanged = baggage.get_with_metadata(member.key()).is_some_and(|(value, metadata)| {
                value.as_str() == member.value() && metadata.as_str() == member.properties()
            });
            if unchanged && !members.iter().any(|known| known.key() == member.key()) {
                members.push(member.clone());
            }
        }
    }
    let mut others: Vec<_> =
        baggage.iter().filter(|(key, _)| !members.iter().any(|m| m.key() == key.as_str())).collect();
    others.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (key, (value, metadata)) in others {
        let built = Member::build(key.as_str(), value.as_str(), metadata.as_str())
            .or_else(|| Member::build(key.as_str(), value.as_str(), ""));
        members.extend(built);
    }
    members
}
