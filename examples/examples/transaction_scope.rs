//! A transaction per thread: a Python `TransactionManager` on `threading.local`.
//!
//! `transaction(f)` opens a transaction in the thread's context, runs `f`,
//! commits if `f` returns `Ok` and rolls back if it returns `Err` or panics.
//! A nested transaction is rejected. Code deep in the call stack adds
//! operations to the current transaction without being handed it. Two
//! threads run transactions at the same time without seeing each other's.
//!
//! Run: `cargo run -p examples --example transaction_scope`

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use context_local::ContextLocal;

#[derive(Debug, Default)]
struct Transaction {
    operations: Vec<String>,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct TransactionManager {
    current: Transaction,
}

/// What happened to each transaction, for the checks at the end.
type Journal = Arc<Mutex<Vec<String>>>;

#[derive(Debug, PartialEq)]
enum TxError {
    Nested,
    Failed(String),
}

/// Runs `f` in a new transaction: commit on `Ok`, roll back on `Err` or panic.
fn transaction<R>(journal: &Journal, f: impl FnOnce() -> Result<R, String>) -> Result<R, TxError> {
    if TransactionManager::current().is_set() {
        return Err(TxError::Nested);
    }
    TransactionManager::current().set(Transaction::default());
    let outcome = catch_unwind(AssertUnwindSafe(f));
    let done = TransactionManager::current().take().expect("the transaction is still open");
    let thread = std::thread::current().name().unwrap_or("main").to_string();
    let entry = match &outcome {
        Ok(Ok(_)) => format!("{thread}: committing {} operations {:?}", done.operations.len(), done.operations),
        Ok(Err(_)) | Err(_) => format!("{thread}: rolling back {} operations", done.operations.len()),
    };
    println!("{entry}");
    journal.lock().expect("journal").push(entry);
    match outcome {
        Ok(result) => result.map_err(TxError::Failed),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Deep in the call stack: adds to whatever transaction is open here.
fn add(op: &str) {
    TransactionManager::current().update(|tx| tx.operations.push(op.to_string())).expect("inside a transaction");
}

fn main() {
    // Keep the one panic this program causes on purpose out of the output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"crash mid-transaction") {
            default_hook(info);
        }
    }));
    let journal = Journal::default();
    let workers: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|name| {
            let journal = journal.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    let paid = transaction(&journal, || {
                        add(&format!("debit {name}"));
                        std::thread::yield_now();
                        add(&format!("credit {name}"));
                        Ok(2)
                    });
                    assert_eq!(paid, Ok(2));
                    let nested =
                        transaction(&journal, || transaction(&journal, || Ok(())).map_err(|e| format!("{e:?}")));
                    assert_eq!(nested, Err(TxError::Failed("Nested".to_string())), "nested transactions are rejected");
                    let failed: Result<(), _> = transaction(&journal, || {
                        add("reserve stock");
                        Err("out of stock".to_string())
                    });
                    assert_eq!(failed, Err(TxError::Failed("out of stock".to_string())));
                    let panicked = catch_unwind(AssertUnwindSafe(|| {
                        transaction(&journal, || -> Result<(), String> {
                            add("half done");
                            panic!("crash mid-transaction")
                        })
                    }));
                    assert!(panicked.is_err());
                    assert!(!TransactionManager::current().is_set(), "nothing stays open");
                })
                .expect("spawn")
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let journal = journal.lock().expect("journal");
    let commits = journal.iter().filter(|e| e.contains("committing 2")).count();
    let rollbacks = journal.iter().filter(|e| e.contains("rolling back")).count();
    let mixed = journal.iter().filter(|e| e.starts_with("alice") && e.contains("bob")).count();
    println!("{commits} commits, {rollbacks} rollbacks, {mixed} transactions with another thread's operations");
    assert_eq!((commits, rollbacks, mixed), (2, 6, 0));
}
