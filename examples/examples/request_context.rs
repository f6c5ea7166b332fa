//! Concurrent requests, each with its own request context.
//!
//! Every request sets its id and user once at the edge, then reads them deep
//! in the call stack, across `.await`s, in a spawned child task and in a
//! blocking call. The program prints what each request saw and checks that no
//! request ever saw another's values.
//!
//! Run: `cargo run -p examples --example request_context`

use std::time::Duration;

use context_local::{ContextLocal, FutureExt};

#[derive(ContextLocal)]
struct RequestContext {
    request_id: String,
    user: Option<u64>,
    #[context_local(default = Vec::new())]
    trail: Vec<&'static str>,
}

/// Deep in the call stack: no parameter carries the request.
async fn load_profile() -> String {
    RequestContext::trail().push("profile");
    tokio::time::sleep(Duration::from_millis(5)).await;
    match RequestContext::user().get().flatten() {
        Some(user) => format!("user {user}"),
        None => "anonymous".to_string(),
    }
}

/// A child task inherits a snapshot of the request's context.
async fn audit() -> String {
    let child = context_local::task::spawn(async {
        tokio::task::yield_now().await;
        RequestContext::request_id().get().unwrap_or_default()
    });
    child.await.expect("audit task")
}

/// Blocking work sees the request, and what it records comes back.
async fn render() -> String {
    context_local::task::run_blocking(|| {
        RequestContext::trail().push("render");
        format!("rendered for {}", RequestContext::request_id().get().unwrap_or_default())
    })
    .await
}

async fn handle(id: usize) -> (String, String, String, String, Vec<&'static str>) {
    let request = RequestContext {
        request_id: format!("req-{id:02}"),
        user: (!id.is_multiple_of(3)).then_some(id as u64),
        trail: Vec::new(),
    };
    request
        .scope(async {
            let profile = load_profile().await;
            let audited = audit().await;
            let rendered = render().await;
            let seen = RequestContext::request_id().get().unwrap_or_default();
            (seen, profile, audited, rendered, RequestContext::trail().get().unwrap_or_default())
        })
        .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests = 12;
    let handles: Vec<_> = (0..requests).map(|id| tokio::spawn(handle(id).in_new_context())).collect();
    let mut mismatches = 0;
    for (id, handle) in handles.into_iter().enumerate() {
        let (seen, profile, audited, rendered, trail) = handle.await.expect("request task");
        let expected = format!("req-{id:02}");
        let ok = seen == expected && audited == expected && rendered == format!("rendered for {expected}");
        mismatches += usize::from(!ok);
        println!("{expected}: saw {seen}, {profile}, audit saw {audited}, {rendered}, trail {trail:?}");
        assert_eq!(trail, ["profile", "render"], "each request's trail holds only its own steps");
    }
    println!("{requests} concurrent requests, {mismatches} saw another request's context");
    assert_eq!(mismatches, 0);
}
