//! The integrations composed with what they wrap: a response body dropped by
//! the server mid-stream, futures dropped by `select!` or by an abort, whole-
//! struct reads with `Clone` impls that panic or read siblings, rayon
//! closures downstream of `in_current_context()`, and a logged field whose
//! `Display` logs.

mod common;

#[path = "common/captured.rs"]
mod captured;
#[path = "common/child.rs"]
mod child;

use captured::Captured;
use std::convert::Infallible;
use std::panic::catch_unwind;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use context_local::rayon::ParallelIteratorExt as _;
use context_local::task::JoinSetExt as _;
use context_local::tower::ContextLayer;
use context_local::{AccessError, Context, ContextLocal, FutureExt as _};
use http_body::Frame;
use http_body_util::BodyExt as _;
use rayon::prelude::*;
use tower::ServiceExt as _;

type Seen = Arc<Mutex<Vec<Result<String, AccessError>>>>;

// --- 6a. the response body is dropped inside the request's context ----------

#[derive(ContextLocal)]
struct Web {
    request_id: String,
}

/// An endless response body: every frame carries the request id it reads;
/// its destructor reports what it reads.
struct Endless {
    dropped: tokio::sync::mpsc::UnboundedSender<Result<String, AccessError>>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let id = Web::request_id().get().unwrap_or_else(|| "none".into());
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("{id};").repeat(64))))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        let _ = self.dropped.send(Web::request_id().try_get());
    }
}

// Before the fix: `ContextBody` has no destructor of its own; hyper's connection task
// (a plain tokio task) drops the body with no context installed, and its
// `Drop` reads `Err(Unscoped)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_dropped_by_the_server_after_a_client_disconnect_is_dropped_in_the_request_context() {
    let (dropped, mut dropped_rx) = tokio::sync::mpsc::unbounded_channel();
    let router = axum::Router::new()
        .route("/endless", axum::routing::get(move || async move { Body::new(Endless { dropped }) }))
        .layer(ContextLayer::new().request_id(Web::request_id()));
    let addr = common::serve(router).await;
    let client = common::client();
    let request = hyper::Request::get(format!("http://{addr}/endless"))
        .header("x-request-id", "mid-body")
        .body(http_body_util::Empty::new())
        .expect("request");
    let response = client.request(request).await.expect("response");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first frame").expect("frame").into_data().expect("data");
    assert!(first.starts_with(b"mid-body;"), "frames are produced in the request's context");
    // Disconnect mid-body: the server fails to write and drops the body.
    drop(body);
    drop(client);
    let seen = tokio::time::timeout(Duration::from_secs(60), dropped_rx.recv())
        .await
        .expect("the server drops the body once the client is gone")
        .expect("one report");
    assert_eq!(seen, Ok("mid-body".to_string()), "the body's Drop runs in the request's context");
}

// Before the fix: the body is dropped in the caller's context (here the test's root
// context, where the field is unset: `Err(Unset)`).
#[tokio::test]
async fn a_response_body_dropped_by_the_caller_is_dropped_in_the_request_context() {
    let (dropped, mut dropped_rx) = tokio::sync::mpsc::unbounded_channel();
    let service = tower::Layer::layer(
        &ContextLayer::new().request_id(Web::request_id()),
        tower::service_fn(move |_: Request<Body>| {
            let dropped = dropped.clone();
            async move { Ok::<_, Infallible>(axum::response::Response::new(Endless { dropped })) }
        }),
    );
    let request = Request::builder().header("x-request-id", "oneshot").body(Body::empty()).expect("request");
    let response = service.oneshot(request).await.expect("response");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first frame").expect("frame").into_data().expect("data");
    assert!(first.starts_with(b"oneshot;"));
    drop(body);
    assert_eq!(
        dropped_rx.recv().await,
        Some(Ok("oneshot".to_string())),
        "the body's Drop runs in the request's context"
    );
}

// --- 6b. a context's own values are dropped inside it ----------------------

#[derive(ContextLocal)]
struct Job {
    name: String,
    #[context_local(no_inherit)]
    probe: Probe,
}

/// Reports, when dropped, the `Job::name` it sees.
struct Probe(Seen);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(Job::name().try_get());
    }
}

