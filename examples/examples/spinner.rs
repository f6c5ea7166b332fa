//! A spinner thread that shows the request id while slow work runs, and stops
//! when the work sets an event: a Python `threading.Event` spinner.
//!
//! The spinner is started with `context_local::thread::spawn`, so it runs in
//! a snapshot of the request's context and can label its frames with the
//! request id without being passed it. `Event` is Python's
//! `threading.Event`: a flag with a condition variable.
//!
//! Run: `cargo run -p examples --example spinner`

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use context_local::{Context, ContextLocal};

#[derive(ContextLocal)]
struct RequestContext {
    request_id: String,
}

/// Python's `threading.Event`: `set`, `is_set`, and `wait` with a timeout.
#[derive(Default)]
struct Event {
    flag: Mutex<bool>,
    changed: Condvar,
}

impl Event {
    fn set(&self) {
        *self.flag.lock().expect("event") = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.flag.lock().expect("event")
    }

    /// Waits until set or `timeout` passes; whether it is set.
    fn wait(&self, timeout: Duration) -> bool {
        let flag = self.flag.lock().expect("event");
        let (flag, _) = self.changed.wait_timeout_while(flag, timeout, |set| !*set).expect("event");
        *flag
    }
}

/// Spins until `done` is set; returns the frames it drew.
fn spin(message: &str, done: &Event) -> Vec<String> {
    let mut frames = Vec::new();
    for glyph in ['|', '/', '-', '\\'].into_iter().cycle() {
        let id = RequestContext::request_id().get().unwrap_or_else(|| "?".into());
        let frame = format!("{glyph} {message} [{id}]");
        print!("\r{frame}");
        std::io::stdout().flush().expect("stdout");
        frames.push(frame);
        if done.wait(Duration::from_millis(20)) {
            break;
        }
    }
    println!("\r{}\r", " ".repeat(message.len() + 24));
    frames
}

/// Slow work: the spinner runs until this sets the event.
fn slow_work(done: &Event) -> u64 {
    let mut total = 0u64;
    for step in 0..10u64 {
        std::thread::sleep(Duration::from_millis(15));
        total += step;
    }
    done.set();
    total
}

fn main() {
    let mut request = Context::new();
    let (frames, total, done) = request.run(|| {
        RequestContext::request_id().set("req-42".into());
        let done = Arc::new(Event::default());
        let spinner = context_local::thread::spawn({
            let done = done.clone();
            move || spin("crunching numbers", &done)
        });
        let total = slow_work(&done);
        (spinner.join().expect("spinner thread"), total, done)
    });
    println!("work done: total {total}, spinner drew {} frames, all labelled [req-42]", frames.len());
    assert!(done.is_set());
    assert_eq!(total, 45);
    assert!(!frames.is_empty());
    assert!(frames.iter().all(|frame| frame.ends_with("[req-42]")), "{frames:?}");
    assert_eq!(RequestContext::request_id().get(), None, "the request's context stayed in the request");
}
