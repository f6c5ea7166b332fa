//! Memory per pending task: 1,000,000 tasks, each holding a context with one
//! 16-byte `String`, with context-local and with `tokio::task_local!`.
//!
//! Each variant runs in a child process of its own, because `VmHWM` (the peak
//! resident set, from `/proc/self/status`) only ever grows. The figures are
//! printed and saved where `compare` reads them.
//!
//! Run: `cargo bench -p benches --bench memory`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use context_local::ContextLocal;
use tokio::sync::Notify;

const TASKS: usize = 1_000_000;

#[derive(ContextLocal)]
struct Request {
    id: String,
}

tokio::task_local! {
    static REQUEST_ID: String;
}

const VARIANTS: [&str; 3] = ["context_local", "task_local", "bare"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--variant") {
        let variant = args.get(at + 1).expect("--variant NAME");
        println!("{}", measure(variant));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let mut report = serde_json::Map::new();
    for variant in VARIANTS {
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["--variant", variant])
            .output()
            .expect("run the variant");
        assert!(out.status.success(), "{variant}: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).expect("utf-8");
        let figures: serde_json::Value = serde_json::from_str(line.trim()).expect("variant output is JSON");
        println!("memory/{variant}: {figures}");
        report.insert(variant.to_string(), figures);
    }
    let path = benches::memory_report();
    std::fs::create_dir_all(path.parent().expect("report dir")).expect("create report dir");
    std::fs::write(&path, serde_json::Value::Object(report).to_string()).expect("write report");
    println!("saved {}", path.display());
}

/// A `/proc/self/status` figure, in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in /proc/self/status"));
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB");
    kib * 1024
}

/// Spawns the tasks, waits until every one is pending, reads the peak, lets
/// them finish, and reads the resident set again.
fn measure(variant: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let before = status_bytes("VmRSS:");
    let (peak, after) = rt.block_on(async {
        let release = Arc::new(Notify::new());
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        for i in 0..TASKS {
            let id = format!("request-{i:08}");
            let (release, started, finished) = (release.clone(), started.clone(), finished.clone());
            let wait = async move {
                let notified = release.notified();
                started.fetch_add(1, Ordering::Relaxed);
                notified.await;
                finished.fetch_add(1, Ordering::Relaxed);
            };
            match variant {
                "context_local" => {
                    drop(context_local::task::spawn(async move {
                        Request::id().set(id);
                        wait.await;
                        assert!(Request::id().with(String::len) == Some(16));
                    }));
                }
                "task_local" => {
                    drop(tokio::spawn(REQUEST_ID.scope(id, async move {
                        wait.await;
                        assert!(REQUEST_ID.with(String::len) == 16);
                    })));
                }
                "bare" => {
                    drop(tokio::spawn(async move {
                        wait.await;
                        assert!(id.len() == 16);
                    }));
                }
                other => panic!("unknown variant {other}; use one of {VARIANTS:?}"),
            }
        }
        // A task counts itself in the same poll that parks it in `notified`,
        // so once all have counted, all are pending.
        wait_for(&started).await;
        let peak = status_bytes("VmHWM:");
        release.notify_waiters();
        wait_for(&finished).await;
        (peak, status_bytes("VmRSS:"))
    });
    let per_task = peak.saturating_sub(before) as f64 / TASKS as f64;
    serde_json::json!({ "bytes_per_task": per_task, "rss_before": before, "rss_peak": peak, "rss_after": after })
}

async fn wait_for(count: &AtomicUsize) {
    while count.load(Ordering::Relaxed) < TASKS {
        tokio::task::yield_now().await;
    }
}
