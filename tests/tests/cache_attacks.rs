//! Composed operations against the per-thread, per-field cache, written as
//! attacks from the README and the contract alone: values set then read from
//! everywhere else (snapshots, spawned children, `run_blocking`, threads,
//! streams), isolation with a warm cache, re-entrancy inside closures, when
//! displaced values are dropped (`Arc<str>` counts show it), many fields and
//! deep nesting, and a small multi-threaded service.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use context_local::{AccessError, Context, ContextLocal, FutureExt as _};

fn cur_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}
fn mt_rt(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
}

// ---------------------------------------------------------------------------
// 1. A value set then read from somewhere else
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct S1 {
    n: u64,
    s: String,
    v: Vec<u64>,
    o: Option<u64>,
    #[context_local(no_inherit)]
    local: u64,
    #[context_local(default = 7)]
    d: u64,
}

#[test]
fn snapshot_right_after_set_and_update_sees_the_write() {
    S1::v().set(vec![]);
    for i in 0..200u64 {
        S1::n().set(i);
        S1::s().set(format!("s{i}"));
        S1::v().update(|v| v.push(i));
        S1::o().set(Some(i));
        S1::local().set(i);
        let mut snap = Context::current();
        snap.run(|| {
            assert_eq!(S1::n().get(), Some(i));
            assert_eq!(S1::s().get(), Some(format!("s{i}")));
            assert_eq!(S1::v().with(|v| *v.last().unwrap()), Some(i));
            assert_eq!(S1::o().get(), Some(Some(i)));
            assert_eq!(S1::local().get(), None, "no_inherit must not be in a snapshot");
        });
        // snapshot independence both ways, with warm entries
        assert_eq!(S1::n().get(), Some(i));
        snap.run(|| S1::n().set(1000 + i));
        assert_eq!(S1::n().get(), Some(i));
        S1::n().update(|n| *n += 1);
        snap.run(|| assert_eq!(S1::n().get(), Some(1000 + i)));
        assert_eq!(S1::n().get(), Some(i + 1));
        assert_eq!(S1::local().get(), Some(i));
    }
}

#[test]
fn update_then_snapshot_then_update_again_interleaved() {
    S1::n().set(0);
    let mut snaps = Vec::new();
    for i in 1..=100u64 {
        S1::n().update(|n| *n += 1);
        snaps.push((i, Context::current()));
        // warm read between
        assert_eq!(S1::n().get(), Some(i));
    }
    for (i, mut s) in snaps {
        s.run(|| assert_eq!(S1::n().get(), Some(i)));
    }
}

#[test]
fn set_in_root_then_run_other_context_then_back() {
    S1::n().set(5);
    assert_eq!(S1::n().get(), Some(5));
    let mut other = Context::new();
    other.run(|| {
        assert_eq!(S1::n().get(), None);
        S1::n().set(6);
        assert_eq!(S1::n().get(), Some(6));
    });
    assert_eq!(S1::n().get(), Some(5));
    S1::n().set(8);
    other.run(|| assert_eq!(S1::n().get(), Some(6)));
    assert_eq!(S1::n().get(), Some(8));
    // pending write inside run, read outside of run via a fresh run
    other.run(|| S1::n().update(|n| *n += 100));
    other.run(|| assert_eq!(S1::n().get(), Some(106)));
}

#[test]
fn defaults_after_set_delete_take_with_warm_cache() {
    assert_eq!(S1::d().get(), Some(7));
    S1::d().set(9);
    assert!(S1::d().is_set());
    assert_eq!(S1::d().get(), Some(9));
    assert!(S1::d().delete());
    assert!(!S1::d().is_set());
    assert_eq!(S1::d().get(), Some(7));
    S1::d().set(10);
    assert_eq!(S1::d().take(), Some(10));
    assert_eq!(S1::d().replace(11), None);
    assert_eq!(S1::d().replace(12), Some(11));
    S1::d().update(|d| *d += 1);
    assert_eq!(S1::d().try_get(), Ok(13));
    S1::d().set(20);
    assert_eq!(S1::d().take(), Some(20));
    assert!(!S1::d().is_set());
    // update on unset default field starts from the default
    assert_eq!(
        S1::d().update(|d| {
            *d += 1;
            *d
        }),
        Some(8)
    );
}

#[test]
fn vec_stack_ops_mix_with_cached_update() {
    S1::v().set(vec![]);
    S1::v().update(|v| v.push(1));
    S1::v().push(2);
    S1::v().update(|v| v.push(3));
    assert_eq!(S1::v().top(), Some(3));
    assert_eq!(S1::v().pop(), Some(3));
    S1::v().update(|v| v.push(4));
    assert_eq!(S1::v().get(), Some(vec![1, 2, 4]));
    assert_eq!(S1::v().pop(), Some(4));
    assert_eq!(S1::v().pop(), Some(2));
    S1::v().update(|v| v.push(5));
    assert_eq!(S1::v().with(|v| v.clone()), Some(vec![1, 5]));
}

#[test]
fn task_spawn_children_see_write_made_just_before_spawn() {
    let rt = mt_rt(2);
    rt.block_on(
        async {
            S1::s().set(String::new());
            for i in 0..300u64 {
                S1::n().set(i);
                S1::s().update(|s| s.push('x'));
                S1::local().set(i);
                let want_s = S1::s().get().unwrap();
                let h = context_local::task::spawn(async move {
                    tokio::task::yield_now().await;
                    let n = S1::n().get();
                    let s = S1::s().get();
                    let l = S1::local().get();
                    S1::n().set(9999);
                    (n, s, l)
                });
                let (n, s, l) = h.await.unwrap();
                assert_eq!(n, Some(i));
                assert_eq!(s, Some(want_s));
                assert_eq!(l, None);
                assert_eq!(S1::n().get(), Some(i), "child's write leaked into parent");
            }
        }
        .in_new_context(),
    );
}

#[test]
fn yield_between_set_and_read_on_multithread_runtime() {
    let rt = mt_rt(4);
    rt.block_on(async {
        let mut hs = Vec::new();
        for t in 0..16u64 {
            hs.push(tokio::spawn(
                async move {
                    for i in 0..500u64 {
                        let val = t * 1_000_000 + i;
                        S1::n().set(val);
                        S1::o().set(Some(val));
                        S1::s().set(val.to_string());
                        tokio::task::yield_now().await;
                        assert_eq!(S1::n().get(), Some(val));
                        S1::n().update(|n| *n += 1);
                        tokio::task::yield_now().await;
                        assert_eq!(S1::n().get(), Some(val + 1));
                        assert_eq!(S1::o().get(), Some(Some(val)));
                        assert_eq!(S1::s().get(), Some(val.to_string()));
                    }
                }
                .in_new_context(),
            ));
        }
        for h in hs {
            h.await.unwrap();
        }
    });
}

#[test]
fn spawn_blocking_and_thread_spawn_see_write_made_just_before() {
    let rt = mt_rt(2);
    rt.block_on(
        async {
            S1::v().set(vec![]);
            for i in 0..100u64 {
                S1::n().set(i);
                S1::v().update(|v| v.push(i));
                let got = context_local::task::spawn_blocking(|| (S1::n().get(), S1::v().with(|v| v.last().copied())))
                    .await
                    .unwrap();
                assert_eq!(got, (Some(i), Some(Some(i))));
                S1::n().update(|n| *n += 1);
                let got = context_local::thread::spawn(|| {
                    let r = S1::n().get();
                    S1::n().set(0);
                    r
                })
                .join()
                .unwrap();
                assert_eq!(got, Some(i + 1));
                assert_eq!(S1::n().get(), Some(i + 1));
            }
        }
        .in_new_context(),
    );
}

#[test]
fn thread_spawn_from_root_after_pending_set() {
    for i in 0..50u64 {
        S1::n().set(i);
        S1::s().set("x".repeat(i as usize));
        let (n, s) = context_local::thread::spawn(|| (S1::n().get(), S1::s().get())).join().unwrap();
        assert_eq!(n, Some(i));
        assert_eq!(s, Some("x".repeat(i as usize)));
    }
}

#[test]
fn run_blocking_sees_pending_writes_and_writes_back_cached_writes() {
    let rt = mt_rt(2);
    rt.block_on(
        async {
            S1::n().set(1);
            S1::v().set(vec![]);
            for i in 0..100u64 {
                S1::n().update(|n| *n += 1);
                S1::v().update(|v| v.push(i));
                let want = i + 2;
                let seen = context_local::task::run_blocking(move || {
                    let seen = S1::n().get();
                    S1::n().update(|n| *n *= 2);
                    S1::v().update(|v| v.push(1000 + i));
                    S1::s().set(format!("rb{i}"));
                    // warm read of the write-back value inside
                    assert_eq!(S1::n().get(), Some(want * 2));
                    seen
                })
                .await;
                assert_eq!(seen, Some(want));
                assert_eq!(S1::n().get(), Some(want * 2), "run_blocking write-back lost");
                assert_eq!(S1::s().get(), Some(format!("rb{i}")));
                assert_eq!(S1::v().with(|v| v[v.len() - 2..].to_vec()), Some(vec![i, 1000 + i]));
                S1::n().set(i + 2);
            }
        }
        .in_new_context(),
    );
}

