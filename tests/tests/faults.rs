//! Panics and cancellation: a panic inside `init`, `update`, a value's
//! `Drop`, or a polled future, and futures aborted or dropped mid-flight.
//! In every case the previous context is back, nothing is poisoned, and every
//! value is dropped exactly once (counted).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use context_local::{AccessError, Context, ContextLocal, FutureExt as _};

/// Counts its creations and drops; panics on drop if asked to.
#[derive(Debug)]
struct Counted {
    id: u32,
    panic_on_drop: bool,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    created: AtomicUsize,
    dropped: AtomicUsize,
}

impl Counters {
    fn value(self: &Arc<Self>, id: u32) -> Counted {
        self.created.fetch_add(1, Ordering::SeqCst);
        Counted { id, panic_on_drop: false, counters: self.clone() }
    }

    fn exploding(self: &Arc<Self>, id: u32) -> Counted {
        let mut value = self.value(id);
        value.panic_on_drop = true;
        value
    }

    fn balance(&self) -> (usize, usize) {
        (self.created.load(Ordering::SeqCst), self.dropped.load(Ordering::SeqCst))
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.counters.value(self.id)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counters.dropped.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_drop && !std::thread::panicking() {
            panic!("value {} panics in drop", self.id);
        }
    }
}

#[derive(ContextLocal)]
struct Request {
    value: Counted,
    #[context_local(no_inherit)]
    owned: Counted,
    id: u32,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct PerThread {
    value: Counted,
}

#[test]
fn a_panicking_drop_of_a_displaced_value_leaves_the_new_value_in_place() {
    let counters = Arc::new(Counters::default());
    Context::new().run(|| {
        Request::value().set(counters.exploding(1));
        let replaced = catch_unwind(AssertUnwindSafe(|| Request::value().set(counters.value(2))));
        assert!(replaced.is_err(), "the old value's drop panicked");
        // The write happened before the drop: the new value is there, and the
        // storage is usable (not poisoned, not borrowed).
        assert_eq!(Request::value().with(|v| v.id), Some(2));
        Request::id().set(5);
        assert_eq!(Request::id().get(), Some(5));
        PerThread::value().set(counters.exploding(3));
        assert!(catch_unwind(AssertUnwindSafe(|| PerThread::value().delete())).is_err());
        assert!(!PerThread::value().is_set());
    });
    assert_eq!(counters.balance(), (3, 3), "every value dropped exactly once");
}

#[test]
fn a_context_dropped_with_a_panicking_value_drops_the_rest_once() {
    let counters = Arc::new(Counters::default());
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::owned().set(counters.exploding(1));
        Request::value().set(counters.value(2));
    });
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(ctx)));
    assert!(dropped.is_err());
    // This thread's own context is untouched and usable.
    Request::id().set(1);
    assert_eq!(Request::id().get(), Some(1));
    assert_eq!(counters.balance(), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_a_polled_future_leaves_the_worker_clean() {
    let counters = Arc::new(Counters::default());
    for round in 0..20 {
        let counters = counters.clone();
        let crashed = tokio::spawn(
            async move {
                Request::value().set(counters.value(round));
                Request::owned().set(counters.value(round));
                tokio::task::yield_now().await;
                panic!("handler {round} crashed");
            }
            .in_new_context(),
        )
        .await;
        assert!(crashed.expect_err("the task panicked").is_panic());
        // Whatever worker ran it: a plain task there has no context...
        let plain = tokio::spawn(async { Request::id().try_get() }).await.expect("plain task");
        assert_eq!(plain, Err(AccessError::Unscoped { field: "Request::id" }));
        // ...and a fresh one starts empty.
        let fresh = tokio::spawn(async { Request::value().is_set() }.in_new_context()).await.expect("fresh task");
        assert!(!fresh);
    }
    assert_eq!(counters.balance(), (40, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_and_dropped_futures_drop_their_values_exactly_once() {
    let counters = Arc::new(Counters::default());
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let mut handles = Vec::new();
    for n in 0..50 {
        let (counters, started) = (counters.clone(), started.clone());
        handles.push(tokio::spawn(
            async move {
                Request::value().set(counters.value(n));
                Request::owned().set(counters.value(n));
                started.add_permits(1);
                std::future::pending::<()>().await;
            }
            .in_new_context(),
        ));
    }
    // Every task holds its values before any is aborted.
    drop(started.acquire_many(50).await.expect("semaphore"));
    for handle in &handles {
        handle.abort();
    }
    for handle in handles {
        assert!(handle.await.expect_err("aborted").is_cancelled());
    }
    // An InContext dropped mid-flight, by a select losing the race.
    let mut outer = Context::new();
    outer.run(|| Request::id().set(7));
    for n in 0..50 {
        let counters = counters.clone();
        let slow = async move {
            Request::value().set(counters.value(100 + n));
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        .in_new_context();
        tokio::select! {
            () = slow => unreachable!("the sleep loses"),
            () = tokio::task::yield_now() => {}
        }
    }
    assert_eq!(outer.run(|| Request::id().get()), Some(7), "the outer context is untouched");
    assert_eq!(counters.balance(), (150, 150));
}

#[test]
fn a_panic_inside_update_or_init_restores_the_previous_context() {
    let counters = Arc::new(Counters::default());
    let mut outer = Context::new();
    outer.run(|| Request::id().set(1));
    let mut inner = Context::new();
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        outer.run(|| {
            inner.run(|| {
                Request::value().set(counters.value(1));
                Request::value().update(|_| panic!("update crashed"));
            })
        })
    }));
    assert!(crashed.is_err());
    // Back in the thread's root context; each context kept its values.
    assert_eq!(Request::id().get(), None);
    assert_eq!(outer.run(|| Request::id().get()), Some(1));
    assert_eq!(inner.run(|| Request::value().with(|v| v.id)), Some(1), "update put the value back");
    drop(inner);
    assert_eq!(counters.balance(), (1, 1));
}
