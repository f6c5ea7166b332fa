//! The seed's metapensiero task-local: per-task values with interleaving, and a
//! per-task `__init__` (here `init`) that runs once in every task that touches
//! the struct.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use context_local::{Context, ContextLocal, FutureExt};

#[derive(ContextLocal)]
struct MyLocal {
    a_var: &'static str,
}

#[tokio::test]
async fn task_a_and_task_b_interleave() {
    let task_a = async {
        MyLocal::a_var().set("foo");
        tokio::time::sleep(Duration::from_millis(2)).await;
        MyLocal::a_var().get()
    };
    let task_b = async {
        MyLocal::a_var().set("bar");
        tokio::time::sleep(Duration::from_millis(2)).await;
        MyLocal::a_var().get()
    };
    let a = tokio::spawn(task_a.in_new_context());
    let b = tokio::spawn(task_b.in_new_context());
    assert_eq!(a.await.unwrap(), Some("foo"));
    assert_eq!(b.await.unwrap(), Some("bar"));
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// `CustomLocal(Local)` with `__init__(self, a_value)`: not inherited, so every
/// task (even a child) runs `init` itself.
#[derive(ContextLocal)]
#[context_local(init = CustomLocal::new, inherit = false)]
struct CustomLocal {
    a_value: &'static str,
}

impl CustomLocal {
    fn new() -> CustomLocal {
        CALLS.fetch_add(1, Ordering::SeqCst);
        CustomLocal { a_value: "foo" }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_runs_once_in_every_task_that_touches_the_struct() {
    let before = CALLS.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..10u32)
        .map(|i| {
            context_local::task::spawn(async move {
                assert_eq!(CustomLocal::a_value().get(), Some("foo"));
                CustomLocal::a_value().set(if i % 2 == 0 { "even" } else { "odd" });
                tokio::task::yield_now().await;
                let child = context_local::task::spawn(async { CustomLocal::a_value().get() }).await.unwrap();
                (CustomLocal::a_value().get(), child)
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (mine, child) = task.await.unwrap();
        assert_eq!(mine, Some(if i % 2 == 0 { "even" } else { "odd" }));
        assert_eq!(child, Some("foo"), "an `inherit = false` child starts fresh");
    }
    // Ten tasks and ten children, one init each; tasks that never touch the
    // struct do not count.
    let _untouched = context_local::task::spawn(async {}).await;
    assert_eq!(CALLS.load(Ordering::SeqCst) - before, 20);
}

static INHERITED_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(ContextLocal, Default)]
#[context_local(init = Settings::load)]
struct Settings {
    level: u8,
}

impl Settings {
    fn load() -> Settings {
        INHERITED_CALLS.fetch_add(1, Ordering::SeqCst);
        Settings { level: 1 }
    }
}

#[tokio::test]
async fn an_inherited_initialised_struct_does_not_run_init_again() {
    let mut ctx = Context::new();
    ctx.run(|| {
        let before = INHERITED_CALLS.load(Ordering::SeqCst);
        Settings::level().set(5);
        assert_eq!(INHERITED_CALLS.load(Ordering::SeqCst), before + 1, "the first access runs init, set too");
        assert_eq!(Settings::level().get(), Some(5));
        let mut child = Context::current();
        assert_eq!(child.run(|| Settings::level().get()), Some(5));
        assert_eq!(INHERITED_CALLS.load(Ordering::SeqCst), before + 1);
        // After `clear`, init runs again.
        Settings::clear();
        assert_eq!(Settings::level().get(), Some(1));
        assert_eq!(INHERITED_CALLS.load(Ordering::SeqCst), before + 2);
    });
}

/// A session-keyed context: the seed's pluggable discriminator, done by
/// keeping one `Context` per session and running work inside it.
#[test]
fn a_context_per_session_key() {
    let mut sessions: std::collections::HashMap<&str, Context> = Default::default();
    for (session, value) in [("alice", "a1"), ("bob", "b1"), ("alice", "a2")] {
        let ctx = sessions.entry(session).or_default();
        ctx.run(|| {
            let previous = MyLocal::a_var().replace(value);
            match (session, value) {
                ("alice", "a2") => assert_eq!(previous, Some("a1")),
                _ => assert_eq!(previous, None),
            }
        });
    }
    assert_eq!(sessions.get_mut("bob").unwrap().run(|| MyLocal::a_var().get()), Some("b1"));
}