#[test]
fn run_blocking_write_back_when_closure_panics_after_cached_set() {
    let rt = mt_rt(2);
    rt.block_on(
        async {
            S1::n().set(1);
            let h = context_local::task::spawn(async {
                S1::n().set(2);
                let r = context_local::task::run_blocking(|| {
                    S1::n().set(3);
                    S1::s().set("p".into());
                    panic!("boom");
                })
                .await;
                r
            });
            assert!(h.await.is_err());
            // parent unchanged
            assert_eq!(S1::n().get(), Some(1));
            // Now in-task, catch the panic with catch_unwind around poll
            S1::v().set(vec![]);
            let r = futures::FutureExt::catch_unwind(AssertUnwindSafe(context_local::task::run_blocking(|| {
                S1::n().set(3);
                S1::s().set("p".into());
                S1::v().update(|v| v.push(77));
                panic!("boom");
            })))
            .await;
            assert!(r.is_err());
            assert_eq!(S1::n().get(), Some(3), "write-back on panic lost the cached set");
            assert_eq!(S1::s().get(), Some("p".to_string()));
            assert_eq!(S1::v().get(), Some(vec![77]));
        }
        .in_new_context(),
    );
}

#[test]
fn joinset_helpers_see_write_made_just_before() {
    use context_local::task::JoinSetExt;
    let rt = mt_rt(2);
    rt.block_on(
        async {
            let mut set = tokio::task::JoinSet::new();
            S1::o().set(None);
            for i in 0..100u64 {
                S1::n().set(i);
                S1::o().update(|o| *o = Some(i));
                set.spawn_in_context(async move {
                    tokio::task::yield_now().await;
                    (i, S1::n().get(), S1::o().get())
                });
                S1::n().set(i + 1000);
                set.spawn_blocking_in_context(move || (i + 1000, S1::n().get(), S1::o().get()));
            }
            let mut count = 0;
            while let Some(r) = set.join_next().await {
                let (want, n, o) = r.unwrap();
                assert_eq!(n, Some(want));
                assert_eq!(o, Some(Some(want % 1000)));
                count += 1;
            }
            assert_eq!(count, 200);
        }
        .in_new_context(),
    );
}

#[test]
fn stream_in_current_context_sees_write_and_keeps_its_own_writes() {
    use context_local::StreamExt as _;
    use futures::StreamExt as _;
    let rt = mt_rt(2);
    rt.block_on(
        async {
            S1::n().set(10);
            let st = futures::stream::iter(0..50u64)
                .then(|i| async move {
                    tokio::task::yield_now().await;
                    let before = S1::n().get().unwrap();
                    S1::n().update(|n| *n += 1);
                    (i, before)
                })
                .in_current_context();
            // parent writes after creating the stream must not be seen by it
            S1::n().set(500);
            let out: Vec<(u64, u64)> = st.collect().await;
            for (i, before) in out {
                assert_eq!(before, 10 + i);
            }
            assert_eq!(S1::n().get(), Some(500));
        }
        .in_new_context(),
    );
}

#[test]
fn in_context_future_keeps_pending_writes_across_awaits_and_into_context() {
    let rt = cur_rt();
    let fut = async {
        S1::n().set(1);
        tokio::task::yield_now().await;
        S1::n().update(|n| *n += 1);
        S1::s().set("a".into());
        tokio::task::yield_now().await;
        S1::n().update(|n| *n += 1);
    }
    .in_new_context();
    let mut fut = Box::pin(fut);
    rt.block_on(fut.as_mut());
    let mut ctx = fut.as_mut().take_context();
    ctx.run(|| {
        assert_eq!(S1::n().get(), Some(3));
        assert_eq!(S1::s().get(), Some("a".to_string()));
    });
}

// thread scope -------------------------------------------------------------

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct T1 {
    n: u64,
    s: String,
    #[context_local(default = 3)]
    d: u64,
}

#[test]
fn thread_scope_ignores_contexts_with_pending_writes() {
    T1::n().set(1);
    let mut c = Context::new();
    c.run(|| {
        assert_eq!(T1::n().get(), Some(1));
        T1::n().update(|n| *n += 1);
    });
    assert_eq!(T1::n().get(), Some(2));
    let mut snap = Context::current();
    T1::n().set(3);
    snap.run(|| assert_eq!(T1::n().get(), Some(3)));
    let other = std::thread::spawn(|| T1::n().get()).join().unwrap();
    assert_eq!(other, None);
    let other = context_local::thread::spawn(|| T1::n().get()).join().unwrap();
    assert_eq!(other, None, "thread-scoped value crossed into a thread::spawn child");
    assert_eq!(T1::d().get(), Some(3));
    T1::d().set(4);
    assert_eq!(T1::d().take(), Some(4));
    assert_eq!(T1::d().get(), Some(3));
}

#[test]
fn thread_scope_in_tokio_tasks_shares_the_worker_thread() {
    let rt = cur_rt();
    rt.block_on(async {
        T1::s().set("main".into());
        let h = tokio::spawn(async {
            // thread scope ignores contexts: a plain task on the same thread sees it
            T1::s().get()
        });
        assert_eq!(h.await.unwrap(), Some("main".to_string()));
    });
}

// init ---------------------------------------------------------------------

static INIT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(ContextLocal, Clone, Debug, PartialEq)]
#[context_local(init = SI::fresh)]
struct SI {
    a: u64,
    b: String,
    c: Option<u64>,
}
impl SI {
    fn fresh() -> Self {
        INIT_RUNS.fetch_add(1, Ordering::SeqCst);
        SI { a: 1, b: "init".into(), c: Some(1) }
    }
}

#[test]
fn set_on_fresh_context_runs_init_once_and_keeps_the_set_value() {
    let mut c = Context::new();
    let before = INIT_RUNS.load(Ordering::SeqCst);
    c.run(|| {
        SI::a().set(5);
        assert_eq!(SI::b().get(), Some("init".to_string()));
        assert_eq!(SI::a().get(), Some(5), "init overwrote the cached set");
        let mut snap = Context::current();
        snap.run(|| {
            assert_eq!(SI::a().get(), Some(5));
            assert_eq!(SI::c().get(), Some(Some(1)));
        });
    });
    assert_eq!(INIT_RUNS.load(Ordering::SeqCst) - before, 1);

    // snapshot right after a set that triggered init
    let mut c2 = Context::new();
    let mut snap = c2.run(|| {
        SI::b().update(|b| b.push('!'));
        Context::current()
    });
    snap.run(|| {
        assert_eq!(SI::current(), Some(SI { a: 1, b: "init!".into(), c: Some(1) }));
    });
    // S::current / S::take / S::clear after pending writes
    c2.run(|| {
        SI::a().set(9);
        assert_eq!(SI::current(), Some(SI { a: 9, b: "init!".into(), c: Some(1) }));
        SI::c().set(None);
        SI::a().update(|a| *a += 1);
        assert_eq!(SI::take(), Some(SI { a: 10, b: "init!".into(), c: None }));
        assert_eq!(SI::a().get(), None);
        assert!(!SI::b().is_set());
        SI::a().set(3);
        SI::clear();
        assert!(!SI::a().is_set());
        let n = INIT_RUNS.load(Ordering::SeqCst);
        assert_eq!(SI::a().get(), Some(1), "init must run again after clear");
        assert_eq!(INIT_RUNS.load(Ordering::SeqCst), n + 1);
    });
}

#[test]
fn entered_guard_captures_and_restores_pending_values() {
    let mut c = Context::new();
    c.run(|| {
        SI::a().set(50);
        SI::b().update(|b| b.push('?'));
        {
            let _g = SI { a: 2, b: "g".into(), c: None }.enter();
            assert_eq!(SI::a().get(), Some(2));
            SI::a().set(3); // a pending write inside the guard
            SI::a().update(|a| *a += 1);
        }
        assert_eq!(SI::a().get(), Some(50));
        assert_eq!(SI::b().get(), Some("init?".to_string()));
        assert_eq!(SI::c().get(), Some(Some(1)));
    });
}

// ---------------------------------------------------------------------------
// 2. Isolation
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct S2 {
    secret: u64,
    name: String,
    #[context_local(no_inherit)]
    nl: u64,
    #[context_local(default = 42)]
    d: u64,
}

