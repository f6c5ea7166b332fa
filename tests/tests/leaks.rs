//! No leak: 250,000 tasks, each holding a context with a 1 KiB value, run to
//! completion; every value is dropped, and the peak resident set of the round
//! is within 10% of the peak after a warm-up round of the same size (read
//! from `/proc/self/status`). The warm-up lets the allocator reach its steady
//! state first: glibc keeps freed memory for reuse, so "before any task" would
//! measure the allocator, not leaks. The drop counters are the exact check.
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

/// Tasks in flight at once. The resident set then stays in the hundreds of
/// MiB, so the allocator's own noise (about 1 MiB between runs) is far below
/// the 10% bound, while any leak of a value or a context per task (1 KiB or
/// more, over 250,000 tasks: 250 MiB) is far above it.
const BATCH: usize = 50_000;

/// Tasks per round.
const TASKS: usize = 250_000;

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

/// A `/proc/self/status` figure (`VmRSS:`, `VmHWM:`), in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with(key)).expect("the figure");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

#[test]
fn a_quarter_million_tasks_leave_nothing_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    // Warm-up: a full round, so every worker's allocator arena has served the
    // same load once before the baseline is read.
    rt.block_on(round(TASKS));
    let (rss_before, peak_before) = (status_bytes("VmRSS:"), status_bytes("VmHWM:"));
    rt.block_on(round(TASKS));
    let (rss_after, peak_after) = (status_bytes("VmRSS:"), status_bytes("VmHWM:"));
    drop(rt);
    let (created, dropped) = (CREATED.load(Ordering::SeqCst), DROPPED.load(Ordering::SeqCst));
    let growth = peak_after as f64 / peak_before as f64 - 1.0;
    println!(
        "{TASKS} tasks: peak RSS {:.1} MiB after the warm-up round, {:.1} MiB after the measured one ({:+.1}%); \
         RSS at rest {:.1} -> {:.1} MiB; {created} values created, {dropped} dropped",
        mib(peak_before),
        mib(peak_after),
        growth * 100.0,
        mib(rss_before),
        mib(rss_after),
    );
    assert_eq!(created, dropped, "every value dropped exactly once");
    assert_eq!(created, 2 * 2 * TASKS);
    // The resident set at rest swings with glibc's trimming (seen: 18 to 26
    // MiB between runs of the same program), so the bound is on the peak,
    // which the same workload reaches each round unless something piles up.
    assert!(growth <= 0.10, "the peak RSS grew {:.1}% over a round of {TASKS} tasks", growth * 100.0);
}
