//! Prints every ratio the README's *Performance* section targets, from the estimates criterion saved in
//! the last `cargo bench -p benches` run (every bench target: `peers`, `memory`, `baggage`): one line each, `name: ratio (target)`.
//!
//! Run: `cargo run -p benches --release --bin compare`.

use benches::{median_ns, memory_report};

/// How a ratio is computed from saved medians.
enum Ratio {
    /// `a / b`.
    Plain((&'static str, &'static str), (&'static str, &'static str)),
    /// `(a - base) / (b - base)`: overhead over a shared baseline.
    Overhead((&'static str, &'static str), (&'static str, &'static str), (&'static str, &'static str)),
    /// Bytes per pending task, from the memory bench's report.
    Memory(&'static str, &'static str),
    /// `(peer + times × check) / peer`, the peer taken over `base` if there
    /// is one: the lowest ratio an operation that does the peer's work plus
    /// `times` owner checks can reach.
    Floor { peer: (&'static str, &'static str), base: Option<(&'static str, &'static str)>, times: f64 },
}

/// One owner check: which task is running (`tokio::task::try_id`).
const CHECK: (&str, &str) = ("get_u64", "tokio_try_id");

/// Rows reported without a target: what a faster read costs elsewhere, and
/// the floors the owner check puts under three targets.
const REPORTED: [(&str, Ratio); 7] = [
    (
        "task-scope u64 get / tokio::task::try_id() alone",
        Ratio::Plain(("get_u64", "context_local_task"), ("get_u64", "tokio_try_id")),
    ),
    (
        "floor of task-scope get / Cell get: tokio::task::try_id() alone / thread_local! Cell get",
        Ratio::Plain(("get_u64", "tokio_try_id"), ("get_u64", "thread_local_cell")),
    ),
    (
        "floor of with(len) / RefCell with_borrow(len): (with_borrow(len) + try_id) / with_borrow(len)",
        Ratio::Floor { peer: ("string", "refcell_with_borrow_len"), base: None, times: 1.0 },
    ),
    (
        "floor of per-poll in_context / task_local: (task_local poll + try_id) / task_local poll",
        Ratio::Floor { peer: ("poll", "task_local_scope"), base: Some(("poll", "bare")), times: POLLS },
    ),
    (
        "thread-scope u64 get / the thread_local crate's get",
        Ratio::Plain(("get_u64", "context_local_thread"), ("get_u64", "thread_local_crate")),
    ),
    (
        "per-switch: empty Context::run / task_local sync_scope",
        Ratio::Plain(("switch", "context_local_run"), ("switch", "task_local_sync_scope")),
    ),
    (
        "per-switch: Context::run with two cached reads / empty Context::run",
        Ratio::Plain(("switch", "context_local_run_after_reads"), ("switch", "context_local_run")),
    ),
];