#[test]
fn plain_task_inside_ctx_run_block_on_is_unscoped_with_warm_cache() {
    let rt = cur_rt();
    let mut ctx = Context::new();
    ctx.run(|| {
        S2::secret().set(1234);
        S2::name().set("owner".into());
        S2::nl().set(5);
        // warm
        assert_eq!(S2::secret().get(), Some(1234));
        assert_eq!(S2::secret().get(), Some(1234));
        let r = rt.block_on(async {
            // the block_on future itself uses ctx
            assert_eq!(S2::secret().get(), Some(1234));
            S2::secret().set(99);
            assert_eq!(S2::secret().get(), Some(99));
            S2::name().with(|n| assert_eq!(n, "owner"));
            tokio::spawn(async {
                (
                    S2::secret().try_get(),
                    S2::name().try_with(|n| n.clone()),
                    S2::nl().try_get(),
                    S2::d().try_get(),
                    S2::secret().try_set(1),
                )
            })
            .await
            .unwrap()
        });
        let unscoped = |f| AccessError::Unscoped { field: f };
        assert_eq!(r.0, Err(unscoped("S2::secret")));
        assert_eq!(r.1, Err(unscoped("S2::name")));
        assert_eq!(r.2, Err(unscoped("S2::nl")));
        assert_eq!(r.3, Err(unscoped("S2::d")));
        assert_eq!(r.4, Err(unscoped("S2::secret")));
        assert_eq!(S2::secret().get(), Some(99));
    });
}

#[test]
fn plain_task_polled_right_after_owner_write_without_yield() {
    // The owner writes then the runtime polls a plain task on the same thread
    // with no library switch in between.
    let rt = cur_rt();
    let mut ctx = Context::new();
    ctx.run(|| {
        rt.block_on(async {
            for i in 0..200u64 {
                S2::secret().set(i);
                let _ = S2::secret().get();
                let h = tokio::spawn(async { S2::secret().try_get() });
                // poll it while the owner has a pending, warm write
                let r = h.await.unwrap();
                assert_eq!(r, Err(AccessError::Unscoped { field: "S2::secret" }), "iteration {i}");
                S2::secret().update(|s| *s += 1);
                let h = tokio::spawn(async { S2::secret().try_with(|s| *s) });
                assert!(matches!(h.await.unwrap(), Err(AccessError::Unscoped { .. })));
            }
        })
    });
}

#[test]
fn plain_task_on_root_context_of_thread_is_unscoped() {
    let rt = cur_rt();
    S2::secret().set(77);
    assert_eq!(S2::secret().get(), Some(77));
    let r = rt.block_on(async {
        assert_eq!(S2::secret().get(), Some(77));
        S2::secret().set(78);
        tokio::spawn(async { S2::secret().try_get() }).await.unwrap()
    });
    assert_eq!(r, Err(AccessError::Unscoped { field: "S2::secret" }));
}

#[test]
fn local_set_inside_in_context_spawn_local_children_unscoped_warm() {
    let rt = cur_rt();
    let local = tokio::task::LocalSet::new();
    {
        let fut = async {
            S2::secret().set(5);
            assert_eq!(S2::secret().get(), Some(5));
            let r = local
                .run_until(async {
                    S2::secret().update(|s| *s += 1);
                    let r1 = tokio::task::spawn_local(async { S2::secret().try_get() }).await.unwrap();
                    S2::name().set("x".into());
                    let r2 = tokio::task::spawn_local(async {
                        tokio::task::yield_now().await;
                        S2::name().try_get()
                    })
                    .await
                    .unwrap();
                    let r3 = context_local::task::spawn_local(async { S2::secret().try_get() }).await.unwrap();
                    (r1, r2, r3)
                })
                .await;
            r
        }
        .in_new_context();
        let (r1, r2, r3) = rt.block_on(fut);
        assert!(matches!(r1, Err(AccessError::Unscoped { .. })), "{r1:?}");
        assert!(matches!(r2, Err(AccessError::Unscoped { .. })), "{r2:?}");
        assert_eq!(r3, Ok(6));
    }
}

#[test]
fn interleaved_tasks_on_one_thread_never_cross() {
    let rt = cur_rt();
    rt.block_on(async {
        let mut hs = Vec::new();
        for t in 0..50u64 {
            hs.push(tokio::spawn(
                async move {
                    S2::secret().set(t);
                    S2::name().set(format!("t{t}"));
                    S2::nl().set(t);
                    for round in 0..50u64 {
                        tokio::task::yield_now().await;
                        assert_eq!(S2::secret().get(), Some(t + round));
                        assert_eq!(S2::name().with(|n| n.clone()), Some(format!("t{t}")));
                        assert_eq!(S2::nl().get(), Some(t));
                        S2::secret().update(|s| *s += 1);
                        if round % 7 == 0 {
                            let mut snap = Context::current();
                            snap.run(|| assert_eq!(S2::secret().get(), Some(t + round + 1)));
                        }
                        if round % 11 == 0 {
                            let got = context_local::task::spawn(async { S2::secret().get() }).await.unwrap();
                            assert_eq!(got, Some(t + round + 1));
                        }
                    }
                }
                .in_new_context(),
            ));
        }
        for h in hs {
            h.await.unwrap();
        }
    });
}

#[test]
fn join_of_two_snapshots_of_the_same_context_in_one_task() {
    // Two InContext futures made from snapshots of one context, polled in the
    // same tokio task (join!): their writes must stay apart.
    let rt = cur_rt();
    rt.block_on(
        async {
            S2::secret().set(1);
            let a = Context::current();
            let b = a.snapshot();
            let c = Context::current();
            let fa = async {
                for i in 0..100u64 {
                    S2::secret().set(1000 + i);
                    tokio::task::yield_now().await;
                    assert_eq!(S2::secret().get(), Some(1000 + i));
                }
            }
            .in_context(a);
            let fb = async {
                for i in 0..100u64 {
                    assert_eq!(S2::secret().get(), Some(if i == 0 { 1 } else { 2000 + i - 1 }));
                    S2::secret().set(2000 + i);
                    tokio::task::yield_now().await;
                }
            }
            .in_context(b);
            let fc = async {
                for _ in 0..100u64 {
                    assert_eq!(S2::secret().get(), Some(1));
                    tokio::task::yield_now().await;
                }
            }
            .in_context(c);
            tokio::join!(fa, fb, fc);
            assert_eq!(S2::secret().get(), Some(1));
        }
        .in_new_context(),
    );
}

#[test]
fn run_blocking_values_do_not_leak_to_plain_spawn_blocking_on_same_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(
        async {
            for i in 0..100u64 {
                let secret = 10_000 + i;
                context_local::task::run_blocking(move || {
                    S2::secret().set(secret);
                    S2::name().set("leak".into());
                    assert_eq!(S2::secret().get(), Some(secret));
                })
                .await;
                let r = tokio::task::spawn_blocking(|| (S2::secret().try_get(), S2::name().try_get())).await.unwrap();
                assert_ne!(r.0, Ok(secret), "run_blocking's value leaked to a plain spawn_blocking");
                assert_ne!(r.1, Ok("leak".to_string()));
                let r = tokio::spawn(async { S2::secret().try_get() }).await.unwrap();
                assert!(matches!(r, Err(AccessError::Unscoped { .. })));
            }
        }
        .in_new_context(),
    );
}

#[test]
fn context_spawn_blocking_leaves_nothing_on_the_pool_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(
        async {
            for i in 0..50u64 {
                S2::secret().set(i);
                let got = context_local::task::spawn_blocking(move || {
                    let before = S2::secret().get();
                    S2::secret().set(5000 + i);
                    S2::name().update(|n| n.push('z'));
                    before
                })
                .await
                .unwrap();
                assert_eq!(got, Some(i));
                let r = tokio::task::spawn_blocking(|| S2::secret().try_get()).await.unwrap();
                assert_ne!(r, Ok(5000 + i), "spawn_blocking's value stayed on the pool thread");
                assert_eq!(S2::secret().get(), Some(i));
            }
        }
        .in_new_context(),
    );
}

#[test]
fn multi_thread_plain_tasks_never_see_worker_values() {
    let rt = mt_rt(2);
    rt.block_on(async {
        let mut hs = Vec::new();
        for t in 0..200u64 {
            if t % 2 == 0 {
                hs.push(tokio::spawn(
                    async move {
                        S2::secret().set(t);
                        tokio::task::yield_now().await;
                        S2::secret().update(|s| *s += 0);
                        assert_eq!(S2::secret().get(), Some(t));
                        true
                    }
                    .in_new_context(),
                ));
            } else {
                hs.push(tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    matches!(S2::secret().try_get(), Err(AccessError::Unscoped { .. }))
                        && matches!(S2::d().try_get(), Err(AccessError::Unscoped { .. }))
                }));
            }
        }
        for h in hs {
            assert!(h.await.unwrap());
        }
    });
}

