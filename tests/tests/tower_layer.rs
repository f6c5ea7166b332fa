//! `ContextLayer` behind a real axum server on a loopback port, hit by a real
//! HTTP client: each request's values reach the handler, its children, its
//! blocking calls and every frame of a streamed body, and no other request.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use context_local::tower::ContextLayer;
use context_local::{ContextLocal, FutureExt as _};
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, RequestId, SetRequestIdLayer};

#[derive(ContextLocal)]
struct RequestContext {
    request_id: String,
    #[context_local(default = 0)]
    hooks: u32,
}

/// Reads the id a few calls down, as library code would.
fn deep_read() -> String {
    fn level_two() -> String {
        RequestContext::request_id().get().unwrap_or_else(|| "none".into())
    }
    fn level_one() -> String {
        level_two()
    }
    level_one()
}

async fn handler() -> String {
    tokio::task::yield_now().await;
    let child = context_local::task::spawn(async {
        tokio::task::yield_now().await;
        deep_read()
    })
    .await
    .expect("child");
    let blocking = context_local::task::run_blocking(deep_read).await;
    format!("{}|{}|{}|{}", deep_read(), child, blocking, RequestContext::hooks().get().unwrap_or(0))
}

/// A streamed body whose every chunk reads the id when it is produced.
async fn stream() -> Body {
    let chunks = futures::stream::unfold(0, |n| async move {
        if n == 3 {
            return None;
        }
        tokio::task::yield_now().await;
        Some((Ok::<_, Infallible>(Bytes::from(format!("{n}:{};", deep_read()))), n + 1))
    });
    Body::from_stream(chunks)
}

/// The routes, without any layer.
fn routes() -> Router {
    Router::new().route("/", get(handler)).route("/stream", get(stream))
}

