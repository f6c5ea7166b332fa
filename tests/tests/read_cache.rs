//! The read cache behind `get` and `with`, composed with everything that can
//! happen around a read: a warm entry must never answer for another task, a
//! value must be dropped exactly when it would be without the cache, and a
//! closure reading through the cache must keep the field in use.
//!
//! Every test first reads the field twice, so the entry is filled and the
//! second read answered from it, then does the thing that must not be
//! answered from a stale entry.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use context_local::{AccessError, Context, ContextLocal, Field, FutureExt as _};

/// Counts its drops in a shared counter.
#[derive(Clone, Debug)]
struct Counted {
    n: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn counted(n: u64) -> (Counted, Arc<AtomicUsize>) {
    let drops = Arc::new(AtomicUsize::new(0));
    (Counted { n, drops: drops.clone() }, drops)
}

#[derive(ContextLocal)]
struct Request {
    id: u64,
    value: Counted,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct PerThread {
    value: Counted,
}

fn warm<T: Clone + 'static>(field: Field<T>) -> Option<T> {
    let first = field.get();
    assert_eq!(field.with(|_| ()).is_some(), first.is_some());
    field.get()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime")
}

/// The cache never changes a result, so every other test here would pass
/// with it off: this one checks it is on, for each kind of field the derive
/// makes, after reads and after writes.
#[test]
fn the_derives_fields_answer_from_their_cache() {
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::id().set(1);
        assert_eq!(Request::id().get(), Some(1));
        assert!(Request::id().__cache_answers(), "a read fills the entry");
        Request::id().set(2);
        assert!(Request::id().__cache_answers(), "a set of a standard type stays in the entry");
        Request::id().update(|id| *id += 1);
        assert!(Request::id().__cache_answers(), "so does an update");
        assert_eq!(Request::id().get(), Some(3));
        drop(Context::current());
        assert!(Request::id().__cache_answers(), "a snapshot writes back and keeps the entry");
        Context::new().run(|| assert!(!Request::id().__cache_answers(), "another context: not this entry"));
        assert!(!Request::id().__cache_answers(), "a switch makes entries stale");
        Request::value().set(counted(4).0);
        assert_eq!(Request::value().with(|v| v.n), Some(4));
        assert!(Request::value().__cache_answers(), "a read of any type fills the entry");
    });
    std::thread::spawn(|| {
        PerThread::value().set(counted(5).0);
        assert_eq!(PerThread::value().with(|v| v.n), Some(5));
        assert!(PerThread::value().__cache_answers(), "thread scope too");
    })
    .join()
    .expect("thread");
}

#[test]
fn a_plain_task_polled_inside_a_warm_context_sees_no_context() {
    let mut ctx = Context::new();
    let seen = ctx.run(|| {
        Request::id().set(7);
        assert_eq!(warm(Request::id()), Some(7));
        let rt = current_thread();
        rt.block_on(async {
            let plain = tokio::spawn(async { (Request::id().try_get(), Request::id().try_with(|id| *id)) });
            plain.await.expect("task")
        })
    });
    let unscoped = Err(AccessError::Unscoped { field: "Request::id" });
    assert_eq!(seen, (unscoped.clone(), unscoped));
}

#[test]
fn a_local_task_polled_inside_a_warm_task_sees_no_context() {
    let rt = current_thread();
    let seen = rt.block_on(
        async {
            Request::id().set(3);
            assert_eq!(warm(Request::id()), Some(3));
            let local = tokio::task::LocalSet::new();
            let seen =
                local.run_until(async { tokio::task::spawn_local(async { Request::id().try_get() }).await }).await;
            // The owner still reads its value afterwards.
            (seen.expect("task"), Request::id().get())
        }
        .in_new_context(),
    );
    assert_eq!(seen, (Err(AccessError::Unscoped { field: "Request::id" }), Some(3)));
}

#[test]
fn each_context_reads_its_own_value_through_a_warm_entry() {
    Request::id().set(1);
    assert_eq!(warm(Request::id()), Some(1));
    let mut child = Context::current();
    let mut other = Context::new();
    child.run(|| {
        assert_eq!(warm(Request::id()), Some(1));
        Request::id().set(2);
        assert_eq!(warm(Request::id()), Some(2));
        other.run(|| assert_eq!(warm(Request::id()), None));
        assert_eq!(Request::id().get(), Some(2));
    });
    assert_eq!(Request::id().get(), Some(1));
    assert_eq!(child.run(|| Request::id().get()), Some(2));
}

