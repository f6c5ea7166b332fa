//! `set` on a field of a standard type (`u64`, `String`, ...) writes into the
//! thread's cache entry and the value reaches the context later; any other
//! type goes straight to the context. Both must behave the same everywhere.
//!
//! This test generates nested programs (closures running programs, contexts
//! run inside closures, snapshots, guards, tokio tasks with and without a
//! context, `run_blocking`, panics) and runs each twice on fresh threads:
//! once on `u64` fields (the cached path) and once on the same fields holding
//! a newtype (the full path, which the nested model test checks against its
//! model). The traces of what every step returned must be equal.
//!
//! Knobs: `WRITE_BACK_SEED=N|random` (default: a fixed seed, so CI is
//! deterministic), `PROPTEST_CASES` (default 1,000).

use std::any::Any;
use std::cell::RefCell;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use context_local::{AccessError, Context, ContextLocal, Field, FutureExt as _};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

#[derive(ContextLocal, Clone, Debug)]
#[context_local(init = Fast::fresh)]
struct Fast {
    a: u64,
    #[context_local(no_inherit)]
    b: u64,
    #[context_local(default = 5)]
    c: u64,
}

impl Fast {
    fn fresh() -> Fast {
        Fast { a: 1, b: 2, c: 3 }
    }
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct FastThread {
    t: u64,
}

/// A `u64` the library cannot tell runs no user code: the full path.
#[derive(Clone, Debug, PartialEq)]
struct N(u64);

#[derive(ContextLocal, Clone, Debug)]
#[context_local(init = Slow::fresh)]
struct Slow {
    a: N,
    #[context_local(no_inherit)]
    b: N,
    #[context_local(default = N(5))]
    c: N,
}

impl Slow {
    fn fresh() -> Slow {
        Slow { a: N(1), b: N(2), c: N(3) }
    }
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct SlowThread {
    t: N,
}

#[derive(Clone, Copy, Debug)]
enum Key {
    A,
    B,
    C,
    T,
}

#[derive(Clone, Debug)]
enum Op {
    Get(Key),
    Set(Key, u64),
    Replace(Key, u64),
    Take(Key),
    IsSet(Key),
    With(Key, Block),
    Update(Key, Block),
    Snapshot,
    NewContext,
    Run(u8, Block),
    Enter(u64),
    DropGuard,
    Current,
    TakeStruct,
    Panic,
    Catch(Block),
    InTask(u8, Block),
    PlainTask(Block),
    RunBlocking(Block),
}

type Block = Arc<Vec<Op>>;

/// One side: the same four fields, of type `u64` or `N`.
trait Side: 'static {
    type V: Clone + Send + Sync + Debug + 'static;
    fn field(key: Key) -> Field<Self::V>;
    fn val(n: u64) -> Self::V;
    fn num(v: &Self::V) -> u64;
    fn enter(n: u64) -> Box<dyn Any>;
    fn current() -> Option<[u64; 3]>;
    fn take() -> Option<[u64; 3]>;
}

struct FastSide;

impl Side for FastSide {
    type V = u64;
    fn field(key: Key) -> Field<u64> {
        match key {
            Key::A => Fast::a(),
            Key::B => Fast::b(),
            Key::C => Fast::c(),
            Key::T => FastThread::t(),
        }
    }
    fn val(n: u64) -> u64 {
        n
    }
    fn num(v: &u64) -> u64 {
        *v
    }
    fn enter(n: u64) -> Box<dyn Any> {
        Box::new(Fast { a: n, b: n + 1, c: n + 2 }.enter())
    }
    fn current() -> Option<[u64; 3]> {
        Fast::current().map(|s| [s.a, s.b, s.c])
    }
    fn take() -> Option<[u64; 3]> {
        Fast::take().map(|s| [s.a, s.b, s.c])
    }
}

struct SlowSide;

impl Side for SlowSide {
    type V = N;
    fn field(key: Key) -> Field<N> {
        match key {
            Key::A => Slow::a(),
            Key::B => Slow::b(),
            Key::C => Slow::c(),
            Key::T => SlowThread::t(),
        }
    }
    fn val(n: u64) -> N {
        N(n)
    }
    fn num(v: &N) -> u64 {
        v.0
    }
    fn enter(n: u64) -> Box<dyn Any> {
        Box::new(Slow { a: N(n), b: N(n + 1), c: N(n + 2) }.enter())
    }
    fn current() -> Option<[u64; 3]> {
        Slow::current().map(|s| [s.a.0, s.b.0, s.c.0])
    }
    fn take() -> Option<[u64; 3]> {
        Slow::take().map(|s| [s.a.0, s.b.0, s.c.0])
    }
}

thread_local! {
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static CONTEXTS: RefCell<Vec<Option<Context>>> = const { RefCell::new(Vec::new()) };
    static GUARDS: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

fn note(line: String) {
    TRACE.with_borrow_mut(|trace| trace.push(line));
}

/// An error's kind, the same for both sides (the field names differ).
fn kind(error: &AccessError) -> &'static str {
    match error {
        AccessError::Unset { .. } => "Unset",
        AccessError::Reentrant { .. } => "Reentrant",
        AccessError::Unscoped { .. } => "Unscoped",
        AccessError::Destroyed { .. } => "Destroyed",
        _ => "other",
    }
}

fn show<S: Side>(result: Result<Option<S::V>, AccessError>) -> String {
    match result {
        Ok(value) => format!("{:?}", value.map(|v| S::num(&v))),
        Err(error) => kind(&error).to_string(),
    }
}

fn exec<S: Side>(block: &[Op], depth: usize) {
    for op in block {
        let line = step::<S>(op, depth);
        note(format!("{depth}: {op:?} -> {line}", op = short(op)));
    }
}

/// The step without its nested blocks, for the trace.
fn short(op: &Op) -> String {
    let text = format!("{op:?}");
    text.split('[').next().unwrap_or_default().to_string()
}

fn with_context<R>(i: u8, f: impl FnOnce(&mut Context) -> R) -> Option<R> {
    let taken = CONTEXTS.with_borrow_mut(|list| {
        let len = list.len();
        (len > 0).then(|| (i as usize % len, list[i as usize % len].take())).and_then(|(at, c)| c.map(|c| (at, c)))
    });
    let (at, mut ctx) = taken?;
    let result = catch_unwind(AssertUnwindSafe(|| f(&mut ctx)));
    CONTEXTS.with_borrow_mut(|list| list[at] = Some(ctx));
    Some(result.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

fn step<S: Side>(op: &Op, depth: usize) -> String {
    match op {
        Op::Get(k) => show::<S>(S::field(*k).try_get().map(Some).or_else(unset_is_none)),
        Op::Set(k, n) => format!("{:?}", S::field(*k).try_set(S::val(*n)).map_err(|e| kind(&e))),
        Op::Replace(k, n) => show::<S>(S::field(*k).try_replace(S::val(*n))),
        Op::Take(k) => show::<S>(S::field(*k).try_take()),
        Op::IsSet(k) => format!("{:?}", S::field(*k).try_is_set().map_err(|e| kind(&e))),
        Op::With(k, body) => {
            let seen = S::field(*k).try_with(|v| {
                let before = S::num(v);
                exec::<S>(body, depth + 1);
                (before, S::num(v))
            });
            format!("{:?}", seen.map_err(|e| kind(&e)))
        }
        Op::Update(k, body) => {
            let seen = S::field(*k).try_update(|v| {
                *v = S::val(S::num(v) + 100);
                exec::<S>(body, depth + 1);
                S::num(v)
            });
            format!("{:?}", seen.map_err(|e| kind(&e)))
        }
        Op::Snapshot => {
            let snapshot = Context::current();
            CONTEXTS.with_borrow_mut(|list| list.push(Some(snapshot)));
            "()".into()
        }
        Op::NewContext => {
            CONTEXTS.with_borrow_mut(|list| list.push(Some(Context::new())));
            "()".into()
        }
        Op::Run(i, body) => match with_context(*i, |ctx| ctx.run(|| exec::<S>(body, depth + 1))) {
            Some(()) => "ran".into(),
            None => "no context".into(),
        },
        Op::Enter(n) => match catch_unwind(|| S::enter(*n)) {
            Ok(guard) => {
                GUARDS.with_borrow_mut(|guards| guards.push(guard));
                "entered".into()
            }
            Err(_) => "panicked".into(),
        },
        Op::DropGuard => {
            let guard = GUARDS.with_borrow_mut(|guards| guards.pop());
            let had = guard.is_some();
            drop(guard);
            format!("{had}")
        }
        Op::Current => match catch_unwind(S::current) {
            Ok(values) => format!("{values:?}"),
            Err(_) => "panicked".into(),
        },
        Op::TakeStruct => match catch_unwind(S::take) {
            Ok(values) => format!("{values:?}"),
            Err(_) => "panicked".into(),
        },
        Op::Panic => panic!("a step panics"),
        Op::Catch(body) => {
            let caught = catch_unwind(AssertUnwindSafe(|| exec::<S>(body, depth + 1)));
            format!("caught: {}", caught.is_err())
        }
        Op::InTask(i, body) => {
            let body = body.clone();
            let ran = with_context(*i, move |ctx| {
                let ctx = ctx.snapshot();
                on_runtime(
                    async move { catch_unwind(AssertUnwindSafe(|| exec::<S>(&body, depth + 1))).is_err() }
                        .in_context(ctx),
                )
            });
            format!("{ran:?}")
        }
        Op::PlainTask(body) => {
            let body = body.clone();
            let task = async move {
                let task =
                    tokio::spawn(
                        async move { catch_unwind(AssertUnwindSafe(|| exec::<S>(&body, depth + 1))).is_err() },
                    );
                task.await.expect("the task finishes")
            };
            format!("{:?}", on_runtime(task))
        }
        Op::RunBlocking(body) => {
            // In a task with the context here, so `run_blocking` works.
            let body = body.clone();
            let mut here = Context::current();
            let done = here.run(|| {
                on_runtime(
                    async move {
                        let trace = context_local::task::run_blocking(move || {
                            let caught = catch_unwind(AssertUnwindSafe(|| exec::<S>(&body, depth + 1)));
                            (caught.is_err(), TRACE.take())
                        })
                        .await;
                        (trace, S::field(Key::A).try_get().map_err(|e| kind(&e)))
                    }
                    .in_current_context(),
                )
            });
            let ((panicked, lines), after) = done;
            for line in lines {
                note(format!("  blocking {line}"));
            }
            format!("{panicked} then {:?}", after.map(|v| S::num(&v)))
        }
    }
}

fn unset_is_none<V>(error: AccessError) -> Result<Option<V>, AccessError> {
    match error {
        AccessError::Unset { .. } => Ok(None),
        other => Err(other),
    }
}

fn on_runtime<F: std::future::Future>(future: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(future)
}

/// Runs `program` on a fresh thread on one side; the trace.
fn run<S: Side>(program: &Block) -> Vec<String> {
    let program = program.clone();
    std::thread::spawn(move || {
        let caught = catch_unwind(AssertUnwindSafe(|| exec::<S>(&program, 0)));
        note(format!("end: panicked {}", caught.is_err()));
        // What is left where, after the program.
        for key in [Key::A, Key::B, Key::C, Key::T] {
            note(format!("left {key:?}: {}", show::<S>(S::field(key).try_get().map(Some).or_else(unset_is_none))));
        }
        let contexts = CONTEXTS.take();
        for (i, ctx) in contexts.into_iter().enumerate() {
            let Some(mut ctx) = ctx else { continue };
            let seen = ctx.run(|| [Key::A, Key::B, Key::C].map(|k| S::field(k).try_get().ok().map(|v| S::num(&v))));
            note(format!("context {i}: {seen:?}"));
        }
        while GUARDS.with_borrow_mut(|guards| guards.pop()).is_some() {}
        TRACE.take()
    })
    .join()
    .expect("the side's thread")
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![Just(Key::A), Just(Key::B), Just(Key::C), Just(Key::T)]
}

fn leaf() -> BoxedStrategy<Op> {
    prop_oneof![
        6 => key().prop_map(Op::Get),
        8 => (key(), 0..50u64).prop_map(|(k, n)| Op::Set(k, n)),
        1 => (key(), 0..50u64).prop_map(|(k, n)| Op::Replace(k, n)),
        1 => key().prop_map(Op::Take),
        1 => key().prop_map(Op::IsSet),
        2 => Just(Op::Snapshot),
        1 => Just(Op::NewContext),
        1 => (0..50u64).prop_map(Op::Enter),
        1 => Just(Op::DropGuard),
        1 => Just(Op::Current),
        1 => Just(Op::TakeStruct),
        1 => Just(Op::Panic),
    ]
    .boxed()
}

fn program() -> impl Strategy<Value = Block> {
    let op = leaf().prop_recursive(3, 40, 5, |inner| {
        let block = prop::collection::vec(inner.clone(), 0..5).prop_map(Arc::new);
        prop_oneof![
            4 => inner,
            2 => (key(), block.clone()).prop_map(|(k, b)| Op::With(k, b)),
            2 => (key(), block.clone()).prop_map(|(k, b)| Op::Update(k, b)),
            3 => (0..4u8, block.clone()).prop_map(|(i, b)| Op::Run(i, b)),
            1 => block.clone().prop_map(Op::Catch),
            1 => (0..4u8, block.clone()).prop_map(|(i, b)| Op::InTask(i, b)),
            1 => block.clone().prop_map(Op::PlainTask),
            1 => block.prop_map(Op::RunBlocking),
        ]
    });
    prop::collection::vec(op, 1..12).prop_map(Arc::new)
}

fn config() -> Config {
    let mut config = Config { cases: 1000, failure_persistence: None, ..Config::default() };
    if let Ok(cases) = std::env::var("PROPTEST_CASES") {
        config.cases = cases.parse().expect("PROPTEST_CASES: a number");
    }
    config.rng_seed = match std::env::var("WRITE_BACK_SEED").as_deref() {
        Ok("random") => RngSeed::Random,
        Ok(seed) => RngSeed::Fixed(seed.parse().expect("WRITE_BACK_SEED: a u64 or `random`")),
        Err(_) => RngSeed::Fixed(1),
    };
    config
}

fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn set_through_the_cache_behaves_as_the_full_path(program in program()) {
        quiet_panics();
        let fast = run::<FastSide>(&program);
        let slow = run::<SlowSide>(&program);
        if fast != slow {
            let at = fast.iter().zip(&slow).position(|(a, b)| a != b).unwrap_or(fast.len().min(slow.len()));
            let mut report = format!("the traces part at line {at}\n");
            for i in 0..fast.len().max(slow.len()) {
                let (a, b) = (fast.get(i).map_or("-", String::as_str), slow.get(i).map_or("-", String::as_str));
                let mark = if a == b { "  " } else { "!=" };
                report.push_str(&format!("{mark} {a:<60} | {b}\n"));
            }
            prop_assert!(false, "{}\n{:#?}", report, program);
        }
    }
}