fn app() -> Router {
    routes().layer(ContextLayer::new().request_id(RequestContext::request_id()).on_request(|_: &Request<Body>| {
        RequestContext::hooks().update(|n| *n += 1);
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_see_only_their_own_id() {
    let addr = common::serve(app()).await;
    let client = common::client();
    let requests = (0..64).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let id = format!("req-{i}");
            let body = common::get(&client, addr, "/", Some(&id)).await;
            (id, body)
        })
    });
    let mut mismatches = 0;
    for request in requests {
        let (id, body) = request.await.expect("client task");
        // handler, child task, blocking call; the hook ran once, in a fresh context.
        if body != format!("{id}|{id}|{id}|1") {
            mismatches += 1;
            eprintln!("{id} got {body}");
        }
    }
    assert_eq!(mismatches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_id_sees_nothing_from_earlier_requests() {
    let addr = common::serve(app()).await;
    let client = common::client();
    assert_eq!(common::get(&client, addr, "/", Some("first")).await, "first|first|first|1");
    assert_eq!(common::get(&client, addr, "/", None).await, "none|none|none|1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_of_a_streamed_body_runs_in_the_request_context() {
    let addr = common::serve(app()).await;
    let client = common::client();
    let bodies = futures::future::join_all((0..16).map(|i| {
        let client = client.clone();
        async move { (i, common::get(&client, addr, "/stream", Some(&format!("s{i}"))).await) }
    }))
    .await;
    for (i, body) in bodies {
        assert_eq!(body, format!("0:s{i};1:s{i};2:s{i};"));
    }
}

#[derive(Clone, Default)]
struct Counter(std::sync::Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        Some(RequestId::new(HeaderValue::from_str(&format!("gen-{n}")).expect("header")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_set_by_tower_http_outside_the_layer_is_read_from_the_header() {
    // `layer` wraps outward: SetRequestIdLayer runs before ContextLayer.
    let router = app().layer(SetRequestIdLayer::x_request_id(Counter::default()));
    let addr = common::serve(router).await;
    let client = common::client();
    assert_eq!(common::get(&client, addr, "/", None).await, "gen-0|gen-0|gen-0|1");
    assert_eq!(common::get(&client, addr, "/", Some("given")).await, "given|given|given|1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_from_reads_the_named_header_set_by_the_client_or_by_tower_http() {
    let trace_id = HeaderName::from_static("x-trace-id");
    let router = routes()
        .layer(ContextLayer::new().request_id_from(trace_id.clone(), RequestContext::request_id()))
        .layer(SetRequestIdLayer::new(trace_id, Counter::default()));
    let addr = common::serve(router).await;
    let client = common::client();
    let get = |headers: &'static [(&'static str, &'static str)]| common::get_with(&client, addr, "/", headers);
    assert_eq!(get(&[]).await, (StatusCode::OK, "gen-0|gen-0|gen-0|0".into()));
    assert_eq!(get(&[("x-trace-id", "t-1")]).await, (StatusCode::OK, "t-1|t-1|t-1|0".into()));
    // `x-request-id` is not the header this layer reads.
    assert_eq!(get(&[("x-request-id", "r-1")]).await, (StatusCode::OK, "gen-1|gen-1|gen-1|0".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_reads_only_the_header_never_a_request_id_extension() {
    // tower-http puts its `RequestId` extension on the request and the id in
    // `x-trace-id`; `request_id` reads `x-request-id` only, so it stays unset.
    let router = app().layer(SetRequestIdLayer::new(HeaderName::from_static("x-trace-id"), Counter::default()));
    let addr = common::serve(router).await;
    let client = common::client();
    assert_eq!(common::get(&client, addr, "/", None).await, "none|none|none|1");
    assert_eq!(common::get(&client, addr, "/", Some("given")).await, "given|given|given|1");

    // An extension put there by any other middleware is not read either.
    let with_extension = app().layer(axum::middleware::map_request(|mut request: Request<Body>| async move {
        request.extensions_mut().insert(RequestId::new(HeaderValue::from_static("from-extension")));
        request
    }));
    let addr = common::serve(with_extension).await;
    assert_eq!(common::get(&client, addr, "/", None).await, "none|none|none|1");
}

/// A middleware that fills the request's fields: it needs a context, which
/// only `ContextLayer` placed outside it gives.
async fn fill_fields(request: Request<Body>, next: Next) -> Response {
    RequestContext::request_id().set("from the middleware".into());
    next.run(request).await
}

/// Turns a panic into a 500 response whose body is the panic's message.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> Response {
    let message = match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast_ref::<&str>().map_or("(not a string)", |s| s).to_string(),
    };
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middleware_filling_fields_without_context_layer_panics_naming_context_layer() {
    let without = routes().layer(from_fn(fill_fields)).layer(CatchPanicLayer::custom(panic_message));
    let addr = common::serve(without).await;
    let client = common::client();
    let (status, message) = common::get_with(&client, addr, "/", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(message.contains("`RequestContext::request_id`"), "names the field: {message}");
    assert!(message.contains("no context of its own"), "says what is wrong: {message}");
    assert!(message.contains("put `context_local::tower::ContextLayer` outermost"), "says the fix: {message}");

    // The fix, as the message says: ContextLayer outermost.
    let with = routes().layer(from_fn(fill_fields)).layer(ContextLayer::new());
    let addr = common::serve(with).await;
    let (status, body) = common::get_with(&client, addr, "/", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "from the middleware|from the middleware|from the middleware|0")
    );
}

#[tokio::test]
async fn inherit_starts_from_the_callers_context_and_fresh_does_not() {
    let service = || {
        tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(axum::response::Response::new(Body::from(deep_read())))
        })
    };
    async fn body_of(
        response: axum::response::Response<impl http_body::Body<Data = Bytes, Error = axum::Error>>,
    ) -> String {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }
    let mut server = context_local::Context::new();
    server.run(|| RequestContext::request_id().set("server".into()));
    let (inherited, fresh) = async {
        let inherited = tower::Layer::layer(&ContextLayer::inherit(), service())
            .oneshot(Request::new(Body::empty()))
            .await
            .expect("call");
        let fresh = tower::Layer::layer(&ContextLayer::new(), service())
            .oneshot(Request::new(Body::empty()))
            .await
            .expect("call");
        (body_of(inherited).await, body_of(fresh).await)
    }
    .in_context(server)
    .await;
    assert_eq!(inherited, "server");
    assert_eq!(fresh, "none");
}
