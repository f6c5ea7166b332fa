//! Re-entrancy, `init` failures, destructors that touch context-locals, and
//! thread teardown: errors, never undefined behaviour, `RefCell` panics or
//! aborts.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use context_local::{AccessError, Context, ContextLocal};

#[derive(ContextLocal)]
struct Other {
    value: u32,
}

static SELF_TOUCH: AtomicUsize = AtomicUsize::new(0);

#[derive(ContextLocal)]
#[context_local(init = Initialised::new)]
struct Initialised {
    from_other: Option<u32>,
    own_read: Option<AccessError>,
}

impl Initialised {
    fn new() -> Initialised {
        SELF_TOUCH.fetch_add(1, Ordering::SeqCst);
        // Another struct: fine. Its own field: `Reentrant`.
        Initialised { from_other: Other::value().get(), own_read: Initialised::own_read().try_get().err() }
    }
}

#[test]
fn init_may_use_other_structs_but_not_its_own() {
    Context::new().run(|| {
        Other::value().set(5);
        assert_eq!(Initialised::from_other().get(), Some(Some(5)));
        assert_eq!(
            Initialised::own_read().get(),
            Some(Some(AccessError::Reentrant { field: "Initialised::own_read" }))
        );
    });
}

static FLAKY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(ContextLocal)]
#[context_local(init = Flaky::new)]
struct Flaky {
    value: u32,
}

impl Flaky {
    fn new() -> Flaky {
        if FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("first init fails");
        }
        Flaky { value: 1 }
    }
}

#[test]
fn a_panicking_init_stores_nothing_and_runs_again() {
    Context::new().run(|| {
        assert!(catch_unwind(|| Flaky::value().get()).is_err());
        assert!(!Flaky::value().is_set());
        assert_eq!(Flaky::value().get(), Some(1));
        assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 2);
    });
}

#[derive(ContextLocal)]
struct Numbers {
    list: Vec<u32>,
    total: u32,
}

#[test]
fn update_may_use_other_fields_but_not_its_own() {
    Context::new().run(|| {
        Numbers::list().set(vec![1, 2]);
        Numbers::list().update(|list| {
            list.push(3);
            Numbers::total().set(list.iter().sum());
            assert_eq!(Numbers::list().try_get(), Err(AccessError::Reentrant { field: "Numbers::list" }));
            assert_eq!(Numbers::list().try_with(|l| l.len()), Err(AccessError::Reentrant { field: "Numbers::list" }));
            let panic = catch_unwind(|| Numbers::list().set(vec![])).unwrap_err();
            let text = panic.downcast_ref::<String>().unwrap();
            assert!(text.contains("Numbers::list") && text.contains("inside its own"), "{text}");
        });
        assert_eq!(Numbers::list().get(), Some(vec![1, 2, 3]));
        assert_eq!(Numbers::total().get(), Some(6));
    });
}

#[test]
fn with_allows_reads_of_the_same_field_but_not_writes() {
    Context::new().run(|| {
        Numbers::list().set(vec![4]);
        let len = Numbers::list().with(|list| {
            assert_eq!(Numbers::list().get(), Some(vec![4]));
            assert_eq!(Numbers::list().with(|again| again.len()), Some(1));
            assert!(Numbers::list().is_set());
            assert_eq!(
                Numbers::list().try_update(|l| l.clear()),
                Err(AccessError::Reentrant { field: "Numbers::list" })
            );
            Numbers::total().set(1);
            list.len()
        });
        assert_eq!(len, Some(1));
        assert_eq!(Numbers::list().get(), Some(vec![4]));
    });
}

#[test]
fn a_panic_inside_update_puts_the_value_back() {
    Context::new().run(|| {
        Numbers::list().set(vec![1]);
        let result = catch_unwind(AssertUnwindSafe(|| {
            Numbers::list().update(|list| {
                list.push(2);
                panic!("inside update");
            })
        }));
        assert!(result.is_err());
        assert_eq!(Numbers::list().get(), Some(vec![1, 2]));
        Numbers::list().update(|list| list.push(3));
        assert_eq!(Numbers::list().get(), Some(vec![1, 2, 3]));
    });
}