#[test]
fn a_write_drops_the_old_value_at_once_even_with_a_warm_entry() {
    let (old, old_drops) = counted(1);
    let (new, new_drops) = counted(2);
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::value().set(old);
        assert_eq!(warm(Request::value()).map(|v| v.n), Some(1));
        // The clones `warm` made are gone; the stored value is not.
        let clones = old_drops.load(Ordering::SeqCst);
        Request::value().set(new);
        assert_eq!(old_drops.load(Ordering::SeqCst), clones + 1, "set drops the old value itself");
        assert_eq!(Request::value().with(|v| v.n), Some(2));
        assert!(Request::value().delete());
    });
    assert_eq!(new_drops.load(Ordering::SeqCst), 1, "delete drops the value itself");
}

#[test]
fn dropping_a_context_drops_its_values_even_after_warm_reads() {
    let (value, drops) = counted(5);
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::value().set(value);
        assert_eq!(Request::value().with(|v| v.n), Some(5));
        assert_eq!(Request::value().with(|v| v.n), Some(5));
    });
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(ctx);
    assert_eq!(drops.load(Ordering::SeqCst), 1, "no cache entry kept the value alive");
}

#[test]
fn inside_a_cached_with_writes_to_the_field_are_reentrant_and_other_contexts_are_free() {
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::id().set(1);
        warm(Request::id());
        Request::id().with(|id| {
            assert_eq!(*id, 1);
            assert_eq!(Request::id().get(), Some(1), "reads of the field work");
            assert_eq!(Request::id().try_set(2), Err(AccessError::Reentrant { field: "Request::id" }));
            assert_eq!(Request::id().try_take(), Err(AccessError::Reentrant { field: "Request::id" }));
            let enter = catch_unwind(AssertUnwindSafe(|| drop(Request { id: 3, value: counted(0).0 }.enter())));
            assert!(enter.is_err(), "a whole-struct write is reentrant too");
            Context::new().run(|| {
                Request::id().set(4);
                assert_eq!(Request::id().get(), Some(4), "the same field in another context is free");
            });
        });
        Request::id().set(5);
        assert_eq!(Request::id().get(), Some(5));
    });
}

#[test]
fn a_guard_dropped_inside_a_cached_with_leaves_the_closure_its_value_until_it_returns() {
    let (outer, outer_drops) = counted(1);
    let (inner, _inner_drops) = counted(2);
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::value().set(outer);
        let guard = Request { id: 9, value: inner }.enter();
        warm(Request::value());
        let mut guard = Some(guard);
        Request::value().with(|value| {
            assert_eq!(value.n, 2);
            drop(guard.take());
            assert_eq!(value.n, 2, "the closure still has the value it was lent");
            assert_eq!(Request::value().with(|v| v.n), Some(1), "a nested read sees the restored value");
        });
        assert_eq!(Request::value().get().map(|v| v.n), Some(1));
    });
    drop(ctx);
    assert!(outer_drops.load(Ordering::SeqCst) >= 1);
}

#[test]
fn the_displaced_value_is_dropped_when_the_closure_returns() {
    let (outer, _) = counted(1);
    let (inner, inner_drops) = counted(2);
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::value().set(outer);
        let mut guard = Some(Request { id: 9, value: inner }.enter());
        warm(Request::value());
        let before = inner_drops.load(Ordering::SeqCst);
        Request::value().with(|_| {
            drop(guard.take());
            assert_eq!(inner_drops.load(Ordering::SeqCst), before, "still lent to this closure");
        });
        assert_eq!(inner_drops.load(Ordering::SeqCst), before + 1, "dropped as the closure returned");
    });
}

#[test]
fn a_panic_inside_a_cached_with_leaves_the_field_usable() {
    let mut ctx = Context::new();
    ctx.run(|| {
        Request::id().set(1);
        warm(Request::id());
        let panicked = catch_unwind(|| Request::id().with(|_| panic!("inside with")));
        assert!(panicked.is_err());
        Request::id().set(2);
        assert_eq!(warm(Request::id()), Some(2));
    });
}

