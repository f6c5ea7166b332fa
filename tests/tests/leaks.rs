//! No leak: 1,000,000 tasks, each holding a context with a 1 KiB value, run to
//! completion; every value is dropped, and the resident set afterwards is
//! within 10% of what it was after a warm-up round (read from
//! `/proc/self/status`). The warm-up lets the allocator reach its steady
//! state first: glibc keeps freed memory for reuse, so "before any task" would
//! measure the allocator, not leaks.
//!
//! Alone in its binary, so no other test moves the figures.

use std::sync::atomic::{AtomicUsize, Ordering};

use context_local::ContextLocal;

static CREATED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// A 1 KiB value that counts its copies.
struct Kib(Vec<u8>);

impl Kib {
    fn new(fill: u8) -> Kib {
        CREATED.fetch_add(1, Ordering::Relaxed);
        Kib(vec![fill; 1024])
    }
}

impl Clone for Kib {
    fn clone(&self) -> Kib {
        CREATED.fetch_add(1, Ordering::Relaxed);
        Kib(self.0.clone())
    }
}

impl Drop for Kib {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(ContextLocal)]
struct Payload {
    data: Kib,
    #[context_local(no_inherit)]
    scratch: Kib,
}

const BATCH: usize = 10_000;

/// Runs `tasks` tasks, `BATCH` at a time; each sets its values, yields, lets
/// a child read them, and checks them.
async fn round(tasks: usize) {
    for start in (0..tasks).step_by(BATCH) {
        let handles: Vec<_> = (start..start + BATCH)
            .map(|n| {
                context_local::task::spawn(async move {
                    let fill = (n % 251) as u8;
                    Payload::data().set(Kib::new(fill));
                    Payload::scratch().set(Kib::new(fill));
                    tokio::task::yield_now().await;
                    let child = context_local::task::spawn(async { Payload::data().with(|k| k.0[0]) });
                    assert_eq!(child.await.expect("child"), Some(fill));
                    assert_eq!(Payload::scratch().with(|k| k.0.len()), Some(1024));
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") * 1024
}

#[test]
fn a_million_tasks_leave_nothing_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    rt.block_on(round(100_000));
    let before = rss_bytes();
    rt.block_on(round(1_000_000));
    let after = rss_bytes();
    drop(rt);
    let (created, dropped) = (CREATED.load(Ordering::SeqCst), DROPPED.load(Ordering::SeqCst));
    let growth = after as f64 / before as f64 - 1.0;
    println!(
        "1,000,000 tasks: RSS {:.1} MiB before, {:.1} MiB after ({:+.1}%); {created} values created, {dropped} dropped",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        growth * 100.0
    );
    assert_eq!(created, dropped, "every value dropped exactly once");
    assert_eq!(created, 2 * 1_100_000);
    assert!(growth <= 0.10, "RSS grew {:.1}% over a round of 1,000,000 tasks", growth * 100.0);
}
