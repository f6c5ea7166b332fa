//! Compositions of guards, closures, contexts and tasks that each part gets
//! right on its own: a guard dropped inside nested `with`/`update` closures,
//! contexts installed around tokio runtimes and `LocalSet`s, guards dropped in
//! another context, and guards or snapshots used inside a `Clone` impl that a
//! read is running. Each test states the behaviour the crate documents.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use context_local::{AccessError, Context, ContextLocal, Entered, FutureExt as _, StreamExt as _};

/// Creations and drops of [`Val`]s, per test.
#[derive(Debug, Default)]
struct Ledger {
    made: AtomicUsize,
    dropped: AtomicUsize,
    dropped_texts: Mutex<Vec<String>>,
}

impl Ledger {
    fn new() -> Arc<Ledger> {
        Arc::new(Ledger::default())
    }

    fn val(self: &Arc<Self>, text: &str) -> Val {
        self.made.fetch_add(1, Ordering::SeqCst);
        Val { text: text.to_string(), ledger: self.clone() }
    }

    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    fn was_dropped(&self, text: &str) -> bool {
        self.dropped_texts.lock().unwrap().iter().any(|t| t == text)
    }

    /// (created, dropped)
    fn balance(&self) -> (usize, usize) {
        (self.made.load(Ordering::SeqCst), self.dropped())
    }
}

/// A counted value. Its text is on the heap, so reading a `Val` after it was
/// dropped is a use-after-free (Miri reports it; a plain run may read garbage).
#[derive(Debug)]
struct Val {
    text: String,
    ledger: Arc<Ledger>,
}

