//! Interop with OpenTelemetry's own propagators (opentelemetry_sdk 0.33), in
//! one test binary: headers the SDK writes are read by context-local and
//! headers context-local writes are read by the SDK, for the values the SDK
//! handles correctly. The `sdk_deviation_*` tests pin what the SDK gets wrong
//! against the W3C text, so a fixed SDK shows up here as a failing test.

use std::collections::HashSet;

use context_local::opentelemetry::{from_otel, BaggagePropagator};
use context_local::{baggage, Context, ContextLocal};
use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::{BaggagePropagator as SdkBaggagePropagator, TraceContextPropagator};

#[derive(ContextLocal)]
struct RequestContext {
    #[context_local(baggage)]
    tenant: String,
    #[context_local(baggage = "user.id")]
    user: u64,
}

/// A carrier that keeps every header line, in order, as HTTP does.
#[derive(Default, Debug)]
struct Headers(Vec<(String, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(name, _)| name != key);
        self.0.push((key.to_owned(), value));
    }
}

impl Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let all: Vec<&str> = self.0.iter().filter(|(name, _)| name == key).map(|(_, value)| value.as_str()).collect();
        (!all.is_empty()).then_some(all)
    }
}

impl Headers {
    fn of(lines: &[&str]) -> Headers {
        Headers(lines.iter().map(|line| ("baggage".to_owned(), (*line).to_owned())).collect())
    }

    fn baggage(&self) -> Vec<&str> {
        self.get_all("baggage").unwrap_or_default()
    }
}

/// Values the SDK encodes and decodes correctly: no `%`, no `\`, no `=`.
const SDK_SAFE: &[&str] =
    &["plain", "with space", "comma,separated", "semi;colon", "café 東京", "emoji 😀🚀", "\"quoted\""];

fn sdk_value(cx: &opentelemetry::Context, key: &str) -> Option<String> {
    cx.baggage().get(key).map(|value| value.as_str().to_owned())
}

#[test]
fn headers_the_sdk_writes_are_read_by_context_local() {
    for value in SDK_SAFE {
        let otel = opentelemetry::Context::new().with_baggage([
            KeyValue::new("tenant", *value),
            KeyValue::new("user.id", "7"),
            KeyValue::new("x", "y"),
        ]);
        let mut carrier = Headers::default();
        SdkBaggagePropagator::new().inject_context(&otel, &mut carrier);

        let mut context = baggage::extract(carrier.baggage());
        assert_eq!(context.run(|| RequestContext::tenant().get()).as_deref(), Some(*value), "{carrier:?}");
        assert_eq!(context.run(|| RequestContext::user().get()), Some(7));
        // Through our propagator and `from_otel` too.
        let extracted = BaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
        assert_eq!(sdk_value(&extracted, "tenant").as_deref(), Some(*value));
        let mut context = from_otel(&extracted);
        assert_eq!(context.run(|| RequestContext::tenant().get()).as_deref(), Some(*value));
        assert!(context.run(baggage::to_header).unwrap().ends_with(",x=y"));
    }
}

#[test]
fn headers_context_local_writes_are_read_by_the_sdk() {
    for value in SDK_SAFE.iter().chain(&["50%41", "back\\slash", "100%"]) {
        let mut carrier = Headers::default();
        Context::new().run(|| {
            RequestContext::tenant().set((*value).to_string());
            RequestContext::user().set(9);
            BaggagePropagator::new().inject_context(&opentelemetry::Context::new(), &mut carrier);
        });
        // `%` and `\` are encoded, so even these reach the SDK intact.
        let otel = SdkBaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
        assert_eq!(sdk_value(&otel, "tenant").as_deref(), Some(*value), "{carrier:?}");
        assert_eq!(sdk_value(&otel, "user.id").as_deref(), Some("9"));
    }
}

#[test]
fn otel_baggage_follows_context_local_members_once_each() {
    let otel = opentelemetry::Context::new().with_baggage([
        KeyValueMetadata::new("zeta", "1", "p=1"),
        KeyValueMetadata::new("tenant", "from-otel", ""),
        KeyValueMetadata::new("alpha", "a b", ""),
    ]);
    let mut carrier = Headers::default();
    Context::new().run(|| {
        RequestContext::tenant().set("from-context".into());
        BaggagePropagator::new().inject_context(&otel, &mut carrier);
    });
    assert_eq!(carrier.baggage(), ["tenant=from-context,alpha=a%20b,zeta=1;p=1"]);
}

#[test]
fn extraction_keeps_members_byte_for_byte_for_from_otel() {
    let carrier = Headers::of(&["tenant=acme, b = 2 ;p", "user.id=5,a=1"]);
    let otel = BaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!(otel.baggage().len(), 4, "every header is read");
    assert_eq!(otel.baggage().get_with_metadata("b").map(|(v, m)| (v.as_str(), m.as_str())), Some(("2", "p")));
    let mut context = from_otel(&otel);
    assert_eq!(context.run(baggage::to_header).as_deref(), Some("tenant=acme,user.id=5,b = 2 ;p,a=1"));
    // Inject straight from the OTel context: the same bytes, in the order received.
    let mut out = Headers::default();
    Context::new().run(|| BaggagePropagator::new().inject_context(&otel, &mut out));
    assert_eq!(out.baggage(), ["tenant=acme,b = 2 ;p,user.id=5,a=1"]);
}

