//! Runtime tests that need neither the derive nor tokio, so they also run with
//! `--no-default-features`. The descriptors are written by hand, as the
//! derive would generate them.

use crate::private::{Batch, Cache, FieldDesc, Parts, Space, StructDesc};
use crate::{AccessError, Context, ContextLocal, Field};

struct Request {
    id: u64,
    conn: String,
}

thread_local! {
    /// `init` runs on this thread (tests run in parallel, on threads of their own).
    static INITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn init(batch: &mut Batch) {
    INITS.set(INITS.get() + 1);
    Request { id: 0, conn: "fresh".into() }.__store(batch);
}

static REQUEST: StructDesc = StructDesc::new("Request", Space::Shared, Some(init), &[&REQUEST_ID, &REQUEST_CONN]);
thread_local! {
    static REQUEST_ID_CACHE: Cache<u64> = const { Cache::new() };
}
static REQUEST_ID: FieldDesc<u64> = FieldDesc::shared("Request::id", &REQUEST, None).cached(&REQUEST_ID_CACHE);
thread_local! {
    static REQUEST_CONN_CACHE: Cache<String> = const { Cache::new() };
}
static REQUEST_CONN: FieldDesc<String> = FieldDesc::local("Request::conn", &REQUEST, None).cached(&REQUEST_CONN_CACHE);

impl Request {
    fn id() -> Field<u64> {
        Field::__cached(&REQUEST_ID, &REQUEST_ID_CACHE)
    }
    fn conn() -> Field<String> {
        Field::__cached(&REQUEST_CONN, &REQUEST_CONN_CACHE)
    }
}

impl ContextLocal for Request {
    fn __descriptor() -> &'static StructDesc {
        &REQUEST
    }
    fn __store(self, batch: &mut Batch) {
        batch.put(&REQUEST_ID, self.id);
        batch.put(&REQUEST_CONN, self.conn);
    }
    fn __load(parts: &mut Parts) -> Self {
        Request { id: parts.next(&REQUEST_ID), conn: parts.next(&REQUEST_CONN) }
    }
}

struct PerThread {
    hits: u32,
}

static PER_THREAD: StructDesc = StructDesc::new("PerThread", Space::Thread, None, &[&PER_THREAD_HITS]);
thread_local! {
    static PER_THREAD_HITS_CACHE: Cache<u32> = const { Cache::new() };
}
static PER_THREAD_HITS: FieldDesc<u32> =
    FieldDesc::thread("PerThread::hits", &PER_THREAD, Some(|| 0)).cached(&PER_THREAD_HITS_CACHE);

fn per_thread_hits() -> Field<u32> {
    Field::__cached(&PER_THREAD_HITS, &PER_THREAD_HITS_CACHE)
}

impl ContextLocal for PerThread {
    fn __descriptor() -> &'static StructDesc {
        &PER_THREAD
    }
    fn __store(self, batch: &mut Batch) {
        batch.put(&PER_THREAD_HITS, self.hits);
    }
    fn __load(parts: &mut Parts) -> Self {
        PerThread { hits: parts.next(&PER_THREAD_HITS) }
    }
}

#[test]
fn task_scope_init_snapshot_and_no_inherit() {
    let mut ctx = Context::new();
    ctx.run(|| {
        let before = INITS.get();
        assert_eq!(Request::id().get(), Some(0));
        assert_eq!(INITS.get(), before + 1);
        Request::id().set(5);
        let mut child = Context::current();
        assert_eq!(child.run(|| (Request::id().get(), Request::conn().get())), (Some(5), None));
        assert_eq!(INITS.get(), before + 1, "the child inherited the init state");
        let taken = Request::take().expect("every field is set");
        assert_eq!((taken.id, taken.conn.as_str()), (5, "fresh"));
    });
}

#[test]
fn thread_scope_default_and_errors() {
    std::thread::spawn(|| {
        let hits = per_thread_hits();
        assert_eq!(hits.get(), Some(0));
        hits.update(|h| *h += 2);
        assert_eq!(Context::new().run(|| hits.get()), Some(2), "thread scope ignores contexts");
        hits.update(|_| assert_eq!(hits.try_get(), Err(AccessError::Reentrant { field: "PerThread::hits" })));
        PerThread::clear();
        assert!(!hits.is_set());
    })
    .join()
    .unwrap();
}

