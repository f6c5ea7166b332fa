//! The README's message-queue snippet (section "Across services"), compiled
//! and run; `tests/examples.rs` checks the README shows it word for word.

use std::collections::HashMap;

use context_local::{baggage, ContextLocal, FutureExt as _};

#[derive(ContextLocal)]
struct JobContext {
    #[context_local(baggage)]
    tenant: String,
}

/// Producer: the current context goes into the message's header map.
fn publish(body: &str) -> (HashMap<String, String>, String) {
    let mut headers = HashMap::new();
    if let Some(value) = baggage::to_header() {
        headers.insert("baggage".to_string(), value);
    }
    (headers, body.to_string())
}

/// Consumer: each message is handled in a context built from its headers;
/// members it does not know are forwarded by its own `to_header()`.
async fn consume(headers: HashMap<String, String>, body: String) -> String {
    let context = baggage::extract(headers.get("baggage").map(String::as_str));
    async move { format!("{body} for {}", JobContext::tenant().get().unwrap_or_default()) }.in_context(context).await
}

#[tokio::test]
async fn a_message_carries_the_context_through_its_header_map() {
    let (headers, body) = async {
        JobContext::tenant().set("acme; eu".into());
        publish("invoice 7")
    }
    .in_new_context()
    .await;
    assert_eq!(headers["baggage"], "tenant=acme%3B%20eu");
    assert_eq!(consume(headers, body).in_new_context().await, "invoice 7 for acme; eu");
    assert_eq!(consume(HashMap::new(), "no headers".into()).in_new_context().await, "no headers for ");
}