// ---------------------------------------------------------------------------
// 3. Re-entrancy and semantics inside closures
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct S3 {
    a: u64,
    b: String,
    v: Vec<u64>,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct T3 {
    a: u64,
}

fn reentrant(f: &'static str) -> AccessError {
    AccessError::Reentrant { field: f }
}

#[test]
fn inside_update_the_field_is_reentrant_even_with_warm_cache() {
    S3::a().set(1);
    assert_eq!(S3::a().get(), Some(1));
    assert_eq!(S3::a().get(), Some(1));
    S3::a().update(|a| {
        assert_eq!(S3::a().try_get(), Err(reentrant("S3::a")));
        assert_eq!(S3::a().try_with(|a| *a), Err(reentrant("S3::a")));
        assert_eq!(S3::a().try_set(5), Err(reentrant("S3::a")));
        assert!(S3::a().try_is_set().is_err());
        let mut snap = Context::current();
        snap.run(|| {
            assert_eq!(
                S3::a().try_get(),
                Err(AccessError::Unset { field: "S3::a" }),
                "snapshot inside update holds the field"
            );
            S3::a().set(500);
        });
        // other fields work, pending writes of them are snapshotted
        S3::b().set("in".into());
        assert_eq!(S3::b().get(), Some("in".to_string()));
        let mut snap2 = Context::current();
        snap2.run(|| {
            assert_eq!(S3::b().get(), Some("in".to_string()));
            assert!(!S3::a().is_set());
        });
        *a = 2;
    });
    assert_eq!(S3::a().get(), Some(2));
    assert_eq!(S3::a().try_get(), Ok(2));
}

#[test]
fn snapshot_taken_inside_update_via_spawn_does_not_hold_field() {
    let rt = cur_rt();
    rt.block_on(
        async {
            S3::a().set(1);
            let h = S3::a()
                .update(|a| {
                    *a = 10;
                    context_local::task::spawn(async { (S3::a().try_get(), S3::b().get()) })
                })
                .unwrap();
            let got = h.await.unwrap();
            assert_eq!(got.0, Err(AccessError::Unset { field: "S3::a" }));
            assert_eq!(S3::a().get(), Some(10));
            // thread spawn too
            let got = S3::a().update(|_| context_local::thread::spawn(|| S3::a().try_get()).join().unwrap()).unwrap();
            assert_eq!(got, Err(AccessError::Unset { field: "S3::a" }));
        }
        .in_new_context(),
    );
}

#[test]
fn inside_with_reads_work_writes_reentrant() {
    S3::a().set(3);
    S3::v().update(|v| v.push(1));
    S3::a().with(|a| {
        assert_eq!(*a, 3);
        assert_eq!(S3::a().try_get(), Ok(3));
        assert_eq!(S3::a().get(), Some(3));
        assert_eq!(S3::a().with(|a| *a + 1), Some(4));
        assert_eq!(S3::a().try_set(9), Err(reentrant("S3::a")));
        assert!(catch_unwind(|| S3::a().update(|a| *a += 1)).is_err());
        assert!(catch_unwind(|| S3::a().take()).is_err());
        // a snapshot inside with does contain the field (reads work)
        let mut snap = Context::current();
        snap.run(|| assert_eq!(S3::a().get(), Some(3)));
        // other field writes work
        S3::v().update(|v| v.push(2));
        S3::v().with(|v| assert_eq!(v, &vec![1, 2]));
    });
    assert_eq!(S3::a().get(), Some(3));
    S3::a().update(|a| *a += 1);
    assert_eq!(S3::a().get(), Some(4));
}

#[test]
fn thread_scope_update_reentrant_and_with_reads() {
    T3::a().set(1);
    let _ = T3::a().get();
    T3::a().update(|a| {
        assert_eq!(T3::a().try_get(), Err(reentrant("T3::a")));
        *a = 2;
    });
    T3::a().with(|a| {
        assert_eq!(*a, 2);
        assert_eq!(T3::a().try_get(), Ok(2));
        assert_eq!(T3::a().try_set(1), Err(reentrant("T3::a")));
    });
    assert_eq!(T3::a().get(), Some(2));
}

#[derive(ContextLocal)]
struct G3 {
    g: u64,
}

#[derive(ContextLocal)]
struct G3s {
    gs: String,
}

#[test]
fn guard_dropped_inside_update_later_write_wins() {
    G3::g().set(1);
    let _ = G3::g().get();
    let guard = G3 { g: 2 }.enter();
    assert_eq!(G3::g().get(), Some(2));
    G3::g().update(|g| {
        *g = 100;
        drop(guard); // restores 1: the later write
        *g = 200;
    });
    assert_eq!(G3::g().get(), Some(1), "the guard's restore is the later write and must win");
    // again on a String field with a pending write before enter
    G3s::gs().set("orig".into());
    G3s::gs().update(|s| s.push('1'));
    let guard = G3s { gs: "g".into() }.enter();
    G3s::gs().update(|s| s.push('2'));
    G3s::gs().update(|s| {
        s.push('3');
        drop(guard);
    });
    assert_eq!(G3s::gs().get(), Some("orig1".to_string()));
}

#[test]
fn guard_dropped_inside_with_restores() {
    G3::g().set(1);
    let guard = G3 { g: 2 }.enter();
    G3::g().set(3);
    let r = G3::g().with(|g| {
        assert_eq!(*g, 3);
        drop(guard);
        // the lent value stays readable; a fresh read sees the restored value
        (*g, G3::g().get())
    });
    assert_eq!(r, Some((3, Some(1))));
    assert_eq!(G3::g().get(), Some(1));
}

#[test]
fn guard_made_in_one_context_dropped_in_another_changes_nothing_there() {
    G3::g().set(1);
    let guard = G3 { g: 2 }.enter();
    let mut other = Context::new();
    other.run(|| {
        G3::g().set(50);
        let _ = G3::g().get();
        drop(guard);
        assert_eq!(G3::g().get(), Some(50));
    });
    // the guard restored nothing in root either ("changes nothing there")
    assert_eq!(G3::g().get(), Some(2));
}

#[test]
fn panic_inside_update_then_further_use() {
    S3::a().set(1);
    let _ = S3::a().get();
    let r = catch_unwind(AssertUnwindSafe(|| {
        S3::a().update(|a| {
            *a = 2;
            panic!("in update");
        })
    }));
    assert!(r.is_err());
    // field is usable again, not stuck Reentrant
    let after = S3::a().try_get();
    assert!(matches!(after, Ok(1) | Ok(2)), "{after:?}");
    let mut snap = Context::current();
    let in_snap = snap.run(|| S3::a().try_get());
    assert_eq!(in_snap, after, "snapshot and current disagree after a panicking update");
    S3::a().set(3);
    assert_eq!(S3::a().get(), Some(3));
    S3::a().update(|a| *a += 1);
    assert_eq!(S3::a().get(), Some(4));

    // panic inside with
    let r = catch_unwind(AssertUnwindSafe(|| S3::a().with(|_| panic!("in with"))));
    assert!(r.is_err());
    S3::a().set(5);
    assert_eq!(S3::a().get(), Some(5));

    // panic in ctx.run after a cached write: the write stays in the context
    let mut c = Context::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        c.run(|| {
            S3::a().set(11);
            S3::a().update(|a| *a += 1);
            panic!("in run");
        })
    }));
    assert!(r.is_err());
    assert_eq!(S3::a().get(), Some(5));
    c.run(|| assert_eq!(S3::a().get(), Some(12)));
}

#[test]
fn ctx_run_inside_update_of_same_field() {
    S3::a().set(1);
    let mut other = Context::new();
    S3::a().update(|a| {
        other.run(|| {
            assert_eq!(S3::a().try_get(), Err(AccessError::Unset { field: "S3::a" }));
            assert_eq!(S3::a().try_set(7), Ok(()));
            assert_eq!(S3::a().get(), Some(7));
            S3::a().update(|x| *x += 1);
        });
        assert_eq!(S3::a().try_get(), Err(reentrant("S3::a")));
        *a = 2;
    });
    assert_eq!(S3::a().get(), Some(2));
    other.run(|| assert_eq!(S3::a().get(), Some(8)));
    // run of a snapshot of self inside update
    let mut snap = Context::current();
    S3::a().update(|a| {
        snap.run(|| {
            assert_eq!(S3::a().get(), Some(2));
            S3::a().set(30);
        });
        *a = 3;
    });
    assert_eq!(S3::a().get(), Some(3));
    snap.run(|| assert_eq!(S3::a().get(), Some(30)));
}

#[test]
fn nested_update_and_with_of_different_fields() {
    S3::a().set(1);
    S3::b().set("b".into());
    S3::v().set(vec![]);
    S3::a().update(|a| {
        S3::b().update(|b| {
            S3::v().update(|v| {
                v.push(1);
                assert!(S3::a().try_get().is_err());
                assert!(S3::b().try_get().is_err());
                assert!(S3::v().try_get().is_err());
            });
            b.push('!');
            assert_eq!(S3::v().get(), Some(vec![1]));
            S3::v().with(|v| {
                assert_eq!(v, &vec![1]);
                assert!(S3::v().try_set(vec![]).is_err());
                let mut s = Context::current();
                s.run(|| {
                    assert!(!S3::a().is_set());
                    assert!(!S3::b().is_set());
                    assert_eq!(S3::v().get(), Some(vec![1]));
                });
            });
        });
        assert_eq!(S3::b().get(), Some("b!".to_string()));
        *a += 1;
    });
    assert_eq!(S3::a().get(), Some(2));
    assert_eq!(S3::b().get(), Some("b!".to_string()));
}