// Before the fix: `InContext`'s destructor installs the context only while dropping
// the inner future; the context's own values are dropped afterwards, outside
// it (`Err(Unset)` in the test's root context, `Err(Unscoped)` on a worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_an_in_context_dropped_by_select_or_an_abort_are_dropped_inside_it() {
    // Dropped by `select!`.
    let seen = Seen::default();
    let (ready, ready_rx) = tokio::sync::oneshot::channel();
    let loser = {
        let seen = seen.clone();
        async move {
            Job::name().set("selected".into());
            Job::probe().set(Probe(seen));
            ready.send(()).expect("the select waits");
            std::future::pending::<()>().await;
        }
        .in_new_context()
    };
    tokio::select! {
        biased;
        () = loser => unreachable!("pending forever"),
        _ = ready_rx => {}
    }
    assert_eq!(*seen.lock().unwrap(), [Ok("selected".to_string())], "dropped by select!, inside its context");

    // An aborted `JoinSet` task spawned in a context.
    let seen = Seen::default();
    let (ready, ready_rx) = tokio::sync::oneshot::channel();
    let mut set = tokio::task::JoinSet::new();
    let mut outer = Context::new();
    outer.run(|| {
        Job::name().set("joined".into());
        let seen = seen.clone();
        set.spawn_in_context(async move {
            Job::probe().set(Probe(seen));
            ready.send(()).expect("the test waits");
            std::future::pending::<()>().await;
        });
    });
    ready_rx.await.expect("the task started");
    set.abort_all();
    let ended = set.join_next().await.expect("one task").expect_err("aborted");
    assert!(ended.is_cancelled());
    assert_eq!(*seen.lock().unwrap(), [Ok("joined".to_string())], "dropped by the abort, inside its context");
    assert_eq!(outer.run(|| Job::name().get()).as_deref(), Some("joined"));
}

// --- 6c. `S::current()` with `Clone` impls that panic or read siblings ------

static FRAGILE_DROPS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Fragile;

impl Clone for Fragile {
    fn clone(&self) -> Fragile {
        panic!("Fragile cannot be cloned");
    }
}

impl Drop for Fragile {
    fn drop(&mut self) {
        FRAGILE_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(ContextLocal, Clone)]
struct Snap {
    id: u32,
    fragile: Fragile,
}

/// Records, when cloned, the sibling `Siblings::name` it sees.
struct Reader(Seen);

impl Clone for Reader {
    fn clone(&self) -> Reader {
        self.0.lock().unwrap().push(Siblings::name().try_get());
        Reader(self.0.clone())
    }
}

#[derive(ContextLocal, Clone)]
struct Siblings {
    name: String,
    reader: Reader,
}

// Before the fix: `current()` moves every field out, clones the struct and puts the
// fields back; a panicking `Clone` drops the moved-out values (both fields end
// unset), and a field's `Clone` sees its siblings unset (`Err(Unset)`).
#[test]
fn current_keeps_every_field_when_a_clone_panics_and_clones_see_their_siblings() {
    Context::new().run(|| {
        Snap::id().set(1);
        Snap::fragile().set(Fragile);
        assert!(catch_unwind(Snap::current).is_err(), "the field's Clone panics");
        assert_eq!(FRAGILE_DROPS.load(Ordering::SeqCst), 0, "the stored value was dropped");
        assert!(Snap::id().is_set() && Snap::fragile().is_set(), "every field is still set");
        assert_eq!(Snap::id().get(), Some(1));

        let seen = Seen::default();
        Siblings::name().set("sibling".into());
        Siblings::reader().set(Reader(seen.clone()));
        let current = Siblings::current().expect("both fields are set");
        assert_eq!(current.name, "sibling");
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "Reader::clone ran");
        assert!(seen.iter().all(|s| s.as_deref() == Ok("sibling")), "a field's Clone sees its sibling: {seen:?}");
    });
}

// --- 6d. rayon: every downstream closure in the caller's context ------------

#[derive(ContextLocal)]
struct Item {
    value: u32,
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool")
}