#[derive(ContextLocal)]
struct Slots {
    #[context_local(no_inherit)]
    guard: Noisy,
    log: Vec<String>,
}

/// A value whose destructor writes another field and reads the field it was
/// displaced from.
struct Noisy(&'static str);

impl Drop for Noisy {
    fn drop(&mut self) {
        let current = Slots::guard().try_with(|g| g.0).ok();
        Slots::log().push(format!("dropped {} while field held {:?}", self.0, current));
    }
}

#[test]
fn displaced_values_are_dropped_after_the_storage_is_released() {
    Context::new().run(|| {
        Slots::guard().set(Noisy("first"));
        Slots::guard().set(Noisy("second"));
        Slots::guard().delete();
        let log = Slots::log().get().unwrap();
        assert_eq!(log, ["dropped first while field held Some(\"second\")", "dropped second while field held None"]);
    });
}

#[derive(ContextLocal)]
struct Computed {
    #[context_local(default = Computed::recursive())]
    value: u32,
}

impl Computed {
    fn recursive() -> u32 {
        match Computed::value().try_get() {
            Err(AccessError::Reentrant { .. }) => 7,
            other => panic!("expected Reentrant, got {other:?}"),
        }
    }
}

#[test]
fn a_default_reading_its_own_field_is_reentrant_not_recursion() {
    Context::new().run(|| assert_eq!(Computed::value().get(), Some(7)));
}

#[derive(ContextLocal)]
struct Entering {
    id: u32,
    name: String,
}

#[test]
fn entered_restores_values_and_init_state() {
    Context::new().run(|| {
        Entering::id().set(1);
        {
            let _guard = Entering { id: 2, name: "inner".into() }.enter();
            assert_eq!(Entering::id().get(), Some(2));
            assert_eq!(Entering::name().get().as_deref(), Some("inner"));
        }
        assert_eq!(Entering::id().get(), Some(1));
        assert_eq!(Entering::name().get(), None);
    });
}

#[test]
fn take_moves_everything_or_nothing() {
    Context::new().run(|| {
        Entering::id().set(1);
        assert!(Entering::take().is_none());
        assert_eq!(Entering::id().get(), Some(1));
        Entering::name().set("n".into());
        let taken = Entering::take().unwrap();
        assert_eq!((taken.id, taken.name.as_str()), (1, "n"));
        assert!(!Entering::id().is_set() && !Entering::name().is_set());
    });
}

// --- thread teardown -------------------------------------------------------

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Teardown {
    watcher: Watcher,
    flag: u32,
}

struct Watcher(Arc<Mutex<Vec<Result<u32, AccessError>>>>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(Teardown::flag().try_get());
    }
}

struct OtherCrateLocal(Arc<Mutex<Vec<Result<u32, AccessError>>>>);

impl Drop for OtherCrateLocal {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(Teardown::flag().try_get());
    }
}

thread_local! {
    static OTHER: Cell<Option<OtherCrateLocal>> = const { Cell::new(None) };
}

#[test]
fn accesses_during_thread_exit_are_destroyed_not_aborts() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = seen.clone();
    std::thread::spawn(move || {
        // Touch the state first so its destructor is registered before the
        // other thread-local's and therefore runs after it... or before it:
        // either way, every read must be `Ok` or `Destroyed`, never an abort.
        Teardown::flag().set(3);
        Teardown::watcher().set(Watcher(inner.clone()));
        OTHER.with(|other| other.set(Some(OtherCrateLocal(inner))));
    })
    .join()
    .expect("the thread exits cleanly");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "both destructors ran: {seen:?}");
    assert!(
        seen.contains(&Err(AccessError::Destroyed { field: "Teardown::flag" })),
        "the value dropped with the storage sees Destroyed: {seen:?}"
    );
    assert!(seen.iter().all(|r| matches!(r, Ok(3) | Err(AccessError::Destroyed { .. }))), "{seen:?}");
}

struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        // A plain method during teardown panics with the Destroyed text; the
        // storage's destructor contains it rather than aborting.
        let _ = Teardown::flag().get();
    }
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Fragile {
    value: PanicsOnDrop,
}

