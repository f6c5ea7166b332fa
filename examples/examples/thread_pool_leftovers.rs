//! The `ThreadPoolExecutor` pitfall of Python's `threading.local`, and the fix.
//!
//! Thread-scoped values live as long as the thread, and a pool reuses its
//! threads, so a job can see what the previous job on the same thread left
//! behind. Running each job in a fresh context (task scope) fixes it: every
//! job starts empty, whatever ran on the thread before.
//!
//! Run: `cargo run -p examples --example thread_pool_leftovers`

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use context_local::{Context, ContextLocal};

/// `threading.local()`: per thread.
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct PerThread {
    task_id: u32,
}

/// Per context: each job gets its own.
#[derive(ContextLocal)]
struct PerJob {
    task_id: u32,
}

type Job = Box<dyn FnOnce() + Send>;

/// A minimal fixed-size pool, like `ThreadPoolExecutor(max_workers=2)`.
fn run_on_pool(workers: usize, jobs: Vec<Job>) {
    let (sender, receiver) = mpsc::channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let receiver = receiver.clone();
            std::thread::spawn(move || loop {
                let job = receiver.lock().expect("queue").recv();
                match job {
                    Ok(job) => job(),
                    Err(_) => break,
                }
            })
        })
        .collect();
    for job in jobs {
        sender.send(job).expect("queue");
    }
    drop(sender);
    for thread in threads {
        thread.join().expect("worker");
    }
}

/// Runs ten jobs that record what they found before setting their own id.
fn ten_jobs(job: fn(u32) -> Option<u32>) -> Vec<(u32, Option<u32>)> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let jobs = (0..10)
        .map(|id| {
            let results = results.clone();
            Box::new(move || {
                let previous = job(id);
                results.lock().expect("results").push((id, previous));
            }) as Job
        })
        .collect();
    run_on_pool(2, jobs);
    let mut results = results.lock().expect("results").clone();
    results.sort();
    results
}

fn main() {
    let leaky = ten_jobs(|id| {
        let previous = PerThread::task_id().get();
        PerThread::task_id().set(id);
        previous
    });
    let leftovers = leaky.iter().filter(|(_, previous)| previous.is_some()).count();
    println!("thread scope: {leaky:?}");
    println!("  {leftovers} of 10 jobs saw a previous job's task_id");

    let fixed = ten_jobs(|id| {
        Context::new().run(|| {
            let previous = PerJob::task_id().get();
            PerJob::task_id().set(id);
            previous
        })
    });
    let fixed_leftovers = fixed.iter().filter(|(_, previous)| previous.is_some()).count();
    println!("fresh context per job: {fixed:?}");
    println!("  {fixed_leftovers} of 10 jobs saw a previous job's task_id");

    // Each worker's first job starts clean; every later one sees leftovers.
    assert!(leftovers >= 8, "two workers, ten jobs: at least eight reuse a thread");
    assert_eq!(fixed_leftovers, 0);
}