#[test]
fn update_returning_and_get_or_insert_with_after_pending_set() {
    let mut c = Context::new();
    c.run(|| {
        assert_eq!(S3::a().get_or_insert_with(|| 5), 5);
        S3::a().set(6);
        assert_eq!(S3::a().get_or_insert_with(|| 7), 6);
        S3::a().delete();
        assert_eq!(S3::a().get_or_insert_with(|| 8), 8);
        S3::a().update(|a| *a += 1);
        assert_eq!(S3::a().replace(1), Some(9));
        S3::a().update(|a| *a += 1);
        assert_eq!(S3::a().try_take(), Ok(Some(2)));
    });
}

// ---------------------------------------------------------------------------
// 4. Drops. `Arc<str>` is one of the write-back types: its strong count shows
//    exactly when the library lets go of a value.
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct D4 {
    a: Arc<str>,
    #[context_local(no_inherit)]
    nl: Arc<str>,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct D4t {
    ta: Arc<str>,
}

fn arc(s: &str) -> Arc<str> {
    Arc::from(s)
}

#[test]
fn set_drops_the_old_value_at_once_cached_type() {
    let a1 = arc("one");
    let a2 = arc("two");
    let mut c = Context::new();
    c.run(|| {
        D4::a().set(a1.clone());
        assert_eq!(Arc::strong_count(&a1), 2);
        let _ = D4::a().get();
        let _ = D4::a().get();
        assert_eq!(Arc::strong_count(&a1), 2, "warm reads keep an extra count");
        D4::a().set(a2.clone());
        assert_eq!(Arc::strong_count(&a1), 1, "set must drop the old value at once (pending, no flush)");
        // flush into the context, then write again
        drop(Context::current());
        D4::a().set(a1.clone());
        assert_eq!(Arc::strong_count(&a2), 1, "set after a flush must drop the old value at once");
        let _ = D4::a().get();
        D4::a().update(|v| *v = a2.clone());
        assert_eq!(Arc::strong_count(&a1), 1, "update replacing the value must drop it at once");
        drop(Context::current());
        let _ = D4::a().get();
        assert!(D4::a().delete());
        assert_eq!(Arc::strong_count(&a2), 1, "delete must drop at once");
        D4::a().set(a1.clone());
        let t = D4::a().take().unwrap();
        drop(t);
        assert_eq!(Arc::strong_count(&a1), 1, "take leaves no copy behind");
        D4::a().set(a1.clone());
        let _ = D4::a().get();
        let old = D4::a().replace(a2.clone()).unwrap();
        drop(old);
        assert_eq!(Arc::strong_count(&a1), 1, "replace leaves no copy behind");
    });
    assert_eq!(Arc::strong_count(&a2), 2);
    drop(c);
    assert_eq!(Arc::strong_count(&a2), 1, "dropping the context drops what only it holds");
}

#[test]
fn snapshot_holds_value_until_both_let_go() {
    let a1 = arc("one");
    let a2 = arc("two");
    let mut c = Context::new();
    let snap = c.run(|| {
        D4::a().set(a1.clone());
        let s = Context::current();
        D4::a().set(a2.clone());
        s
    });
    assert_eq!(Arc::strong_count(&a1), 2, "the snapshot holds a1");
    drop(snap);
    assert_eq!(Arc::strong_count(&a1), 1);
    // other way round: context let go first
    let snap = c.run(|| {
        let _ = D4::a().get();
        Context::current()
    });
    c.run(|| D4::a().set(a1.clone()));
    assert_eq!(Arc::strong_count(&a2), 2);
    drop(snap);
    assert_eq!(Arc::strong_count(&a2), 1);
    drop(c);
    assert_eq!(Arc::strong_count(&a1), 1);
}

#[test]
fn root_context_value_with_pending_write_then_thread_exit() {
    let a = arc("root");
    let b = arc("nl");
    let t = arc("thread");
    let (a2, b2, t2) = (a.clone(), b.clone(), t.clone());
    std::thread::spawn(move || {
        D4::a().set(a2.clone());
        D4::nl().set(b2.clone());
        D4t::ta().set(t2.clone());
        let _ = D4::a().get();
        let _ = D4t::ta().get();
        D4::a().update(|x| *x = a2.clone());
        D4t::ta().update(|x| *x = t2.clone());
        drop((a2, b2, t2));
    })
    .join()
    .unwrap();
    assert_eq!(Arc::strong_count(&a), 1, "root-context value not dropped at thread exit");
    assert_eq!(Arc::strong_count(&b), 1, "no_inherit root value not dropped at thread exit");
    assert_eq!(Arc::strong_count(&t), 1, "thread-scoped value not dropped at thread exit");
}

#[test]
fn thread_scope_set_drops_old_at_once() {
    let a1 = arc("t1");
    let a2 = arc("t2");
    D4t::ta().set(a1.clone());
    let _ = D4t::ta().get();
    let _ = D4t::ta().get();
    D4t::ta().set(a2.clone());
    assert_eq!(Arc::strong_count(&a1), 1);
    let mut c = Context::new();
    c.run(|| {
        let _ = D4t::ta().get();
    });
    D4t::ta().update(|v| *v = a1.clone());
    assert_eq!(Arc::strong_count(&a2), 1);
    assert!(D4t::ta().delete());
    assert_eq!(Arc::strong_count(&a1), 1);
}

#[test]
fn context_moved_to_another_thread_and_dropped_there_after_warm_reads() {
    let a = arc("moved");
    let mut c = Context::new();
    c.run(|| {
        D4::a().set(a.clone());
        let _ = D4::a().get();
        let _ = D4::a().get();
        D4::nl().set(a.clone());
        let _ = D4::nl().get();
    });
    assert_eq!(Arc::strong_count(&a), 3);
    std::thread::spawn(move || drop(c)).join().unwrap();
    assert_eq!(Arc::strong_count(&a), 1, "the first thread's cache kept a count of a dropped context's value");
}

#[test]
fn in_context_future_dropped_drops_its_pending_values() {
    let a = arc("fut");
    let rt = cur_rt();
    let a2 = a.clone();
    let fut = async move {
        D4::a().set(a2.clone());
        D4::nl().set(a2.clone());
        let _ = D4::a().get();
        D4::a().update(|x| *x = a2.clone());
        drop(a2);
        std::future::pending::<()>().await;
    }
    .in_new_context();
    rt.block_on(async {
        let r = tokio::time::timeout(std::time::Duration::from_millis(10), fut).await;
        assert!(r.is_err());
    });
    assert_eq!(Arc::strong_count(&a), 1);
}

#[test]
fn clear_and_struct_clear_drop_pending_values() {
    let a = arc("clear");
    let mut c = Context::new();
    c.run(|| {
        D4::a().set(a.clone());
        D4::nl().set(a.clone());
        let _ = D4::a().get();
        D4::clear();
        assert_eq!(Arc::strong_count(&a), 1, "S::clear did not drop pending values");
        D4::a().set(a.clone());
        D4::a().update(|x| *x = a.clone());
        let _ = D4::a().get();
    });
    c.clear();
    assert_eq!(Arc::strong_count(&a), 1, "ctx.clear did not drop the value");
    assert!(c.is_empty());
    c.run(|| assert_eq!(D4::a().get(), None));
}

// Custom Drop types (full path) -------------------------------------------

static CREATED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Counted(u64);
impl Counted {
    fn new(v: u64) -> Self {
        CREATED.fetch_add(1, Ordering::SeqCst);
        Counted(v)
    }
}
impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(self.0)
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(ContextLocal)]
struct D5 {
    c: Counted,
    #[context_local(no_inherit)]
    nl: Counted,
}

#[test]
fn custom_drop_values_dropped_exactly_once_and_on_time() {
    let live = || CREATED.load(Ordering::SeqCst) - DROPPED.load(Ordering::SeqCst);
    // run everything on its own thread so no other test shares the counters' window
    std::thread::spawn(move || {
        let base = live();
        let mut c = Context::new();
        c.run(|| {
            D5::c().set(Counted::new(1));
            let _ = D5::c().get();
            let _ = D5::c().get();
            assert_eq!(live(), base + 1, "warm reads leave clones alive");
            D5::c().with(|_| ());
            D5::c().set(Counted::new(2));
            assert_eq!(live(), base + 1, "set did not drop the old value at once");
            D5::c().update(|c| c.0 += 1);
            D5::nl().set(Counted::new(5));
            let _ = D5::nl().get();
            assert_eq!(live(), base + 2);
        });
        let snap = c.run(Context::current);
        assert_eq!(live(), base + 2);
        drop(c);
        assert_eq!(live(), base + 1, "dropping the context drops only what it alone holds");
        drop(snap);
        assert_eq!(live(), base);
    })
    .join()
    .unwrap();
}

// Minimal reproductions: does `set` drop the value it displaces at once?

#[derive(ContextLocal)]
struct M1 {
    m: Arc<str>,
}
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct M1t {
    mt: Arc<str>,
}