/// Hidden items used by hand with mismatched fields: `Parts::next` checks the
/// type and panics; it never reads a value as another type.
#[test]
#[should_panic(expected = "no value of the field's type")]
fn mismatched_parts_panic_instead_of_reading_another_type() {
    let mut batch = Batch::default();
    batch.put(&REQUEST_ID, 7u64);
    let items: Vec<_> = batch.into_items().into_iter().map(|(_, value)| value).collect();
    let _: String = Parts { items: items.into_iter() }.next(&REQUEST_CONN);
}

/// A value that counts its drops, may panic when dropped, and may run a hook
/// (a closure stored in a thread-local) when cloned.
#[derive(Debug, PartialEq)]
struct Probe {
    id: u32,
    panic_on_drop: bool,
}

thread_local! {
    static DROPPED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static ON_CLONE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> = const { std::cell::RefCell::new(None) };
}

impl Probe {
    fn new(id: u32) -> Probe {
        Probe { id, panic_on_drop: false }
    }

    fn panicky(id: u32) -> Probe {
        Probe { id, panic_on_drop: true }
    }
}

impl Clone for Probe {
    fn clone(&self) -> Probe {
        if let Some(hook) = ON_CLONE.with(|hook| hook.borrow_mut().take()) {
            hook();
        }
        Probe { id: self.id + 1000, panic_on_drop: false }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        DROPPED.with(|dropped| dropped.borrow_mut().push(self.id));
        if self.panic_on_drop {
            panic!("probe {} panics on drop", self.id);
        }
    }
}

fn dropped() -> Vec<u32> {
    let mut ids = DROPPED.with(|dropped| std::mem::take(&mut *dropped.borrow_mut()));
    ids.sort_unstable();
    ids
}

struct Pair {
    a: Probe,
    b: Probe,
}

static PAIR: StructDesc = StructDesc::new("Pair", Space::Thread, None, &[&PAIR_A, &PAIR_B]);
thread_local! {
    static PAIR_A_CACHE: Cache<Probe> = const { Cache::new() };
}
static PAIR_A: FieldDesc<Probe> = FieldDesc::thread("Pair::a", &PAIR, None).cached(&PAIR_A_CACHE);
thread_local! {
    static PAIR_B_CACHE: Cache<Probe> = const { Cache::new() };
}
static PAIR_B: FieldDesc<Probe> = FieldDesc::thread("Pair::b", &PAIR, None).cached(&PAIR_B_CACHE);

impl ContextLocal for Pair {
    fn __descriptor() -> &'static StructDesc {
        &PAIR
    }
    fn __store(self, batch: &mut Batch) {
        batch.put(&PAIR_A, self.a);
        batch.put(&PAIR_B, self.b);
    }
    fn __load(parts: &mut Parts) -> Self {
        Pair { a: parts.next(&PAIR_A), b: parts.next(&PAIR_B) }
    }
}

struct Shared {
    x: Probe,
    y: Probe,
}

static SHARED: StructDesc = StructDesc::new("Shared", Space::Shared, None, &[&SHARED_X, &SHARED_Y]);
thread_local! {
    static SHARED_X_CACHE: Cache<Probe> = const { Cache::new() };
}
static SHARED_X: FieldDesc<Probe> = FieldDesc::shared("Shared::x", &SHARED, None).cached(&SHARED_X_CACHE);
thread_local! {
    static SHARED_Y_CACHE: Cache<Probe> = const { Cache::new() };
}
static SHARED_Y: FieldDesc<Probe> = FieldDesc::local("Shared::y", &SHARED, None).cached(&SHARED_Y_CACHE);

impl ContextLocal for Shared {
    fn __descriptor() -> &'static StructDesc {
        &SHARED
    }
    fn __store(self, batch: &mut Batch) {
        batch.put(&SHARED_X, self.x);
        batch.put(&SHARED_Y, self.y);
    }
    fn __load(parts: &mut Parts) -> Self {
        Shared { x: parts.next(&SHARED_X), y: parts.next(&SHARED_Y) }
    }
}

fn pair_a() -> Field<Probe> {
    Field::__cached(&PAIR_A, &PAIR_A_CACHE)
}

fn pair_b() -> Field<Probe> {
    Field::__cached(&PAIR_B, &PAIR_B_CACHE)
}

fn shared_x() -> Field<Probe> {
    Field::__cached(&SHARED_X, &SHARED_X_CACHE)
}

fn shared_y() -> Field<Probe> {
    Field::__cached(&SHARED_Y, &SHARED_Y_CACHE)
}

fn watcher() -> Field<Watcher> {
    Field::__cached(&WATCH_WATCHER, &WATCH_WATCHER_CACHE)
}