#[test]
fn thread_scoped_values_are_dropped_once_at_thread_exit_after_warm_reads() {
    let (value, drops) = counted(1);
    std::thread::spawn(move || {
        PerThread::value().set(value);
        assert_eq!(warm(PerThread::value()).map(|v| v.n), Some(1));
        assert_eq!(PerThread::value().with(|v| v.n), Some(1));
    })
    .join()
    .expect("thread");
    // Every clone `warm` made, plus the stored value, dropped once each.
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadNote {
    note: u64,
}

#[derive(ContextLocal)]
struct TaskNote {
    note: String,
}

/// Reads both notes when the thread exits.
struct ReadsAtExit(std::sync::mpsc::Sender<(Option<u64>, Option<String>)>);

impl Drop for ReadsAtExit {
    fn drop(&mut self) {
        let seen = (ThreadNote::note().try_get().ok(), TaskNote::note().try_get().ok());
        let _ = self.0.send(seen);
    }
}

#[test]
fn a_destructor_at_thread_exit_reads_the_last_write() {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        thread_local! {
            static AT_EXIT: std::cell::RefCell<Option<ReadsAtExit>> = const { std::cell::RefCell::new(None) };
        }
        // The library's state first, then the reader: at exit the reader's
        // destructor runs first and reads with the state (and the writes
        // still in the fields' caches) there.
        drop(Context::current());
        AT_EXIT.with_borrow_mut(|slot| *slot = Some(ReadsAtExit(send)));
        for n in 0..3 {
            ThreadNote::note().set(n);
            TaskNote::note().set(format!("note {n}"));
            assert_eq!(ThreadNote::note().get(), Some(n));
        }
    })
    .join()
    .expect("thread");
    let seen = receive.recv().expect("the destructor ran");
    assert_eq!(seen, (Some(2), Some("note 2".to_string())), "the last writes, not older values");
}

macro_rules! many_fields {
    ($name:ident { $($field:ident),* }) => {
        #[derive(ContextLocal)]
        struct $name {
            $($field: u64,)*
        }

        fn many() -> Vec<Field<u64>> {
            vec![$($name::$field()),*]
        }
    };
}

many_fields!(Wide {
    f00,
    f01,
    f02,
    f03,
    f04,
    f05,
    f06,
    f07,
    f08,
    f09,
    f10,
    f11,
    f12,
    f13,
    f14,
    f15,
    f16,
    f17,
    f18,
    f19,
    f20,
    f21,
    f22,
    f23,
    f24,
    f25,
    f26,
    f27,
    f28,
    f29,
    f30,
    f31,
    f32,
    f33,
    f34,
    f35,
    f36,
    f37,
    f38,
    f39
});

#[test]
fn reading_more_fields_than_the_cache_lists_stays_correct() {
    let fields = many();
    let mut ctx = Context::new();
    ctx.run(|| {
        for (n, field) in fields.iter().enumerate() {
            field.set(n as u64);
        }
        for round in 0..3 {
            for (n, field) in fields.iter().enumerate() {
                assert_eq!(field.get(), Some(n as u64 + round));
                assert_eq!(field.with(|v| *v), Some(n as u64 + round));
            }
            for field in &fields {
                field.update(|v| *v += 1);
            }
        }
    });
}

#[test]
fn a_cache_shared_by_two_fields_by_hand_never_mixes_their_values() {
    // Hidden constructors used by hand: the cache is keyed by field, so
    // sharing it costs speed, not correctness.
    thread_local! {
        static SHARED: context_local::__private::Cache<u64> = const { context_local::__private::Cache::new() };
    }
    let first = Field::__cached(field_desc(Request::id()), &SHARED);
    let second = Field::__cached(field_desc(Wide::f00()), &SHARED);
    let mut ctx = Context::new();
    ctx.run(|| {
        first.set(1);
        second.set(2);
        for _ in 0..3 {
            assert_eq!(first.get(), Some(1));
            assert_eq!(second.get(), Some(2));
            assert_eq!(first.with(|v| *v), Some(1));
            assert_eq!(second.with(|v| *v), Some(2));
        }
    });
}

