//! Isolation through a real server: an axum server with `ContextLayer` on
//! 127.0.0.1, 20,000 requests over 64 concurrent client connections, each
//! with its own id. The handler yields, spawns a child, calls `run_blocking`,
//! reads the id deep in the stack, and echoes what it saw. Zero mismatches,
//! counted and printed. `cargo test -p tests --test isolation -- --ignored`
//! runs the 200,000-request soak.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::routing::get;
use axum::Router;
use context_local::tower::ContextLayer;
use context_local::ContextLocal;

#[derive(ContextLocal)]
struct RequestContext {
    request_id: String,
    user: Option<u64>,
}

fn deep() -> String {
    fn down(levels: u32) -> String {
        if levels == 0 {
            let id = RequestContext::request_id().get().unwrap_or_else(|| "none".into());
            let user = RequestContext::user().get().flatten().map_or_else(|| "-".into(), |u| u.to_string());
            format!("{id}/{user}")
        } else {
            down(levels - 1)
        }
    }
    down(8)
}

async fn handler() -> String {
    // The user is set by the handler itself, from the id: if another
    // request's context leaked in, the pair would not match.
    let id = RequestContext::request_id().get().unwrap_or_default();
    let user = id.trim_start_matches("c").split('-').map(|n| n.parse::<u64>().unwrap_or(0)).sum::<u64>();
    RequestContext::user().set(Some(user));
    tokio::task::yield_now().await;
    let child = context_local::task::spawn(async {
        tokio::task::yield_now().await;
        deep()
    })
    .await
    .expect("child");
    let blocking = context_local::task::run_blocking(deep).await;
    format!("{}|{child}|{blocking}", deep())
}

async fn run(requests: usize, connections: usize) {
    let router =
        Router::new().route("/", get(handler)).layer(ContextLayer::new().request_id(RequestContext::request_id()));
    let addr = common::serve(router).await;
    let next = Arc::new(AtomicUsize::new(0));
    let mismatches = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..connections)
        .map(|c| {
            let (next, mismatches) = (next.clone(), mismatches.clone());
            tokio::spawn(async move {
                // One client, so one kept-alive connection, per task.
                let client = common::client();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    let id = format!("c{c}-{n}");
                    let user = c as u64 + n as u64;
                    let expected = format!("{id}/{user}");
                    let body = common::get(&client, addr, "/", Some(&id)).await;
                    if body != format!("{expected}|{expected}|{expected}") {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{id} expected {expected}, saw {body}");
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client task");
    }
    let mismatches = mismatches.load(Ordering::Relaxed);
    println!(
        "{requests} requests over {connections} connections in {:.1?}: {mismatches} mismatches",
        started.elapsed()
    );
    assert_eq!(mismatches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_requests_see_only_their_own_context() {
    run(20_000, 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 200,000 requests; run with --ignored"]
async fn soak_two_hundred_thousand_requests() {
    run(200_000, 64).await;
}
