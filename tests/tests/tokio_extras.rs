//! `JoinSet` helpers and `Stream` support on a real multi-thread runtime.

use context_local::task::JoinSetExt;
use context_local::{Context, ContextLocal, StreamExt as _};
use futures::StreamExt as _;
use tokio::task::JoinSet;

#[derive(ContextLocal)]
struct Batch {
    id: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_set_tasks_start_from_the_spawners_snapshot() {
    let mut set = JoinSet::new();
    let mut outer = Context::new();
    outer.run(|| {
        Batch::id().set(1);
        for n in 0..16 {
            set.spawn_in_context(async move {
                tokio::task::yield_now().await;
                let seen = Batch::id().get();
                Batch::id().set(100 + n); // stays in this task
                seen
            });
        }
        set.spawn_blocking_in_context(|| Batch::id().get());
    });
    let mut seen = Vec::new();
    while let Some(done) = set.join_next().await {
        seen.push(done.expect("task"));
    }
    assert_eq!(seen, vec![Some(1); 17]);
    assert_eq!(outer.run(|| Batch::id().get()), Some(1), "children's writes stay in the children");
    // A plain JoinSet::spawn has no context: task-scoped access is refused.
    let mut plain = JoinSet::new();
    plain.spawn(async { Batch::id().try_get().is_err() });
    assert!(plain.join_next().await.expect("one").expect("task"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_poll_inside_their_context() {
    let streams = (0..8).map(|i| {
        let mut context = Context::new();
        context.run(|| Batch::id().set(i));
        tokio::spawn(async move {
            futures::stream::iter(0..5)
                .then(|_| async {
                    tokio::task::yield_now().await;
                    Batch::id().get()
                })
                .in_context(context)
                .collect::<Vec<_>>()
                .await
        })
    });
    for (i, stream) in streams.enumerate() {
        assert_eq!(stream.await.expect("task"), vec![Some(i as u32); 5]);
    }
}