/// Runs `f` on a fresh thread, so thread-locals and root contexts start empty.
fn on_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(f).join().expect("test thread")
}

#[test]
fn a_guard_dropped_inside_nested_with_leaves_the_lent_value_alive() {
    on_thread(|| {
        let guard = Pair { a: Probe::new(1), b: Probe::new(2) }.enter();
        let seen = pair_a().with(move |a| {
            pair_b().with(move |_| drop(guard));
            a.id
        });
        assert_eq!(seen, Some(1), "the value lent to the outer closure was read after the guard restored");
        assert!(!pair_a().is_set() && !pair_b().is_set(), "the guard's restore won");
        assert_eq!(dropped(), [1, 2], "each value dropped once, after the closures ended");
    });
}

#[test]
fn a_guard_dropped_inside_with_of_inherited_and_no_inherit_fields() {
    on_thread(|| {
        let guard = Shared { x: Probe::new(1), y: Probe::new(2) }.enter();
        let seen = shared_y().with(move |y| {
            let inner = shared_y().with(|again| again.id);
            shared_x().with(move |_| drop(guard));
            (y.id, inner, shared_y().is_set())
        });
        assert_eq!(seen, Some((2, Some(2), false)), "nested reads see the lent value until the restore");
        assert!(!shared_x().is_set() && !shared_y().is_set());
        assert_eq!(dropped(), [1, 2]);
    });
}

#[test]
fn a_restore_inside_update_wins_over_the_updated_value() {
    on_thread(|| {
        shared_x().set(Probe::new(1));
        let guard = Shared { x: Probe::new(2), y: Probe::new(3) }.enter();
        let updated = shared_x().update(move |x| {
            drop(guard);
            x.id = 20;
            x.id
        });
        assert_eq!(updated, Some(20));
        assert_eq!(shared_x().with(|x| x.id), Some(1), "the restored value stays");
        assert_eq!(dropped(), [3, 20], "the updated value was dropped, not put back");
    });
}

#[test]
fn a_guard_dropped_in_another_context_changes_nothing_there() {
    on_thread(|| {
        shared_x().set(Probe::new(7));
        let mut ctx = Context::new();
        let guard = ctx.run(|| Shared { x: Probe::new(1), y: Probe::new(2) }.enter());
        drop(guard);
        assert_eq!(shared_x().with(|x| x.id), Some(7));
        assert_eq!(ctx.run(|| shared_x().with(|x| x.id)), Some(1), "the guard's own context kept its values");
        assert_eq!(dropped(), Vec::<u32>::new(), "nothing was restored, so nothing was displaced");
        drop(ctx);
        assert_eq!(dropped(), [1, 2]);
    });
}

#[test]
fn several_panicking_destructors_are_each_contained() {
    on_thread(|| {
        shared_x().set(Probe::panicky(1));
        shared_y().set(Probe::panicky(2));
        let cleared = std::panic::catch_unwind(|| Shared::clear());
        assert!(cleared.is_err(), "the first panic reaches the caller");
        assert_eq!(dropped(), [1, 2], "both values were dropped");

        let mut ctx = Context::new();
        ctx.run(|| {
            shared_x().set(Probe::panicky(3));
            shared_y().set(Probe::panicky(4));
        });
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.clear())).is_err());
        assert_eq!(dropped(), [3, 4]);
    });
}

#[test]
fn a_panicking_destructor_during_unwinding_does_not_abort() {
    on_thread(|| {
        let guard = Pair { a: Probe::panicky(1), b: Probe::new(2) }.enter();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pair_a().with(move |_| {
                drop(guard);
                panic!("the closure panics while it holds the last count of a panicking value");
            })
        }));
        assert!(outcome.is_err());
        assert_eq!(dropped(), [1, 2]);
    });
}

#[test]
fn values_with_panicking_destructors_are_dropped_at_thread_exit() {
    let ids = on_thread(|| {
        shared_x().set(Probe::panicky(1));
        pair_a().set(Probe::panicky(2));
        pair_b().set(Probe::panicky(3));
        std::thread::spawn(|| {
            shared_x().set(Probe::panicky(4));
            shared_y().set(Probe::panicky(5));
            pair_a().set(Probe::panicky(6));
        })
        .join()
        .expect("the thread exits without aborting the process");
        dropped()
    });
    assert!(ids.is_empty(), "another thread's values are its own: {ids:?}");
}

