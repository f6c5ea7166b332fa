//! `contextvars` semantics: snapshots, `Context::run`, futures in contexts,
//! the tokio helpers and unscoped tasks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use context_local::{AccessError, Context, ContextLocal, FutureExt};

#[derive(ContextLocal, Clone, Debug, PartialEq)]
struct Vars {
    a: u32,
    b: String,
    #[context_local(no_inherit)]
    private: u32,
}

#[test]
fn a_snapshot_is_independent_both_ways() {
    Context::new().run(|| {
        Vars::a().set(1);
        Vars::b().set("one".into());
        let mut snapshot = Context::current();
        // The source writes: the snapshot does not see it.
        Vars::a().set(2);
        Vars::b().update(|b| b.push('!'));
        assert_eq!(snapshot.run(|| (Vars::a().get(), Vars::b().get())), (Some(1), Some("one".into())));
        // The snapshot writes: the source does not see it.
        snapshot.run(|| {
            Vars::a().set(3);
            Vars::b().delete();
        });
        assert_eq!((Vars::a().get(), Vars::b().get()), (Some(2), Some("one!".into())));
        assert_eq!(snapshot.run(|| (Vars::a().get(), Vars::b().get())), (Some(3), None));
    });
}

#[test]
fn no_inherit_fields_stay_out_of_snapshots() {
    Context::new().run(|| {
        Vars::private().set(9);
        Vars::a().set(1);
        let mut snapshot = Context::current();
        assert_eq!(snapshot.run(|| (Vars::a().get(), Vars::private().get())), (Some(1), None));
        assert_eq!(Vars::private().get(), Some(9));
    });
}

#[test]
fn run_restores_the_previous_context_on_panic() {
    Vars::a().set(10);
    let mut ctx = Context::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        ctx.run(|| {
            Vars::a().set(20);
            panic!("boom");
        })
    }));
    assert!(result.is_err());
    assert_eq!(Vars::a().get(), Some(10), "the thread's own context is back");
    assert_eq!(ctx.run(|| Vars::a().get()), Some(20), "the write stayed in ctx");
}

