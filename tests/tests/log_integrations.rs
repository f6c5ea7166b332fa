//! `#[context_local(log)]` fields in `tracing` and `log` output, captured and
//! checked line by line, from threads and tasks with different values.

#[path = "common/captured.rs"]
mod captured;

use std::sync::{Arc, Mutex};

use captured::Captured;

use context_local::log::ContextLogger;
use context_local::tracing::ContextFields;
use context_local::{Context, ContextLocal, FutureExt as _};

#[derive(ContextLocal)]
struct RequestContext {
    #[context_local(log)]
    request_id: String,
    #[context_local(log = "debug")]
    user: Option<u64>,
    password: String,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Worker {
    #[context_local(log)]
    worker: u32,
}

fn subscriber(out: &Captured) -> impl tracing::Subscriber + Send + Sync {
    let out = out.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .event_format(ContextFields::new(tracing_subscriber::fmt::format().without_time().with_target(false)))
        .with_writer(move || out.clone())
        .finish()
}

#[test]
fn tracing_lines_carry_the_emitting_contexts_fields() {
    let out = Captured::default();
    tracing::subscriber::with_default(subscriber(&out), || {
        tracing::info!("before any request");
        Context::new().run(|| {
            RequestContext::request_id().set("req-1".into());
            RequestContext::user().set(Some(7));
            RequestContext::password().set("hunter2".into());
            tracing::info!(amount = 5, "charging");
            Context::new().run(|| {
                RequestContext::request_id().set("req 2".into());
                tracing::warn!("nested request");
            });
            tracing::info!("back");
        });
        Worker::worker().set(3);
        tracing::info!("after");
    });
    assert_eq!(
        out.lines(),
        [
            " INFO before any request",
            " INFO charging amount=5 request_id=req-1 user=Some(7)",
            " WARN nested request request_id=\"req 2\"",
            " INFO back request_id=req-1 user=Some(7)",
            " INFO after worker=3",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_lines_from_concurrent_tasks_never_mix_values() {
    let out = Captured::default();
    let dispatch = tracing::Dispatch::new(subscriber(&out));
    let tasks = (0..32).map(|i| {
        let dispatch = dispatch.clone();
        tokio::spawn(
            async move {
                RequestContext::request_id().set(format!("t{i}"));
                for step in 0..3 {
                    tokio::task::yield_now().await;
                    tracing::dispatcher::with_default(&dispatch, || tracing::info!("task {i} step {step}"));
                }
            }
            .in_new_context(),
        )
    });
    for task in tasks {
        task.await.expect("task");
    }
    let lines = out.lines();
    assert_eq!(lines.len(), 96);
    for line in &lines {
        let task = line.split_whitespace().nth(2).expect("task number");
        assert!(line.ends_with(&format!("request_id=t{task}")), "{line}");
    }
}

/// A JSON subscriber (JSON span fields too) writing into `out`.
fn json_subscriber(out: &Captured, flatten: bool) -> impl tracing::Subscriber + Send + Sync {
    let out = out.clone();
    tracing_subscriber::fmt()
        .json()
        .event_format(ContextFields::new(tracing_subscriber::fmt::format().json().flatten_event(flatten)))
        .with_writer(move || out.clone())
        .finish()
}

/// Each line parsed as a JSON object.
fn json_objects(out: &Captured) -> Vec<serde_json::Map<String, serde_json::Value>> {
    out.lines()
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(object)) => object,
            other => panic!("not a JSON object ({other:?}): {line}"),
        })
        .collect()
}

/// The string member `key`: at the top level, else inside `"fields"`.
fn member<'a>(object: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> Option<&'a str> {
    let value = object.get(key).or_else(|| object.get("fields").and_then(|fields| fields.get(key)))?;
    Some(value.as_str().unwrap_or_else(|| panic!("{key} is not a string: {value}")))
}

/// Logs the same events into a JSON subscriber: outside any request, with
/// every field set (one value needing escapes), inside a span, and with an
/// event field of the same name as a context field.
fn log_json_events(flatten: bool) -> Captured {
    let out = Captured::default();
    tracing::subscriber::with_default(json_subscriber(&out, flatten), || {
        tracing::info!("before any request");
        Context::new().run(|| {
            RequestContext::request_id().set("req \"1\"\n\\ é\u{1}".into());
            RequestContext::user().set(Some(7));
            RequestContext::password().set("hunter2".into());
            tracing::info!(amount = 5, "charging");
            tracing::info_span!("checkout", cart = 3).in_scope(|| tracing::warn!("in a span"));
            RequestContext::user().delete();
            tracing::info!("user unset");
            tracing::info!(request_id = "from the event", "own field");
        });
    });
    out
}

#[test]
fn json_lines_carry_each_field_as_a_string_member_with_flatten_event() {
    let out = log_json_events(true);
    let lines = json_objects(&out);
    assert_eq!(lines.len(), 5, "{:?}", out.lines());
    let id = "req \"1\"\n\\ é\u{1}";
    assert_eq!((member(&lines[0], "request_id"), member(&lines[0], "user")), (None, None));
    for line in &lines[1..3] {
        // Top level, next to the event's own fields.
        assert_eq!(line.get("request_id").and_then(|v| v.as_str()), Some(id));
        assert_eq!(line.get("user").and_then(|v| v.as_str()), Some("Some(7)"), "Debug for log = \"debug\"");
        assert_eq!(line.get("password"), None, "not a logged field");
    }
    assert_eq!(lines[1].get("amount"), Some(&serde_json::json!(5)));
    assert_eq!(lines[1].get("message").and_then(|v| v.as_str()), Some("charging"));
    assert_eq!(lines[2]["span"]["cart"], serde_json::json!(3), "span fields stay as they were");
    assert_eq!((member(&lines[3], "request_id"), member(&lines[3], "user")), (Some(id), None), "unset: no member");
    // The event's own field wins, and the key is written once.
    assert_eq!(member(&lines[4], "request_id"), Some("from the event"));
    assert_eq!(out.lines()[4].matches("\"request_id\"").count(), 1, "{}", out.lines()[4]);
}

#[test]
fn json_lines_carry_each_field_as_a_string_member_without_flatten_event() {
    let out = log_json_events(false);
    let lines = json_objects(&out);
    assert_eq!(lines.len(), 5, "{:?}", out.lines());
    let id = "req \"1\"\n\\ é\u{1}";
    assert_eq!((member(&lines[0], "request_id"), member(&lines[0], "user")), (None, None));
    for line in &lines[1..3] {
        assert_eq!(member(line, "request_id"), Some(id));
        assert_eq!(member(line, "user"), Some("Some(7)"));
        assert_eq!(member(line, "password"), None);
        assert_eq!(line["fields"].get("request_id"), None, "the event's own fields are untouched");
    }
    assert_eq!(lines[1]["fields"]["amount"], serde_json::json!(5));
    assert_eq!(lines[2]["span"]["cart"], serde_json::json!(3));
    assert_eq!((member(&lines[3], "request_id"), member(&lines[3], "user")), (Some(id), None));
    assert_eq!(lines[4]["fields"]["request_id"], "from the event");
    assert_eq!(lines[4]["request_id"], id, "the context's value, beside the event's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_from_concurrent_tasks_are_each_valid_and_their_own() {
    let out = Captured::default();
    let dispatch = tracing::Dispatch::new(json_subscriber(&out, true));
    let tasks = (0..16).map(|i| {
        let dispatch = dispatch.clone();
        tokio::spawn(
            async move {
                RequestContext::request_id().set(format!("t{i} \"quoted\""));
                for step in 0..3 {
                    tokio::task::yield_now().await;
                    tracing::dispatcher::with_default(&dispatch, || tracing::info!(task = i, step, "working"));
                }
            }
            .in_new_context(),
        )
    });
    for task in tasks {
        task.await.expect("task");
    }
    let lines = json_objects(&out);
    assert_eq!(lines.len(), 48);
    for line in &lines {
        let task = line["task"].as_u64().expect("task field");
        assert_eq!(member(line, "request_id"), Some(format!("t{task} \"quoted\"").as_str()));
    }
}

#[test]
fn compact_lines_get_the_fields_appended() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .event_format(ContextFields::new(tracing_subscriber::fmt::format().compact().without_time().with_target(false)))
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        Context::new().run(|| {
            RequestContext::request_id().set("req-1".into());
            tracing::info!(amount = 5, "charging");
        });
    });
    assert_eq!(out.lines(), [" INFO charging amount=5 request_id=req-1"]);
}