// Before the fix: a folder runs a whole batch of items in one `run` of one context, so
// an item sees the previous item's write (96 of 100 here); a `reduce` closure
// combining two halves (a few of the calls), and every `fold` identity, run
// outside the context (a worker's root context: `None`).
#[test]
fn rayon_items_start_from_the_callers_values_and_reduce_and_fold_closures_see_them() {
    let pool = pool();
    Context::new().run(|| {
        Item::value().set(1000);
        // Adaptors made here, on the caller's thread, run on the pool's workers.
        let items = (0..100u32).into_par_iter().in_current_context();
        let results: Vec<(u32, Option<u32>, Option<u32>)> = pool.install(move || {
            items
                .map(|i| {
                    let before = Item::value().get();
                    Item::value().set(i);
                    (i, before, Item::value().get())
                })
                .collect()
        });
        assert_eq!(results.len(), 100);
        let leaked: Vec<_> = results.iter().filter(|(_, before, _)| *before != Some(1000)).collect();
        assert!(
            leaked.is_empty(),
            "{} of 100 items did not start from the caller's value, e.g. (item, before, after) {:?}",
            leaked.len(),
            &leaked[..leaked.len().min(3)]
        );
        assert!(results.iter().all(|(i, _, after)| *after == Some(*i)), "each item sees its own write");

        let reduced = Mutex::new(Vec::new());
        let items = (0..1000u64).into_par_iter().in_current_context();
        let sum = pool.install(|| {
            items.reduce(
                || 0,
                |a, b| {
                    reduced.lock().unwrap().push(Item::value().get());
                    a + b
                },
            )
        });
        assert_eq!(sum, 499_500);
        let reduced = reduced.into_inner().unwrap();
        let outside = reduced.iter().filter(|v| **v != Some(1000)).count();
        assert_eq!(outside, 0, "of {} reduce calls, {outside} ran outside the caller's context", reduced.len());

        let (identities, folds) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
        let items = (0..1000u64).into_par_iter().in_current_context();
        let sum: u64 = pool.install(|| {
            items
                .fold(
                    || {
                        identities.lock().unwrap().push(Item::value().get());
                        0
                    },
                    |acc, i| {
                        folds.lock().unwrap().push(Item::value().get());
                        acc + i
                    },
                )
                .sum()
        });
        assert_eq!(sum, 499_500);
        let (identities, folds) = (identities.into_inner().unwrap(), folds.into_inner().unwrap());
        assert_eq!(folds.len(), 1000);
        let outside = folds.iter().filter(|v| **v != Some(1000)).count();
        assert_eq!(outside, 0, "of 1000 fold calls, {outside} ran outside the caller's context");
        let outside = identities.iter().filter(|v| **v != Some(1000)).count();
        assert_eq!(outside, 0, "of {} fold identities, {outside} ran outside the caller's context", identities.len());
    });
}

// --- 6e. a logged field whose Display logs --------------------------------

#[derive(ContextLocal)]
struct Chatty {
    #[context_local(log)]
    talker: Talker,
}

#[derive(Clone)]
struct Talker;

impl std::fmt::Display for Talker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        tracing::info!("formatting the talker");
        f.write_str("talker")
    }
}

// Before the fix: formatting the line renders the field, whose `Display` logs, whose
// line renders the field again: unbounded recursion, a stack overflow that
// kills the process. A global subscriber is needed (a scoped one drops nested
// events by itself), so this runs in a child process.
#[test]
fn a_logged_field_whose_display_logs_does_not_recurse() {
    child::run_isolated(
        "a_logged_field_whose_display_logs_does_not_recurse",
        || {
            let out = Captured::default();
            let writer = out.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .event_format(context_local::tracing::ContextFields::new(
                    tracing_subscriber::fmt::format().without_time().with_target(false),
                ))
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the child's only subscriber");
            Context::new().run(|| {
                Chatty::talker().set(Talker);
                tracing::info!("outer");
            });
            let text = out.text();
            for line in text.lines() {
                child::report(&format!("LINE:{line}"));
            }
            child::report(&format!("lines={}", text.lines().count()));
        },
        &["LINE: INFO formatting the talker", "LINE: INFO outer talker=talker", "lines=2"],
    );
}
