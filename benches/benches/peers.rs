//! context-local next to the primitives people would otherwise use, group by
//! group in one run, so the ratios `compare` prints hold on a noisy machine.
//!
//! Run: `cargo bench -p benches`, then `cargo run -p benches --release --bin compare`.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Waker};

use benches::{fill_wide, WIDE_FIELDS};
use context_local::{Context, ContextLocal, FutureExt as _};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use opentelemetry::context::FutureExt as _;
use tracing::Instrument as _;

#[derive(ContextLocal)]
struct TaskScoped {
    value: u64,
    name: String,
    #[context_local(default = Vec::new())]
    list: Vec<u64>,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadScoped {
    value: u64,
}

thread_local! {
    static CELL: Cell<u64> = const { Cell::new(7) };
    static STRING: RefCell<String> = RefCell::new("a sixteen byte s".to_string());
    static LIST: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static NAIVE: RefCell<HashMap<TypeId, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

tokio::task_local! {
    static TASK_LOCAL: u64;
}

/// Runs `f` inside a fresh context on a current-thread runtime, as code in a
/// long-running async fn would.
fn in_task<R>(f: impl FnOnce() -> R) -> R {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async move { f() }.in_new_context())
}

// The reads pass the value itself to `black_box`, as the peers do (here and
// in `string`). Passing
// the `Option<u64>` makes the compiler store it as two words and reload it as
// one, a store-forwarding stall (~8 ns here) that code using the value in
// registers never pays (seen with `perf annotate`).
fn get_u64(c: &mut Criterion) {
    let mut group = c.benchmark_group("get_u64");
    group.bench_function("thread_local_cell", |b| b.iter(|| CELL.with(|c| black_box(c.get()))));
    group.bench_function("context_local_task", |b| {
        in_task(|| {
            TaskScoped::value().set(7);
            b.iter(|| black_box(TaskScoped::value().get().unwrap_or(0)));
        });
    });
    ThreadScoped::value().set(7);
    group.bench_function("context_local_thread", |b| b.iter(|| black_box(ThreadScoped::value().get().unwrap_or(0))));
    group.bench_function("tokio_task_local", |b| {
        TASK_LOCAL.sync_scope(7, || b.iter(|| black_box(TASK_LOCAL.get())));
    });
    // What every task-scoped read asks tokio (which task is running): the
    // floor of a task-scoped read that keeps other tasks out.
    group.bench_function("tokio_try_id", |b| in_task(|| b.iter(|| black_box(tokio::task::try_id()))));
    let per_thread = thread_local::ThreadLocal::new();
    group.bench_function("thread_local_crate", |b| b.iter(|| black_box(per_thread.get_or(|| Cell::new(7u64)).get())));
    group.bench_function("opentelemetry", |b| {
        let _attached = opentelemetry::Context::current_with_value(7u64).attach();
        b.iter(|| black_box(opentelemetry::Context::current().get::<u64>().copied()));
    });
    NAIVE.with_borrow_mut(|map| map.insert(TypeId::of::<u64>(), Box::new(7u64)));
    group.bench_function("hashmap_typeid", |b| {
        b.iter(|| {
            let found =
                NAIVE.with_borrow(|map| map.get(&TypeId::of::<u64>()).and_then(|v| v.downcast_ref::<u64>()).copied());
            black_box(found)
        });
    });
    group.finish();
}

fn string(c: &mut Criterion) {
    let mut group = c.benchmark_group("string");
    group.bench_function("refcell_with_borrow_len", |b| b.iter(|| black_box(STRING.with_borrow(|s| s.len()))));
    group.bench_function("context_local_with_len", |b| {
        in_task(|| {
            TaskScoped::name().set("a sixteen byte s".to_string());
            b.iter(|| black_box(TaskScoped::name().with(|s| s.len()).unwrap_or(0)));
        });
    });
    group.bench_function("refcell_borrow_clone", |b| b.iter(|| black_box(STRING.with_borrow(String::clone))));
    group.bench_function("context_local_get_clone", |b| {
        in_task(|| {
            TaskScoped::name().set("a sixteen byte s".to_string());
            b.iter(|| black_box(TaskScoped::name().get().unwrap_or_default()));
        });
    });
    group.finish();
}

/// Pushes onto a list kept below 1,024 entries, so every iteration does the
/// same work.
fn push_bounded(list: &mut Vec<u64>, value: u64) {
    if list.len() == 1024 {
        list.clear();
    }
    list.push(value);
}

fn write(c: &mut Criterion) {
    let mut group = c.benchmark_group("write");
    group.bench_function("cell_set", |b| b.iter(|| CELL.with(|c| c.set(black_box(9)))));
    group.bench_function("context_local_set_u64", |b| {
        in_task(|| b.iter(|| TaskScoped::value().set(black_box(9))));
    });
    group.bench_function("refcell_with_borrow_mut_push", |b| {
        b.iter(|| LIST.with_borrow_mut(|list| push_bounded(list, black_box(3))));
    });
    group.bench_function("context_local_update_push", |b| {
        in_task(|| b.iter(|| TaskScoped::list().update(|list| push_bounded(list, black_box(3)))));
    });
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    for n in [1, 8, 64] {
        group.bench_function(format!("current_{n}"), |b| {
            in_task(|| {
                fill_wide(n);
                b.iter(|| black_box(Context::current()));
            });
        });
    }
    group.finish();
}

fn first_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("first_write");
    for n in [8, 64] {
        group.bench_function(format!("context_local_{n}"), |b| {
            in_task(|| {
                fill_wide(n);
                b.iter(|| {
                    let snapshot = Context::current();
                    WIDE_FIELDS[0].set(black_box(1));
                    snapshot
                });
            });
        });
    }
    let slots: Vec<Arc<dyn Any + Send + Sync>> =
        (0..64u64).map(|i| Arc::new(i) as Arc<dyn Any + Send + Sync>).collect();
    let mut shared = Arc::new(slots);
    group.bench_function("arc_make_mut_64", |b| {
        b.iter(|| {
            let snapshot = shared.clone();
            Arc::make_mut(&mut shared)[0] = Arc::new(black_box(1u64));
            snapshot
        });
    });
    let mut map: im::HashMap<usize, u64> = (0..64).map(|i| (i, i as u64)).collect();
    group.bench_function("im_hashmap_64", |b| {
        b.iter(|| {
            let snapshot = map.clone();
            map.insert(0, black_box(1));
            snapshot
        });
    });
    group.finish();
}

