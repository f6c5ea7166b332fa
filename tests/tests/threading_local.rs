//! The seed's `threading.local` tutorial: isolation between threads, per-thread
//! `init` (a `threading.local` subclass), values dropped exactly once at thread
//! exit, and the thread-pool leftovers pitfall.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use context_local::{Context, ContextLocal};

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct LocalData {
    request_id: u32,
}

/// Five threads set their own id, all wait until every one has written, then
/// each reads back its own: a shared global would show the last writer's.
#[test]
fn each_thread_sees_its_own_value() {
    let barrier = Arc::new(Barrier::new(5));
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                LocalData::request_id().set(i);
                barrier.wait();
                LocalData::request_id().get()
            })
        })
        .collect();
    let seen: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(seen, (0..5).map(Some).collect::<Vec<_>>());
}

/// "How it works": the main thread's value is invisible to other threads and
/// unchanged by them.
#[test]
fn other_threads_do_not_see_the_main_value() {
    LocalData::request_id().set(100);
    let other = thread::spawn(|| LocalData::request_id().get()).join().unwrap();
    assert_eq!(other, None);
    let set_elsewhere = thread::spawn(|| {
        LocalData::request_id().set(2);
        LocalData::request_id().get()
    })
    .join()
    .unwrap();
    assert_eq!(set_elsewhere, Some(2));
    assert_eq!(LocalData::request_id().get(), Some(100));
}

static MY_LOCAL_INITS: AtomicUsize = AtomicUsize::new(0);

/// The seed's `MyLocal(threading.local)` with `__init__`.
#[derive(ContextLocal)]
#[context_local(scope = "thread", init = MyLocal::new)]
struct MyLocal {
    value: String,
    initialized: bool,
}

impl MyLocal {
    fn new() -> MyLocal {
        MY_LOCAL_INITS.fetch_add(1, Ordering::SeqCst);
        MyLocal { value: "default".into(), initialized: true }
    }
}

#[test]
fn init_runs_once_per_thread() {
    let before = MY_LOCAL_INITS.load(Ordering::SeqCst);
    thread::spawn(|| {
        assert_eq!(MyLocal::value().get().as_deref(), Some("default"));
        MyLocal::value().set("main".into());
        assert_eq!(MyLocal::value().get().as_deref(), Some("main"));
        assert_eq!(MyLocal::initialized().get(), Some(true));
    })
    .join()
    .unwrap();
    assert_eq!(MY_LOCAL_INITS.load(Ordering::SeqCst), before + 1, "one init for the first thread");
    let fresh = thread::spawn(|| MyLocal::value().get()).join().unwrap();
    assert_eq!(fresh.as_deref(), Some("default"), "a new thread gets a fresh default");
    assert_eq!(MY_LOCAL_INITS.load(Ordering::SeqCst), before + 2, "and its own init");
}

/// Thread scope ignores contexts: `Context::run` does not hide thread values.
#[test]
fn thread_scope_ignores_contexts() {
    thread::spawn(|| {
        LocalData::request_id().set(7);
        assert_eq!(Context::new().run(|| LocalData::request_id().get()), Some(7));
    })
    .join()
    .unwrap();
}

/// `!Send` types are fine in thread scope.
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Cache {
    entries: Rc<RefCell<Vec<u32>>>,
}

#[test]
fn thread_scope_holds_non_send_values() {
    let shared = Rc::new(RefCell::new(vec![1]));
    Cache::entries().set(shared.clone());
    Cache::entries().with(|entries| entries.borrow_mut().push(2));
    assert_eq!(*shared.borrow(), vec![1, 2]);
    assert_eq!(Rc::strong_count(&shared), 2);
    assert!(Cache::entries().delete());
    assert_eq!(Rc::strong_count(&shared), 1);
}

struct Tracked {
    drops: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Resources {
    handle: Tracked,
}

#[derive(ContextLocal)]
struct TaskResources {
    #[context_local(no_inherit)]
    handle: Tracked,
}

/// Values left in thread storage and in the thread's root context are dropped
/// when the thread exits, each exactly once.
#[test]
fn values_are_dropped_exactly_once_at_thread_exit() {
    let drops = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let drops = drops.clone();
            thread::spawn(move || {
                Resources::handle().set(Tracked { drops: drops.clone() });
                TaskResources::handle().set(Tracked { drops: drops.clone() });
                // Replacing drops the old value once, right away.
                Resources::handle().set(Tracked { drops: drops.clone() });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Per thread: one replaced + two left at exit.
    assert_eq!(drops.load(Ordering::SeqCst), 8 * 3);
}

/// The seed's `ThreadPoolExecutor` pitfall: a reused thread shows the previous
/// job's thread-scoped value; running each job in a fresh task-scoped context
/// does not.
#[derive(ContextLocal)]
struct JobContext {
    task_id: u32,
}

#[test]
fn pooled_threads_leak_thread_scope_but_not_fresh_contexts() {
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let rx = Arc::new(Mutex::new(rx));
    let leftovers = Arc::new(Mutex::new(Vec::new()));
    let fresh = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (rx, leftovers, fresh) = (rx.clone(), leftovers.clone(), fresh.clone());
            thread::spawn(move || loop {
                let Ok(task) = rx.lock().unwrap().recv() else { break };
                leftovers.lock().unwrap().push(LocalData::request_id().replace(task));
                Context::new().run(|| {
                    fresh.lock().unwrap().push(JobContext::task_id().get());
                    JobContext::task_id().set(task);
                });
            })
        })
        .collect();
    for task in 0..10 {
        tx.send(task).unwrap();
    }
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    let leftovers = leftovers.lock().unwrap();
    assert_eq!(leftovers.len(), 10);
    assert!(leftovers.iter().filter(|previous| previous.is_some()).count() >= 8, "threads were reused: {leftovers:?}");
    assert!(fresh.lock().unwrap().iter().all(Option::is_none));
}

/// A task-scoped value set on one thread is not seen on another unless the
/// context is carried over explicitly.
#[test]
fn task_scope_needs_an_explicit_carry_between_threads() {
    JobContext::task_id().set(5);
    assert_eq!(thread::spawn(|| JobContext::task_id().get()).join().unwrap(), None);
    assert_eq!(context_local::thread::spawn(|| JobContext::task_id().get()).join().unwrap(), Some(5));
}