impl Clone for Val {
    fn clone(&self) -> Val {
        self.ledger.val(&self.text)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.ledger.dropped_texts.lock().unwrap().push(std::mem::take(&mut self.text));
        self.ledger.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn text(value: &Val) -> String {
    value.text.clone()
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadPair {
    a: Val,
    b: Val,
}

#[derive(ContextLocal)]
struct TaskPair {
    a: Val,
    b: Val,
}

// --- 1. a guard dropped inside nested closures ------------------------------

// Before the fix: the inner `with` ends and drops every value parked after the first
// parked entry at or above its depth, including `a`'s value, parked for the
// outer `with` that is still reading it (the parked list is not ordered by
// depth). The outer closure then reads freed memory.

#[test]
fn a_guard_dropped_in_a_nested_with_of_another_field_keeps_the_outer_read_alive_thread_scope() {
    let ledger = Ledger::new();
    let guard = ThreadPair { a: ledger.val("outer"), b: ledger.val("inner") }.enter();
    let inside = ledger.clone();
    let seen = ThreadPair::a().with(move |a| {
        let nested = ThreadPair::b().with(move |_| drop(guard));
        assert_eq!(nested, Some(()));
        assert!(!inside.was_dropped("outer"), "`a`'s value was dropped while the outer `with` still reads it");
        a.text.clone()
    });
    assert_eq!(seen.as_deref(), Some("outer"));
    assert!(!ThreadPair::a().is_set() && !ThreadPair::b().is_set(), "the guard restored both fields to unset");
    assert_eq!(ledger.balance(), (2, 2), "each value dropped exactly once");
}

#[test]
fn a_guard_dropped_in_a_nested_with_of_another_field_keeps_the_outer_read_alive_task_scope() {
    let ledger = Ledger::new();
    let mut ctx = Context::new();
    let seen = ctx.run(|| {
        let guard = TaskPair { a: ledger.val("outer"), b: ledger.val("inner") }.enter();
        let inside = ledger.clone();
        let seen = TaskPair::a().with(move |a| {
            TaskPair::b().with(move |_| drop(guard));
            assert!(!inside.was_dropped("outer"), "`a`'s value was dropped while the outer `with` still reads it");
            a.text.clone()
        });
        assert!(!TaskPair::a().is_set() && !TaskPair::b().is_set(), "the guard restored both fields to unset");
        seen
    });
    assert_eq!(seen.as_deref(), Some("outer"));
    assert!(ctx.is_empty());
    assert_eq!(ledger.balance(), (2, 2), "each value dropped exactly once");
}

#[test]
fn a_guard_dropped_in_a_nested_with_of_the_same_field_keeps_the_outer_read_alive() {
    let ledger = Ledger::new();
    // Thread scope.
    let guard = ThreadPair { a: ledger.val("entered"), b: ledger.val("b") }.enter();
    let inside = ledger.clone();
    let seen = ThreadPair::a().with(move |outer| {
        let inner = ThreadPair::a().with(move |inner| {
            drop(guard);
            inner.text.len()
        });
        assert_eq!(inner, Some(7));
        assert!(!inside.was_dropped("entered"), "`a`'s value was dropped while the outer `with` still reads it");
        outer.text.clone()
    });
    assert_eq!(seen.as_deref(), Some("entered"));
    assert!(!ThreadPair::a().is_set());
    assert_eq!(ledger.balance(), (2, 2));
    // Task scope.
    let ledger = Ledger::new();
    let seen = Context::new().run(|| {
        let guard = TaskPair { a: ledger.val("entered"), b: ledger.val("b") }.enter();
        let inside = ledger.clone();
        TaskPair::a().with(move |outer| {
            TaskPair::a().with(move |_| drop(guard));
            assert!(!inside.was_dropped("entered"), "`a`'s value was dropped while the outer `with` still reads it");
            outer.text.clone()
        })
    });
    assert_eq!(seen.as_deref(), Some("entered"));
    assert_eq!(ledger.balance(), (2, 2));
}

// Before the fix: `update` puts its value back over whatever the guard restored, and
// drops the restored value instead.

#[test]
fn a_guard_restoring_the_field_inside_its_update_wins_over_the_write_back() {
    let ledger = Ledger::new();
    // Thread scope.
    ThreadPair::a().set(ledger.val("before"));
    let guard = ThreadPair { a: ledger.val("guarded"), b: ledger.val("b") }.enter();
    let returned = ThreadPair::a().update(move |a| {
        drop(guard);
        a.text.push('!');
        a.text.clone()
    });
    assert_eq!(returned.as_deref(), Some("guarded!"));
    assert_eq!(ThreadPair::a().with(text).as_deref(), Some("before"), "the guard's restore wins");
    assert!(!ThreadPair::b().is_set());
    assert_eq!(ledger.balance(), (3, 2), "`b` and the closure's modified value are dropped, `before` is kept");
    assert!(ThreadPair::a().delete());
    assert_eq!(ledger.balance(), (3, 3));
    // Task scope.
    let ledger = Ledger::new();
    let mut ctx = Context::new();
    ctx.run(|| {
        TaskPair::a().set(ledger.val("before"));
        let guard = TaskPair { a: ledger.val("guarded"), b: ledger.val("b") }.enter();
        TaskPair::a().update(move |a| {
            drop(guard);
            a.text.push('!');
        });
        assert_eq!(TaskPair::a().with(text).as_deref(), Some("before"), "the guard's restore wins");
        assert!(!TaskPair::b().is_set());
    });
    assert_eq!(ledger.balance(), (3, 2));
    drop(ctx);
    assert_eq!(ledger.balance(), (3, 3));
}

// --- 2. values crossing tasks ----------------------------------------------

#[derive(ContextLocal)]
struct Req {
    id: u32,
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

const UNSCOPED: AccessError = AccessError::Unscoped { field: "Req::id" };

/// In the `block_on` future: what it reads itself, and what a plain
/// `tokio::spawn`ed task reads (and whether its snapshot is empty).
fn block_on_and_spawn(rt: &tokio::runtime::Runtime) -> (Result<u32, AccessError>, Result<u32, AccessError>, bool) {
    rt.block_on(async {
        let own = Req::id().try_get();
        let (spawned, snapshot_empty) =
            tokio::spawn(async { (Req::id().try_get(), Context::current().is_empty()) }).await.expect("plain task");
        (own, spawned, snapshot_empty)
    })
}

// Before the fix: on a current-thread runtime the spawned task is polled inside
// `ctx.run` and reads `ctx`'s values (`Ok(7)`): the check only looks at
// whether some context is installed, not whose it is. (The multi-thread half
// passes today: the task runs on a worker with nothing installed.)
#[test]
fn a_plain_task_polled_inside_ctx_run_around_block_on_is_unscoped() {
    let mut ctx = Context::new();
    ctx.run(|| Req::id().set(7));
    for (flavor, rt) in [("current_thread", current_thread_runtime()), ("multi_thread", multi_thread_runtime())] {
        let (own, spawned, snapshot_empty) = ctx.run(|| block_on_and_spawn(&rt));
        assert_eq!(own, Ok(7), "{flavor}: the block_on future itself runs in ctx");
        assert_eq!(spawned, Err(UNSCOPED), "{flavor}: a plain task never sees ctx");
        assert!(snapshot_empty, "{flavor}: Context::current() in a plain task is empty");
    }
    assert_eq!(ctx.run(|| Req::id().get()), Some(7));
}

// Before the fix: the LocalSet polls its tasks inside `run_until`'s poll, so they run
// with `ctx` installed and read it (`Ok(8)`).
#[test]
fn plain_spawn_local_children_of_a_local_set_run_in_a_context_are_unscoped() {
    let rt = current_thread_runtime();
    let local = tokio::task::LocalSet::new();
    let mut ctx = Context::new();
    ctx.run(|| Req::id().set(8));
    let (own, child, wrapped) = rt.block_on(
        local
            .run_until(async {
                let own = Req::id().try_get();
                let child = tokio::task::spawn_local(async { Req::id().try_get() }).await.expect("child");
                let wrapped =
                    context_local::task::spawn_local(async { Req::id().try_get() }).await.expect("wrapped child");
                (own, child, wrapped)
            })
            .in_context(ctx),
    );
    assert_eq!(own, Ok(8), "run_until's own future runs in ctx");
    assert_eq!(child, Err(UNSCOPED), "a plain spawn_local child never sees ctx");
    assert_eq!(wrapped, Ok(8), "context_local::task::spawn_local carries a snapshot");
}

// Before the fix: `run_blocking` in a plain task takes an empty snapshot, runs `f`, and
// writes `f`'s writes back into the worker thread's root context, with no
// panic: the next `block_on` on that thread sees 99.
#[test]
fn run_blocking_from_a_plain_task_panics_and_writes_nothing() {
    let rt = current_thread_runtime();
    // This thread drives the runtime, so it is the worker the task runs on.
    Req::id().set(1);
    let outcome = rt.block_on(async {
        tokio::spawn(async {
            context_local::task::run_blocking(|| Req::id().set(99)).await;
        })
        .await
    });
    let root_after = rt.block_on(async { Req::id().get() });
    let error = outcome.expect_err(&format!(
        "run_blocking from a task with no context panics (the worker's root context now holds {root_after:?})"
    ));
    assert!(error.is_panic());
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("<not a string>");
    assert!(message.contains("no context"), "the Unscoped reason: {message}");
    assert_eq!(root_after, Some(1), "the worker's root context is unchanged");
    assert_eq!(Req::id().get(), Some(1));
}

#[derive(ContextLocal)]
struct Guarded {
    value: Val,
}

// Before the fix: the guard restores into whatever context is current where it is
// dropped: the root loses 7, and the saved "nothing" of `ctx` is applied here.
#[test]
fn a_guard_dropped_outside_the_context_it_was_entered_in_changes_nothing() {
    let ledger = Ledger::new();
    Guarded::value().set(ledger.val("seven"));
    let mut ctx = Context::new();
    let guard = ctx.run(|| Guarded { value: ledger.val("one") }.enter());
    drop(guard);
    assert_eq!(Guarded::value().with(text).as_deref(), Some("seven"), "the root context is untouched");
    assert_eq!(ctx.run(|| Guarded::value().with(text)).as_deref(), Some("one"), "ctx keeps the entered value");
    assert_eq!(ledger.balance(), (2, 0));
    drop(ctx);
    assert!(Guarded::value().delete());
    assert_eq!(ledger.balance(), (2, 2));
}

// Before the fix: task B, dropping task A's guard, gets A's saved value ("five")
// restored into its own context.
#[test]
fn a_guard_handed_to_another_local_task_changes_nothing_there() {
    let ledger = Ledger::new();
    let rt = current_thread_runtime();
    let local = tokio::task::LocalSet::new();
    let (first, second) = local.block_on(&rt, async {
        let cell: Rc<RefCell<Option<Entered<Guarded>>>> = Rc::new(RefCell::new(None));
        let (handed, handed_rx) = tokio::sync::oneshot::channel::<()>();
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        let a = tokio::task::spawn_local({
            let (cell, ledger) = (cell.clone(), ledger.clone());
            async move {
                Guarded::value().set(ledger.val("five"));
                let guard = Guarded { value: ledger.val("ten") }.enter();
                *cell.borrow_mut() = Some(guard);
                handed.send(()).expect("task B waits");
                done_rx.await.expect("task B finishes");
                Guarded::value().with(text)
            }
            .in_new_context()
        });
        let b = tokio::task::spawn_local({
            let (cell, ledger) = (cell.clone(), ledger.clone());
            async move {
                Guarded::value().set(ledger.val("twenty"));
                handed_rx.await.expect("task A hands its guard over");
                let guard = cell.borrow_mut().take().expect("the guard");
                drop(guard);
                let seen = Guarded::value().with(text);
                done.send(()).expect("task A waits");
                seen
            }
            .in_new_context()
        });
        (a.await.expect("task A"), b.await.expect("task B"))
    });
    assert_eq!(second.as_deref(), Some("twenty"), "the guard changed nothing in task B's context");
    assert_eq!(first.as_deref(), Some("ten"), "task A's context still holds its values");
    drop(local);
    drop(rt);
    assert_eq!(ledger.balance(), (3, 3), "every value dropped exactly once");
}

#[derive(ContextLocal)]
struct StreamCtx {
    label: String,
}

/// A stream of one item whose destructor records what it reads.
struct Recording {
    items: u32,
    seen_at_drop: Arc<Mutex<Option<Result<String, AccessError>>>>,
}

impl futures::Stream for Recording {
    type Item = Option<String>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        if self.items == 0 {
            return Poll::Ready(None);
        }
        self.items -= 1;
        Poll::Ready(Some(StreamCtx::label().get()))
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        *self.seen_at_drop.lock().unwrap() = Some(StreamCtx::label().try_get());
    }
}

// Before the fix: `InContextStream` has no destructor of its own; the inner stream is
// dropped in whatever context is current (here the thread's root: "root").
#[test]
fn in_context_stream_drops_its_inner_stream_inside_its_context() {
    use futures::StreamExt as _;
    let seen_at_drop = Arc::new(Mutex::new(None));
    StreamCtx::label().set("root".into());
    let mut ctx = Context::new();
    ctx.run(|| StreamCtx::label().set("stream".into()));
    let mut stream = Recording { items: 2, seen_at_drop: seen_at_drop.clone() }.in_context(ctx);
    let first = futures::executor::block_on(stream.next());
    assert_eq!(first, Some(Some("stream".to_string())), "polled inside its context");
    drop(stream);
    assert_eq!(*seen_at_drop.lock().unwrap(), Some(Ok("stream".to_string())), "dropped inside its context");
}

// --- 4. guards and snapshots inside a `Clone` impl run by `get()` ----------

#[derive(ContextLocal)]
struct Outer {
    level: u32,
}

/// What the `Clone` impl of [`Probe`] saw.
#[derive(Default)]
struct InClone {
    guard_panic: Option<String>,
    snapshot: Option<Context>,
}

thread_local! {
    static STASHED: RefCell<Option<Entered<Outer>>> = const { RefCell::new(None) };
    static IN_CLONE: RefCell<InClone> = RefCell::new(InClone::default());
}

/// A value whose `Clone` drops the stashed guard and takes a snapshot.
struct Probe;

impl Clone for Probe {
    fn clone(&self) -> Probe {
        let guard = STASHED.with(|stash| stash.borrow_mut().take());
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(guard)));
        let guard_panic = dropped.err().map(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        let snapshot = Context::current();
        IN_CLONE.with(|seen| *seen.borrow_mut() = InClone { guard_panic, snapshot: Some(snapshot) });
        Probe
    }
}

#[derive(ContextLocal)]
struct Probed {
    probe: Probe,
}

// Before the fix: the guard's drop finds the state marked as being read and silently
// does nothing (the saved value is dropped, nothing restored, no panic), and
// `Context::current()` silently returns an empty context.
#[test]
fn a_guard_dropped_and_a_snapshot_taken_inside_a_clone_run_by_get_never_fail_silently() {
    // Once with a context installed (the fast read path), once in the
    // thread's root context (the slow path).
    for installed in [true, false] {
        let check = || {
            Outer::level().set(1);
            let guard = Outer { level: 2 }.enter();
            STASHED.with(|stash| *stash.borrow_mut() = Some(guard));
            Probed::probe().set(Probe);
            assert!(Probed::probe().get().is_some());
            let InClone { guard_panic, snapshot } = IN_CLONE.with(|seen| std::mem::take(&mut *seen.borrow_mut()));
            match guard_panic {
                None => assert_eq!(
                    Outer::level().get(),
                    Some(1),
                    "installed={installed}: the guard neither panicked nor restored the value it saved"
                ),
                Some(message) => {
                    let lower = message.to_lowercase();
                    assert!(
                        lower.contains("guard") || lower.contains("enter"),
                        "installed={installed}: the panic says what happened: {message:?}"
                    );
                }
            }
            let mut snapshot = snapshot.expect("the Clone impl ran");
            assert!(!snapshot.is_empty(), "installed={installed}: the snapshot taken in Clone is empty");
            assert!(snapshot.run(|| Probed::probe().is_set()), "installed={installed}");
            let now = Outer::level().get();
            assert!(now.is_some());
            assert_eq!(
                snapshot.run(|| Outer::level().get()),
                now,
                "installed={installed}: the snapshot holds the current values"
            );
            Outer::clear();
            Probed::clear();
        };
        if installed {
            Context::new().run(check);
        } else {
            check();
        }
    }
}