#[test]
fn a_panicking_destructor_at_thread_exit_does_not_abort() {
    let joined = std::thread::spawn(|| Fragile::value().set(PanicsOnDrop)).join();
    assert!(joined.is_ok());
}

/// A value that records its drop and checks it is still intact when read.
#[derive(Clone)]
struct Tracked {
    payload: String,
    drops: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(payload: &str, drops: &Arc<AtomicUsize>) -> Tracked {
        Tracked { payload: payload.to_string(), drops: drops.clone() }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(ContextLocal)]
struct Lent {
    shared: Tracked,
    #[context_local(no_inherit)]
    owned: Tracked,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct LentThread {
    value: Tracked,
}

// `with` lends the value by address (no clone, no reference count). These
// tests displace the value while a closure reads it, through every path that
// does not go through the field's own (refused) writes; the value must stay
// readable until the closure returns, then be dropped exactly once.

#[test]
fn a_guard_dropped_inside_with_keeps_the_read_value_alive() {
    let drops = Arc::new(AtomicUsize::new(0));
    Context::new().run(|| {
        let guard = Lent { shared: Tracked::new("entered", &drops), owned: Tracked::new("owned", &drops) }.enter();
        let seen = Lent::shared().with(|value| {
            let holder = Some(guard);
            drop(holder); // unsets both fields, displacing the value being read
            assert_eq!(drops.load(Ordering::SeqCst), 1, "only the unread field is dropped so far");
            assert!(!Lent::shared().is_set());
            value.payload.clone()
        });
        assert_eq!(seen.as_deref(), Some("entered"));
        assert_eq!(drops.load(Ordering::SeqCst), 2, "the read value is dropped once the read ends");
    });
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn an_owned_value_displaced_inside_with_stays_alive() {
    let drops = Arc::new(AtomicUsize::new(0));
    Context::new().run(|| {
        let guard = Lent { shared: Tracked::new("s", &drops), owned: Tracked::new("owned", &drops) }.enter();
        let len = Lent::owned().with(|value| {
            drop(guard);
            assert_eq!(drops.load(Ordering::SeqCst), 1, "the read value is kept until the read ends");
            // Write around it, so the storage changes under the reader.
            Lent::shared().set(Tracked::new("replacement", &drops));
            value.payload.len()
        });
        assert_eq!(len, Some(5));
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert!(Lent::shared().delete());
    });
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

#[test]
fn a_thread_value_displaced_inside_with_stays_alive() {
    let drops = Arc::new(AtomicUsize::new(0));
    std::thread::spawn({
        let drops = drops.clone();
        move || {
            let guard = LentThread { value: Tracked::new("outer", &drops) }.enter();
            let inner = LentThread { value: Tracked::new("inner", &drops) }.enter();
            let seen = LentThread::value().with(|value| {
                drop(inner); // restores "outer", displacing "inner"
                assert_eq!(drops.load(Ordering::SeqCst), 0, "the read value is kept until the read ends");
                assert_eq!(LentThread::value().with(|now| now.payload.clone()).as_deref(), Some("outer"));
                value.payload.clone()
            });
            assert_eq!(seen.as_deref(), Some("inner"));
            assert_eq!(drops.load(Ordering::SeqCst), 1);
            drop(guard);
        }
    })
    .join()
    .expect("thread");
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn writes_to_a_field_being_read_are_refused_and_drop_nothing() {
    let drops = Arc::new(AtomicUsize::new(0));
    Context::new().run(|| {
        Lent::shared().set(Tracked::new("kept", &drops));
        Lent::shared().with(|value| {
            assert_eq!(
                Lent::shared().try_update(|v| v.payload.push('!')),
                Err(AccessError::Reentrant { field: "Lent::shared" })
            );
            let take = catch_unwind(AssertUnwindSafe(|| Lent::shared().take()));
            assert!(take.is_err(), "take of a field being read panics with Reentrant");
            let clear = catch_unwind(AssertUnwindSafe(Lent::clear));
            assert!(clear.is_err(), "clearing a struct being read panics with Reentrant");
            assert_eq!(value.payload, "kept");
            assert_eq!(drops.load(Ordering::SeqCst), 0);
        });
        assert_eq!(Lent::shared().with(|v| v.payload.clone()).as_deref(), Some("kept"));
    });
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}