/// `set(v2)` after `set(v1)` (and a `get` in between, if `read_first`)
/// drops `v1` at once.
fn assert_set_drops_at_once(field: context_local::Field<Arc<str>>, read_first: bool) {
    let a1 = arc("one");
    field.set(a1.clone());
    if read_first {
        let _ = field.get();
    }
    field.set(arc("two"));
    assert_eq!(Arc::strong_count(&a1), 1, "{}: set(v2) did not drop v1 (a get first: {read_first})", field.name());
}

#[test]
fn min_set_drops_displaced_value_task_scope_cold() {
    assert_set_drops_at_once(M1::m(), false);
}

#[test]
fn min_set_drops_displaced_value_task_scope_after_get() {
    assert_set_drops_at_once(M1::m(), true);
}

#[test]
fn min_set_drops_displaced_value_thread_scope_cold() {
    assert_set_drops_at_once(M1t::mt(), false);
}

#[test]
fn min_set_drops_displaced_value_thread_scope_after_get() {
    assert_set_drops_at_once(M1t::mt(), true);
}

#[test]
fn min_displaced_value_when_is_it_dropped() {
    let a1 = arc("one");
    M1::m().set(a1.clone());
    let _ = M1::m().get();
    M1::m().set(arc("two"));
    let after_set = Arc::strong_count(&a1);
    let _ = M1::m().get();
    let after_get = Arc::strong_count(&a1);
    drop(Context::current());
    let after_snapshot = Arc::strong_count(&a1);
    assert_eq!((after_set, after_get, after_snapshot), (1, 1, 1));
}

#[derive(Clone)]
struct Wrapped(#[allow(dead_code)] Arc<str>);

#[derive(ContextLocal)]
struct M2 {
    w: Wrapped,
}

#[test]
fn control_non_cached_type_set_drops_displaced_value_at_once() {
    // The same program with a newtype (not a write-back type): the displaced
    // value is dropped by `set`, as the cached types should do too.
    let a1 = arc("one");
    M2::w().set(Wrapped(a1.clone()));
    let _ = M2::w().get();
    M2::w().set(Wrapped(arc("two")));
    assert_eq!(Arc::strong_count(&a1), 1);
}

#[test]
fn min_which_value_is_retained() {
    let a1 = arc("one");
    let a2 = arc("two");
    M1::m().set(a1.clone());
    M1::m().set(a2.clone());
    M1::m().set(arc("three"));
    let c1 = Arc::strong_count(&a1);
    let c2 = Arc::strong_count(&a2);
    // expected (1, 1): both displaced values dropped
    assert_eq!((c1, c2), (1, 1));
}

#[test]
fn min_update_drops_displaced_value_at_once() {
    let a1 = arc("one");
    let mut c = Context::new();
    c.run(|| {
        M1::m().set(a1.clone());
        drop(Context::current()); // committed to the context
        M1::m().update(|v| *v = arc("two"));
        assert_eq!(Arc::strong_count(&a1), 1, "update replaced v1 but v1 is still alive");
    });
}

// Pending writes seen by other mechanisms ---------------------------------

#[derive(ContextLocal)]
struct L6 {
    #[context_local(log)]
    lid: u64,
    #[context_local(log)]
    lname: String,
    #[context_local(baggage)]
    tenant: String,
    #[context_local(baggage = "user.id")]
    uid: u64,
}

#[test]
fn log_fields_and_baggage_see_pending_writes() {
    let mut c = Context::new();
    c.run(|| {
        L6::lid().set(1);
        L6::lname().set("a".into());
        L6::tenant().set("t1".into());
        L6::uid().set(10);
        drop(Context::current()); // commit
        let _ = L6::lid().get();
        L6::lid().set(2);
        L6::lname().update(|n| n.push('b'));
        L6::tenant().set("t2".into());
        L6::uid().update(|u| *u += 1);
        let fields: Vec<(String, String)> =
            context_local::log_fields().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(fields.contains(&("lid".to_string(), "2".to_string())), "{fields:?}");
        assert!(fields.contains(&("lname".to_string(), "ab".to_string())), "{fields:?}");
        let h = context_local::baggage::to_header().unwrap();
        assert!(h.contains("tenant=t2"), "{h}");
        assert!(h.contains("user.id=11"), "{h}");
    });
}

static B7_DROP_SETS: AtomicUsize = AtomicUsize::new(0);

struct SetsOnDrop(u64);
impl Clone for SetsOnDrop {
    fn clone(&self) -> Self {
        SetsOnDrop(self.0)
    }
}
impl Drop for SetsOnDrop {
    fn drop(&mut self) {
        if self.0 == 1 {
            B7_DROP_SETS.fetch_add(1, Ordering::SeqCst);
            // observe the pending value and then overwrite it
            let seen = X7::xa().try_get();
            assert_eq!(seen, Ok(2), "a destructor run by the library saw a stale value");
            X7::xa().set(3);
        }
    }
}

#[derive(ContextLocal)]
struct X7 {
    xa: u64,
    xb: SetsOnDrop,
}

#[test]
fn destructor_run_by_another_fields_full_path_sees_and_overrides_pending_write() {
    let mut c = Context::new();
    let r = c.run(|| {
        X7::xa().set(1);
        drop(Context::current()); // committed 1
        X7::xb().set(SetsOnDrop(1));
        X7::xa().set(2); // pending
        X7::xb().set(SetsOnDrop(0)); // displaces SetsOnDrop(1): its Drop reads xa then sets 3
        X7::xa().get()
    });
    assert_eq!(B7_DROP_SETS.load(Ordering::SeqCst), 1);
    assert_eq!(r, Some(3), "the destructor's later write was lost to the pending write");
    c.run(|| assert_eq!(X7::xa().get(), Some(3)));
}

#[derive(ContextLocal)]
#[context_local(init = Y7::fresh)]
struct Y7 {
    ya: u64,
}
impl Y7 {
    fn fresh() -> Self {
        Y7 { ya: X8::x8().get().unwrap_or(0) * 10 }
    }
}
#[derive(ContextLocal)]
struct X8 {
    x8: u64,
    #[context_local(default = X8::x8().get().map(|v| v + 1).unwrap_or(0))]
    x8d: u64,
}

#[test]
fn init_and_default_see_pending_writes_of_other_fields() {
    let mut c = Context::new();
    c.run(|| {
        X8::x8().set(1);
        drop(Context::current());
        X8::x8().set(4); // pending
        assert_eq!(Y7::ya().get(), Some(40));
        X8::x8().update(|v| *v += 1); // pending 5
        assert_eq!(X8::x8d().get(), Some(6));
    });
}

#[derive(Clone, Debug, PartialEq)]
struct CloneWrites(u64);
#[derive(ContextLocal)]
struct X9 {
    x9a: u64,
    x9c: CloneWritesField,
}
#[derive(Debug, PartialEq)]
struct CloneWritesField(u64);
impl Clone for CloneWritesField {
    fn clone(&self) -> Self {
        // a Clone run by a read: the storage is released; write a cached field
        let prev = X9::x9a().get();
        X9::x9a().set(prev.unwrap_or(0) + 100);
        CloneWritesField(self.0)
    }
}

#[test]
fn clone_impl_run_by_get_writes_other_cached_field() {
    let mut c = Context::new();
    c.run(|| {
        X9::x9a().set(1);
        drop(Context::current());
        X9::x9a().set(2); // pending
        X9::x9c().set(CloneWritesField(7));
        assert_eq!(X9::x9c().get(), Some(CloneWritesField(7)));
        assert_eq!(X9::x9a().get(), Some(102));
        let mut s = Context::current();
        s.run(|| assert_eq!(X9::x9a().get(), Some(102)));
    });
    let _ = CloneWrites(0);
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct M3t {
    m3: Arc<str>,
    m3other: u64,
}

#[test]
fn probe_thread_scope_displaced_value_lifetime() {
    // How long does a displaced thread-scoped write-back value live?
    let a1 = arc("one");
    M3t::m3().set(a1.clone());
    M3t::m3().set(arc("two"));
    let mut steps = vec![("set", Arc::strong_count(&a1))];
    let _ = M3t::m3().get();
    steps.push(("get", Arc::strong_count(&a1)));
    drop(Context::current());
    steps.push(("Context::current", Arc::strong_count(&a1)));
    M3t::m3other().set(1);
    steps.push(("other field set", Arc::strong_count(&a1)));
    Context::new().run(|| ());
    steps.push(("ctx.run", Arc::strong_count(&a1)));
    let _ = context_local::log_fields();
    steps.push(("log_fields", Arc::strong_count(&a1)));
    assert!(steps.iter().all(|(_, c)| *c == 1), "{steps:?}");
}

// ---------------------------------------------------------------------------
// 5. Many fields, many contexts, deep nesting
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct W48 {
    f0: u64,
    f1: u64,
    f2: u64,
    f3: u64,
    f4: u64,
    f5: u64,
    f6: u64,
    f7: u64,
    f8: u64,
    f9: u64,
    f10: u64,
    f11: u64,
    f12: u64,
    f13: u64,
    f14: u64,
    f15: u64,
    f16: u64,
    f17: u64,
    f18: u64,
    f19: u64,
    f20: u64,
    f21: u64,
    f22: u64,
    f23: u64,
    f24: u64,
    f25: u64,
    f26: u64,
    f27: u64,
    f28: u64,
    f29: u64,
    f30: u64,
    f31: u64,
    f32: u64,
    f33: u64,
    f34: u64,
    f35: u64,
    f36: u64,
    f37: u64,
    f38: u64,
    f39: u64,
    f40: u64,
    f41: u64,
    f42: u64,
    f43: u64,
    f44: u64,
    f45: u64,
    f46: u64,
    f47: u64,
}

#[derive(ContextLocal)]
struct W20 {
    s0: String,
    s1: String,
    s2: String,
    s3: String,
    s4: String,
    s5: String,
    s6: String,
    s7: String,
    s8: String,
    s9: String,
    s10: String,
    s11: String,
    s12: String,
    s13: String,
    s14: String,
    s15: String,
    s16: String,
    s17: String,
    s18: String,
    s19: String,
}

fn w48() -> [context_local::Field<u64>; 48] {
    [
        W48::f0(),
        W48::f1(),
        W48::f2(),
        W48::f3(),
        W48::f4(),
        W48::f5(),
        W48::f6(),
        W48::f7(),
        W48::f8(),
        W48::f9(),
        W48::f10(),
        W48::f11(),
        W48::f12(),
        W48::f13(),
        W48::f14(),
        W48::f15(),
        W48::f16(),
        W48::f17(),
        W48::f18(),
        W48::f19(),
        W48::f20(),
        W48::f21(),
        W48::f22(),
        W48::f23(),
        W48::f24(),
        W48::f25(),
        W48::f26(),
        W48::f27(),
        W48::f28(),
        W48::f29(),
        W48::f30(),
        W48::f31(),
        W48::f32(),
        W48::f33(),
        W48::f34(),
        W48::f35(),
        W48::f36(),
        W48::f37(),
        W48::f38(),
        W48::f39(),
        W48::f40(),
        W48::f41(),
        W48::f42(),
        W48::f43(),
        W48::f44(),
        W48::f45(),
        W48::f46(),
        W48::f47(),
    ]
}

fn w20() -> [context_local::Field<String>; 20] {
    [
        W20::s0(),
        W20::s1(),
        W20::s2(),
        W20::s3(),
        W20::s4(),
        W20::s5(),
        W20::s6(),
        W20::s7(),
        W20::s8(),
        W20::s9(),
        W20::s10(),
        W20::s11(),
        W20::s12(),
        W20::s13(),
        W20::s14(),
        W20::s15(),
        W20::s16(),
        W20::s17(),
        W20::s18(),
        W20::s19(),
    ]
}

fn w48_set(base: u64) {
    for (i, field) in w48().into_iter().enumerate() {
        field.set(base + i as u64);
    }
}
fn w48_check(base: u64) {
    for (i, field) in w48().into_iter().enumerate() {
        assert_eq!(field.get(), Some(base + i as u64), "field f{i}");
    }
}
fn w48_inc() {
    for field in w48() {
        field.update(|v| *v += 1);
    }
}
fn w20_set(base: u64) {
    for (i, field) in w20().into_iter().enumerate() {
        field.set(format!("{base}-{i}"));
    }
}
fn w20_check(base: u64) {
    for (i, field) in w20().into_iter().enumerate() {
        assert_eq!(field.get(), Some(format!("{base}-{i}")));
    }
}

#[test]
fn many_fields_many_contexts() {
    let mut ctxs: Vec<Context> = (0..300).map(|_| Context::new()).collect();
    for round in 0..3u64 {
        for (i, c) in ctxs.iter_mut().enumerate() {
            let base = (i as u64) * 1000 + round * 100;
            c.run(|| {
                if round > 0 {
                    w48_check(base - 100 + 1);
                    w20_check(base - 100);
                }
                w48_set(base);
                w48_check(base);
                w48_check(base);
                w20_set(base);
                w48_inc();
                w48_check(base + 1);
                w20_check(base);
            });
        }
    }
    // snapshots of each, read from another thread
    let snaps: Vec<Context> = ctxs.iter_mut().map(|c| c.run(Context::current)).collect();
    std::thread::spawn(move || {
        for (i, mut s) in snaps.into_iter().enumerate() {
            let base = (i as u64) * 1000 + 200;
            s.run(|| {
                w48_check(base + 1);
                w20_check(base);
            });
        }
    })
    .join()
    .unwrap();
}

#[test]
fn many_fields_interleaved_tasks_multi_thread() {
    let rt = mt_rt(3);
    rt.block_on(async {
        let mut hs = Vec::new();
        for t in 0..64u64 {
            hs.push(tokio::spawn(
                async move {
                    for r in 0..20u64 {
                        let base = t * 100_000 + r * 1000;
                        w48_set(base);
                        w20_set(base);
                        tokio::task::yield_now().await;
                        w48_check(base);
                        w48_inc();
                        let h = context_local::task::spawn(async move {
                            w48_check(base + 1);
                            w20_check(base);
                        });
                        tokio::task::yield_now().await;
                        w48_check(base + 1);
                        w20_check(base);
                        h.await.unwrap();
                    }
                }
                .in_new_context(),
            ));
        }
        for h in hs {
            h.await.unwrap();
        }
    });
}

fn nest(depth: u64, max: u64) {
    W48::f0().set(depth);
    W48::f47().update(|v| *v = depth * 2);
    if depth < max {
        let mut child = Context::current();
        child.run(|| {
            assert_eq!(W48::f0().get(), Some(depth));
            nest(depth + 1, max);
        });
        // child's writes invisible here
        assert_eq!(W48::f0().get(), Some(depth));
        assert_eq!(W48::f47().get(), Some(depth * 2));
        // a fresh context nested too
        Context::new().run(|| assert_eq!(W48::f0().get(), None));
    }
}

#[test]
fn deep_nesting_of_run() {
    W48::f47().set(0);
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            W48::f47().set(0);
            nest(0, 400);
            assert_eq!(W48::f0().get(), Some(0));
        })
        .unwrap()
        .join()
        .unwrap();
}

