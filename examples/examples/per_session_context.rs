//! A context kept per session key: a custom discriminator.
//!
//! asgiref's `Local` ties values to the running task or thread. Sometimes the
//! unit is something else: a user session that spans many requests, handled
//! by whichever task is free. Keep one `Context` per session key and run each
//! request inside its session's context; what one request writes, the next
//! request of the same session reads, and no other session sees it.
//!
//! Run: `cargo run -p examples --example per_session_context`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use context_local::{Context, ContextLocal, FutureExt};

#[derive(ContextLocal)]
#[context_local(init = Session::fresh)]
struct Session {
    user: String,
    cart: Vec<String>,
    requests: u32,
}

impl Session {
    fn fresh() -> Session {
        Session { user: "guest".into(), cart: Vec::new(), requests: 0 }
    }
}

/// Contexts by session key.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, Context>>>);

impl Sessions {
    /// Runs `request` in the session's context, creating it on first use,
    /// and keeps what it wrote for the session's next request.
    async fn handle<F: std::future::Future>(&self, key: &str, request: F) -> F::Output {
        let context = self.0.lock().expect("sessions").remove(key).unwrap_or_default();
        let mut running = std::pin::pin!(request.in_context(context));
        let output = running.as_mut().await;
        let context = running.take_context();
        self.0.lock().expect("sessions").insert(key.to_string(), context);
        output
    }
}

async fn add_to_cart(item: &str) -> (String, Vec<String>, u32) {
    Session::requests().update(|n| *n += 1);
    tokio::task::yield_now().await;
    Session::cart().update(|cart| cart.push(item.to_string()));
    (
        Session::user().get().unwrap_or_default(),
        Session::cart().get().unwrap_or_default(),
        Session::requests().get().unwrap_or(0),
    )
}

async fn log_in(user: &str) {
    Session::user().set(user.to_string());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sessions = Sessions::default();
    sessions.handle("s-ann", log_in("ann")).await;
    sessions.handle("s-ben", log_in("ben")).await;
    // Interleaved requests of three sessions, on whichever worker is free.
    let items =
        [("s-ann", "apples"), ("s-ben", "bread"), ("s-ann", "avocados"), ("s-cat", "cheese"), ("s-ben", "butter")];
    for (key, item) in items {
        let sessions = sessions.clone();
        let (user, cart, requests) =
            tokio::spawn(async move { sessions.handle(key, add_to_cart(item)).await }).await.expect("request task");
        println!("{key}: {user} has {cart:?} after {requests} cart requests");
    }
    let summary = |key: &'static str| {
        let sessions = sessions.clone();
        async move { sessions.handle(key, async { (Session::user().get(), Session::cart().get()) }).await }
    };
    let ann = summary("s-ann").await;
    let ben = summary("s-ben").await;
    let cat = summary("s-cat").await;
    assert_eq!(ann, (Some("ann".into()), Some(vec!["apples".into(), "avocados".into()])));
    assert_eq!(ben, (Some("ben".into()), Some(vec!["bread".into(), "butter".into()])));
    assert_eq!(cat, (Some("guest".into()), Some(vec!["cheese".into()])));
    println!("3 sessions, each saw only its own cart");
}
