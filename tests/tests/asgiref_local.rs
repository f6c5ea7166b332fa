//! The seed's asgiref `Local`: async-safe by default (task scope), and
//! `thread_critical=True` (thread scope).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use context_local::{ContextLocal, FutureExt};

#[derive(ContextLocal)]
struct Worker {
    worker_id: u32,
    #[context_local(default = Vec::new())]
    data: Vec<String>,
}

/// "Basic Local Storage": three workers interleave at every sleep, each keeps
/// its own id and list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_workers_keep_their_own_values() {
    async fn worker_task(worker_id: u32) -> (Option<u32>, Vec<String>) {
        Worker::worker_id().set(worker_id);
        for i in 0..3 {
            Worker::data().push(format!("item_{i}_of_{worker_id}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (Worker::worker_id().get(), Worker::data().get().unwrap())
    }
    let handles: Vec<_> = (0..3).map(|i| tokio::spawn(worker_task(i).in_new_context())).collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (id, data) = handle.await.unwrap();
        assert_eq!(id, Some(i as u32));
        assert_eq!(data, (0..3).map(|n| format!("item_{n}_of_{i}")).collect::<Vec<_>>());
    }
}

#[derive(ContextLocal)]
struct RequestContext {
    request_id: String,
    user_id: Option<u64>,
}

async fn business_logic() -> String {
    tokio::task::yield_now().await;
    match RequestContext::user_id().get().flatten() {
        Some(user) => format!("authenticated user {user}"),
        None => "anonymous".to_string(),
    }
}

async fn handle_request() -> String {
    let who = business_logic().await;
    let id = RequestContext::request_id().get().unwrap();
    format!("Request {id} processed for {who}")
}

async fn asgi_app(request_id: String, user: Option<u64>) -> String {
    RequestContext::request_id().set(request_id);
    RequestContext::user_id().set(user);
    handle_request().await
}

/// "Request Context in Web Applications": the context is read deep in the
/// call stack, and concurrent requests never see each other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_context_is_read_deep_in_the_call_stack() {
    let mut handles = Vec::new();
    for i in 0..50u64 {
        let user = (i % 2 == 0).then_some(i);
        handles.push((i, user, tokio::spawn(asgi_app(format!("req-{i}"), user).in_new_context())));
    }
    for (i, user, handle) in handles {
        let expected = match user {
            Some(u) => format!("Request req-{i} processed for authenticated user {u}"),
            None => format!("Request req-{i} processed for anonymous"),
        };
        assert_eq!(handle.await.unwrap(), expected);
    }
}

/// "Database Connection Management": each service task creates one
/// connection and reuses it across its queries.
#[derive(ContextLocal)]
struct Db {
    #[context_local(no_inherit)]
    connection: Arc<Connection>,
}

struct Connection {
    id: usize,
}

static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

async fn query(_sql: &str) -> usize {
    let conn =
        Db::connection().get_or_insert_with(|| Arc::new(Connection { id: CONNECTIONS.fetch_add(1, Ordering::SeqCst) }));
    tokio::time::sleep(Duration::from_millis(2)).await;
    conn.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_task() {
    async fn service() -> (usize, usize) {
        let a = query("SELECT * FROM users").await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let b = query("SELECT * FROM orders").await;
        (a, b)
    }
    let before = CONNECTIONS.load(Ordering::SeqCst);
    let handles: Vec<_> = (0..3).map(|_| context_local::task::spawn(service())).collect();
    let mut ids = Vec::new();
    for handle in handles {
        let (a, b) = handle.await.unwrap();
        assert_eq!(a, b, "a task reuses its connection");
        ids.push(a);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each task has its own connection");
    assert_eq!(CONNECTIONS.load(Ordering::SeqCst) - before, 3);
}

/// "Thread-Critical Mode": a thread-scoped value follows the OS thread, an
/// async-safe one does not cross to another thread, and two async workers on
/// one thread keep their async-safe values apart.
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadCritical {
    thread_id: u32,
}

#[derive(ContextLocal)]
struct AsyncSafe {
    main_value: &'static str,
    worker_id: &'static str,
}

#[test]
fn thread_critical_versus_async_safe() {
    ThreadCritical::thread_id().set(0);
    AsyncSafe::main_value().set("main_async");
    let seen: Vec<_> = (1..=2)
        .map(|i| {
            std::thread::spawn(move || {
                ThreadCritical::thread_id().set(i);
                (ThreadCritical::thread_id().get(), AsyncSafe::main_value().get())
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(seen, vec![(Some(1), None), (Some(2), None)]);
    assert_eq!(ThreadCritical::thread_id().get(), Some(0));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        async fn async_worker(id: &'static str) -> (Option<&'static str>, Option<u32>) {
            AsyncSafe::worker_id().set(id);
            tokio::task::yield_now().await;
            (AsyncSafe::worker_id().get(), ThreadCritical::thread_id().get())
        }
        let (a, b) = tokio::join!(async_worker("A").in_new_context(), async_worker("B").in_new_context());
        // Both run on this thread: the thread-critical value is shared, the
        // async-safe one is not.
        assert_eq!(a, (Some("A"), Some(0)));
        assert_eq!(b, (Some("B"), Some(0)));
    });
}

/// "Middleware with Local Context": the middleware sets the context, the app
/// reads it, and the middleware reads it back after the app awaited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_sets_context_for_the_app() {
    #[derive(ContextLocal)]
    struct Tracking {
        request_id: u64,
        path: String,
    }
    async fn business_app() -> String {
        tokio::time::sleep(Duration::from_millis(3)).await;
        format!(
            "Processed by request {} for {}",
            Tracking::request_id().get().unwrap(),
            Tracking::path().get().unwrap()
        )
    }
    async fn middleware(id: u64, path: &'static str) -> (String, Option<u64>) {
        Tracking::request_id().set(id);
        Tracking::path().set(path.to_string());
        let body = business_app().await;
        (body, Tracking::request_id().get())
    }
    let handles: Vec<_> =
        (0..20).map(|i| context_local::task::spawn(middleware(i, "/users").in_new_context())).collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (body, after) = handle.await.unwrap();
        assert_eq!(body, format!("Processed by request {i} for /users"));
        assert_eq!(after, Some(i as u64));
    }
}
