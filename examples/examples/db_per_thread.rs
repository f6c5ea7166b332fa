//! One SQLite connection per thread: Python's `threading.local` database
//! helper (a `ThreadLocalDB` class holding `local.connection`).
//!
//! Four worker threads write orders into one database file. Each thread opens
//! its connection on first use and reuses it for every query; `close` drops
//! the thread's connection. A thread-scoped field holds it, so the
//! connection (which is not `Sync`) never leaves its thread.
//!
//! Run: `cargo run -p examples --example db_per_thread`

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use context_local::ContextLocal;
use rusqlite::Connection;

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadDb {
    conn: Rc<Connection>,
}

static OPENED: AtomicUsize = AtomicUsize::new(0);

/// A `ThreadLocalDB`: a path, and a connection per thread.
struct ThreadLocalDb {
    path: PathBuf,
}

impl ThreadLocalDb {
    fn new(path: &Path) -> ThreadLocalDb {
        ThreadLocalDb { path: path.to_path_buf() }
    }

    /// This thread's connection, opened on first use.
    fn connection(&self) -> Rc<Connection> {
        ThreadDb::conn().get_or_insert_with(|| {
            OPENED.fetch_add(1, Ordering::SeqCst);
            let conn = Connection::open(&self.path).expect("open the database");
            conn.busy_timeout(std::time::Duration::from_secs(10)).expect("busy timeout");
            Rc::new(conn)
        })
    }

    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> usize {
        self.connection().execute(sql, params).expect("execute")
    }

    fn count(&self, sql: &str) -> i64 {
        self.connection().query_row(sql, [], |row| row.get(0)).expect("query")
    }

    /// Closes this thread's connection.
    fn close(&self) -> bool {
        ThreadDb::conn().delete()
    }
}

fn main() {
    let path = std::env::temp_dir().join(format!("context-local-db-per-thread-{}.sqlite", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let db = ThreadLocalDb::new(&path);
    db.execute("CREATE TABLE orders (thread INTEGER, item INTEGER)", []);
    db.close();

    let threads: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let db = ThreadLocalDb::new(&path);
                let first = db.connection();
                for item in 0..25 {
                    db.execute("INSERT INTO orders VALUES (?1, ?2)", (t, item));
                }
                let reused = Rc::ptr_eq(&first, &db.connection());
                let mine = db.count(&format!("SELECT COUNT(*) FROM orders WHERE thread = {t}"));
                println!("thread {t}: wrote {mine} orders on one connection (reused: {reused})");
                assert!(reused, "a thread reuses its connection");
                assert_eq!(mine, 25);
                assert!(db.close(), "close drops this thread's connection");
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("worker thread");
    }

    let total = db.count("SELECT COUNT(*) FROM orders");
    let opened = OPENED.load(Ordering::SeqCst);
    println!("{total} orders in {}; {opened} connections opened (setup, 4 workers, this check)", path.display());
    assert_eq!(total, 100);
    assert_eq!(opened, 6, "one per thread per use between closes");
    db.close();
    std::fs::remove_file(&path).expect("remove the database");
}
