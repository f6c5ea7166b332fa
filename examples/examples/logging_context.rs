//! The request id in every log line: Python's logging `ContextFilter`.
//!
//! In Python, `request_id` lives in a `threading.local` and a logging filter
//! copies it onto every record. Here the field is marked
//! `#[context_local(log)]` and `ContextLogger` adds it to every `log` record;
//! the formatter prints `[request_id] message`. Four threads handle requests
//! at once, and every line they write carries the right id.
//!
//! Run: `cargo run -p examples --example logging_context`

use std::sync::{Arc, Mutex};

use context_local::log::ContextLogger;
use context_local::ContextLocal;

#[derive(ContextLocal)]
struct LogContext {
    #[context_local(log)]
    request_id: String,
}

/// Prints `[request_id] message`, like Python's
/// `Formatter('%(asctime)s [%(request_id)s] %(message)s')`, and keeps the line.
#[derive(Clone, Default)]
struct Formatter {
    lines: Arc<Mutex<Vec<String>>>,
}

impl log::Log for Formatter {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let id = record.key_values().get(log::kv::Key::from_str("request_id"));
        let id = id.map_or_else(|| "-".to_string(), |value| value.to_string());
        let line = format!("[{id}] {}", record.args());
        println!("{line}");
        self.lines.lock().expect("lines").push(line);
    }

    fn flush(&self) {}
}

fn process_request(request_id: &str) {
    // set_context(...) ... clear_context(), as with the Python filter.
    LogContext::request_id().set(request_id.to_string());
    log::info!("Starting request {request_id}");
    std::thread::yield_now();
    log::info!("Request {request_id} completed");
    LogContext::clear();
}

fn main() {
    let formatter = Formatter::default();
    ContextLogger::new(formatter.clone()).install(log::LevelFilter::Info).expect("install the logger");
    log::info!("server starting");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for n in 0..3 {
                    process_request(&format!("t{t}-r{n}"));
                }
                log::info!("worker {t} idle");
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("worker");
    }
    let lines = formatter.lines.lock().expect("lines").clone();
    let mut wrong = 0;
    for line in &lines {
        let (label, message) = line.split_once(' ').expect("[id] message");
        let id = label.trim_start_matches('[').trim_end_matches(']');
        // The message names its request (`t1-r2`); lines outside one have none.
        let expected = message.split_whitespace().find(|word| word.contains("-r")).unwrap_or("-");
        if id != expected {
            wrong += 1;
        }
    }
    println!("{} lines, {wrong} with another request's id (or a stale one after clear)", lines.len());
    assert_eq!(lines.len(), 1 + 4 * 3 * 2 + 4);
    assert_eq!(wrong, 0);
}
