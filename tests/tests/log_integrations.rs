//! `#[context_local(log)]` fields in `tracing` and `log` output, captured and
//! checked line by line, from threads and tasks with different values.

use std::io::Write;
use std::sync::{Arc, Mutex};

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

/// Every line a subscriber writes, in order.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes).expect("utf-8").lines().map(str::to_string).collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn subscriber(out: &Captured) -> impl tracing::Subscriber + Send + Sync {
    let out = out.clone();
    tracing_subscriber::fmt()
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
