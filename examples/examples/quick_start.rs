//! A request context in an axum server: a middleware fills it, code deep in
//! the handler reads it, and a client checks two concurrent requests.
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::middleware::{from_fn, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use context_local::tower::ContextLayer;
use context_local::ContextLocal;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

#[derive(ContextLocal)]
struct RequestContext {
    request_id: String,
    user: String,
}

/// Anywhere below the handler: no parameter carries the request.
fn greeting() -> String {
    let id = RequestContext::request_id().get().unwrap_or_default();
    let user = RequestContext::user().get().unwrap_or_else(|| "stranger".into());
    format!("hello {user} ({id})")
}

/// A middleware filling a field from the request.
async fn authenticate(request: Request<Body>, next: Next) -> Response {
    if let Some(user) = request.headers().get("x-user").and_then(|v| v.to_str().ok()) {
        RequestContext::user().set(user.to_string());
    }
    next.run(request).await
}

async fn handler() -> String {
    // A child spawned with context_local::task::spawn sees the request too.
    context_local::task::spawn(async { greeting() }).await.unwrap()
}

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/", get(handler))
        .layer(from_fn(authenticate))
        // Added last, so outermost: every layer above runs in the request's context.
        .layer(ContextLayer::new().request_id(RequestContext::request_id()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http();
    let (alice, stranger) =
        tokio::join!(fetch(&client, addr, "req-1", Some("alice")), fetch(&client, addr, "req-2", None));
    assert_eq!(alice, "hello alice (req-1)");
    assert_eq!(stranger, "hello stranger (req-2)");
    println!("{alice}\n{stranger}");
}

async fn fetch(client: &Client<HttpConnector, Empty<Bytes>>, addr: SocketAddr, id: &str, user: Option<&str>) -> String {
    let mut request = Request::get(format!("http://{addr}/")).header("x-request-id", id);
    if let Some(user) = user {
        request = request.header("x-user", user);
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await.unwrap();
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