/// A future that is pending `left` times, waking itself each time, then ready.
struct Countdown {
    left: u32,
}

impl Future for Countdown {
    type Output = u32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<u32> {
        // `black_box` keeps the compiler from running the countdown at
        // compile time: every poll really happens.
        let left = black_box(self.left);
        if left == 0 {
            return Poll::Ready(7);
        }
        self.left = left - 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Polls `future` to completion on this thread with a no-op waker.
fn drive<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll");
    const POLLS: u32 = 100;
    group.bench_function("bare", |b| b.iter(|| drive(Countdown { left: black_box(POLLS) })));
    let mut ctx = Context::new();
    ctx.run(|| TaskScoped::value().set(7));
    group.bench_function("in_context", |b| {
        b.iter_batched(
            || ctx.snapshot(),
            |ctx| drive(Countdown { left: black_box(POLLS) }.in_context(ctx)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("task_local_scope", |b| {
        b.iter(|| drive(TASK_LOCAL.scope(7, Countdown { left: black_box(POLLS) })));
    });
    let otel = opentelemetry::Context::new().with_value(7u64);
    group.bench_function("otel_with_context", |b| {
        b.iter_batched(
            || otel.clone(),
            |otel| drive(Countdown { left: black_box(POLLS) }.with_context(otel)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("tracing_instrument", |b| {
        b.iter_batched(
            || tracing::info_span!("request"),
            |span| drive(Countdown { left: black_box(POLLS) }.instrument(span)),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// Installing a context and putting the previous one back, with nothing in
/// between: what every poll of an `InContext` pays twice.
fn switch(c: &mut Criterion) {
    let mut group = c.benchmark_group("switch");
    let mut ctx = Context::new();
    ctx.run(|| TaskScoped::value().set(7));
    group.bench_function("context_local_run", |b| b.iter(|| ctx.run(|| black_box(()))));
    group.bench_function("task_local_sync_scope", |b| b.iter(|| TASK_LOCAL.sync_scope(7, || black_box(()))));
    let otel = opentelemetry::Context::new().with_value(7u64);
    group.bench_function("otel_attach", |b| b.iter(|| drop(black_box(otel.clone().attach()))));
    // A switch after reads: the reads filled cache entries, which the
    // switch lets go of.
    group.bench_function("context_local_run_after_reads", |b| {
        b.iter(|| {
            ctx.run(|| {
                black_box(TaskScoped::value().get());
                black_box(TaskScoped::value().get());
            })
        });
    });
    group.finish();
}

const TASKS: usize = 100_000;

fn spawn(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn");
    group.sample_size(10);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    group.bench_function("context_local", |b| {
        b.iter(|| {
            rt.block_on(
                async {
                    TaskScoped::value().set(7);
                    let handles: Vec<_> = (0..TASKS)
                        .map(|_| context_local::task::spawn(async { black_box(TaskScoped::value().get()) }))
                        .collect();
                    for handle in handles {
                        handle.await.expect("task");
                    }
                }
                .in_new_context(),
            );
        });
    });
    group.bench_function("tokio_task_local", |b| {
        b.iter(|| {
            rt.block_on(async {
                let handles: Vec<_> = (0..TASKS)
                    .map(|_| tokio::spawn(TASK_LOCAL.scope(7, async { black_box(TASK_LOCAL.get()) })))
                    .collect();
                for handle in handles {
                    handle.await.expect("task");
                }
            });
        });
    });
    group.finish();
}

criterion_group!(benches, get_u64, string, write, snapshot, first_write, poll, switch, spawn);
criterion_main!(benches);