/// A `no_inherit` value whose destructor reads a sibling field.
struct Watcher;

static WATCHED: std::sync::Mutex<Vec<Option<u64>>> = std::sync::Mutex::new(Vec::new());

impl Drop for Watcher {
    fn drop(&mut self) {
        WATCHED.lock().unwrap().push(Request::id().get());
    }
}

static WATCH: StructDesc = StructDesc::new("Watch", Space::Shared, None, &[&WATCH_WATCHER]);
thread_local! {
    static WATCH_WATCHER_CACHE: Cache<Watcher> = const { Cache::new() };
}
static WATCH_WATCHER: FieldDesc<Watcher> =
    FieldDesc::local("Watch::watcher", &WATCH, None).cached(&WATCH_WATCHER_CACHE);

#[test]
fn a_context_drops_its_values_inside_itself() {
    on_thread(|| {
        Request::id().set(1);
        let mut ctx = Context::new();
        ctx.run(|| {
            Request::id().set(2);
            watcher().set(Watcher);
        });
        drop(ctx);
        assert_eq!(Request::id().get(), Some(1), "the caller's context is back");
    });
    assert_eq!(*WATCHED.lock().unwrap(), [Some(2)], "the destructor saw its own context's sibling");
}

#[test]
fn inside_a_clone_impl_everything_works_a_guard_restores_and_a_snapshot_is_real() {
    on_thread(|| {
        shared_x().set(Probe::new(1));
        pair_a().set(Probe::new(4));
        let guard =
            std::rc::Rc::new(std::cell::RefCell::new(Some(Pair { a: Probe::new(5), b: Probe::new(6) }.enter())));
        let taken = guard.clone();
        let snapshot = std::rc::Rc::new(std::cell::RefCell::new(None));
        let keep = snapshot.clone();
        ON_CLONE.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                *keep.borrow_mut() = Some(Context::current());
                drop(taken.borrow_mut().take());
                shared_y().set(Probe::new(7));
            }))
        });
        let copy = shared_x().get().expect("set");
        assert_eq!(copy.id, 1001, "the clone came back");
        assert_eq!(pair_a().with(|a| a.id), Some(4), "the guard dropped inside Clone restored");
        assert_eq!(shared_y().with(|y| y.id), Some(7), "a write inside Clone worked");
        let mut snapshot = snapshot.borrow_mut().take().expect("the hook ran");
        assert_eq!(snapshot.run(|| shared_x().with(|x| x.id)), Some(1), "a real snapshot");
        assert!(guard.borrow().is_none());
        drop(copy);
        assert_eq!(dropped(), [5, 6, 1001]);
    });
}

/// The cache composed with what can change the state under it: writes that
/// stay in the thread's entry reach snapshots, other contexts, guards and
/// `update`s exactly as writes to the context would; values of other types
/// read through an entry are dropped when their slot lets go of them.
#[test]
fn the_cache_agrees_with_the_context_around_switches_snapshots_and_guards() {
    on_thread(|| {
        let mut ctx = Context::new();
        ctx.run(|| {
            Request::id().set(1);
            Request::id().set(2);
            let mut snapshot = Context::current();
            Request::id().set(3);
            assert_eq!(snapshot.run(|| Request::id().get()), Some(2), "the snapshot took the entry's value");
            assert_eq!(Request::id().get(), Some(3), "the entry is current again after the switch");
            Request::id().update(|id| {
                *id += 1;
                assert_eq!(Request::id().try_get(), Err(AccessError::Reentrant { field: "Request::id" }));
                let mut inside = Context::current();
                assert!(
                    !inside.run(|| Request::id().is_set()),
                    "the value is out of the context while `update` has it"
                );
            });
            assert_eq!(Request::id().get(), Some(4));
            let guard = Request { id: 9, conn: "guard".into() }.enter();
            assert_eq!(Request::id().get(), Some(9));
            Request::id().set(10);
            drop(guard);
            assert_eq!(Request::id().get(), Some(4), "the guard restored what was there before it");
        });
        assert_eq!(ctx.run(|| Request::id().get()), Some(4), "the context kept the last write");
        shared_x().set(Probe::new(1));
        assert_eq!(shared_x().with(|x| x.id), Some(1));
        assert_eq!(shared_x().with(|x| x.id), Some(1));
        shared_x().set(Probe::new(2));
        assert_eq!(dropped(), [1], "set dropped the old value at once, read through an entry or not");
        drop(shared_x().take());
        assert_eq!(dropped(), [2]);
    });
}
