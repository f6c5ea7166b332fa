//! W3C Baggage, context-local next to OpenTelemetry's SDK propagator in one
//! run: rendering a context's members as a `baggage` header, and reading one
//! back, with 4 and with 64 members (2 of them context-local fields, the rest
//! members forwarded as received; the SDK holds the same members in its
//! `Baggage`).
//!
//! Run: `cargo bench -p benches --bench baggage`, then
//! `cargo run -p benches --release --bin compare`.

use std::collections::HashMap;
use std::hint::black_box;

use context_local::opentelemetry::BaggagePropagator;
use context_local::{baggage, ContextLocal};
use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::BaggagePropagator as SdkBaggagePropagator;

#[derive(ContextLocal)]
struct Request {
    #[context_local(baggage)]
    tenant: String,
    #[context_local(baggage = "user.id")]
    user: u64,
}

/// A header with `members` members: the two fields, then plain ones with
/// values that need some encoding.
fn header(members: usize) -> String {
    let mut parts = vec!["tenant=acme%20corp".to_string(), "user.id=42".to_string()];
    parts.extend((2..members).map(|i| format!("member{i}=value%20{i}")));
    parts.join(",")
}

fn otel_context(members: usize) -> opentelemetry::Context {
    let mut entries = vec![KeyValue::new("tenant", "acme corp"), KeyValue::new("user.id", "42")];
    entries.extend((2..members).map(|i| KeyValue::new(format!("member{i}"), format!("value {i}"))));
    opentelemetry::Context::new().with_baggage(entries)
}

fn to_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("baggage_inject");
    for members in [4, 64] {
        let mut context = baggage::extract([header(members).as_str()]);
        context.run(|| assert_eq!(baggage::to_header(), Some(header(members))));
        group.bench_function(format!("context_local_{members}"), |b| {
            context.run(|| b.iter(|| black_box(baggage::to_header())));
        });
        let otel = otel_context(members);
        let sdk = SdkBaggagePropagator::new();
        group.bench_function(format!("otel_sdk_{members}"), |b| {
            b.iter(|| {
                let mut carrier = HashMap::new();
                sdk.inject_context(&otel, &mut carrier);
                black_box(carrier)
            });
        });
    }
    group.finish();
}

fn extract(c: &mut Criterion) {
    let mut group = c.benchmark_group("baggage_extract");
    for members in [4, 64] {
        let text = header(members);
        group.bench_function(format!("context_local_{members}"), |b| {
            b.iter(|| black_box(baggage::extract([black_box(text.as_str())])));
        });
        let carrier = HashMap::from([("baggage".to_string(), text.clone())]);
        let sdk = SdkBaggagePropagator::new();
        group.bench_function(format!("otel_sdk_{members}"), |b| {
            b.iter(|| black_box(sdk.extract_with_context(&opentelemetry::Context::new(), &carrier)));
        });
        let ours = BaggagePropagator::new();
        group.bench_function(format!("context_local_propagator_{members}"), |b| {
            b.iter(|| black_box(ours.extract_with_context(&opentelemetry::Context::new(), &carrier)));
        });
    }
    group.finish();
}

criterion_group!(benches, to_header, extract);
criterion_main!(benches);
