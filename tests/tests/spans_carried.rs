//! With the `tracing` feature, every helper that carries the context into a
//! child (tokio tasks, blocking calls, threads, rayon jobs) also carries the
//! `tracing` span current at the call: a line logged in the child names the
//! span and its fields, although the caller left the span before the child
//! ran.
//!
//! One global subscriber writes every line of this binary into a buffer
//! (children on pool threads need a global one); each test looks for its own
//! lines by a marker no other test logs.

#[path = "common/captured.rs"]
mod captured;

use captured::Captured;
use std::sync::mpsc;
use std::sync::OnceLock;

use context_local::rayon::ParallelIteratorExt as _;
use context_local::task::JoinSetExt as _;
use rayon::prelude::*;

fn captured() -> &'static Captured {
    static OUT: OnceLock<Captured> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("this binary's only global subscriber");
        out
    })
}

/// A span named `request` with field `id`, the global subscriber installed.
fn request_span(id: u32) -> tracing::Span {
    captured();
    tracing::info_span!("request", id)
}

/// Logs `marker` where it is called.
fn log(marker: &str) {
    tracing::info!("{marker}");
}

/// Asserts that `marker` was logged `times` times, each time inside the
/// span `request{id=..}`.
fn assert_logged_in_span(marker: &str, id: u32, times: usize) {
    let text = captured().text();
    let lines: Vec<&str> = text.lines().filter(|line| line.ends_with(&format!(" {marker}"))).collect();
    assert_eq!(lines.len(), times, "{marker}: {lines:?}");
    for line in lines {
        assert!(line.contains(&format!("request{{id={id}}}:")), "{marker} logged outside its span: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_spawn_carries_the_span_current_at_the_call() {
    let span = request_span(1);
    let child = span.in_scope(|| context_local::task::spawn(async { log("task::spawn child") }));
    child.await.expect("child");
    assert_logged_in_span("task::spawn child", 1, 1);
}

#[test]
fn task_spawn_local_carries_the_span() {
    let span = request_span(2);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, async {
        let child = span.in_scope(|| context_local::task::spawn_local(async { log("spawn_local child") }));
        child.await.expect("child");
    });
    assert_logged_in_span("spawn_local child", 2, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_spawn_blocking_carries_the_span() {
    let span = request_span(3);
    let child = span.in_scope(|| context_local::task::spawn_blocking(|| log("spawn_blocking child")));
    child.await.expect("child");
    assert_logged_in_span("spawn_blocking child", 3, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_blocking_carries_the_span_current_at_the_call_not_at_the_await() {
    let (at_call, at_await) = (request_span(4), request_span(40));
    let future = at_call.in_scope(|| context_local::task::run_blocking(|| log("run_blocking closure")));
    tracing::Instrument::instrument(future, at_await).await;
    assert_logged_in_span("run_blocking closure", 4, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_set_helpers_carry_the_span() {
    let span = request_span(5);
    let mut set = tokio::task::JoinSet::new();
    span.in_scope(|| {
        set.spawn_in_context(async { log("join set task") });
        set.spawn_blocking_in_context(|| log("join set blocking"));
    });
    while let Some(done) = set.join_next().await {
        done.expect("child");
    }
    assert_logged_in_span("join set task", 5, 1);
    assert_logged_in_span("join set blocking", 5, 1);
}

#[test]
fn thread_spawn_carries_the_span() {
    let span = request_span(6);
    let child = span.in_scope(|| context_local::thread::spawn(|| log("thread child")));
    child.join().expect("thread");
    assert_logged_in_span("thread child", 6, 1);
}

#[test]
fn rayon_spawn_carries_the_span() {
    let span = request_span(7);
    let (done, finished) = mpsc::channel();
    span.in_scope(|| {
        context_local::rayon::spawn(move || {
            log("rayon spawn job");
            done.send(()).expect("the test waits");
        });
    });
    finished.recv().expect("the job ran");
    assert_logged_in_span("rayon spawn job", 7, 1);
}

#[test]
fn rayon_join_carries_the_span_into_both_closures() {
    let span = request_span(8);
    span.in_scope(|| context_local::rayon::join(|| log("rayon join a"), || log("rayon join b")));
    assert_logged_in_span("rayon join a", 8, 1);
    assert_logged_in_span("rayon join b", 8, 1);
}

#[test]
fn rayon_scope_and_its_spawns_carry_the_span_current_where_each_was_made() {
    let (outer, inner) = (request_span(9), request_span(90));
    outer.in_scope(|| {
        context_local::rayon::scope(|scope| {
            log("rayon scope op");
            scope.spawn(|_| log("rayon scope job"));
        })
    });
    // A job spawned inside another span than the scope's gets that one.
    context_local::rayon::scope(|scope| inner.in_scope(|| scope.spawn(|_| log("rayon scope inner job"))));
    assert_logged_in_span("rayon scope op", 9, 1);
    assert_logged_in_span("rayon scope job", 9, 1);
    assert_logged_in_span("rayon scope inner job", 90, 1);
}

#[test]
fn rayon_install_carries_the_span() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let span = request_span(10);
    span.in_scope(|| context_local::rayon::install(&pool, || log("rayon install op")));
    assert_logged_in_span("rayon install op", 10, 1);
}

#[test]
fn rayon_iterator_adaptor_carries_the_span_current_where_it_was_made() {
    let span = request_span(11);
    let items = span.in_scope(|| (0..8u32).into_par_iter().in_current_context());
    let sum: u32 = items
        .map(|n| {
            log("rayon item");
            n
        })
        .reduce(
            || 0,
            |a, b| {
                log("rayon reduce");
                a + b
            },
        );
    assert_eq!(sum, 28);
    assert_logged_in_span("rayon item", 11, 8);
    let text = captured().text();
    let reduces: Vec<&str> = text.lines().filter(|line| line.ends_with(" rayon reduce")).collect();
    assert!(reduces.iter().all(|line| line.contains("request{id=11}:")), "{reduces:?}");
}
