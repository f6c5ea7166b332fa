//! The seed's AlexBerUtils helpers: `threadlocal_var` (get or create),
//! `get_threadlocal_var` (must exist: the error names the field) and
//! `del_threadlocal_var` (silent delete), on four threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use context_local::{AccessError, ContextLocal};

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Locals {
    buffer: Vec<String>,
    db: Arc<FakeConnection>,
}

struct FakeConnection {
    id: usize,
    executed: Mutex<Vec<&'static str>>,
}

static CREATED: AtomicUsize = AtomicUsize::new(0);

fn create_db_connection() -> Arc<FakeConnection> {
    Arc::new(FakeConnection { id: CREATED.fetch_add(1, Ordering::SeqCst), executed: Mutex::new(Vec::new()) })
}

#[test]
fn get_or_create_buffer() {
    std::thread::spawn(|| {
        Locals::buffer().get_or_insert_with(Vec::new);
        Locals::buffer().update(|b| b.push("item".into()));
        let again = Locals::buffer().get_or_insert_with(|| panic!("already created"));
        assert_eq!(again, ["item"]);
    })
    .join()
    .unwrap();
}

#[test]
fn must_exist_names_the_field() {
    std::thread::spawn(|| {
        let err = Locals::db().try_get().map(|_| ()).unwrap_err();
        assert_eq!(err, AccessError::Unset { field: "Locals::db" });
        assert!(err.to_string().contains("Locals::db"), "{err}");
        assert_eq!(err.field(), "Locals::db");
    })
    .join()
    .unwrap();
}

#[test]
fn silent_delete() {
    std::thread::spawn(|| {
        assert!(!Locals::db().delete(), "deleting an unset field is not an error");
        Locals::db().set(create_db_connection());
        assert!(Locals::db().delete());
        assert!(!Locals::db().is_set());
    })
    .join()
    .unwrap();
}

/// The "Common pattern": four threads, each with its own connection,
/// initialised once, used, and cleaned up.
#[test]
fn common_pattern_across_four_threads() {
    // Its own counter: other tests in this binary create connections too.
    static CREATED_HERE: AtomicUsize = AtomicUsize::new(0);
    let ids: Vec<usize> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let first = Locals::db().get_or_insert_with(|| {
                    CREATED_HERE.fetch_add(1, Ordering::SeqCst);
                    create_db_connection()
                });
                let conn = Locals::db().try_get().expect("initialised above");
                assert!(Arc::ptr_eq(&first, &conn));
                conn.executed.lock().unwrap().push("SELECT 1");
                assert!(Locals::db().delete());
                assert_eq!(Locals::db().get().map(|c| c.id), None);
                conn.id
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);
    assert_eq!(CREATED_HERE.load(Ordering::SeqCst), 4, "one connection per thread");
}