#[derive(ContextLocal)]
struct Nest {
    lvl: u64,
}

#[test]
fn deep_nesting_of_update_with_and_guards() {
    fn go(d: u64) {
        if d == 0 {
            return;
        }
        let before = Nest::lvl().get();
        let g = Nest { lvl: d }.enter();
        Nest::lvl().set(d * 10);
        W48::f1().update(|v| {
            *v += 1;
            go(d - 1);
            assert_eq!(Nest::lvl().get(), Some(d * 10));
        });
        drop(g);
        assert_eq!(Nest::lvl().get(), before, "depth {d}");
    }
    Nest::lvl().set(101);
    W48::f1().set(0);
    // W48::f1 update nests: inner updates are Reentrant -> use a fresh context per level instead
    let r = catch_unwind(|| go(1));
    assert!(r.is_ok());
    Nest::lvl().set(2);
    fn go2(d: u64, max: u64) {
        let g = Nest { lvl: d }.enter();
        Nest::lvl().update(|v| *v += 1000);
        if d < max {
            go2(d + 1, max);
        }
        assert_eq!(Nest::lvl().get(), Some(d + 1000));
        drop(g);
        assert_eq!(Nest::lvl().get(), Some(if d == 1 { 2 } else { d - 1 + 1000 }), "depth {d}");
    }
    go2(1, 200);
    assert_eq!(Nest::lvl().get(), Some(2));
}

// ---------------------------------------------------------------------------
// 6. A small realistic app
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct Req {
    request_id: String,
    user: Option<u64>,
    #[context_local(default = Vec::new())]
    trail: Vec<String>,
    #[context_local(no_inherit)]
    conn: u64,
}

fn log_step(step: &str) {
    let id = Req::request_id().get().unwrap();
    Req::trail().update(|t| t.push(format!("{id}:{step}")));
}