#[test]
fn a_scalar_lent_to_with_is_not_read_in_a_context_installed_inside() {
    // The entry is lent to `with` when the inner `run` changes the state:
    // the copy a scalar read uses must go stale with it.
    let mut outer = Context::new();
    outer.run(|| {
        Request::id().set(1);
        let seen = Request::id().with(|_| {
            let mut inner = Context::new();
            let inside = inner.run(|| Request::id().get());
            (inside, Request::id().get())
        });
        assert_eq!(seen, Some((None, Some(1))));
    });
}

#[test]
fn a_field_named_with_another_fields_cache_never_reads_its_value() {
    // The other field fills its cache (and the copy a scalar read uses);
    // the field named with that cache by hand must not answer from it.
    let real = Request::id();
    let key = real.__cache().expect("the derive gives every field a cache");
    let forged = Field::__cached(field_desc(Wide::f00()), key);
    let mut ctx = Context::new();
    ctx.run(|| {
        real.set(1);
        forged.set(2);
        for n in 0..3 {
            assert_eq!(real.get(), Some(1 + n));
            assert_eq!(forged.get(), Some(2 + n));
            assert_eq!(Wide::f00().get(), Some(2 + n));
            assert_eq!(forged.with(|v| *v), Some(2 + n));
            real.update(|v| *v += 1);
            forged.update(|v| *v += 1);
        }
    });
}

#[test]
fn a_second_cache_for_one_field_by_hand_never_answers_with_an_old_value() {
    thread_local! {
        static OTHER: context_local::__private::Cache<u64> = const { context_local::__private::Cache::new() };
    }
    let mine = Request::id();
    let other = Field::__cached(field_desc(mine), &OTHER);
    let mut ctx = Context::new();
    ctx.run(|| {
        mine.set(1);
        for n in 2..6 {
            assert_eq!(other.get(), Some(n - 1));
            assert_eq!(mine.get(), Some(n - 1));
            other.set(n);
            assert_eq!(mine.get(), Some(n), "the field's own cache saw the other's write");
            mine.update(|v| *v += 10);
            assert_eq!(other.get(), Some(n + 10));
            mine.set(n);
        }
    });
}

/// The descriptor behind a field, through the hidden accessor the derive uses.
fn field_desc(field: Field<u64>) -> &'static context_local::__private::FieldDesc<u64> {
    field.__desc()
}

#[derive(ContextLocal)]
struct PanicNote {
    count: u64,
    text: String,
    #[context_local(no_inherit)]
    own: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Plain(u64);

#[derive(ContextLocal)]
struct PanicPlain {
    value: Plain,
}

/// Panics inside `f` after changing the value to what `change` makes it.
fn update_then_panic<T: 'static>(field: Field<T>, change: impl FnOnce(&mut T)) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        field.update(|value| {
            change(value);
            panic!("inside update");
        })
    }));
    assert!(outcome.is_err(), "the panic goes on");
}

#[test]
fn a_panicking_update_puts_back_the_value_as_the_closure_left_it() {
    let mut ctx = Context::new();
    ctx.run(|| {
        PanicNote::count().set(1);
        PanicNote::text().set("a".to_string());
        PanicNote::own().set(1);
        PanicPlain::value().set(Plain(1));
        ThreadNote::note().set(1);
        // Warm entries first, so the cached paths take the update.
        for _ in 0..2 {
            update_then_panic(PanicNote::count(), |v| *v += 10);
            update_then_panic(PanicNote::text(), |v| v.push('b'));
            update_then_panic(PanicNote::own(), |v| *v += 10);
            update_then_panic(PanicPlain::value(), |v| v.0 += 10);
            update_then_panic(ThreadNote::note(), |v| *v += 10);
        }
        assert_eq!(PanicNote::count().get(), Some(21));
        assert_eq!(PanicNote::text().get().as_deref(), Some("abb"));
        assert_eq!(PanicNote::own().get(), Some(21));
        assert_eq!(PanicPlain::value().get(), Some(Plain(21)));
        assert_eq!(ThreadNote::note().get(), Some(21));
        // And the context has them, not only this thread's cache.
        let snapshot = Context::current();
        let mut child = snapshot;
        child.run(|| {
            assert_eq!(PanicNote::count().get(), Some(21));
            assert_eq!(PanicNote::text().get().as_deref(), Some("abb"));
            assert_eq!(PanicPlain::value().get(), Some(Plain(21)));
        });
    });
}
