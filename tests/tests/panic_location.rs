//! Every misuse panic points at the user's line (`#[track_caller]` that
//! works): a panic hook records where each provoked panic says it happened,
//! and the test compares it with `file!()` and the `line!()` of the call.
//!
//! The hook is process-wide, so every test here installs it under one mutex
//! and removes it before asserting.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, PoisonError};

use context_local::{Context, ContextLocal};
use futures::FutureExt as _;

static SERIAL: Mutex<()> = Mutex::new(());
/// Where the first panic since the last reset happened.
static FIRST: Mutex<Option<(String, u32)>> = Mutex::new(None);

fn first() -> MutexGuard<'static, Option<(String, u32)>> {
    FIRST.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Installs the recording hook until dropped; holds the serialising lock.
struct Recording {
    _serial: MutexGuard<'static, ()>,
}

impl Recording {
    fn start() -> Recording {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        std::panic::set_hook(Box::new(|info| {
            let mut first = first();
            if first.is_none() {
                *first = info.location().map(|at| (at.file().to_string(), at.line()));
            }
        }));
        Recording { _serial: serial }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        drop(std::panic::take_hook());
    }
}

/// Mismatches, as text: the method, where the panic should point, where it did.
type Failures = Vec<String>;

/// Runs `misuse`, which must panic at `file!():line`.
fn check<R>(failures: &mut Failures, method: &str, line: u32, misuse: impl FnOnce() -> R) {
    *first() = None;
    let panicked = catch_unwind(AssertUnwindSafe(misuse)).is_err();
    let location = first().take();
    record(failures, method, line, panicked, location);
}

fn record(failures: &mut Failures, method: &str, line: u32, panicked: bool, location: Option<(String, u32)>) {
    let expected = (file!().to_string(), line);
    match location {
        _ if !panicked => failures.push(format!("{method}: did not panic (expected {}:{line})", file!())),
        Some(at) if at == expected => {}
        Some((file, at)) => failures.push(format!("{method}: panic points at {file}:{at}, not {}:{line}", file!())),
        None => failures.push(format!("{method}: the panic has no location")),
    }
}

#[derive(ContextLocal, Clone)]
struct Busy {
    x: u32,
    stack: Vec<u32>,
}

// Before the fix: `get`, `with`, `update`, `pop` and `top` point at the caller;
// `set`, `replace`, `take`, `delete`, `is_set`, `get_or_insert_with` and
// `push` point into `context-local/src/field.rs` (their panic is in a closure
// passed to `unwrap_or_else`, which `#[track_caller]` does not reach).
#[test]
fn field_misuse_panics_point_at_the_calling_line() {
    let failures = {
        let _hook = Recording::start();
        let mut failures = Failures::new();
        Context::new().run(|| {
            Busy::x().set(1);
            Busy::stack().set(vec![1]);
            // Inside `update`, every access to the same field is `Reentrant`.
            Busy::x().update(|_| {
                let f = &mut failures;
                check(f, "get", line!(), || Busy::x().get());
                check(f, "set", line!(), || Busy::x().set(2));
                check(f, "replace", line!(), || Busy::x().replace(2));
                check(f, "take", line!(), || Busy::x().take());
                check(f, "delete", line!(), || Busy::x().delete());
                check(f, "is_set", line!(), || Busy::x().is_set());
                check(f, "get_or_insert_with", line!(), || Busy::x().get_or_insert_with(|| 3));
                check(f, "with", line!(), || Busy::x().with(|x| *x));
                check(f, "update", line!(), || Busy::x().update(|x| *x += 1));
            });
            Busy::stack().update(|_| {
                let f = &mut failures;
                check(f, "push", line!(), || Busy::stack().push(2));
                check(f, "pop", line!(), || Busy::stack().pop());
                check(f, "top", line!(), || Busy::stack().top());
            });
        });
        failures
    };
    assert!(failures.is_empty(), "misuse panics that do not point at the caller:\n{}", failures.join("\n"));
}

// Before the fix: all four point into `context-local/src/local.rs` (`S::current`
// through `S::take`'s closure).
#[test]
// Called through a closure so the call, not a function pointer, is on the line.
#[allow(clippy::redundant_closure)]
fn struct_misuse_panics_point_at_the_calling_line() {
    let failures = {
        let _hook = Recording::start();
        let mut failures = Failures::new();
        Context::new().run(|| {
            Busy::x().set(1);
            Busy::stack().set(vec![1]);
            // A field of the struct in use: whole-struct operations are `Reentrant`.
            Busy::x().update(|_| {
                let f = &mut failures;
                check(f, "S::enter", line!(), || Busy { x: 5, stack: vec![] }.enter());
                check(f, "S::clear", line!(), || Busy::clear());
                check(f, "S::take", line!(), || Busy::take());
                check(f, "S::current", line!(), || Busy::current());
            });
        });
        failures
    };
    assert!(failures.is_empty(), "misuse panics that do not point at the caller:\n{}", failures.join("\n"));
}

/// A value whose `Clone` installs a context: reads clone such values with
/// the storage released, so this works (it is no misuse to report).
struct Installs;

thread_local! {
    static IN_CLONE: std::cell::RefCell<Failures> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Clone for Installs {
    fn clone(&self) -> Installs {
        let installed = std::panic::catch_unwind(|| Context::new().run(|| Holder::installs().is_set()));
        if !matches!(installed, Ok(false)) {
            let outcome = installed.map_err(|_| "panicked");
            IN_CLONE.with(|seen| seen.borrow_mut().push(format!("Context::run inside Clone: {outcome:?}")));
        }
        Installs
    }
}

#[derive(ContextLocal)]
struct Holder {
    installs: Installs,
}

// `run_blocking` from a task with no context panics at the call; installing a
// context inside a `Clone` impl run by a read works.
#[test]
fn context_and_task_misuse_panics_point_at_the_calling_line() {
    let failures = {
        let _hook = Recording::start();
        let mut failures = Failures::new();
        Context::new().run(|| {
            Holder::installs().set(Installs);
            assert!(Holder::installs().get().is_some());
        });
        failures.extend(IN_CLONE.with(|seen| std::mem::take(&mut *seen.borrow_mut())));
        // `run_blocking` from a plain tokio task is `Unscoped`.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (line, panicked, location) = rt.block_on(async {
            tokio::spawn(async {
                *first() = None;
                let line = line!();
                let run = AssertUnwindSafe(async { context_local::task::run_blocking(|| ()).await }).catch_unwind();
                let panicked = run.await.is_err();
                (line + 1, panicked, first().take())
            })
            .await
            .expect("the task itself catches the panic")
        });
        record(&mut failures, "task::run_blocking", line, panicked, location);
        failures
    };
    assert!(failures.is_empty(), "misuse panics that do not point at the caller:\n{}", failures.join("\n"));
}