async fn handle(n: u64) -> Result<(), String> {
    let id = format!("req-{n}");
    Req::request_id().set(id.clone());
    Req::user().set(Some(n));
    Req::conn().set(n);
    log_step("start");
    tokio::task::yield_now().await;
    let mut children = Vec::new();
    for c in 0..3u64 {
        children.push(context_local::task::spawn(async move {
            tokio::task::yield_now().await;
            log_step(&format!("child{c}"));
            let t = Req::trail().get().unwrap();
            (Req::request_id().get(), Req::user().get(), Req::conn().get(), t)
        }));
    }
    log_step("spawned");
    let rb = context_local::task::run_blocking(move || {
        let seen = Req::request_id().get();
        log_step("blocking");
        Req::user().update(|u| *u = u.map(|u| u + 1_000_000));
        seen
    })
    .await;
    if rb.as_deref() != Some(id.as_str()) {
        return Err(format!("{id}: run_blocking saw {rb:?}"));
    }
    for (c, h) in children.into_iter().enumerate() {
        let (rid, user, conn, trail) = h.await.map_err(|e| e.to_string())?;
        if rid.as_deref() != Some(id.as_str()) || user != Some(Some(n)) || conn.is_some() {
            return Err(format!("{id}: child {c} saw {rid:?} {user:?} {conn:?}"));
        }
        let want = vec![format!("{id}:start"), format!("{id}:child{c}")];
        if trail != want {
            return Err(format!("{id}: child {c} trail {trail:?}"));
        }
    }
    // Let the other requests run in between, a different number of times each.
    for _ in 0..n % 5 {
        tokio::task::yield_now().await;
    }
    log_step("end");
    let trail = Req::trail().get().unwrap();
    let want: Vec<String> = ["start", "spawned", "blocking", "end"].iter().map(|s| format!("{id}:{s}")).collect();
    if trail != want {
        return Err(format!("{id}: trail {trail:?}"));
    }
    if Req::user().get() != Some(Some(n + 1_000_000)) || Req::conn().get() != Some(n) {
        return Err(format!("{id}: user {:?} conn {:?}", Req::user().get(), Req::conn().get()));
    }
    Ok(())
}

#[test]
fn app_200_concurrent_requests() {
    let rt = mt_rt(4);
    rt.block_on(async {
        for _round in 0..3 {
            let mut hs = Vec::new();
            for n in 0..200u64 {
                hs.push(tokio::spawn(handle(n).in_new_context()));
            }
            let mut errors = Vec::new();
            for h in hs {
                if let Err(e) = h.await.unwrap() {
                    errors.push(e);
                }
            }
            assert!(errors.is_empty(), "{} mismatches, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
        }
        // the runtime's own tasks have no context
        let r = tokio::spawn(async { Req::request_id().try_get() }).await.unwrap();
        assert!(matches!(r, Err(AccessError::Unscoped { .. })));
    });
}

#[test]
fn app_requests_via_joinset_and_in_current_context_from_parent() {
    use context_local::task::JoinSetExt;
    let rt = mt_rt(2);
    rt.block_on(
        async {
            Req::request_id().set("server".into());
            let mut set = tokio::task::JoinSet::new();
            for n in 0..200u64 {
                Req::user().set(Some(n)); // each child inherits the value at its spawn
                set.spawn_in_context(async move {
                    let inherited = Req::user().get();
                    let server = Req::request_id().get();
                    let r = handle(n).await;
                    (n, inherited, server, r)
                });
            }
            while let Some(r) = set.join_next().await {
                let (n, inherited, server, r) = r.unwrap();
                assert_eq!(inherited, Some(Some(n)));
                assert_eq!(server.as_deref(), Some("server"));
                r.unwrap();
            }
            assert_eq!(Req::request_id().get().as_deref(), Some("server"));
            assert_eq!(Req::user().get(), Some(Some(199)));
        }
        .in_new_context(),
    );
}

// ---------------------------------------------------------------------------
// Extra: every write-back type, context identity reuse, S::scope
// ---------------------------------------------------------------------------

#[derive(ContextLocal, Clone, Debug, PartialEq)]
struct AllTypes {
    b: bool,
    ch: char,
    f: f64,
    st: &'static str,
    os: Option<String>,
    o32: Option<u32>,
    vs: Vec<String>,
    vu8: Vec<u8>,
    vi64: Vec<i64>,
    i: i32,
}

#[test]
fn every_write_back_type_round_trips_through_snapshots_and_threads() {
    let mut c = Context::new();
    let want = AllTypes {
        b: true,
        ch: 'é',
        f: 1.5,
        st: "static",
        os: Some("os".into()),
        o32: Some(3),
        vs: vec!["a".into(), "b".into()],
        vu8: vec![1, 2],
        vi64: vec![-1],
        i: -7,
    };
    c.run(|| {
        AllTypes::b().set(false);
        AllTypes::ch().set('x');
        AllTypes::f().set(0.5);
        AllTypes::st().set("s");
        AllTypes::os().set(None);
        AllTypes::o32().set(None);
        AllTypes::vs().set(vec!["a".into()]);
        AllTypes::vu8().set(vec![1]);
        AllTypes::vi64().set(vec![]);
        AllTypes::i().set(0);
        drop(Context::current());
        AllTypes::b().update(|b| *b = !*b);
        AllTypes::ch().set('é');
        AllTypes::f().update(|f| *f += 1.0);
        AllTypes::st().set("static");
        AllTypes::os().update(|o| *o = Some("os".into()));
        AllTypes::o32().set(Some(3));
        AllTypes::vs().update(|v| v.push("b".into()));
        AllTypes::vu8().push(2);
        AllTypes::vi64().update(|v| v.push(-1));
        AllTypes::i().update(|i| *i -= 7);
        assert_eq!(AllTypes::current(), Some(want.clone()));
        let got = context_local::thread::spawn(AllTypes::current).join().unwrap();
        assert_eq!(got, Some(want.clone()));
    });
    c.run(|| assert_eq!(AllTypes::take(), Some(want.clone())));
    c.run(|| assert_eq!(AllTypes::current(), None));
}

#[test]
fn new_contexts_in_a_loop_never_see_a_dropped_ones_values() {
    for i in 0..2000u64 {
        let mut c = Context::new();
        c.run(|| {
            assert_eq!(S2::secret().get(), None, "iteration {i}");
            assert_eq!(S2::nl().get(), None, "iteration {i}");
            S2::secret().set(i);
            S2::nl().set(i);
            let _ = S2::secret().get();
        });
        drop(c);
    }
    let rt = cur_rt();
    rt.block_on(async {
        for i in 0..500u64 {
            let r = async move {
                let before = S2::secret().get();
                S2::secret().set(i);
                S2::nl().update(|v| *v += 1);
                before
            }
            .in_new_context()
            .await;
            assert_eq!(r, None);
        }
    });
}

#[derive(ContextLocal)]
struct Sc {
    sa: u64,
}

#[test]
fn struct_scope_after_pending_writes() {
    let rt = cur_rt();
    rt.block_on(
        async {
            S2::secret().set(1);
            drop(Context::current());
            S2::secret().set(2); // pending
            Sc::sa().set(0);
            let r = Sc { sa: 9 }
                .scope(async {
                    tokio::task::yield_now().await;
                    let r = (S2::secret().get(), Sc::sa().get());
                    S2::secret().set(3);
                    r
                })
                .await;
            assert_eq!(r, (Some(2), Some(9)));
            assert_eq!(S2::secret().get(), Some(2));
            assert_eq!(Sc::sa().get(), Some(0));
        }
        .in_new_context(),
    );
}

#[derive(ContextLocal, Debug, PartialEq, Clone)]
struct Stale {
    sv: Vec<u64>,
    sn: u64,
}

fn committed_then_pending() {
    Stale::sv().set(vec![1]);
    Stale::sn().set(1);
    drop(Context::current()); // committed [1], 1
    Stale::sv().update(|v| v.push(2)); // pending [1, 2]
    Stale::sn().set(2); // pending 2
}

#[test]
fn full_path_operations_never_see_the_committed_value_under_a_pending_one() {
    let mut results = Vec::new();
    let mut run = |name: &str, f: &dyn Fn() -> String, want: &str| {
        let got = Context::new().run(|| {
            committed_then_pending();
            f()
        });
        if got != want {
            results.push(format!("{name}: got {got}, want {want}"));
        }
    };
    run("take", &|| format!("{:?}", Stale::sv().take()), "Some([1, 2])");
    run("replace", &|| format!("{:?}", Stale::sn().replace(5)), "Some(2)");
    run("try_take", &|| format!("{:?}", Stale::sn().try_take()), "Ok(Some(2))");
    run("pop", &|| format!("{:?}", Stale::sv().pop()), "Some(2)");
    run("top", &|| format!("{:?}", Stale::sv().top()), "Some(2)");
    run(
        "push+get",
        &|| {
            Stale::sv().push(3);
            format!("{:?}", Stale::sv().get())
        },
        "Some([1, 2, 3])",
    );
    run("get_or_insert_with", &|| format!("{:?}", Stale::sn().get_or_insert_with(|| 9)), "2");
    run("S::current", &|| format!("{:?}", Stale::current()), "Some(Stale { sv: [1, 2], sn: 2 })");
    run("S::take", &|| format!("{:?}", Stale::take()), "Some(Stale { sv: [1, 2], sn: 2 })");
    run("delete then is_set", &|| format!("{} {}", Stale::sn().delete(), Stale::sn().is_set()), "true false");
    run(
        "enter/drop",
        &|| {
            let g = Stale { sv: vec![], sn: 0 }.enter();
            drop(g);
            format!("{:?}", Stale::current())
        },
        "Some(Stale { sv: [1, 2], sn: 2 })",
    );
    run(
        "thread::spawn",
        &|| format!("{:?}", context_local::thread::spawn(Stale::current).join().unwrap()),
        "Some(Stale { sv: [1, 2], sn: 2 })",
    );
    assert!(results.is_empty(), "{results:#?}");
}
