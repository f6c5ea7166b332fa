//! Rayon jobs run in the submitter's context and leave nothing behind on the
//! worker, even when a worker runs jobs from several submitters in turn.

use std::collections::HashSet;
use std::sync::Mutex;

use context_local::rayon::ParallelIteratorExt;
use context_local::{Context, ContextLocal};
use rayon::prelude::*;

#[derive(ContextLocal)]
struct Job {
    submitter: String,
    scratch: u32,
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool")
}

/// What a worker saw for the job's fields, and which thread it ran on.
type Seen = (Option<String>, Option<u32>, std::thread::ThreadId);

/// What a worker sees now.
fn observe() -> Seen {
    (Job::submitter().get(), Job::scratch().get(), std::thread::current().id())
}

#[test]
fn every_helper_runs_jobs_in_the_submitters_context() {
    let pool = pool();
    Context::new().run(|| {
        Job::submitter().set("alice".into());
        let installed = context_local::rayon::install(&pool, || {
            let (a, b) = context_local::rayon::join(observe, observe);
            let mut scoped = Vec::new();
            let seen = Mutex::new(Vec::new());
            context_local::rayon::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|s| {
                        seen.lock().unwrap().push(observe());
                        s.spawn(|_| seen.lock().unwrap().push(observe()));
                    });
                }
            });
            scoped.extend(seen.into_inner().unwrap());
            (a, b, scoped)
        });
        let (a, b, scoped) = installed;
        assert_eq!(a.0.as_deref(), Some("alice"));
        assert_eq!(b.0.as_deref(), Some("alice"));
        assert_eq!(scoped.len(), 16);
        assert!(scoped.iter().all(|(who, _, _)| who.as_deref() == Some("alice")));
    });
}

#[test]
fn spawned_jobs_carry_the_context_and_writes_stay_in_the_job() {
    let pool = pool();
    let (done, results) = std::sync::mpsc::channel();
    Context::new().run(|| {
        Job::submitter().set("bob".into());
        context_local::rayon::install(&pool, || {
            for n in 0..20 {
                let done = done.clone();
                context_local::rayon::spawn(move || {
                    let before = Job::scratch().get();
                    Job::scratch().set(n);
                    done.send((Job::submitter().get(), before)).expect("send");
                });
            }
        });
        assert_eq!(Job::scratch().get(), None, "a job's writes do not reach the submitter");
    });
    drop(done);
    let results: Vec<_> = results.iter().collect();
    assert_eq!(results.len(), 20);
    for (who, before) in results {
        assert_eq!(who.as_deref(), Some("bob"));
        assert_eq!(before, None, "no job sees a value an earlier job on the same worker set");
    }
}

#[test]
fn parallel_iterators_run_downstream_closures_in_the_callers_context() {
    let pool = pool();
    let submitters = ["carol", "dave"];
    let outcomes: Vec<Vec<Seen>> = std::thread::scope(|s| {
        let handles: Vec<_> = submitters
            .iter()
            .map(|name| {
                let pool = &pool;
                s.spawn(move || {
                    Job::submitter().set(name.to_string());
                    context_local::rayon::install(pool, || {
                        (0..200u32)
                            .into_par_iter()
                            .in_current_context()
                            .map(|n| {
                                let seen = observe();
                                Job::scratch().set(n); // must not leak into the next item or job
                                seen
                            })
                            .collect()
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("submitter")).collect()
    });
    let mut workers = HashSet::new();
    for (name, outcome) in submitters.iter().zip(outcomes) {
        assert_eq!(outcome.len(), 200);
        for (who, _, worker) in outcome {
            assert_eq!(who.as_deref(), Some(*name));
            workers.insert(worker);
        }
    }
    assert!(!workers.is_empty());
}

#[test]
fn a_workers_own_values_are_restored_after_each_job() {
    let pool = pool();
    // Give each worker thread a value in its root context.
    pool.broadcast(|ctx| Job::submitter().set(format!("worker-{}", ctx.index())));
    Context::new().run(|| {
        Job::submitter().set("eve".into());
        // Plain `pool.install`: the adaptor, made here, alone carries the context.
        let items = (0..100).into_par_iter().in_current_context();
        let seen: Vec<_> = pool.install(move || items.map(|_| observe().0).collect());
        assert!(seen.iter().all(|who| who.as_deref() == Some("eve")));
    });
    let after = pool.broadcast(|ctx| (ctx.index(), Job::submitter().get()));
    for (index, who) in after {
        assert_eq!(who, Some(format!("worker-{index}")), "the worker's own value is back");
    }
}
