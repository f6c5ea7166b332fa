//! One SQLite connection per async task, never shared with child tasks.
//!
//! Each request task opens an in-memory database on first use and keeps it in
//! a `no_inherit` field: it is the task's own, like a per-task
//! `threading.local`. A child task spawned from it starts without it and opens
//! its own, so two tasks never use one connection.
//!
//! Run: `cargo run -p examples --example db_per_task`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use context_local::{ContextLocal, FutureExt};
use rusqlite::Connection;

#[derive(ContextLocal)]
struct TaskDb {
    #[context_local(no_inherit)]
    conn: Arc<std::sync::Mutex<Connection>>,
    request: u32,
}

static OPENED: AtomicUsize = AtomicUsize::new(0);

/// This task's connection, opened (with its schema) on first use.
fn connection() -> Arc<std::sync::Mutex<Connection>> {
    TaskDb::conn().get_or_insert_with(|| {
        OPENED.fetch_add(1, Ordering::SeqCst);
        let conn = Connection::open_in_memory().expect("open");
        conn.execute("CREATE TABLE events (request INTEGER, what TEXT)", []).expect("schema");
        Arc::new(std::sync::Mutex::new(conn))
    })
}

fn record(what: &str) {
    let request = TaskDb::request().get().unwrap_or_default();
    let conn = connection();
    let conn = conn.lock().expect("connection");
    conn.execute("INSERT INTO events VALUES (?1, ?2)", (request, what)).expect("insert");
}

fn events() -> Vec<(u32, String)> {
    let conn = connection();
    let conn = conn.lock().expect("connection");
    let mut query = conn.prepare("SELECT request, what FROM events ORDER BY rowid").expect("prepare");
    let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).expect("query");
    rows.map(|row| row.expect("row")).collect()
}

async fn handle(request: u32) -> (Vec<(u32, String)>, Vec<(u32, String)>) {
    TaskDb::request().set(request);
    record("start");
    tokio::task::yield_now().await;
    let child = context_local::task::spawn(async {
        // Inherits `request`, not the connection: this opens a second one.
        record("child");
        events()
    });
    let child_events = child.await.expect("child task");
    record("end");
    (events(), child_events)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tasks: Vec<_> = (0..8).map(|r| tokio::spawn(handle(r).in_new_context())).collect();
    for (r, task) in tasks.into_iter().enumerate() {
        let (own, child) = task.await.expect("request task");
        let r = r as u32;
        println!("request {r}: its connection saw {own:?}, its child's saw {child:?}");
        assert_eq!(own, [(r, "start".to_string()), (r, "end".to_string())]);
        assert_eq!(child, [(r, "child".to_string())]);
    }
    let opened = OPENED.load(Ordering::SeqCst);
    println!("8 requests, {opened} connections: one per task, none shared");
    assert_eq!(opened, 16);
}
