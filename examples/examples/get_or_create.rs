//! Three thread-local helpers Python code often writes, with a thread-scoped
//! struct.
//!
//! - get, or create with a factory on first use in this thread
//!   (`getattr(local, name, None)`, else `setattr`): `get_or_insert_with`.
//! - the value must exist (`getattr(local, name)`, `AttributeError` if not):
//!   `try_get`, whose error names the field.
//! - delete, silently if unset (`delattr` guarded by `hasattr`): `delete`.
//!
//! Run: `cargo run -p examples --example get_or_create`

use std::sync::atomic::{AtomicUsize, Ordering};

use context_local::{AccessError, ContextLocal};

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Locals {
    buffer: Vec<String>,
    connection: String,
}

static CONNECTIONS_MADE: AtomicUsize = AtomicUsize::new(0);

fn connect() -> String {
    let n = CONNECTIONS_MADE.fetch_add(1, Ordering::SeqCst);
    format!("connection #{n} for {:?}", std::thread::current().id())
}

fn work(thread: usize) -> (usize, String, AccessError) {
    // Before anything is set, "must exist" fails and names the field.
    let missing = Locals::connection().try_get().expect_err("not set yet");
    // threadlocal_var: created once per thread, then reused.
    let first = Locals::connection().get_or_insert_with(connect);
    let again = Locals::connection().get_or_insert_with(connect);
    assert_eq!(first, again);
    for n in 0..3 {
        Locals::buffer().get_or_insert_with(Vec::new);
        Locals::buffer().push(format!("thread {thread} line {n}"));
    }
    // get_threadlocal_var: must exist now.
    let conn = Locals::connection().try_get().expect("set above");
    let lines = Locals::buffer().with(Vec::len).unwrap_or(0);
    // del_threadlocal_var: silent either way.
    assert!(Locals::connection().delete());
    assert!(!Locals::connection().delete());
    (lines, conn, missing)
}

fn main() {
    let threads: Vec<_> = (0..3).map(|t| std::thread::spawn(move || work(t))).collect();
    for (t, thread) in threads.into_iter().enumerate() {
        let (lines, conn, missing) = thread.join().expect("worker");
        println!("thread {t}: {lines} buffered lines, {conn}; before creation: {missing}");
        assert_eq!(lines, 3);
        assert_eq!(missing, AccessError::Unset { field: "Locals::connection" });
        assert!(missing.to_string().contains("Locals::connection"));
    }
    let made = CONNECTIONS_MADE.load(Ordering::SeqCst);
    println!("{made} connections made: one per thread");
    assert_eq!(made, 3);
}
