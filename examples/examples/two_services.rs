//! Two services on 127.0.0.1: a request with `baggage` reaches A, A calls B
//! through a hyper-util client wrapped in `PropagateLayer`, and B prints what
//! it saw: the fields, and the member neither service knows, forwarded by A
//! unchanged. Both servers stop when the example is done.
//!
//! Run: `cargo run -p examples --example two_services`.

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use context_local::tower::{ContextLayer, PropagateLayer, PropagateService};
use context_local::{baggage, ContextLocal, FutureExt as _};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};

#[derive(ContextLocal)]
struct RequestContext {
    #[context_local(baggage)] // member key "tenant"
    tenant: String,
    #[context_local(baggage = "user.id")]
    user: u64,
}

type HttpClient = PropagateService<Client<HttpConnector, Empty<Bytes>>>;

/// Any tower HTTP client, wrapped: each request carries the current context.
fn client() -> HttpClient {
    PropagateLayer::new().layer(Client::builder(TokioExecutor::new()).build_http())
}

/// Service A: each request's `baggage` fills its context; A calls B with it.
fn service_a(b: SocketAddr) -> Router {
    Router::new().route("/", get(call_b)).with_state((client(), b)).layer(ContextLayer::new().baggage())
}

async fn call_b(State((client, b)): State<(HttpClient, SocketAddr)>) -> String {
    RequestContext::user().update(|user| *user += 1); // goes on to B as 42
    let request = axum::http::Request::get(format!("http://{b}/")).body(Empty::new()).unwrap();
    let response = client.oneshot(request).await.unwrap(); // baggage: tenant=..,user.id=42,..
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// B: reports the fields and what it would forward.
async fn service_b(headers: axum::http::HeaderMap) -> String {
    let received = headers.get("baggage").and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
    format!(
        "B saw tenant={:?} user={:?}\nB received baggage: {received}\nB would forward: {}",
        RequestContext::tenant().get().unwrap_or_default(),
        RequestContext::user().get(),
        baggage::to_header().unwrap_or_default(),
    )
}

async fn serve(router: Router) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    (addr, stop, tokio::spawn(async move { server.await.expect("server") }))
}

#[tokio::main]
async fn main() {
    // Across services: B reads the fields, A reads them and calls B.
    let (b, stop_b, b_task) =
        serve(Router::new().route("/", get(service_b)).layer(ContextLayer::new().baggage())).await;
    let (a, stop_a, a_task) = serve(service_a(b)).await;

    // The caller: its own context, sent along by PropagateLayer, plus a
    // member of another vendor's that nobody here knows.
    let report = async {
        RequestContext::tenant().set("Zürich, 50% off; a=b \\ 😀".into());
        RequestContext::user().set(41);
        let request = axum::http::Request::get(format!("http://{a}/"))
            .header("baggage", "vendor.sampling=0.5;origin=edge")
            .body(Empty::new())
            .expect("request");
        let response = client().oneshot(request).await.expect("response");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(body.to_vec()).expect("UTF-8")
    }
    .in_new_context()
    .await;
    println!("{report}");
    assert!(report.contains("B saw tenant=\"Zürich, 50% off; a=b \\\\ 😀\" user=Some(42)"), "{report}");
    assert!(report.contains(",vendor.sampling=0.5;origin=edge"), "{report}");

    let _ = stop_a.send(());
    let _ = stop_b.send(());
    a_task.await.expect("A stopped");
    b_task.await.expect("B stopped");
    println!("two services: the fields and the unknown member reached B exactly");
}
