//! An axum server with `ContextLayer`, and a client sending 50 concurrent
//! requests.
//!
//! The layer gives each request a fresh context and stores its
//! `x-request-id` there. The handler never receives the id as a parameter:
//! it reads it deep in the call stack, after `.await`s, in a spawned child
//! task and in a blocking call, and echoes what it saw. Every log line carries
//! the id of the request that wrote it (the `tracing` integration). The
//! program checks every response and every log line and exits non-zero on any
//! mismatch.
//!
//! Run: `cargo run -p examples --example request_context`

use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use context_local::tower::ContextLayer;
use context_local::tracing::ContextFields;
use context_local::ContextLocal;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(ContextLocal)]
struct RequestContext {
    #[context_local(log)]
    request_id: String,
    #[context_local(default = Vec::new())]
    trail: Vec<&'static str>,
}

const REQUESTS: usize = 50;

/// Library code three calls down: no parameter carries the request.
fn current_request_id() -> String {
    RequestContext::request_id().get().unwrap_or_else(|| "none".to_string())
}

async fn load_profile() -> String {
    RequestContext::trail().push("profile");
    tokio::task::yield_now().await;
    tracing::info!("loading profile");
    current_request_id()
}

async fn audit() -> String {
    let child = context_local::task::spawn(async {
        tokio::task::yield_now().await;
        tracing::info!("auditing in a child task");
        current_request_id()
    });
    child.await.expect("audit task")
}

async fn render() -> String {
    context_local::task::run_blocking(|| {
        RequestContext::trail().push("render");
        tracing::info!("rendering on a blocking thread");
        current_request_id()
    })
    .await
}

async fn handler() -> String {
    let seen = [load_profile().await, audit().await, render().await];
    let trail = RequestContext::trail().get().unwrap_or_default().join(">");
    format!("{} {trail}", seen.join(","))
}

/// Log lines, kept so the program can check them, and printed.
#[derive(Clone, Default)]
struct LogLines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let logs = LogLines::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .event_format(ContextFields::new(tracing_subscriber::fmt::format().without_time()))
        .with_writer(move || writer.clone())
        .init();

    let app =
        Router::new().route("/", get(handler)).layer(ContextLayer::new().request_id(RequestContext::request_id()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("server") });
    println!("serving on http://{addr}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let requests = (0..REQUESTS).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let id = format!("req-{i:02}");
            let request = hyper::Request::get(format!("http://{addr}/"))
                .header("x-request-id", &id)
                .body(Empty::new())
                .expect("request");
            let response = client.request(request).await.expect("response");
            let body = response.into_body().collect().await.expect("body").to_bytes();
            (id, String::from_utf8(body.to_vec()).expect("utf-8"))
        })
    });
    let mut mismatches = 0;
    for request in requests {
        let (id, body) = request.await.expect("client task");
        let expected = format!("{id},{id},{id} profile>render");
        let verdict = if body == expected { "ok" } else { "MISMATCH" };
        if body != expected {
            mismatches += 1;
        }
        println!("{id}: {body} ({verdict})");
    }

    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8 logs");
    let lines: Vec<&str> = text.lines().collect();
    println!("\n{} log lines, e.g.:", lines.len());
    for line in lines.iter().take(3) {
        println!("  {line}");
    }
    // Each request logs three lines; each id must label exactly three.
    let wrongly_labelled: usize = (0..REQUESTS)
        .map(|i| format!(" request_id=req-{i:02}"))
        .map(|label| lines.iter().filter(|line| line.ends_with(&label)).count().abs_diff(3))
        .sum();
    println!("\n{REQUESTS} concurrent requests, {mismatches} saw another request's context");
    println!("{} log lines, {wrongly_labelled} not labelled with their own request", lines.len());
    assert_eq!(mismatches, 0, "a request saw another request's context");
    assert_eq!(lines.len(), REQUESTS * 3, "three log lines per request");
    assert_eq!(wrongly_labelled, 0, "every log line carries its request's id");
}
