//! Destructors that panic, run by the library several at a time or while the
//! thread is already unwinding: each one is contained on its own, every value
//! is dropped exactly once, the first panic reaches the caller (unless the
//! thread is unwinding or exiting), and the process never aborts.
//!
//! Without that containment each scenario aborts the process (a second panic
//! while the first unwinds through the same drop glue), so each runs in a
//! child process (see `common/child.rs`) and the test checks how the child
//! ended and the drop counts it printed.

#[path = "common/captured.rs"]
mod captured;
#[path = "common/child.rs"]
mod child;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use captured::Captured;
use child::{report, run_isolated};
use context_local::{Context, ContextLocal};

#[derive(Debug, Default)]
struct Ledger {
    dropped: AtomicUsize,
}

impl Ledger {
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// A value whose destructor panics (always, also while the thread unwinds)
/// when it is `loud`; every drop is counted first.
#[derive(Debug)]
struct Bomb {
    id: u32,
    loud: bool,
    ledger: Arc<Ledger>,
}

impl Bomb {
    fn loud(id: u32, ledger: &Arc<Ledger>) -> Bomb {
        Bomb { id, loud: true, ledger: ledger.clone() }
    }

    fn quiet(id: u32, ledger: &Arc<Ledger>) -> Bomb {
        Bomb { id, loud: false, ledger: ledger.clone() }
    }
}

impl Clone for Bomb {
    fn clone(&self) -> Bomb {
        Bomb { id: self.id, loud: self.loud, ledger: self.ledger.clone() }
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.ledger.dropped.fetch_add(1, Ordering::SeqCst);
        if self.loud {
            panic!("bomb {} explodes in drop", self.id);
        }
    }
}

#[derive(ContextLocal)]
struct Two {
    a: Bomb,
    b: Bomb,
}

#[derive(ContextLocal)]
struct One {
    v: Bomb,
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<not a string>".into())
}

// Before the fix: the thread's storage drops its root context inside one
// `catch_unwind`; the first value's panic unwinds through the map's drop
// glue, which drops the second value, whose panic aborts the process.
#[test]
fn thread_exit_with_two_panicking_values_in_the_root_context_does_not_abort() {
    run_isolated(
        "thread_exit_with_two_panicking_values_in_the_root_context_does_not_abort",
        || {
            let ledger = Arc::new(Ledger::default());
            let inner = ledger.clone();
            let joined = std::thread::spawn(move || {
                Two::a().set(Bomb::loud(1, &inner));
                Two::b().set(Bomb::loud(2, &inner));
            })
            .join();
            report(&format!("joined_ok={} dropped={}", joined.is_ok(), ledger.dropped()));
        },
        &["joined_ok=true dropped=2"],
    );
}

// Before the fix: `clear` collects both values and drops the `Vec`; the second panic
// happens while the first unwinds: abort.
#[test]
fn clearing_a_struct_holding_two_panicking_values_drops_both_then_panics() {
    run_isolated(
        "clearing_a_struct_holding_two_panicking_values_drops_both_then_panics",
        || {
            let ledger = Arc::new(Ledger::default());
            Context::new().run(|| {
                Two::a().set(Bomb::loud(1, &ledger));
                Two::b().set(Bomb::loud(2, &ledger));
                let cleared = catch_unwind(Two::clear);
                report(&format!(
                    "panicked={} dropped={} a_set={} b_set={}",
                    cleared.is_err(),
                    ledger.dropped(),
                    Two::a().is_set(),
                    Two::b().is_set()
                ));
            });
        },
        &["panicked=true dropped=2 a_set=false b_set=false"],
    );
}

// Before the fix: the guard's restore parks the displaced loud value for the read; the
// closure panics, and the read's end drops the parked value during that
// unwinding: its panic aborts the process.
#[test]
fn a_panicking_with_closure_whose_unwinding_drops_a_panicking_displaced_value_does_not_abort() {
    run_isolated(
        "a_panicking_with_closure_whose_unwinding_drops_a_panicking_displaced_value_does_not_abort",
        || {
            let ledger = Arc::new(Ledger::default());
            Context::new().run(|| {
                One::v().set(Bomb::quiet(1, &ledger));
                let guard = One { v: Bomb::loud(2, &ledger) }.enter();
                let failed = catch_unwind(AssertUnwindSafe(|| {
                    One::v().with(move |_| {
                        drop(guard); // restores the quiet value, displacing the loud one being read
                        panic!("the closure fails");
                    })
                }));
                let panic = failed.err().map(|payload| message(&*payload));
                report(&format!(
                    "panic={} dropped={} v={:?}",
                    panic.as_deref().unwrap_or("none"),
                    ledger.dropped(),
                    One::v().with(|v| v.id)
                ));
            });
        },
        &["panic=the closure fails dropped=1 v=Some(1)"],
    );
}

// Before the fix: `clear` drops the whole map at once: abort on the second panic.
#[test]
fn clearing_a_context_holding_two_panicking_values_drops_both_then_panics() {
    run_isolated(
        "clearing_a_context_holding_two_panicking_values_drops_both_then_panics",
        || {
            let ledger = Arc::new(Ledger::default());
            let mut ctx = Context::new();
            ctx.run(|| {
                Two::a().set(Bomb::loud(1, &ledger));
                Two::b().set(Bomb::loud(2, &ledger));
            });
            let cleared = catch_unwind(AssertUnwindSafe(|| ctx.clear()));
            report(&format!("panicked={} dropped={} empty={}", cleared.is_err(), ledger.dropped(), ctx.is_empty()));
        },
        &["panicked=true dropped=2 empty=true"],
    );
}

// Before the fix: as above, from the context's own drop.
#[test]
fn dropping_a_context_holding_two_panicking_values_drops_both_then_panics() {
    run_isolated(
        "dropping_a_context_holding_two_panicking_values_drops_both_then_panics",
        || {
            let ledger = Arc::new(Ledger::default());
            let mut ctx = Context::new();
            ctx.run(|| {
                Two::a().set(Bomb::loud(1, &ledger));
                Two::b().set(Bomb::loud(2, &ledger));
            });
            let dropped = catch_unwind(AssertUnwindSafe(move || drop(ctx)));
            report(&format!("panicked={} dropped={}", dropped.is_err(), ledger.dropped()));
        },
        &["panicked=true dropped=2"],
    );
}

#[derive(ContextLocal)]
#[context_local(init = Failing::fresh)]
struct Failing {
    v: Bomb,
}

impl Failing {
    fn fresh() -> Failing {
        panic!("init fails");
    }
}

// `set` holds the new value while the struct's `init` runs first; `init`
// panics, and the value is dropped while that panic unwinds: its own panic
// must be contained there, not abort the process.
#[test]
fn a_panicking_value_given_to_set_whose_init_panics_does_not_abort() {
    run_isolated(
        "a_panicking_value_given_to_set_whose_init_panics_does_not_abort",
        || {
            let ledger = Arc::new(Ledger::default());
            Context::new().run(|| {
                let set = catch_unwind(|| Failing::v().set(Bomb::loud(1, &ledger)));
                let panic = set.err().map(|payload| message(&*payload));
                report(&format!("panic={} dropped={}", panic.as_deref().unwrap_or("none"), ledger.dropped()));
            });
        },
        &["panic=init fails dropped=1"],
    );
}

// Likewise for the closures `update` and `get_or_insert_with` are given: they
// may own values, and `init` runs before them.
#[test]
fn a_panicking_value_owned_by_a_closure_whose_init_panics_does_not_abort() {
    run_isolated(
        "a_panicking_value_owned_by_a_closure_whose_init_panics_does_not_abort",
        || {
            let ledger = Arc::new(Ledger::default());
            Context::new().run(|| {
                let owned = Bomb::loud(1, &ledger);
                let updated = catch_unwind(AssertUnwindSafe(|| Failing::v().update(move |v| *v = owned)));
                let owned = Bomb::loud(2, &ledger);
                let inserted = catch_unwind(AssertUnwindSafe(|| Failing::v().get_or_insert_with(move || owned)));
                let panics: Vec<String> =
                    [updated.err(), inserted.err()].into_iter().flatten().map(|payload| message(&*payload)).collect();
                report(&format!("panics={panics:?} dropped={}", ledger.dropped()));
            });
        },
        &[r#"panics=["init fails", "init fails"] dropped=2"#],
    );
}

/// A value whose `Clone` drops the guard that set it (so the read holds the
/// last count of the original) and whose original panics when dropped.
#[derive(Debug)]
struct Rewriting {
    id: u32,
    ledger: Arc<Ledger>,
}

thread_local! {
    static GUARD: std::cell::RefCell<Option<context_local::Entered<Rewritten>>> = const { std::cell::RefCell::new(None) };
}

impl Clone for Rewriting {
    fn clone(&self) -> Rewriting {
        drop(GUARD.with(|guard| guard.borrow_mut().take()));
        Rewriting { id: self.id + 10, ledger: self.ledger.clone() }
    }
}

impl Drop for Rewriting {
    fn drop(&mut self) {
        self.ledger.dropped.fetch_add(1, Ordering::SeqCst);
        if self.id == 1 {
            panic!("the original explodes in drop");
        }
    }
}

#[derive(ContextLocal)]
struct Rewritten {
    v: Rewriting,
}

// The read's copy is made, then the read lets go of the original, whose drop
// panics: the copy, which the caller never receives, is dropped too (not
// leaked), and the original's panic reaches the caller.
#[test]
fn a_read_whose_release_panics_drops_the_copy_it_made() {
    let ledger = Arc::new(Ledger::default());
    Context::new().run(|| {
        Rewritten::v().set(Rewriting { id: 2, ledger: ledger.clone() });
        let guard = Rewritten { v: Rewriting { id: 1, ledger: ledger.clone() } }.enter();
        GUARD.with(|slot| *slot.borrow_mut() = Some(guard));
        let read = catch_unwind(|| Rewritten::v().get());
        let panic = read.err().map(|payload| message(&*payload));
        assert_eq!(panic.as_deref(), Some("the original explodes in drop"));
        // The original (1) and the copy (11); the restored value (2) is set.
        assert_eq!(ledger.dropped(), 2);
        assert_eq!(Rewritten::v().with(|v| v.id), Some(2));
    });
    assert_eq!(ledger.dropped(), 3);
}

/// A `Display` that panics, for a logged field.
#[derive(Clone)]
struct PanicsInDisplay;

impl std::fmt::Display for PanicsInDisplay {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("display fails");
    }
}

#[derive(ContextLocal)]
struct Logged {
    #[context_local(log)]
    broken: PanicsInDisplay,
    #[context_local(log)]
    fine: u32,
}

/// Logs from its destructor: run while a panic unwinds.
struct LogsWhenDropped;

impl Drop for LogsWhenDropped {
    fn drop(&mut self) {
        tracing::error!("from a destructor");
    }
}

// A logged field's `Display` runs on every line of the context, also lines
// written by destructors while a panic unwinds: its panic is contained (the
// field is left out of the line), never a second panic that aborts.
#[test]
fn a_logged_field_whose_display_panics_is_left_out_even_while_unwinding() {
    run_isolated(
        "a_logged_field_whose_display_panics_is_left_out_even_while_unwinding",
        || {
            let sink = Captured::default();
            let writer = sink.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_writer(move || writer.clone())
                .event_format(context_local::tracing::ContextFields::new(tracing_subscriber::fmt::format().json()))
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                Context::new().run(|| {
                    Logged::broken().set(PanicsInDisplay);
                    Logged::fine().set(7);
                    tracing::info!("plain");
                    let unwound = catch_unwind(|| {
                        let _logs = LogsWhenDropped;
                        panic!("outer");
                    });
                    let panic = unwound.err().map(|payload| message(&*payload));
                    report(&format!("panic={}", panic.as_deref().unwrap_or("none")));
                });
            });
            let output = sink.text();
            for line in output.lines() {
                let object: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
                report(&format!("fine={} broken={}", object["fine"], object.get("broken").is_some()));
            }
        },
        &["panic=outer", r#"fine="7" broken=false"#, r#"fine="7" broken=false"#],
    );
}
