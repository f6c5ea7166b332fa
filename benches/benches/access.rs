//! Field access next to the primitives it replaces, in one run so the ratios
//! hold on a noisy machine. The full peer suite is issue 3's.

use std::cell::Cell;
use std::hint::black_box;

use context_local::{Context, ContextLocal};
use criterion::{criterion_group, criterion_main, Criterion};

#[derive(ContextLocal)]
struct TaskScoped {
    value: u64,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadScoped {
    value: u64,
}

thread_local! {
    static CELL: Cell<u64> = const { Cell::new(7) };
}

fn get_u64(c: &mut Criterion) {
    let mut group = c.benchmark_group("get_u64");
    group.bench_function("thread_local_cell", |b| b.iter(|| CELL.with(|c| black_box(c.get()))));
    ThreadScoped::value().set(7);
    group.bench_function("context_local_thread_scope", |b| b.iter(|| black_box(ThreadScoped::value().get())));
    let mut ctx = Context::new();
    ctx.run(|| {
        TaskScoped::value().set(7);
        group.bench_function("context_local_task_scope", |b| b.iter(|| black_box(TaskScoped::value().get())));
    });
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut ctx = Context::new();
    ctx.run(|| {
        TaskScoped::value().set(1);
        c.bench_function("context_current", |b| b.iter(|| black_box(Context::current())));
    });
}

criterion_group!(benches, get_u64, snapshot);
criterion_main!(benches);