#[test]
fn nested_runs_unwind_in_order() {
    let mut outer = Context::new();
    let mut inner = Context::new();
    outer.run(|| {
        Vars::a().set(1);
        inner.run(|| Vars::a().set(2));
        assert_eq!(Vars::a().get(), Some(1));
    });
    assert_eq!(inner.run(|| Vars::a().get()), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_blocking_writes_back() {
    async {
        Vars::a().set(1);
        Vars::b().set("keep".into());
        let seen = context_local::task::run_blocking(|| {
            let seen = Vars::a().get();
            Vars::a().set(2);
            Vars::b().delete();
            Vars::private().set(7);
            seen
        })
        .await;
        assert_eq!(seen, Some(1), "f sees the caller's values");
        assert_eq!(Vars::a().get(), Some(2), "writes come back");
        assert_eq!(Vars::b().get(), None, "deletions come back");
        assert_eq!(Vars::private().get(), Some(7), "no_inherit fields f set come back");
    }
    .in_new_context()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_blocking_writes_back_before_resuming_a_panic() {
    async {
        Vars::a().set(1);
        let result = AssertUnwindSafe(context_local::task::run_blocking(|| {
            Vars::a().set(5);
            panic!("blocking failure");
        }));
        let caught = futures::FutureExt::catch_unwind(result).await;
        let payload = caught.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"blocking failure"));
        assert_eq!(Vars::a().get(), Some(5), "what f wrote before panicking is written back");
    }
    .in_new_context()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_blocking_keeps_concurrent_writes_of_other_fields() {
    async {
        Vars::a().set(1);
        // The sibling's write lands while the blocking call is still running.
        let (sibling_done, wait_for_sibling) = std::sync::mpsc::channel();
        let blocking = context_local::task::run_blocking(move || {
            wait_for_sibling.recv().expect("the sibling ran");
            Vars::a().set(2);
        });
        let sibling = async move {
            Vars::b().set("from sibling".into());
            sibling_done.send(()).expect("the blocking call waits");
        };
        tokio::join!(blocking, sibling);
        assert_eq!(Vars::a().get(), Some(2));
        assert_eq!(Vars::b().get().as_deref(), Some("from sibling"));
    }
    .in_new_context()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_gets_a_snapshot_and_writes_nothing_back() {
    async {
        Vars::a().set(3);
        let seen = context_local::task::spawn_blocking(|| {
            let seen = Vars::a().get();
            Vars::a().set(4);
            seen
        })
        .await
        .unwrap();
        assert_eq!(seen, Some(3));
        assert_eq!(Vars::a().get(), Some(3));
    }
    .in_new_context()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tokio_spawn_is_unscoped() {
    Vars::a().set(1); // block_on uses the thread's root context
    assert_eq!(Vars::a().get(), Some(1));
    let checks = tokio::spawn(async {
        let err = Vars::a().try_get().unwrap_err();
        let message = err.to_string();
        let panicked = catch_unwind(|| Vars::a().get()).unwrap_err();
        let panic_text = panicked.downcast_ref::<String>().cloned().unwrap_or_default();
        (err, message, panic_text, Context::current().is_empty())
    })
    .await
    .unwrap();
    assert_eq!(checks.0, AccessError::Unscoped { field: "Vars::a" });
    assert!(checks.1.contains("context_local::task::spawn"), "{}", checks.1);
    assert!(checks.1.contains("in_current_context"), "{}", checks.1);
    assert_eq!(checks.2, checks.1, "the plain method panics with the error's text");
    assert!(checks.3, "a snapshot inside an unscoped task is empty: nothing leaks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_keeps_new_contexts_apart() {
    async fn branch(id: u32) -> Vec<Option<u32>> {
        let mut seen = Vec::new();
        Vars::a().set(id);
        for _ in 0..5 {
            tokio::task::yield_now().await;
            seen.push(Vars::a().get());
        }
        seen
    }
    let (x, y, z) = tokio::join!(branch(1).in_new_context(), branch(2).in_new_context(), branch(3).in_new_context());
    assert_eq!(x, vec![Some(1); 5]);
    assert_eq!(y, vec![Some(2); 5]);
    assert_eq!(z, vec![Some(3); 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_children_inherit_and_stay_isolated() {
    async {
        Vars::a().set(1);
        let child = context_local::task::spawn(async {
            let seen = Vars::a().get();
            Vars::a().set(100);
            let grandchild = context_local::task::spawn(async { Vars::a().get() }).await.unwrap();
            (seen, grandchild)
        });
        assert_eq!(child.await.unwrap(), (Some(1), Some(100)));
        assert_eq!(Vars::a().get(), Some(1));
    }
    .in_new_context()
    .await;
}

struct ReadsOnDrop(Arc<AtomicUsize>);

impl Drop for ReadsOnDrop {
    fn drop(&mut self) {
        if Vars::a().try_get() == Ok(42) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn an_in_context_future_is_dropped_inside_its_context() {
    let seen = Arc::new(AtomicUsize::new(0));
    let guard = ReadsOnDrop(seen.clone());
    let mut ctx = Context::new();
    ctx.run(|| Vars::a().set(42));
    let pending = async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    }
    .in_context(ctx);
    // Poll once so the future holds the guard, then drop it mid-flight.
    let mut pending = Box::pin(pending);
    assert!(futures::poll!(&mut pending).is_pending());
    drop(pending);
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the destructor saw the future's context");
    assert_eq!(Vars::a().get(), None, "and the caller's context is back");
}

#[tokio::test]
async fn into_context_returns_what_the_future_wrote() {
    let mut fut = Box::pin(async { Vars::b().set("written".into()) }).in_new_context();
    (&mut fut).await;
    let mut ctx = fut.into_context();
    assert_eq!(ctx.run(|| Vars::b().get()).as_deref(), Some("written"));
    let mut pinned = Box::pin(async { Vars::b().set("pinned".into()) }.in_new_context());
    pinned.as_mut().await;
    let mut ctx = pinned.as_mut().take_context();
    assert_eq!(ctx.run(|| Vars::b().get()).as_deref(), Some("pinned"));
}

#[tokio::test]
async fn scope_runs_a_future_with_the_struct_set() {
    let seen = Vars { a: 1, b: "b".into(), private: 2 }
        .scope(async {
            tokio::task::yield_now().await;
            Vars::current()
        })
        .await;
    assert_eq!(seen, Some(Vars { a: 1, b: "b".into(), private: 2 }));
    assert_eq!(Vars::current(), None);
}

#[test]
fn taking_snapshots_leaves_the_source_unchanged() {
    // The cost of a snapshot is the benchmark suite's to measure; here, taking
    // and dropping snapshots must not disturb the source.
    Context::new().run(|| {
        Vars::a().set(1);
        let snapshot = Context::current();
        let again = Context::current();
        assert!(!snapshot.is_empty());
        drop((snapshot, again));
        assert_eq!(Vars::a().get(), Some(1));
    });
}

#[test]
fn moving_a_value_out_leaves_the_snapshot_its_copy() {
    Context::new().run(|| {
        Vars::b().set("shared".into());
        let mut snapshot = Context::current();
        assert_eq!(Vars::b().take().as_deref(), Some("shared"));
        Vars::b().set("mine".into());
        assert_eq!(Vars::b().replace("again".into()).as_deref(), Some("mine"));
        Vars::b().update(|b| b.push('!'));
        assert_eq!(Vars::b().get().as_deref(), Some("again!"));
        assert_eq!(snapshot.run(|| Vars::b().get()).as_deref(), Some("shared"));
        snapshot.run(|| Vars::b().update(|b| b.push('?')));
        assert_eq!(snapshot.run(|| Vars::b().get()).as_deref(), Some("shared?"));
        assert_eq!(Vars::b().get().as_deref(), Some("again!"));
    });
}