#[test]
fn composes_with_trace_context_in_the_global_propagator() {
    let composite = TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]);
    let fields: HashSet<&str> = composite.fields().collect();
    assert_eq!(fields, HashSet::from(["traceparent", "tracestate", "baggage"]));
    assert_eq!(BaggagePropagator::new().fields().collect::<Vec<_>>(), ["baggage"]);
    opentelemetry::global::set_text_map_propagator(composite);

    let span = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let otel = opentelemetry::Context::new().with_remote_span_context(span.clone());
    let mut carrier = Headers::default();
    Context::new().run(|| {
        RequestContext::user().set(3);
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&otel, &mut carrier));
    });
    assert_eq!(carrier.get("traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert_eq!(carrier.baggage(), ["user.id=3"]);

    let extracted = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    assert_eq!(extracted.span().span_context().trace_id(), span.trace_id());
    assert_eq!(from_otel(&extracted).run(|| RequestContext::user().get()), Some(3));
}

// --- What the SDK's BaggagePropagator (0.33) gets wrong, each against the
// clause it breaks. context-local's propagator is checked on the same input.

// § value: "The percent code point (U+0025) MUST be percent-encoded." The SDK
// writes `50%41` as is, so every reader (the SDK included) decodes `50A`.
#[test]
fn sdk_deviation_percent_is_not_encoded() {
    let otel = opentelemetry::Context::new().with_baggage([KeyValue::new("k", "50%41")]);
    let mut carrier = Headers::default();
    SdkBaggagePropagator::new().inject_context(&otel, &mut carrier);
    assert_eq!(carrier.baggage(), ["k=50%41"]);
    let back = SdkBaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!(sdk_value(&back, "k").as_deref(), Some("50A"), "the SDK's own round trip loses the value");

    let mut ours = Headers::default();
    Context::new().run(|| BaggagePropagator::new().inject_context(&otel, &mut ours));
    assert_eq!(ours.baggage(), ["k=50%2541"]);
}

// § Definition: baggage-octet excludes backslash (%x5C), so it MUST be
// percent-encoded. The SDK writes it raw: the member is invalid for a strict
// reader, which skips it.
#[test]
fn sdk_deviation_backslash_is_not_encoded() {
    let otel = opentelemetry::Context::new().with_baggage([KeyValue::new("k", "a\\b"), KeyValue::new("ok", "1")]);
    let mut carrier = Headers::default();
    SdkBaggagePropagator::new().inject_context(&otel, &mut carrier);
    assert!(carrier.baggage()[0].contains("k=a\\b"), "{carrier:?}");
    let ours = BaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!(sdk_value(&ours, "k"), None, "an invalid member is skipped");
    assert_eq!(sdk_value(&ours, "ok").as_deref(), Some("1"), "without losing the valid ones");
}

// § Header Name: "Multiple baggage headers are allowed." The SDK reads only
// the first (`Extractor::get`).
#[test]
fn sdk_deviation_only_the_first_header_is_read() {
    let carrier = Headers::of(&["a=1", "b=2"]);
    let sdk = SdkBaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!((sdk_value(&sdk, "a").as_deref(), sdk_value(&sdk, "b")), (Some("1"), None));
    let ours = BaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!((sdk_value(&ours, "a").as_deref(), sdk_value(&ours, "b").as_deref()), (Some("1"), Some("2")));
}

// § value: "value MAY contain any number of the equal sign (=) characters.
// Parsers MUST NOT assume that the equal sign is only used to separate key
// and value." The SDK keeps only what is before the second `=`.
#[test]
fn sdk_deviation_equal_signs_in_a_value_are_cut() {
    let carrier = Headers::of(&["k=a=b"]);
    let sdk = SdkBaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!(sdk_value(&sdk, "k").as_deref(), Some("a"));
    let ours = BaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!(sdk_value(&ours, "k").as_deref(), Some("a=b"));
}

// § value: "percent-encoded octet sequences that do not match the UTF-8
// encoding scheme MUST be replaced with the replacement code point (U+FFFD)."
// The SDK drops the member instead.
#[test]
fn sdk_deviation_invalid_utf8_drops_the_member() {
    let carrier = Headers::of(&["k=a%FFb"]);
    let sdk = SdkBaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!(sdk_value(&sdk, "k"), None);
    let ours = BaggagePropagator::new().extract_with_context(&opentelemetry::Context::new(), &carrier);
    assert_eq!(sdk_value(&ours, "k").as_deref(), Some("a\u{FFFD}b"));
}

// Stable output: the SDK writes members in `HashMap` order, which changes from
// one `Baggage` to the next; context-local writes the same bytes every time.
#[test]
fn sdk_deviation_member_order_changes_between_runs() {
    let entries: Vec<KeyValue> = (0..10).map(|i| KeyValue::new(format!("k{i}"), "v")).collect();
    let mut sdk_orders = HashSet::new();
    let mut our_orders = HashSet::new();
    for _ in 0..20 {
        let otel = opentelemetry::Context::new().with_baggage(entries.clone());
        let mut carrier = Headers::default();
        SdkBaggagePropagator::new().inject_context(&otel, &mut carrier);
        sdk_orders.insert(carrier.baggage()[0].to_owned());
        let mut ours = Headers::default();
        Context::new().run(|| BaggagePropagator::new().inject_context(&otel, &mut ours));
        our_orders.insert(ours.baggage()[0].to_owned());
    }
    assert!(sdk_orders.len() > 1, "the SDK wrote one order 20 times: {sdk_orders:?}");
    assert_eq!(our_orders.len(), 1, "{our_orders:?}");
}
