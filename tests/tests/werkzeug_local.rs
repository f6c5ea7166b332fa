//! The seed's werkzeug locals: `Local`, `LocalStack`, and `LocalManager`'s
//! cleanup and `make_middleware` (a fresh context per request).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use context_local::{Context, ContextLocal, FutureExt};

#[derive(ContextLocal)]
struct Local {
    request: String,
    stack: Vec<u32>,
}

/// `LocalStack`: push, top, pop; an unset stack is empty, not an error.
#[test]
fn local_stack() {
    Context::new().run(|| {
        assert_eq!(Local::stack().top(), None);
        assert_eq!(Local::stack().pop(), None);
        Local::stack().push(1);
        Local::stack().push(2);
        assert_eq!(Local::stack().top(), Some(2));
        assert_eq!(Local::stack().pop(), Some(2));
        assert_eq!(Local::stack().top(), Some(1));
        assert_eq!(Local::stack().pop(), Some(1));
        assert_eq!(Local::stack().pop(), None);
        assert_eq!(Local::stack().get(), Some(vec![]));
    });
}

/// "If a request object is not yet set ... use getattr to avoid that": an
/// unset field is `None`, never a panic.
#[test]
fn unset_is_none() {
    Context::new().run(|| {
        assert_eq!(Local::request().get(), None);
        assert!(Local::request().with(|r| r.len()).is_none());
    });
}

struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(ContextLocal)]
struct Resources {
    #[context_local(no_inherit)]
    handle: Counted,
    name: String,
}

/// `LocalManager.cleanup`: `Context::clear` drops every value at once;
/// `release_local`: `S::clear` drops one struct's.
#[test]
fn manager_cleanup_drops_everything() {
    let drops = Arc::new(AtomicUsize::new(0));
    let mut ctx = Context::new();
    ctx.run(|| {
        Resources::handle().set(Counted(drops.clone()));
        Resources::name().set("db".into());
        Local::request().set("GET /".into());
    });
    ctx.clear();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    ctx.run(|| {
        assert_eq!(Local::request().get(), None);
        assert_eq!(Resources::name().get(), None);
        Resources::handle().set(Counted(drops.clone()));
        Resources::name().set("db".into());
        Local::request().set("GET /".into());
        Resources::clear();
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(Resources::name().get(), None);
        assert_eq!(Local::request().get().as_deref(), Some("GET /"), "other structs are untouched");
    });
}

/// `make_middleware`: every request runs in a fresh context, whatever the
/// previous request on the same worker left behind.
#[tokio::test(flavor = "current_thread")]
async fn middleware_gives_each_request_a_fresh_context() {
    async fn application(path: String) -> (Option<String>, usize) {
        let leftover = Local::request().get();
        Local::request().set(path);
        Local::stack().push(1);
        (leftover, Local::stack().get().unwrap().len())
    }
    for i in 0..20 {
        let (leftover, depth) = tokio::spawn(application(format!("/{i}")).in_new_context()).await.unwrap();
        assert_eq!(leftover, None);
        assert_eq!(depth, 1);
    }
}
