//! The README's excerpts (attributes, tower, tracing, log, rayon, tokio),
//! each word for word inside code that compiles (`tests/examples.rs` checks
//! that every rust block of the README appears in a compiled file). The
//! surrounding code supplies what an excerpt leaves out; the functions are
//! compiled, and run where running them says something.

#![allow(dead_code, unused_variables, clippy::all)]

/// The attribute table.
#[rustfmt::skip]
mod attributes {
use context_local::ContextLocal;

struct Connection;

impl RequestContext {
    fn fresh() -> RequestContext {
        RequestContext { request_id: "new".into(), trail: Vec::new(), conn: None, user: None }
    }
}

#[derive(ContextLocal)]
#[context_local(scope = "task")]                 // "task" (default) or "thread"
#[context_local(init = RequestContext::fresh)]   // fn() -> Self, once per context; bare `init` = Default
struct RequestContext {
    request_id: String,
    #[context_local(default = Vec::new())]      // used whenever the field is unset
    trail: Vec<String>,
    #[context_local(no_inherit)]                 // children start without it
    conn: Option<Connection>,
    #[context_local(rename = "user_id")]         // accessor name
    user: Option<u64>,
}
}

/// `tower`: the layer on an axum router.
#[rustfmt::skip]
mod tower_layer {
use context_local::ContextLocal;

#[derive(ContextLocal)]
struct RequestContext {
    request_id: String,
    path: String,
}

async fn handler() -> &'static str {
    "ok"
}

fn app() -> axum::Router {
use context_local::tower::ContextLayer;

let app = axum::Router::new()
    .route("/", axum::routing::get(handler))
    .layer(
        ContextLayer::new()                                // fresh, empty context per request
            .request_id(RequestContext::request_id())      // the `x-request-id` header
            .on_request(|req: &axum::http::Request<axum::body::Body>| {
                RequestContext::path().set(req.uri().path().to_string());
            }),
    );
// To generate missing ids, add any tower-http version's
// `.layer(SetRequestIdLayer::x_request_id(..))` after it (outside).
app
}
}

/// `tracing`: both subscriber set-ups (each would be installed once, at
/// start-up).
#[rustfmt::skip]
mod tracing_fields {
use context_local::ContextLocal;

fn set_up() {
#[derive(ContextLocal)]
struct RequestContext {
    #[context_local(log)]            // Display; `log = "debug"` for Debug
    request_id: String,
}

tracing_subscriber::fmt()
    .event_format(context_local::tracing::ContextFields::new(tracing_subscriber::fmt::format()))
    .init();
// INFO app: charging the card request_id=req-7

tracing_subscriber::fmt()
    .json()
    .event_format(context_local::tracing::ContextFields::new(
        tracing_subscriber::fmt::format().json().flatten_event(true),
    ))
    .init();
// {"timestamp":"..","level":"INFO","message":"charging the card","target":"app","request_id":"req-7"}
}
}

/// `log`: a `ContextLogger` around env_logger.
#[rustfmt::skip]
mod log_fields {
fn set_up() -> Result<(), log::SetLoggerError> {
context_local::log::ContextLogger::new(env_logger::Logger::from_default_env())
    .install(log::LevelFilter::Info)?;
// each record gets request_id=... after its own key-values
Ok(())
}
}

/// `rayon`: the helpers.
#[rustfmt::skip]
mod rayon_jobs {
fn price(order: &u64) -> u64 {
    order * 2
}

fn left() -> u64 {
    1
}

fn right() -> u64 {
    2
}

fn run() -> u64 {
    3
}

fn work() {}

fn background() {}

fn all(orders: Vec<u64>, pool: rayon::ThreadPool) -> (Vec<u64>, u64, u64, u64) {
use context_local::rayon::ParallelIteratorExt;
use rayon::prelude::*;

let totals: Vec<u64> = orders.par_iter().in_current_context().map(|o| price(o)).collect();
let (a, b) = context_local::rayon::join(|| left(), || right());
context_local::rayon::scope(|s| s.spawn(|_| work()));
let out = context_local::rayon::install(&pool, || run());
context_local::rayon::spawn(|| background());
(totals, a, b, out)
}

#[test]
fn the_rayon_excerpt_runs() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    assert_eq!(all(vec![1, 2], pool), (vec![2, 4], 1, 2, 3));
}
}

/// tokio: `JoinSet` and `Stream`.
#[rustfmt::skip]
mod tokio_extras {
use context_local::ContextLocal;

#[derive(ContextLocal)]
struct RequestContext {
    user: u64,
}

fn spawn_all(stream: futures::stream::Iter<std::vec::IntoIter<u8>>) {
use context_local::task::JoinSetExt;
use context_local::StreamExt as _;

let mut set = tokio::task::JoinSet::new();
set.spawn_in_context(async { RequestContext::user().get() });
set.spawn_blocking_in_context(|| RequestContext::user().get());

let lines = stream.in_current_context(); // each poll_next runs in the context
}
}