const RATIOS: [(&str, Ratio, f64); 16] = [
    (
        "task-scope u64 get / thread_local! Cell get",
        Ratio::Plain(("get_u64", "context_local_task"), ("get_u64", "thread_local_cell")),
        4.0,
    ),
    (
        "thread-scope u64 get / thread_local! Cell get",
        Ratio::Plain(("get_u64", "context_local_thread"), ("get_u64", "thread_local_cell")),
        2.0,
    ),
    (
        "task-scope u64 get / opentelemetry Context::current().get",
        Ratio::Plain(("get_u64", "context_local_task"), ("get_u64", "opentelemetry")),
        0.25,
    ),
    (
        "with(len) on String / RefCell<String> with_borrow(len)",
        Ratio::Plain(("string", "context_local_with_len"), ("string", "refcell_with_borrow_len")),
        4.0,
    ),
    ("set u64 / Cell::set", Ratio::Plain(("write", "context_local_set_u64"), ("write", "cell_set")), 8.0),
    (
        "update push on Vec<u64> / RefCell with_borrow_mut push",
        Ratio::Plain(("write", "context_local_update_push"), ("write", "refcell_with_borrow_mut_push")),
        4.0,
    ),
    (
        "Context::current(), 64 fields / 1 field",
        Ratio::Plain(("snapshot", "current_64"), ("snapshot", "current_1")),
        1.2,
    ),
    (
        "first write after snapshot, 64 fields / 8 fields",
        Ratio::Plain(("first_write", "context_local_64"), ("first_write", "context_local_8")),
        2.0,
    ),
    (
        "first write after snapshot, 64 fields / Arc::make_mut of 64 slots",
        Ratio::Plain(("first_write", "context_local_64"), ("first_write", "arc_make_mut_64")),
        0.25,
    ),
    (
        "per-poll overhead of in_context / task_local scope",
        Ratio::Overhead(("poll", "in_context"), ("poll", "task_local_scope"), ("poll", "bare")),
        1.0,
    ),
    (
        "task::spawn / tokio::spawn + task_local scope",
        Ratio::Plain(("spawn", "context_local"), ("spawn", "tokio_task_local")),
        1.2,
    ),
    ("bytes per pending task / with task_local", Ratio::Memory("context_local", "task_local"), 1.25),
    (
        "baggage::to_header, 4 members / OTel SDK BaggagePropagator inject",
        Ratio::Plain(("baggage_inject", "context_local_4"), ("baggage_inject", "otel_sdk_4")),
        1.0,
    ),
    (
        "baggage::to_header, 64 members / OTel SDK BaggagePropagator inject",
        Ratio::Plain(("baggage_inject", "context_local_64"), ("baggage_inject", "otel_sdk_64")),
        1.0,
    ),
    (
        "baggage::extract, 4 members / OTel SDK BaggagePropagator extract",
        Ratio::Plain(("baggage_extract", "context_local_4"), ("baggage_extract", "otel_sdk_4")),
        1.0,
    ),
    (
        "baggage::extract, 64 members / OTel SDK BaggagePropagator extract",
        Ratio::Plain(("baggage_extract", "context_local_64"), ("baggage_extract", "otel_sdk_64")),
        1.0,
    ),
];

/// Polls per `poll` bench iteration (`peers.rs`: 100 pending, then ready);
/// an `in_context` poll checks the owner once.
const POLLS: f64 = 101.0;

fn median((group, bench): (&str, &str)) -> Result<f64, String> {
    median_ns(group, bench)
}

fn bytes_per_task(variant: &str) -> Result<f64, String> {
    let path = memory_report();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (run `cargo bench -p benches --bench memory` first)", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    json[variant]["bytes_per_task"].as_f64().ok_or_else(|| format!("{}: no {variant}.bytes_per_task", path.display()))
}

fn compute(ratio: &Ratio) -> Result<f64, String> {
    match ratio {
        Ratio::Plain(a, b) => Ok(median(*a)? / median(*b)?),
        Ratio::Overhead(a, b, base) => {
            let base = median(*base)?;
            Ok((median(*a)? - base) / (median(*b)? - base))
        }
        Ratio::Memory(a, b) => Ok(bytes_per_task(a)? / bytes_per_task(b)?),
        Ratio::Floor { peer, base, times } => {
            let peer = median(*peer)? - base.map_or(Ok(0.0), median)?;
            Ok((peer + times * median(CHECK)?) / peer)
        }
    }
}

fn main() {
    let mut missed = 0;
    for (name, ratio, target) in &RATIOS {
        match compute(ratio) {
            Ok(value) => {
                let verdict = if value <= *target { "met" } else { "MISSED" };
                if value > *target {
                    missed += 1;
                }
                println!("{name}: {value:.2} (target <= {target}) {verdict}");
            }
            Err(why) => {
                missed += 1;
                println!("{name}: no figure: {why}");
            }
        }
    }
    println!("{} of {} targets met", RATIOS.len() - missed, RATIOS.len());
    for (name, ratio) in &REPORTED {
        match compute(ratio) {
            Ok(value) => println!("{name}: {value:.2} (reported)"),
            Err(why) => println!("{name}: no figure: {why}"),
        }
    }
}