/// With colours on, a line with context fields is the line without them,
/// colours and all, followed by the fields.
#[test]
fn coloured_lines_are_formatted_alike_with_and_without_fields() {
    for compact in [false, true] {
        let out = Captured::default();
        let writer = out.clone();
        let format = tracing_subscriber::fmt::format().without_time();
        let builder = tracing_subscriber::fmt().with_ansi(true).with_writer(move || writer.clone());
        let log = || {
            tracing::info_span!("checkout", cart = 3).in_scope(|| tracing::warn!(amount = 5, "charging"));
            Context::new().run(|| {
                RequestContext::request_id().set("req-1".into());
                tracing::info_span!("checkout", cart = 3).in_scope(|| tracing::warn!(amount = 5, "charging"));
            });
        };
        if compact {
            tracing::subscriber::with_default(builder.event_format(ContextFields::new(format.compact())).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.event_format(ContextFields::new(format)).finish(), log);
        }
        let lines = out.lines();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("\x1b["), "colours are on: {:?}", lines[0]);
        assert_eq!(lines[1], format!("{} request_id=req-1", lines[0]), "compact: {compact}");
    }
}

/// A `log` logger keeping "message key=value ..." per record.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<String>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        struct Pairs(String);
        impl<'kvs> log::kv::VisitSource<'kvs> for Pairs {
            fn visit_pair(
                &mut self,
                key: log::kv::Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0 += &format!(" {key}={value}");
                Ok(())
            }
        }
        let mut line = Pairs(record.args().to_string());
        record.key_values().visit(&mut line).expect("visit");
        self.0.lock().unwrap().push(line.0);
    }

    fn flush(&self) {}
}

#[test]
fn log_records_get_the_fields_after_their_own_key_values() {
    let records = Records::default();
    ContextLogger::new(records.clone()).install(log::LevelFilter::Info).expect("the only global logger");
    log::info!("no context");
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                RequestContext::request_id().set(format!("th{i}"));
                log::info!(attempt = 1; "thread {i}");
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    let mut lines = records.0.lock().unwrap().clone();
    assert_eq!(lines.remove(0), "no context");
    lines.sort();
    assert_eq!(lines, (0..4).map(|i| format!("thread {i} attempt=1 request_id=th{i}")).collect::<Vec<_>>());
}
