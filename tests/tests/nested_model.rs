//! Nested model-based test: random *nested* programs of context-local
//! operations, run for real and in a reference model, compared event by event.
//!
//! `model.rs` checks flat programs. Here the closures of `with`, `update`,
//! `get_or_insert_with`, the struct's `init`, the field's `default`, and the
//! `Clone` and `Drop` impls of the stored value type run generated
//! sub-programs themselves, so the test reaches the compositions where the
//! runtime has to be careful: writes inside reads, guards dropped inside
//! closures or in another context, contexts installed inside closures and on
//! other threads and tokio tasks, panics anywhere, several destructors in one
//! call.
//!
//! Both worlds record a trace of events: every step's result (or the panic
//! leaving it), what a `with`/`update` closure is lent (at its start and its
//! end), every `Clone`, every `Drop`, every run of `init` and `default`. The
//! real run goes first, on a fresh thread; the model then runs the same
//! program, following the crate's documented behaviour (the README and the
//! API docs) and the decisions below, and the two traces must be equal. The model takes from the real trace
//! only what the contract leaves open: the order in which one call drops
//! several values (it checks that the set is right), and Decision 13 below.
//! Every value counts its drops and checks it is alive whenever it is looked
//! at: at the end, after every guard, context and thread is gone, each value
//! created has been dropped exactly once. A failure prints the shrunk program
//! as code (steps numbered `/*n*/`) and both traces side by side.
//!
//! Knobs (environment variables):
//! - `PROPTEST_CASES` (default 2,000; 10 under Miri), `NESTED_MODEL_SEED` (a
//!   `u64`, or `random` for a new seed each run; the default is the fixed
//!   [`FIXED_SEED`], so every run checks the same programs), the other
//!   `PROPTEST_*` variables.
//! - `NESTED_MODEL_SKIP=a,b,..` leaves step kinds out, to get past a known
//!   divergence or a step that aborts the process today. Kinds: every name in
//!   [`KINDS`] (one per step, `Op::kind`), `key-a`..`key-t` (a field), and:
//!   `clone-hooks`, `drop-hooks` (values without them), `drop-panics`,
//!   `clone-panics` (the value's own `Drop`/`Clone` catches what its hook
//!   throws, in both worlds), `closures` (empty closure bodies), `exit-drops`
//!   (a thread deletes its values one by one before it exits, so nothing is
//!   dropped by thread exit). Groups: see [`GROUPS`] (`guards`, `panics`,
//!   `threads`, `tokio`, `contexts`, `struct-ops`, `init-hooks`,
//!   `default-hooks`).
//! - `NESTED_MODEL_FORK=1` runs the cases in a child process (proptest's fork
//!   mode), so a case that aborts the process is still reported and shrunk.
//! - `NESTED_MODEL_VERBOSE=1` prints every panic message;
//!   `NESTED_MODEL_STATS=1` (with `--nocapture`) prints running totals of the
//!   steps and events the programs produced.
//!
//! Under Miri: `MIRIFLAGS=-Zmiri-disable-isolation PROPTEST_CASES=5 cargo
//! +nightly miri test -p tests --test nested_model` (fixed seed, shrinking
//! capped at 32 steps).
//!
//! Decisions where the documentation is silent (each follows what it
//! implies; the model code refers to them as "Decision N"):
//! 1. A field access checks misuse (`Destroyed`, `Unscoped`, `Reentrant`)
//!    before it runs `init` or `default`.
//! 2. A `Clone` impl run by a read (`get`, `try_get`, `get_or_insert_with` of
//!    a set field) is lent the field as a `with` closure is: reads of that
//!    field work, writes to it are `Reentrant`, everything else works, and a
//!    value released meanwhile lives until the clone returns. `S::current` of
//!    a struct whose fields are all inherited holds a count of each value and
//!    clones in place (no field marked); other structs move out and are put
//!    back. The `Clone` run by `update`'s copy-on-write or by `take`/`replace`
//!    of a value a snapshot shares is not a read: normal rules.
//! 3. `is_set` inside the struct's own `init` is `Reentrant` (any access to the
//!    struct is).
//! 4. A value given to a write that fails (`set`, `replace`, `enter` on misuse)
//!    is dropped before the misuse panic; if its `Drop` panics, that panic is
//!    the one that leaves the call.
//! 5. `take`/`replace` of a value shared with a snapshot return a clone (the
//!    snapshot keeps the original); `update` clones a shared value before the
//!    closure (the contract: "If a snapshot shares the value, it is cloned
//!    first").
//! 6. Drop hooks that run while the library cleans up after a panic (an
//!    `update`/`with` closure panicked) run "while unwinding": a library call
//!    inside them that drops values swallows their panics.
//! 7. `get_or_insert_with` / `default`: if a bypassing write (a guard restored
//!    inside the closure) set the field meanwhile, the computed value is
//!    dropped and the rewrite stays; otherwise the computed value is stored.
//!    If the field is unset again when it is read back, `default` applies,
//!    else the call panics with `Unset`'s text.
//! 8. A user-dropped `Context` is installed while the values it alone holds
//!    are dropped one at a time, then lets go of the rest; at thread exit
//!    values go in any order, with every access inside a destructor
//!    `Destroyed`. Values the library took out (a guard's restore, `clear`,
//!    `S::current`'s counts) are let go of one at a time, each held until its
//!    turn.
//! 9. A guard's saved values are dropped when the guard is dropped without
//!    restoring (in another context).
//! 10. Harness rules (not library semantics): the harness drops a value it got
//!     back (`take`, `replace`, a clone from `get`) right away; the fields of
//!     a struct it got back (`S::take`, `S::current`) one by one in field
//!     order, resuming the first panic; it skips creating contexts, threads
//!     and runtimes while a thread is being torn down, contexts once the
//!     program's clean-up has started, and runtimes inside a `Clone` hook or
//!     inside another runtime.
//! 11. `init` writes every field of its struct: while a closure in that context
//!     uses any of them (even `with`, if a guard emptied its field meanwhile)
//!     running `init` is `Reentrant`.
//! 12. A dropped `InContext` drops its context's values one at a time (in
//!     any order), each taken out first, the others still visible to its
//!     `Drop`; what a `Drop` stores there meanwhile is dropped too.
//! 13. While a context is being dropped, a value it shares with another
//!     context may still count as shared or not (the order in which its
//!     values let go is not observable): `update`/`take` of it may clone it
//!     or not; the model accepts either.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::LocalKey;

use context_local::{AccessError, Context, ContextLocal, Entered, Field, FutureExt};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::RngSeed;

/// How deep hooks (`Clone`, `Drop`, `init`, `default` sub-programs) nest at
/// run time; deeper ones do nothing (in both worlds).
const MAX_HOOK_DEPTH: u32 = 2;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Step kinds `NESTED_MODEL_SKIP` can leave out, and the groups it accepts.
const KINDS: &[&str] = &[
    "get",
    "try-get",
    "set",
    "replace",
    "take",
    "delete",
    "is-set",
    "with",
    "update",
    "get-or-insert-with",
    "clear",
    "take-struct",
    "current",
    "enter",
    "drop-guard",
    "new-context",
    "snapshot",
    "run",
    "drop-context",
    "panic",
    "catch",
    "arm-init",
    "arm-default",
    "on-thread",
    "in-task",
    "plain-task",
    "warm-plain-task",
    "new-context-task",
    "exit-drops",
    "clone-hooks",
    "drop-hooks",
    "drop-panics",
    "clone-panics",
    "closures",
    "key-a",
    "key-b",
    "key-c",
    "key-d",
    "key-t",
];

const GROUPS: &[(&str, &[&str])] = &[
    ("guards", &["enter", "drop-guard"]),
    ("panics", &["panic"]),
    ("init-hooks", &["arm-init"]),
    ("default-hooks", &["arm-default"]),
    ("threads", &["on-thread"]),
    ("tokio", &["in-task", "plain-task", "warm-plain-task", "new-context-task"]),
    ("contexts", &["run", "drop-context"]),
    ("struct-ops", &["clear", "take-struct", "current"]),
];

#[derive(Default, Debug)]
struct Skip(std::collections::BTreeSet<&'static str>);

impl Skip {
    fn has(&self, kind: &str) -> bool {
        self.0.contains(kind)
    }
}

fn skip() -> &'static Skip {
    static SKIP: OnceLock<Skip> = OnceLock::new();
    SKIP.get_or_init(|| {
        let mut skip = Skip::default();
        let list = std::env::var("NESTED_MODEL_SKIP").unwrap_or_default();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if let Some((_, kinds)) = GROUPS.iter().find(|(group, _)| *group == word) {
                skip.0.extend(kinds.iter().copied());
            } else if let Some(kind) = KINDS.iter().find(|k| **k == word) {
                skip.0.insert(kind);
            } else {
                panic!("NESTED_MODEL_SKIP: unknown step kind `{word}`; known: {KINDS:?} and {GROUPS:?}");
            }
        }
        skip
    })
}

fn verbose() -> bool {
    std::env::var_os("NESTED_MODEL_VERBOSE").is_some_and(|v| v != "0")
}

/// The seed used unless one is given: every run (and CI) checks the same
/// programs, so a failure is never a matter of luck. `NESTED_MODEL_SEED=random`
/// explores new ones.
const FIXED_SEED: u64 = 1;

fn config() -> ProptestConfig {
    // `proptest!` applies the `PROPTEST_*` variables over this afterwards.
    let mut config = ProptestConfig { cases: if cfg!(miri) { 10 } else { 2000 }, ..ProptestConfig::default() };
    config.rng_seed = RngSeed::Fixed(FIXED_SEED);
    if cfg!(miri) {
        // Shrinking a failure under Miri takes minutes per step.
        config.max_shrink_iters = 32;
    }
    match std::env::var("NESTED_MODEL_SEED").as_deref().map(str::trim) {
        Ok("random") => config.rng_seed = RngSeed::Random,
        Ok(seed) => config.rng_seed = RngSeed::Fixed(seed.parse().expect("NESTED_MODEL_SEED: a u64 or `random`")),
        Err(_) => {}
    }
    if std::env::var_os("NESTED_MODEL_FORK").is_some_and(|v| v != "0") && !cfg!(miri) {
        config.fork = true;
    }
    config
}

// ---------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------

type Tag = u32;
type Block = Arc<Vec<Step>>;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum Key {
    /// `Sess::a`: inherited, the struct has `init`.
    A,
    /// `Sess::b`: `no_inherit`.
    B,
    /// `Plain::c`: inherited.
    C,
    /// `Plain::d`: inherited, with a `default`.
    D,
    /// `PerThread::t`: thread scope.
    T,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum S {
    Sess,
    Plain,
    Thread,
}

impl Key {
    fn in_sess(self) -> bool {
        matches!(self, Key::A | Key::B)
    }

    fn inherited(self) -> bool {
        matches!(self, Key::A | Key::C | Key::D)
    }

    fn name(self) -> &'static str {
        match self {
            Key::A => "Sess::a()",
            Key::B => "Sess::b()",
            Key::C => "Plain::c()",
            Key::D => "Plain::d()",
            Key::T => "PerThread::t()",
        }
    }
}

impl S {
    fn keys(self) -> &'static [Key] {
        match self {
            S::Sess => &[Key::A, Key::B],
            S::Plain => &[Key::C, Key::D],
            S::Thread => &[Key::T],
        }
    }

    fn name(self) -> &'static str {
        match self {
            S::Sess => "Sess",
            S::Plain => "Plain",
            S::Thread => "PerThread",
        }
    }
}

/// A value a step creates: its payload and the sub-programs its `Clone` and
/// `Drop` impls run (clones carry no hooks).
#[derive(Clone)]
struct Val {
    n: u32,
    on_clone: Option<Block>,
    on_drop: Option<Block>,
}

#[derive(Clone)]
enum Ent {
    Sess(Val, Val),
    Plain(Val, Val),
    Thread(Val),
}

#[derive(Clone)]
enum Op {
    Get(Key),
    TryGet(Key),
    Set(Key, Val),
    Replace(Key, Val),
    Take(Key),
    Delete(Key),
    IsSet(Key),
    With {
        key: Key,
        try_: bool,
        body: Block,
    },
    Update {
        key: Key,
        try_: bool,
        body: Block,
    },
    GetOrInsertWith {
        key: Key,
        val: Val,
        body: Block,
    },
    Clear(S),
    /// `Sess::take()` or `Plain::take()`.
    TakeStruct(S),
    CurrentPlain,
    Enter(Ent),
    /// Drops this thread's live guard number `i % live` (oldest first).
    DropGuard(u8),
    NewContext,
    Snapshot,
    /// `contexts[i % len].run(..)`; a context already running (or dropped) is
    /// skipped: `Out::Busy`.
    Run(u8, Block),
    DropContext(u8),
    Panic,
    Catch(Block),
    /// The next run of `Sess`'s `init` runs this first (once).
    ArmInit(Block),
    /// The next run of `Plain::d`'s `default` runs this first (once).
    ArmDefault(Block),
    /// A new OS thread runs `contexts[i % len].run(..)`, drops the guards it
    /// left, and exits.
    OnThread(u8, Block),
    /// A tokio task (current-thread runtime) runs the block in
    /// `InContext` with `contexts[i % len]`.
    InTask(u8, Block),
    /// A plain `tokio::spawn`ed task (no context) runs the block.
    PlainTask(Block),
    /// A tokio task runs the block `.in_new_context()`; the finished
    /// `InContext` is dropped by tokio, with what the block wrote.
    NewContextTask(Block),
}

#[derive(Clone)]
struct Step {
    id: u32,
    op: Op,
}

#[derive(Clone)]
struct Program(Block);

// ----- numbering and printing -----

fn number(steps: &[Step], next: &mut u32) -> Block {
    Arc::new(
        steps
            .iter()
            .map(|step| {
                let id = *next;
                *next += 1;
                Step { id, op: step.op.renumber(next) }
            })
            .collect(),
    )
}

impl Val {
    fn renumber(&self, next: &mut u32) -> Val {
        Val {
            n: self.n,
            on_clone: self.on_clone.as_ref().map(|b| number(b, next)),
            on_drop: self.on_drop.as_ref().map(|b| number(b, next)),
        }
    }
}

impl Op {
    /// The name `NESTED_MODEL_SKIP` knows the step by.
    fn kind(&self) -> &'static str {
        match self {
            Op::Get(_) => "get",
            Op::TryGet(_) => "try-get",
            Op::Set(..) => "set",
            Op::Replace(..) => "replace",
            Op::Take(_) => "take",
            Op::Delete(_) => "delete",
            Op::IsSet(_) => "is-set",
            Op::With { .. } => "with",
            Op::Update { .. } => "update",
            Op::GetOrInsertWith { .. } => "get-or-insert-with",
            Op::Clear(_) => "clear",
            Op::TakeStruct(_) => "take-struct",
            Op::CurrentPlain => "current",
            Op::Enter(_) => "enter",
            Op::DropGuard(_) => "drop-guard",
            Op::NewContext => "new-context",
            Op::Snapshot => "snapshot",
            Op::Run(..) => "run",
            Op::DropContext(_) => "drop-context",
            Op::Panic => "panic",
            Op::Catch(_) => "catch",
            Op::ArmInit(_) => "arm-init",
            Op::ArmDefault(_) => "arm-default",
            Op::OnThread(..) => "on-thread",
            Op::InTask(..) => "in-task",
            Op::PlainTask(_) => "plain-task",
            Op::NewContextTask(_) => "new-context-task",
        }
    }

    fn renumber(&self, next: &mut u32) -> Op {
        match self {
            Op::Set(k, v) => Op::Set(*k, v.renumber(next)),
            Op::Replace(k, v) => Op::Replace(*k, v.renumber(next)),
            Op::With { key, try_, body } => Op::With { key: *key, try_: *try_, body: number(body, next) },
            Op::Update { key, try_, body } => Op::Update { key: *key, try_: *try_, body: number(body, next) },
            Op::GetOrInsertWith { key, val, body } => {
                let body = number(body, next);
                Op::GetOrInsertWith { key: *key, val: val.renumber(next), body }
            }
            Op::Enter(Ent::Sess(a, b)) => {
                let a = a.renumber(next);
                Op::Enter(Ent::Sess(a, b.renumber(next)))
            }
            Op::Enter(Ent::Plain(a, b)) => {
                let a = a.renumber(next);
                Op::Enter(Ent::Plain(a, b.renumber(next)))
            }
            Op::Enter(Ent::Thread(a)) => Op::Enter(Ent::Thread(a.renumber(next))),
            Op::Run(i, b) => Op::Run(*i, number(b, next)),
            Op::Catch(b) => Op::Catch(number(b, next)),
            Op::ArmInit(b) => Op::ArmInit(number(b, next)),
            Op::ArmDefault(b) => Op::ArmDefault(number(b, next)),
            Op::OnThread(i, b) => Op::OnThread(*i, number(b, next)),
            Op::InTask(i, b) => Op::InTask(*i, number(b, next)),
            Op::PlainTask(b) => Op::PlainTask(number(b, next)),
            Op::NewContextTask(b) => Op::NewContextTask(number(b, next)),
            other => other.clone(),
        }
    }
}

struct Printer<'a> {
    out: &'a mut dyn fmt::Write,
    indent: usize,
}

impl Printer<'_> {
    fn line(&mut self, text: &str) -> fmt::Result {
        writeln!(self.out, "{:width$}{text}", "", width = self.indent * 4)
    }

    fn block(&mut self, open: &str, body: &[Step], close: &str) -> fmt::Result {
        if body.is_empty() {
            return self.line(&format!("{open}{close}"));
        }
        self.line(open)?;
        self.indent += 1;
        for step in body {
            self.step(step)?;
        }
        self.indent -= 1;
        self.line(close)
    }

    /// Prints `prefix` + the value + `suffix`, with its hooks as closures.
    fn val(&mut self, prefix: &str, v: &Val, suffix: &str) -> fmt::Result {
        let head = format!("{prefix}v({})", v.n);
        match (&v.on_clone, &v.on_drop) {
            (None, None) => self.line(&format!("{head}{suffix}")),
            (clone, drop) => {
                self.line(&head)?;
                self.indent += 1;
                let close_clone = if drop.is_none() { format!("}}){suffix}") } else { "})".to_string() };
                if let Some(b) = clone {
                    self.block(".on_clone(|| {", b, &close_clone)?;
                }
                if let Some(b) = drop {
                    self.block(".on_drop(|| {", b, &format!("}}){suffix}"))?;
                }
                self.indent -= 1;
                Ok(())
            }
        }
    }

    fn step(&mut self, step: &Step) -> fmt::Result {
        let id = format!("/*{}*/ ", step.id);
        match &step.op {
            Op::Get(k) => self.line(&format!("{id}{}.get();", k.name())),
            Op::TryGet(k) => self.line(&format!("{id}{}.try_get();", k.name())),
            Op::Set(k, v) => self.val(&format!("{id}{}.set(", k.name()), v, ");"),
            Op::Replace(k, v) => self.val(&format!("{id}{}.replace(", k.name()), v, ");"),
            Op::Take(k) => self.line(&format!("{id}{}.take();", k.name())),
            Op::Delete(k) => self.line(&format!("{id}{}.delete();", k.name())),
            Op::IsSet(k) => self.line(&format!("{id}{}.is_set();", k.name())),
            Op::With { key, try_, body } => {
                let method = if *try_ { "try_with" } else { "with" };
                self.block(&format!("{id}{}.{method}(|v| {{", key.name()), body, "});")
            }
            Op::Update { key, try_, body } => {
                let method = if *try_ { "try_update" } else { "update" };
                self.block(&format!("{id}{}.{method}(|v| {{ v.n += 1;", key.name()), body, "});")
            }
            Op::GetOrInsertWith { key, val, body } => {
                self.line(&format!("{id}{}.get_or_insert_with(|| {{", key.name()))?;
                self.indent += 1;
                for s in body.iter() {
                    self.step(s)?;
                }
                self.val("", val, "")?;
                self.indent -= 1;
                self.line("});")
            }
            Op::Clear(s) => self.line(&format!("{id}{}::clear();", s.name())),
            Op::TakeStruct(s) => self.line(&format!("{id}{}::take();", s.name())),
            Op::CurrentPlain => self.line(&format!("{id}Plain::current();")),
            Op::Enter(e) => match e {
                Ent::Sess(a, b) => {
                    self.line(&format!("{id}guards.push(Sess {{"))?;
                    self.indent += 1;
                    self.val("a: ", a, ",")?;
                    self.val("b: ", b, ",")?;
                    self.indent -= 1;
                    self.line("}.enter());")
                }
                Ent::Plain(c, d) => {
                    self.line(&format!("{id}guards.push(Plain {{"))?;
                    self.indent += 1;
                    self.val("c: ", c, ",")?;
                    self.val("d: ", d, ",")?;
                    self.indent -= 1;
                    self.line("}.enter());")
                }
                Ent::Thread(t) => self.val(&format!("{id}guards.push(PerThread {{ t: "), t, " }.enter());"),
            },
            Op::DropGuard(i) => self.line(&format!("{id}drop(guards.remove({i} % live));")),
            Op::NewContext => self.line(&format!("{id}contexts.push(Context::new());")),
            Op::Snapshot => self.line(&format!("{id}contexts.push(Context::current());")),
            Op::Run(i, b) => self.block(&format!("{id}contexts[{i} % len].run(|| {{"), b, "});"),
            Op::DropContext(i) => self.line(&format!("{id}drop(contexts.take({i} % len));")),
            Op::Panic => self.line(&format!("{id}panic!();")),
            Op::Catch(b) => self.block(&format!("{id}catch_unwind(|| {{"), b, "});"),
            Op::ArmInit(b) => self.block(&format!("{id}on_next_init(|| {{"), b, "});"),
            Op::ArmDefault(b) => self.block(&format!("{id}on_next_default(|| {{"), b, "});"),
            Op::OnThread(i, b) => {
                self.block(&format!("{id}on_new_thread(contexts.take({i} % len), |ctx| ctx.run(|| {{"), b, "}));")
            }
            Op::InTask(i, b) => self.block(
                &format!("{id}rt.block_on(tokio::spawn(async {{"),
                b,
                &format!("}}.in_context(contexts.take({i} % len))));"),
            ),
            Op::PlainTask(b) => self.block(&format!("{id}rt.block_on(tokio::spawn(async {{"), b, "}));"),
            Op::NewContextTask(b) => {
                self.block(&format!("{id}rt.block_on(tokio::spawn(async {{"), b, "}.in_new_context()));")
            }
        }
    }
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        Printer { out: &mut text, indent: 0 }.step(self)?;
        f.write_str(text.trim_end())
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Step { id: 0, op: self.clone() }.fmt(f)
    }
}

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        Printer { out: &mut text, indent: 0 }.val("", self, "")?;
        f.write_str(text.trim_end())
    }
}

impl fmt::Debug for Ent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ent::Sess(a, b) => write!(f, "Sess {{ a: {a:?}, b: {b:?} }}"),
            Ent::Plain(c, d) => write!(f, "Plain {{ c: {c:?}, d: {d:?} }}"),
            Ent::Thread(t) => write!(f, "PerThread {{ t: {t:?} }}"),
        }
    }
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::from(
            "\n// v(n): a value; .on_clone/.on_drop: what its Clone/Drop run (depth <= 2).\n\
             // contexts = [Context::new(), Context::new()]; guards: this thread's live guards.\n",
        );
        let mut printer = Printer { out: &mut text, indent: 0 };
        for step in self.0.iter() {
            printer.step(step)?;
        }
        text.push_str("// end: drop the guards left (newest first), the contexts left, the guards made meanwhile, then the thread exits.\n");
        f.write_str(&text)
    }
}

// ----- generation -----

fn key() -> BoxedStrategy<Key> {
    let keys: Vec<Key> =
        [(Key::A, "key-a"), (Key::B, "key-b"), (Key::C, "key-c"), (Key::D, "key-d"), (Key::T, "key-t")]
            .into_iter()
            .filter(|(_, name)| !skip().has(name))
            .map(|(k, _)| k)
            .collect();
    assert!(!keys.is_empty(), "NESTED_MODEL_SKIP leaves no field");
    prop::sample::select(keys).boxed()
}

fn struct_kind() -> impl Strategy<Value = S> {
    prop_oneof![Just(S::Sess), Just(S::Plain), Just(S::Thread)]
}

fn plain_val() -> BoxedStrategy<Val> {
    (0..100u32).prop_map(|n| Val { n, on_clone: None, on_drop: None }).boxed()
}

fn ent(val: BoxedStrategy<Val>) -> BoxedStrategy<Ent> {
    prop_oneof![
        (val.clone(), val.clone()).prop_map(|(a, b)| Ent::Sess(a, b)),
        (val.clone(), val.clone()).prop_map(|(a, b)| Ent::Plain(a, b)),
        val.prop_map(Ent::Thread),
    ]
    .boxed()
}

fn empty() -> Block {
    Arc::new(Vec::new())
}

/// The weighted choices, without the kinds `NESTED_MODEL_SKIP` names.
struct Arms(Vec<(u32, BoxedStrategy<Op>)>);

impl Arms {
    fn add(&mut self, kind: &str, weight: u32, strategy: impl Strategy<Value = Op> + 'static) {
        if !skip().has(kind) {
            self.0.push((weight, strategy.boxed()));
        }
    }
}

fn leaf_ops() -> BoxedStrategy<Op> {
    let mut arms = Arms(Vec::new());
    arms.add("get", 4, key().prop_map(Op::Get));
    arms.add("try-get", 2, key().prop_map(Op::TryGet));
    arms.add("set", 5, (key(), plain_val()).prop_map(|(k, v)| Op::Set(k, v)));
    arms.add("replace", 1, (key(), plain_val()).prop_map(|(k, v)| Op::Replace(k, v)));
    arms.add("take", 1, key().prop_map(Op::Take));
    arms.add("delete", 1, key().prop_map(Op::Delete));
    arms.add("is-set", 1, key().prop_map(Op::IsSet));
    arms.add("with", 1, (key(), any::<bool>()).prop_map(|(key, try_)| Op::With { key, try_, body: empty() }));
    arms.add("update", 1, (key(), any::<bool>()).prop_map(|(key, try_)| Op::Update { key, try_, body: empty() }));
    arms.add(
        "get-or-insert-with",
        1,
        (key(), plain_val()).prop_map(|(key, val)| Op::GetOrInsertWith { key, val, body: empty() }),
    );
    arms.add("new-context", 1, Just(Op::NewContext));
    arms.add("snapshot", 2, Just(Op::Snapshot));
    arms.add("clear", 1, struct_kind().prop_map(Op::Clear));
    arms.add("take-struct", 1, prop_oneof![Just(S::Sess), Just(S::Plain)].prop_map(Op::TakeStruct));
    arms.add("current", 1, Just(Op::CurrentPlain));
    arms.add("enter", 2, ent(plain_val()).prop_map(Op::Enter));
    arms.add("drop-guard", 2, (0..4u8).prop_map(Op::DropGuard));
    arms.add("drop-context", 1, (0..4u8).prop_map(Op::DropContext));
    arms.add("panic", 1, Just(Op::Panic));
    assert!(!arms.0.is_empty(), "NESTED_MODEL_SKIP leaves no step kind");
    Union::new_weighted(arms.0).boxed()
}

fn node_ops(inner: BoxedStrategy<Op>) -> BoxedStrategy<Op> {
    let block = || -> BoxedStrategy<Block> {
        prop::collection::vec(inner.clone().prop_map(|op| Step { id: 0, op }), 0..4).prop_map(Arc::new).boxed()
    };
    let body = || -> BoxedStrategy<Block> {
        if skip().has("closures") {
            Just(empty()).boxed()
        } else {
            block()
        }
    };
    let hook = |kind: &str| -> BoxedStrategy<Option<Block>> {
        if skip().has(kind) {
            Just(None).boxed()
        } else {
            prop::option::weighted(0.35, block()).boxed()
        }
    };
    let hooked_val = (0..100u32, hook("clone-hooks"), hook("drop-hooks"))
        .prop_map(|(n, on_clone, on_drop)| Val { n, on_clone, on_drop })
        .boxed();
    let mut arms = Arms(vec![(6, inner.clone())]);
    arms.add("with", 3, (key(), any::<bool>(), body()).prop_map(|(key, try_, body)| Op::With { key, try_, body }));
    arms.add("update", 3, (key(), any::<bool>(), body()).prop_map(|(key, try_, body)| Op::Update { key, try_, body }));
    arms.add(
        "get-or-insert-with",
        2,
        (key(), hooked_val.clone(), body()).prop_map(|(key, val, body)| Op::GetOrInsertWith { key, val, body }),
    );
    arms.add("set", 3, (key(), hooked_val.clone()).prop_map(|(k, v)| Op::Set(k, v)));
    arms.add("replace", 1, (key(), hooked_val.clone()).prop_map(|(k, v)| Op::Replace(k, v)));
    arms.add("catch", 2, block().prop_map(Op::Catch));
    arms.add("run", 4, (0..4u8, block()).prop_map(|(i, b)| Op::Run(i, b)));
    arms.add("enter", 1, ent(hooked_val.clone()).prop_map(Op::Enter));
    arms.add("arm-init", 1, block().prop_map(Op::ArmInit));
    arms.add("arm-default", 1, block().prop_map(Op::ArmDefault));
    arms.add("on-thread", 1, (0..4u8, block()).prop_map(|(i, b)| Op::OnThread(i, b)));
    arms.add("in-task", 1, (0..4u8, block()).prop_map(|(i, b)| Op::InTask(i, b)));
    arms.add("plain-task", 1, block().prop_map(Op::PlainTask));
    // A read, then a plain task reading the same field first thing: the
    // read cache's entry is warm when the task looks.
    arms.add("warm-plain-task", 1, (key(), block()).prop_map(|(k, b)| warm_plain_task(k, &b)));
    arms.add("new-context-task", 1, block().prop_map(Op::NewContextTask));
    Union::new_weighted(arms.0).boxed()
}

/// `{ k.get(); rt.block_on(tokio::spawn(async { k.get(); body })) }`, caught.
fn warm_plain_task(k: Key, body: &Block) -> Op {
    let step = |op| Step { id: 0, op };
    let task = std::iter::once(step(Op::Get(k))).chain(body.iter().cloned()).collect();
    Op::Catch(Arc::new(vec![step(Op::Get(k)), step(Op::PlainTask(Arc::new(task)))]))
}

fn program() -> impl Strategy<Value = Program> {
    let ops = leaf_ops().prop_recursive(3, 48, 4, node_ops);
    prop::collection::vec(ops.prop_map(|op| Step { id: 0, op }), 1..14).prop_map(|steps| {
        let mut next = 1;
        Program(number(&steps, &mut next))
    })
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ErrKind {
    Unset,
    Reentrant,
    Destroyed,
    Unscoped,
    Other,
}

/// A panic, as the trace records it.
#[derive(Clone, Debug)]
enum Pan {
    /// A generated `panic!()`, by step id.
    Injected(u32),
    /// A plain method's misuse panic (the `AccessError` text).
    Misuse(ErrKind),
    /// Anything else (compared by kind only).
    Other(String),
}

impl PartialEq for Pan {
    fn eq(&self, other: &Pan) -> bool {
        match (self, other) {
            (Pan::Injected(a), Pan::Injected(b)) => a == b,
            (Pan::Misuse(a), Pan::Misuse(b)) => a == b,
            (Pan::Other(_), Pan::Other(_)) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pan::Injected(id) => write!(f, "panic!() of /*{id}*/"),
            Pan::Misuse(kind) => write!(f, "panic: {kind:?}"),
            Pan::Other(message) => write!(f, "panic: {message:?}"),
        }
    }
}

#[derive(Clone, PartialEq, Debug)]
enum Out {
    Unit,
    Val(Option<(Tag, u32)>),
    Flag(bool),
    Err(ErrKind),
    Pair(Option<((Tag, u32), (Tag, u32))>),
    Caught(Pan),
    /// The context slot is empty (running further out, or dropped).
    Busy,
    NoGuard,
    Skipped,
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Out::Unit => write!(f, "()"),
            Out::Val(None) => write!(f, "None"),
            Out::Val(Some((t, n))) => write!(f, "Some(v{t}:{n})"),
            Out::Flag(b) => write!(f, "{b}"),
            Out::Err(k) => write!(f, "Err({k:?})"),
            Out::Pair(None) => write!(f, "None"),
            Out::Pair(Some(((t1, n1), (t2, n2)))) => write!(f, "Some(v{t1}:{n1}, v{t2}:{n2})"),
            Out::Caught(p) => write!(f, "caught {p}"),
            Out::Busy => write!(f, "context slot empty: skipped"),
            Out::NoGuard => write!(f, "no live guard: skipped"),
            Out::Skipped => write!(f, "skipped (harness rule)"),
        }
    }
}

#[derive(Clone, PartialEq, Debug)]
enum Ev {
    /// A step finished (`0`: the harness's clean-up at the end of a thread).
    Res(u32, Result<Out, Pan>),
    /// A `with`/`update` closure of this step sees this value (at its start
    /// and at its end).
    Saw(u32, Tag, u32),
    Clone(Tag),
    Drop(Tag),
    Init,
    Default,
    /// A hook's panic caught by the value itself (`drop-panics`/`clone-panics`).
    Contained(Pan),
    /// Something the harness saw that can never be right (only real runs).
    Bad(String),
}

impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ev::Res(0, r) => write!(f, "clean-up -> {}", show(r)),
            Ev::Res(id, r) => write!(f, "/*{id}*/ -> {}", show(r)),
            Ev::Saw(id, t, n) => write!(f, "/*{id}*/ closure sees v{t}:{n}"),
            Ev::Clone(t) => write!(f, "clone v{t}"),
            Ev::Drop(t) => write!(f, "drop v{t}"),
            Ev::Init => write!(f, "Sess init"),
            Ev::Default => write!(f, "Plain::d default"),
            Ev::Contained(p) => write!(f, "hook {p} contained by the value"),
            Ev::Bad(s) => write!(f, "BAD: {s}"),
        }
    }
}

fn show(r: &Result<Out, Pan>) -> String {
    match r {
        Ok(out) => out.to_string(),
        Err(p) => format!("unwinds: {p}"),
    }
}

fn kind(e: &AccessError) -> ErrKind {
    match e {
        AccessError::Unset { .. } => ErrKind::Unset,
        AccessError::Reentrant { .. } => ErrKind::Reentrant,
        AccessError::Destroyed { .. } => ErrKind::Destroyed,
        AccessError::Unscoped { .. } => ErrKind::Unscoped,
        _ => ErrKind::Other,
    }
}

/// The payload of a generated `panic!()`.
struct Injected(u32);

fn classify(payload: &(dyn Any + Send)) -> Pan {
    if let Some(Injected(id)) = payload.downcast_ref::<Injected>() {
        return Pan::Injected(*id);
    }
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("<a non-string payload>");
    let lower = message.to_lowercase();
    let kind = if lower.contains("being destroyed") || lower.contains("destroyed") {
        ErrKind::Destroyed
    } else if lower.contains("accessed inside its own") || lower.contains("reentrant") {
        ErrKind::Reentrant
    } else if lower.contains("has no context") || lower.contains("unscoped") {
        ErrKind::Unscoped
    } else if lower.contains("is not set") {
        ErrKind::Unset
    } else {
        return Pan::Other(message.to_string());
    };
    Pan::Misuse(kind)
}

// ---------------------------------------------------------------------------
// The real world: the value type, the structs, the interpreter
// ---------------------------------------------------------------------------

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

static TRACE: Mutex<Vec<Ev>> = Mutex::new(Vec::new());
/// Drops per value, indexed by tag (creation order).
static DROPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static STORE: Mutex<Vec<Option<Context>>> = Mutex::new(Vec::new());
static ARMED_INIT: Mutex<Option<Block>> = Mutex::new(None);
static ARMED_DEFAULT: Mutex<Option<Block>> = Mutex::new(None);
/// One program at a time (the state above is global).
static SERIAL: Mutex<()> = Mutex::new(());
/// The program's clean-up has started: no more contexts are created.
static CLOSING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static IN_CLONE_HOOK: Cell<u32> = const { Cell::new(0) };
    static IN_RUNTIME: Cell<u32> = const { Cell::new(0) };
    static TEARDOWN: Cell<bool> = const { Cell::new(false) };
    static GUARDS: RefCell<Vec<Option<Guard>>> = const { RefCell::new(Vec::new()) };
}

fn emit(ev: Ev) {
    lock(&TRACE).push(ev);
}

/// Counts one level in a thread-local counter while alive.
struct Level(&'static LocalKey<Cell<u32>>);

impl Level {
    fn enter(key: &'static LocalKey<Cell<u32>>) -> Level {
        key.with(|c| c.set(c.get() + 1));
        Level(key)
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        self.0.with(|c| c.set(c.get() - 1));
    }
}

const ALIVE: u64 = 0x5AFE_C0DE_5AFE_C0DE;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// The stored value type: counts its creations and drops (by tag), checks
/// that it is alive whenever it is looked at, and runs sub-programs from its
/// `Clone` and `Drop`.
pub struct V {
    tag: Tag,
    n: u32,
    on_clone: Option<Block>,
    on_drop: Option<Block>,
    canary: u64,
}

impl V {
    fn create(n: u32, on_clone: Option<Block>, on_drop: Option<Block>) -> V {
        let tag = {
            let mut drops = lock(&DROPS);
            drops.push(0);
            (drops.len() - 1) as Tag
        };
        V { tag, n, on_clone, on_drop, canary: ALIVE }
    }
}

fn make(val: &Val) -> V {
    V::create(val.n, val.on_clone.clone(), val.on_drop.clone())
}

/// The value's tag and payload; a value already dropped is reported.
fn observe(v: &V) -> (Tag, u32) {
    let (tag, n, canary) = (v.tag, v.n, v.canary);
    let drops = lock(&DROPS).get(tag as usize).copied();
    if canary != ALIVE || drops != Some(0) {
        emit(Ev::Bad(format!("v{tag} looked at after its drop (canary {canary:#x}, drops {drops:?})")));
    }
    (tag, n)
}

fn run_hook(hook: &Block, contain: bool) {
    if DEPTH.with(Cell::get) >= MAX_HOOK_DEPTH {
        return;
    }
    let _deeper = Level::enter(&DEPTH);
    if contain {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| exec_block(hook))) {
            emit(Ev::Contained(classify(&*payload)));
        }
    } else {
        exec_block(hook);
    }
}

impl Clone for V {
    fn clone(&self) -> V {
        let (tag, n) = observe(self);
        emit(Ev::Clone(tag));
        if let Some(hook) = &self.on_clone {
            let _in_hook = Level::enter(&IN_CLONE_HOOK);
            run_hook(hook, skip().has("clone-panics"));
        }
        V::create(n, None, None)
    }
}

impl Drop for V {
    fn drop(&mut self) {
        let tag = self.tag;
        let drops = {
            let mut drops = lock(&DROPS);
            drops.get_mut(tag as usize).map(|count| {
                *count += 1;
                *count
            })
        };
        if drops != Some(1) || self.canary != ALIVE {
            emit(Ev::Bad(format!("v{tag} dropped again (drop number {drops:?}, canary {:#x})", self.canary)));
        }
        self.canary = DEAD;
        emit(Ev::Drop(tag));
        if let Some(hook) = self.on_drop.take() {
            run_hook(&hook, skip().has("drop-panics"));
        }
    }
}

#[derive(ContextLocal)]
#[context_local(init = Sess::fresh)]
struct Sess {
    a: V,
    #[context_local(no_inherit)]
    b: V,
}

impl Sess {
    fn fresh() -> Sess {
        emit(Ev::Init);
        let hook = lock(&ARMED_INIT).take();
        if let Some(hook) = hook {
            run_hook(&hook, false);
        }
        Sess { a: V::create(1000, None, None), b: V::create(2000, None, None) }
    }
}

fn fresh_default() -> V {
    emit(Ev::Default);
    let hook = lock(&ARMED_DEFAULT).take();
    if let Some(hook) = hook {
        run_hook(&hook, false);
    }
    V::create(7, None, None)
}

#[derive(ContextLocal, Clone)]
struct Plain {
    c: V,
    #[context_local(default = fresh_default())]
    d: V,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct PerThread {
    t: V,
}

fn field(key: Key) -> Field<V> {
    match key {
        Key::A => Sess::a(),
        Key::B => Sess::b(),
        Key::C => Plain::c(),
        Key::D => Plain::d(),
        Key::T => PerThread::t(),
    }
}

enum Guard {
    Sess(#[allow(dead_code)] Entered<Sess>),
    Plain(#[allow(dead_code)] Entered<Plain>),
    Thread(#[allow(dead_code)] Entered<PerThread>),
}

fn push_guard(guard: Guard) {
    let _ = GUARDS.try_with(|list| list.borrow_mut().push(Some(guard)));
}

/// Takes this thread's live guard `i % live` (or, for `None`, the newest).
fn take_guard(i: Option<u8>) -> Option<Guard> {
    GUARDS
        .try_with(|list| {
            let mut list = list.borrow_mut();
            let live: Vec<usize> = (0..list.len()).filter(|&at| list[at].is_some()).collect();
            let at = match i {
                _ if live.is_empty() => return None,
                Some(i) => live[i as usize % live.len()],
                None => *live.last().expect("not empty"),
            };
            list[at].take()
        })
        .ok()
        .flatten()
}

/// A context taken out of the store; put back when dropped (also when
/// unwinding), so no context is ever dropped by a panic going through.
struct Slot {
    at: usize,
    ctx: Option<Context>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            lock(&STORE)[self.at] = Some(ctx);
        }
    }
}

fn take_slot(i: u8) -> Option<Slot> {
    let mut store = lock(&STORE);
    let at = i as usize % store.len();
    let ctx = store[at].take()?;
    Some(Slot { at, ctx: Some(ctx) })
}

fn seen(v: V) -> (Tag, u32) {
    let r = observe(&v);
    drop(v);
    r
}

/// Drops each value on its own; resumes the first panic.
fn drop_each(values: Vec<V>) {
    let mut first = None;
    for v in values {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(v))) {
            first.get_or_insert(payload);
        }
    }
    if let Some(payload) = first {
        resume_unwind(payload);
    }
}

fn seen_pair(a: V, b: V) -> ((Tag, u32), (Tag, u32)) {
    let r = (observe(&a), observe(&b));
    drop_each(vec![a, b]);
    r
}

fn exec_block(steps: &[Step]) {
    for step in steps {
        exec_step(step);
    }
}

fn exec_step(step: &Step) {
    match catch_unwind(AssertUnwindSafe(|| perform(step))) {
        Ok(out) => emit(Ev::Res(step.id, Ok(out))),
        Err(payload) => {
            emit(Ev::Res(step.id, Err(classify(&*payload))));
            resume_unwind(payload)
        }
    }
}

/// Whether a step that starts a runtime is skipped here: while the thread is
/// torn down, inside another runtime, or inside a `Clone` hook.
fn no_runtime_here() -> bool {
    TEARDOWN.with(Cell::get) || IN_RUNTIME.with(Cell::get) > 0 || IN_CLONE_HOOK.with(Cell::get) > 0
}

/// Runs `fut` on a fresh current-thread runtime, with this thread marked as
/// inside one, and drops the runtime before returning.
fn on_fresh_runtime<F: std::future::Future>(fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
    let output = {
        let _in_runtime = Level::enter(&IN_RUNTIME);
        rt.block_on(fut)
    };
    drop(rt);
    output
}

/// Runs a closure's `body`, recording what the closure is lent (`look`)
/// before and after it; returns the last.
fn lent_around(id: u32, body: &Block, look: impl Fn() -> (Tag, u32)) -> (Tag, u32) {
    let (t, n) = look();
    emit(Ev::Saw(id, t, n));
    exec_block(body);
    let (t, n) = look();
    emit(Ev::Saw(id, t, n));
    (t, n)
}

/// A `try_` call's result as a step's result.
fn found(result: Result<(Tag, u32), AccessError>) -> Out {
    match result {
        Ok(seen) => Out::Val(Some(seen)),
        Err(e) => Out::Err(kind(&e)),
    }
}

fn perform(step: &Step) -> Out {
    let id = step.id;
    match &step.op {
        Op::Get(k) => Out::Val(field(*k).get().map(seen)),
        Op::TryGet(k) => found(field(*k).try_get().map(seen)),
        Op::Set(k, v) => {
            field(*k).set(make(v));
            Out::Unit
        }
        Op::Replace(k, v) => Out::Val(field(*k).replace(make(v)).map(seen)),
        Op::Take(k) => Out::Val(field(*k).take().map(seen)),
        Op::Delete(k) => Out::Flag(field(*k).delete()),
        Op::IsSet(k) => Out::Flag(field(*k).is_set()),
        Op::With { key, try_, body } => {
            let lend = |v: &V| lent_around(id, body, || observe(v));
            if *try_ {
                found(field(*key).try_with(lend))
            } else {
                Out::Val(field(*key).with(lend))
            }
        }
        Op::Update { key, try_, body } => {
            let change = |v: &mut V| {
                v.n += 1;
                lent_around(id, body, || observe(v))
            };
            if *try_ {
                found(field(*key).try_update(change))
            } else {
                Out::Val(field(*key).update(change))
            }
        }
        Op::GetOrInsertWith { key, val, body } => Out::Val(Some(seen(field(*key).get_or_insert_with(|| {
            exec_block(body);
            make(val)
        })))),
        Op::Clear(s) => {
            match s {
                S::Sess => Sess::clear(),
                S::Plain => Plain::clear(),
                S::Thread => PerThread::clear(),
            }
            Out::Unit
        }
        Op::TakeStruct(S::Sess) => Out::Pair(Sess::take().map(|s| seen_pair(s.a, s.b))),
        Op::TakeStruct(_) => Out::Pair(Plain::take().map(|p| seen_pair(p.c, p.d))),
        Op::CurrentPlain => Out::Pair(Plain::current().map(|p| seen_pair(p.c, p.d))),
        Op::Enter(e) => {
            let guard = match e {
                Ent::Sess(a, b) => Guard::Sess(Sess { a: make(a), b: make(b) }.enter()),
                Ent::Plain(c, d) => Guard::Plain(Plain { c: make(c), d: make(d) }.enter()),
                Ent::Thread(t) => Guard::Thread(PerThread { t: make(t) }.enter()),
            };
            push_guard(guard);
            Out::Unit
        }
        Op::DropGuard(i) => match take_guard(Some(*i)) {
            None => Out::NoGuard,
            Some(guard) => {
                drop(guard);
                Out::Unit
            }
        },
        Op::NewContext | Op::Snapshot => {
            if TEARDOWN.with(Cell::get) || CLOSING.load(Ordering::SeqCst) {
                return Out::Skipped;
            }
            let ctx = if matches!(step.op, Op::NewContext) { Context::new() } else { Context::current() };
            lock(&STORE).push(Some(ctx));
            Out::Unit
        }
        Op::Run(i, body) => {
            if TEARDOWN.with(Cell::get) {
                return Out::Skipped;
            }
            let Some(mut slot) = take_slot(*i) else { return Out::Busy };
            slot.ctx.as_mut().expect("taken").run(|| exec_block(body));
            Out::Unit
        }
        Op::DropContext(i) => {
            if TEARDOWN.with(Cell::get) {
                return Out::Skipped;
            }
            let Some(mut slot) = take_slot(*i) else { return Out::Busy };
            let ctx = slot.ctx.take();
            drop(slot);
            drop(ctx);
            Out::Unit
        }
        Op::Panic => std::panic::panic_any(Injected(id)),
        Op::Catch(body) => match catch_unwind(AssertUnwindSafe(|| exec_block(body))) {
            Ok(()) => Out::Unit,
            Err(payload) => Out::Caught(classify(&*payload)),
        },
        Op::ArmInit(body) => {
            *lock(&ARMED_INIT) = Some(body.clone());
            Out::Unit
        }
        Op::ArmDefault(body) => {
            *lock(&ARMED_DEFAULT) = Some(body.clone());
            Out::Unit
        }
        Op::OnThread(i, body) => {
            if TEARDOWN.with(Cell::get) {
                return Out::Skipped;
            }
            let Some(mut slot) = take_slot(*i) else { return Out::Busy };
            let mut ctx = slot.ctx.take().expect("taken");
            let depth = DEPTH.with(Cell::get);
            let body = body.clone();
            let thread = std::thread::spawn(move || {
                DEPTH.with(|d| d.set(depth));
                let result = catch_unwind(AssertUnwindSafe(|| ctx.run(|| exec_block(&body))));
                cleanup_guards();
                cleanup_exit();
                TEARDOWN.with(|t| t.set(true));
                (ctx, result)
            });
            match thread.join() {
                Ok((ctx, result)) => {
                    slot.ctx = Some(ctx);
                    drop(slot);
                    if let Err(payload) = result {
                        resume_unwind(payload);
                    }
                    Out::Unit
                }
                Err(payload) => resume_unwind(payload),
            }
        }
        Op::InTask(i, body) => {
            if no_runtime_here() {
                return Out::Skipped;
            }
            let Some(mut slot) = take_slot(*i) else { return Out::Busy };
            let ctx = slot.ctx.take().expect("taken");
            let body = body.clone();
            let (ctx, result) = on_fresh_runtime(async move {
                tokio::spawn(async move {
                    let work = async move { catch_unwind(AssertUnwindSafe(|| exec_block(&body))) };
                    let mut fut = Box::pin(work).in_context(ctx);
                    let result = (&mut fut).await;
                    (fut.into_context(), result)
                })
                .await
                .expect("the task finishes")
            });
            slot.ctx = Some(ctx);
            drop(slot);
            if let Err(payload) = result {
                resume_unwind(payload);
            }
            Out::Unit
        }
        Op::PlainTask(body) => {
            if no_runtime_here() {
                return Out::Skipped;
            }
            let body = body.clone();
            let result = on_fresh_runtime(async move {
                tokio::spawn(async move { catch_unwind(AssertUnwindSafe(|| exec_block(&body))) })
                    .await
                    .expect("the task finishes")
            });
            if let Err(payload) = result {
                resume_unwind(payload);
            }
            Out::Unit
        }
        Op::NewContextTask(body) => {
            if no_runtime_here() {
                return Out::Skipped;
            }
            let body = body.clone();
            let result = on_fresh_runtime(async move {
                let work = async move { catch_unwind(AssertUnwindSafe(|| exec_block(&body))) };
                tokio::spawn(work.in_new_context()).await
            });
            match result {
                Ok(Ok(())) => Out::Unit,
                Ok(Err(payload)) => resume_unwind(payload),
                // The task's future panicked after the block: dropping the
                // finished `InContext` (tokio catches that as the task's panic).
                Err(error) if error.is_panic() => resume_unwind(error.into_panic()),
                Err(error) => panic!("the task did not finish: {error}"),
            }
        }
    }
}

/// With `NESTED_MODEL_SKIP=exit-drops`, a thread deletes its root context's
/// values and its thread-scoped value one by one before it exits, so no
/// destructor runs at thread exit.
fn cleanup_exit() {
    if !skip().has("exit-drops") {
        return;
    }
    for key in [Key::A, Key::B, Key::C, Key::D, Key::T] {
        let result = catch_unwind(AssertUnwindSafe(|| field(key).delete()));
        emit(Ev::Res(0, result.map(Out::Flag).map_err(|p| classify(&*p))));
    }
}

/// Drops the guards this thread still has, newest first.
fn cleanup_guards() {
    while let Some(guard) = take_guard(None) {
        let result = catch_unwind(AssertUnwindSafe(|| drop(guard)));
        emit(Ev::Res(0, result.map(|()| Out::Unit).map_err(|p| classify(&*p))));
    }
}

/// Drops the contexts left in the store, in order.
fn cleanup_contexts() {
    let mut at = 0;
    loop {
        let ctx = {
            let mut store = lock(&STORE);
            if at >= store.len() {
                break;
            }
            store[at].take()
        };
        if let Some(ctx) = ctx {
            let result = catch_unwind(AssertUnwindSafe(|| drop(ctx)));
            emit(Ev::Res(0, result.map(|()| Out::Unit).map_err(|p| classify(&*p))));
        }
        at += 1;
    }
}

/// Runs the program on a fresh thread (its own root context and thread-scoped
/// values, dropped when it exits); returns the trace and the drop counts.
fn run_real(program: &Program) -> (Vec<Ev>, Vec<u32>) {
    lock(&TRACE).clear();
    lock(&DROPS).clear();
    *lock(&STORE) = vec![Some(Context::new()), Some(Context::new())];
    *lock(&ARMED_INIT) = None;
    *lock(&ARMED_DEFAULT) = None;
    CLOSING.store(false, Ordering::SeqCst);
    let steps = program.0.clone();
    let thread = std::thread::spawn(move || {
        for step in steps.iter() {
            let _ = catch_unwind(AssertUnwindSafe(|| exec_step(step)));
        }
        CLOSING.store(true, Ordering::SeqCst);
        cleanup_guards();
        cleanup_contexts();
        // Guards a destructor made meanwhile: dropped here, not at thread
        // exit, where the order of thread-locals' destructors is the
        // platform's.
        cleanup_guards();
        cleanup_exit();
        TEARDOWN.with(|t| t.set(true));
    });
    if let Err(payload) = thread.join() {
        emit(Ev::Bad(format!("the program's thread died: {}", classify(&*payload))));
    }
    // Nothing is created while a thread is torn down, so the store is empty;
    // anything left would be a harness bug.
    let left = std::mem::take(&mut *lock(&STORE));
    if left.iter().any(Option::is_some) {
        emit(Ev::Bad("contexts left in the store after the program".into()));
    }
    *lock(&ARMED_INIT) = None;
    *lock(&ARMED_DEFAULT) = None;
    let trace = std::mem::take(&mut *lock(&TRACE));
    let drops = std::mem::take(&mut *lock(&DROPS));
    (trace, drops)
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

type CtxId = u32;

struct MVal {
    n: u32,
    on_clone: Option<Block>,
    on_drop: Option<Block>,
    /// Holders: contexts, guards, a running `update`, the harness.
    refs: u32,
    /// Holders among `refs` that are contexts being dropped right now: when
    /// each lets go during that drop is not observable (Decision 13).
    dying: u32,
}

#[derive(Default)]
struct MCtx {
    vals: BTreeMap<Key, Tag>,
    /// `Sess`'s init marker (inherited by snapshots).
    init: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Ctx(CtxId),
    Thread(usize),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Read,
    Write,
    Init,
}

enum Busy {
    /// A `with` closure is lent `tag`; values displaced meanwhile that it
    /// (as the outermost reader of that value) must outlive are parked here.
    Read { tag: Tag, parked: Vec<Tag> },
    /// `update`'s closure has the value, or `default`/`get_or_insert_with`
    /// computes one; `rewritten` when a guard restored the field meanwhile.
    Write { rewritten: bool },
    /// `Sess`'s `init` runs.
    Init,
}

struct BusyEntry {
    place: Place,
    /// `None` for `Init` (the whole struct).
    key: Option<Key>,
    busy: Busy,
}

enum Top {
    Ctx(CtxId),
    /// A plain tokio task: no context of its own.
    Unscoped,
}

struct MGuard {
    place: Place,
    saved: Vec<(Key, Option<Tag>)>,
    saved_init: Option<bool>,
}

struct MThread {
    root: CtxId,
    t: Option<Tag>,
    stack: Vec<Top>,
    guards: Vec<Option<MGuard>>,
    in_clone_hook: u32,
    /// The library cleans up after a panic (Decision 6).
    unwinding: u32,
    teardown: bool,
    in_runtime: u32,
}

impl MThread {
    fn new(root: CtxId) -> MThread {
        MThread {
            root,
            t: None,
            stack: Vec::new(),
            guards: Vec::new(),
            in_clone_hook: 0,
            unwinding: 0,
            teardown: false,
            in_runtime: 0,
        }
    }
}

enum Fail {
    Misuse(ErrKind),
    Panic(Pan),
}

impl From<Pan> for Fail {
    fn from(p: Pan) -> Fail {
        Fail::Panic(p)
    }
}

fn plain(r: Result<Out, Fail>) -> Result<Out, Pan> {
    settle(false, r)
}

fn settle(try_: bool, r: Result<Out, Fail>) -> Result<Out, Pan> {
    match r {
        Ok(out) => Ok(out),
        Err(Fail::Panic(p)) => Err(p),
        Err(Fail::Misuse(k)) if try_ => Ok(Out::Err(k)),
        Err(Fail::Misuse(k)) => Err(Pan::Misuse(k)),
    }
}

#[derive(Clone, Copy)]
enum Write {
    Set,
    Replace,
    Take,
    Delete,
}

struct Model<'r> {
    vals: HashMap<Tag, MVal>,
    next_tag: Tag,
    ctxs: HashMap<CtxId, MCtx>,
    next_ctx: CtxId,
    slots: Vec<Option<CtxId>>,
    threads: Vec<MThread>,
    busy: Vec<BusyEntry>,
    armed_init: Option<Block>,
    armed_default: Option<Block>,
    depth: u32,
    closing: bool,
    trace: Vec<Ev>,
    /// The real trace: only consulted for the order of a group of drops.
    real: &'r [Ev],
    skip: &'static Skip,
}

impl<'r> Model<'r> {
    fn new(real: &'r [Ev], skip: &'static Skip) -> Model<'r> {
        let mut model = Model {
            vals: HashMap::new(),
            next_tag: 0,
            ctxs: HashMap::new(),
            next_ctx: 0,
            slots: Vec::new(),
            threads: Vec::new(),
            busy: Vec::new(),
            armed_init: None,
            armed_default: None,
            depth: 0,
            closing: false,
            trace: Vec::new(),
            real,
            skip,
        };
        for _ in 0..2 {
            let id = model.new_ctx(MCtx::default());
            model.slots.push(Some(id));
        }
        let root = model.new_ctx(MCtx::default());
        model.threads.push(MThread::new(root));
        model
    }

    fn run(mut self, program: &Program) -> Vec<Ev> {
        for step in program.0.iter() {
            let _ = self.exec_step(step);
        }
        self.closing = true;
        self.cleanup_guards();
        self.cleanup_contexts();
        self.cleanup_guards();
        self.cleanup_exit();
        self.teardown_thread();
        self.trace
    }

    // ----- state helpers -----

    fn new_ctx(&mut self, ctx: MCtx) -> CtxId {
        let id = self.next_ctx;
        self.next_ctx += 1;
        self.ctxs.insert(id, ctx);
        id
    }

    fn new_val(&mut self, n: u32, on_clone: Option<Block>, on_drop: Option<Block>) -> Tag {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.vals.insert(tag, MVal { n, on_clone, on_drop, refs: 1, dying: 0 });
        tag
    }

    fn new_from(&mut self, val: &Val) -> Tag {
        self.new_val(val.n, val.on_clone.clone(), val.on_drop.clone())
    }

    fn th(&self) -> &MThread {
        self.threads.last().expect("a thread")
    }

    fn thm(&mut self) -> &mut MThread {
        self.threads.last_mut().expect("a thread")
    }

    /// The current context; `None` in a plain tokio task.
    fn cur(&self) -> Option<CtxId> {
        let th = self.th();
        match th.stack.last() {
            Some(Top::Ctx(id)) => Some(*id),
            Some(Top::Unscoped) => None,
            None => Some(th.root),
        }
    }

    /// Where `key` lives here, or why it cannot be reached.
    fn gate(&self, key: Key) -> Result<Place, ErrKind> {
        if self.th().teardown {
            return Err(ErrKind::Destroyed);
        }
        match key {
            Key::T => Ok(Place::Thread(self.threads.len() - 1)),
            _ => self.cur().map(Place::Ctx).ok_or(ErrKind::Unscoped),
        }
    }

    fn lookup(&self, place: Place, key: Key) -> Option<Tag> {
        match place {
            Place::Ctx(id) => self.ctxs[&id].vals.get(&key).copied(),
            Place::Thread(at) => self.threads[at].t,
        }
    }

    fn remove(&mut self, place: Place, key: Key) -> Option<Tag> {
        match place {
            Place::Ctx(id) => self.ctxs.get_mut(&id).expect("context").vals.remove(&key),
            Place::Thread(at) => self.threads[at].t.take(),
        }
    }

    fn insert(&mut self, place: Place, key: Key, tag: Tag) -> Option<Tag> {
        match place {
            Place::Ctx(id) => self.ctxs.get_mut(&id).expect("context").vals.insert(key, tag),
            Place::Thread(at) => self.threads[at].t.replace(tag),
        }
    }

    fn initialised(&self, place: Place) -> bool {
        match place {
            Place::Ctx(id) => self.ctxs[&id].init,
            Place::Thread(_) => true,
        }
    }

    fn set_init(&mut self, place: Place, init: bool) {
        if let Place::Ctx(id) = place {
            self.ctxs.get_mut(&id).expect("context").init = init;
        }
    }

    fn busy_kind(&self, place: Place, key: Key) -> Option<Kind> {
        self.busy
            .iter()
            .rev()
            .find(|e| e.place == place && (e.key == Some(key) || (e.key.is_none() && key.in_sess())))
            .map(|e| match e.busy {
                Busy::Read { .. } => Kind::Read,
                Busy::Write { .. } => Kind::Write,
                Busy::Init => Kind::Init,
            })
    }

    fn struct_busy(&self, place: Place, s: S) -> bool {
        s.keys().iter().any(|k| self.busy_kind(place, *k).is_some())
    }

    fn mark_rewritten(&mut self, place: Place, key: Key) {
        for entry in &mut self.busy {
            if entry.place == place && entry.key == Some(key) {
                if let Busy::Write { rewritten } = &mut entry.busy {
                    *rewritten = true;
                }
            }
        }
    }

    fn pop_busy(&mut self) -> Busy {
        self.busy.pop().expect("a busy entry").busy
    }

    fn seen(&self, tag: Tag) -> (Tag, u32) {
        (tag, self.vals[&tag].n)
    }

    // ----- drops -----

    /// One holder lets go; the tags to drop now (a value a `with` closure is
    /// lent stays alive, parked, until the outermost such closure returns).
    fn release_all(&mut self, tags: impl IntoIterator<Item = Tag>) -> Vec<Tag> {
        let mut now = Vec::new();
        for tag in tags {
            let v = self.vals.get_mut(&tag).expect("a live value");
            v.refs -= 1;
            if v.refs > 0 {
                continue;
            }
            let reader = self.busy.iter_mut().find(|e| matches!(e.busy, Busy::Read { tag: t, .. } if t == tag));
            match reader {
                Some(BusyEntry { busy: Busy::Read { parked, .. }, .. }) => parked.push(tag),
                _ => now.push(tag),
            }
        }
        now
    }

    /// The thread is unwinding: a library call that drops values swallows
    /// their panics. (At thread exit the caller ignores the result.)
    fn swallowing(&self) -> bool {
        self.th().unwinding > 0
    }

    /// The library drops these values in one call, each on its own, in an
    /// unspecified order (the real one is followed); then resumes the first
    /// panic unless the thread is unwinding or exiting.
    fn drop_group(&mut self, tags: Vec<Tag>) -> Result<(), Pan> {
        let swallow = self.swallowing();
        let mut rest = tags;
        let mut first = None;
        while !rest.is_empty() {
            let at = match self.real.get(self.trace.len()) {
                Some(Ev::Drop(t)) => rest.iter().position(|x| x == t).unwrap_or(0),
                _ => 0,
            };
            let tag = rest.remove(at);
            if let Err(p) = self.drop_one(tag) {
                first.get_or_insert(p);
            }
        }
        match first {
            Some(p) if !swallow => Err(p),
            _ => Ok(()),
        }
    }

    /// The harness drops these values in this order, each on its own, and
    /// resumes the first panic.
    fn drop_seq(&mut self, tags: Vec<Tag>) -> Result<(), Pan> {
        let mut first = None;
        for tag in self.release_all(tags) {
            if let Err(p) = self.drop_one(tag) {
                first.get_or_insert(p);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Releases and drops as the library does, while unwinding (panics are
    /// swallowed).
    fn drop_unwinding(&mut self, tags: Vec<Tag>) {
        self.thm().unwinding += 1;
        let _ = self.release_and_drop(tags);
        self.thm().unwinding -= 1;
    }

    /// Values the library took out, let go of one at a time, in an
    /// unobservable order: it holds each until it reaches it, so a value
    /// whose other holders go away meanwhile (a destructor dropping a
    /// context) is dropped at its turn, not at once.
    fn release_and_drop(&mut self, tags: Vec<Tag>) -> Result<(), Pan> {
        let swallow = self.swallowing();
        let mut rest = tags;
        let mut first = None;
        while !rest.is_empty() {
            let last_holder = |tag: &Tag| self.vals.get(tag).is_some_and(|v| v.refs == 1);
            let dropped_next = match self.real.get(self.trace.len()) {
                Some(Ev::Drop(t)) => rest.iter().position(|x| x == t && last_holder(x)),
                _ => None,
            };
            // Otherwise let go first of what is held elsewhere too (no event).
            let at = dropped_next.or_else(|| rest.iter().position(|x| !last_holder(x))).unwrap_or(0);
            let tag = rest.remove(at);
            for now in self.release_all([tag]) {
                if let Err(p) = self.drop_one(now) {
                    first.get_or_insert(p);
                }
            }
        }
        match first {
            Some(p) if !swallow => Err(p),
            _ => Ok(()),
        }
    }

    fn drop_one(&mut self, tag: Tag) -> Result<(), Pan> {
        let v = self.vals.remove(&tag).expect("a live value");
        self.trace.push(Ev::Drop(tag));
        match v.on_drop {
            Some(hook) => self.run_hook(&hook, self.skip.has("drop-panics")),
            None => Ok(()),
        }
    }

    fn run_hook(&mut self, hook: &Block, contain: bool) -> Result<(), Pan> {
        if self.depth >= MAX_HOOK_DEPTH {
            return Ok(());
        }
        self.depth += 1;
        let r = self.exec_block(hook);
        self.depth -= 1;
        match r {
            Err(p) if contain => {
                self.trace.push(Ev::Contained(p));
                Ok(())
            }
            r => r,
        }
    }

    // ----- clones, init, default -----

    fn clone_val(&mut self, tag: Tag) -> Result<Tag, Pan> {
        let n = self.vals[&tag].n;
        self.trace.push(Ev::Clone(tag));
        if let Some(hook) = self.vals[&tag].on_clone.clone() {
            self.thm().in_clone_hook += 1;
            let r = self.run_hook(&hook, self.skip.has("clone-panics"));
            self.thm().in_clone_hook -= 1;
            r?;
        }
        Ok(self.new_val(n, None, None))
    }

    /// Ends the innermost read: drops the values released while it ran (as
    /// the library does while unwinding if the read's closure panicked).
    fn end_read(&mut self, unwinding: bool) -> Result<(), Pan> {
        let Busy::Read { parked, .. } = self.pop_busy() else { unreachable!("a read entry") };
        if !unwinding {
            return self.drop_group(parked);
        }
        self.thm().unwinding += 1;
        let dropped = self.drop_group(parked);
        self.thm().unwinding -= 1;
        dropped
    }

    /// A clone made by a read (Decision 2): the field is lent to the
    /// `Clone` as to a `with` closure (reads of it work, writes to it are
    /// `Reentrant`, everything else works), and a value released meanwhile
    /// stays alive until the clone returns.
    fn clone_read(&mut self, place: Place, key: Key, tag: Tag) -> Result<Tag, Pan> {
        self.busy.push(BusyEntry { place, key: Some(key), busy: Busy::Read { tag, parked: Vec::new() } });
        let r = self.clone_val(tag);
        let dropped = self.end_read(r.is_err());
        let copy = r?;
        if let Err(p) = dropped {
            self.drop_unwinding(vec![copy]);
            return Err(p);
        }
        Ok(copy)
    }

    /// A value taken out (`take`, `replace`, `S::take`): moved if no one else
    /// holds it, else cloned (Decision 5).
    fn move_out(&mut self, tag: Tag) -> Result<Tag, Pan> {
        if !self.shared(tag) {
            return Ok(tag);
        }
        match self.clone_val(tag) {
            Err(p) => {
                self.drop_unwinding(vec![tag]);
                Err(p)
            }
            Ok(copy) => {
                if let Err(p) = self.release_and_drop(vec![tag]) {
                    self.drop_unwinding(vec![copy]);
                    return Err(p);
                }
                Ok(copy)
            }
        }
    }

    /// Runs `Sess`'s `init` if it is due where `key` lives.
    fn ensure_init(&mut self, place: Place, key: Key) -> Result<(), Fail> {
        let Place::Ctx(id) = place else { return Ok(()) };
        if !key.in_sess() || self.initialised(place) {
            return Ok(());
        }
        // Decision 2: `init` stores, so it is a write.
        if self.struct_busy(place, S::Sess) {
            return Err(Fail::Misuse(ErrKind::Reentrant));
        }
        self.busy.push(BusyEntry { place, key: None, busy: Busy::Init });
        self.trace.push(Ev::Init);
        let hook = self.armed_init.take();
        let r = match hook {
            Some(hook) => self.run_hook(&hook, false),
            None => Ok(()),
        };
        self.pop_busy();
        r?;
        let a = self.new_val(1000, None, None);
        let b = self.new_val(2000, None, None);
        let displaced: Vec<Tag> =
            [self.insert(place, Key::A, a), self.insert(place, Key::B, b)].into_iter().flatten().collect();
        self.ctxs.get_mut(&id).expect("context").init = true;
        self.release_and_drop(displaced)?;
        Ok(())
    }

    /// Stores `Plain::d`'s default if it is unset.
    fn ensure_default(&mut self, place: Place, key: Key) -> Result<(), Fail> {
        if key != Key::D || self.lookup(place, key).is_some() {
            return Ok(());
        }
        if self.busy_kind(place, key).is_some() {
            return Err(Fail::Misuse(ErrKind::Reentrant));
        }
        self.busy.push(BusyEntry { place, key: Some(key), busy: Busy::Write { rewritten: false } });
        self.trace.push(Ev::Default);
        let hook = self.armed_default.take();
        let r = match hook {
            Some(hook) => self.run_hook(&hook, false),
            None => Ok(()),
        };
        self.pop_busy();
        r?;
        let v = self.new_val(7, None, None);
        self.store_computed(place, key, v)?;
        Ok(())
    }

    /// Decision 7.
    fn store_computed(&mut self, place: Place, key: Key, tag: Tag) -> Result<(), Pan> {
        if self.lookup(place, key).is_none() {
            self.insert(place, key, tag);
            Ok(())
        } else {
            self.release_and_drop(vec![tag])
        }
    }

    // ----- operations -----

    fn read_check(&self, key: Key) -> Result<Place, Fail> {
        let place = self.gate(key).map_err(Fail::Misuse)?;
        match self.busy_kind(place, key) {
            Some(Kind::Write | Kind::Init) => Err(Fail::Misuse(ErrKind::Reentrant)),
            _ => Ok(place),
        }
    }

    fn op_get(&mut self, key: Key, try_: bool) -> Result<Out, Fail> {
        let place = self.read_check(key)?;
        self.ensure_init(place, key)?;
        self.ensure_default(place, key)?;
        match self.lookup(place, key) {
            None if try_ => Err(Fail::Misuse(ErrKind::Unset)),
            None => Ok(Out::Val(None)),
            Some(tag) => {
                let copy = self.clone_read(place, key, tag)?;
                let seen = self.seen(copy);
                self.drop_seq(vec![copy])?;
                Ok(Out::Val(Some(seen)))
            }
        }
    }

    fn op_is_set(&mut self, key: Key) -> Result<Out, Fail> {
        let place = self.read_check(key)?;
        Ok(Out::Flag(self.lookup(place, key).is_some()))
    }

    fn op_write(&mut self, write: Write, key: Key, val: Option<&Val>) -> Result<Out, Pan> {
        let value = val.map(|v| self.new_from(v));
        let checked = self.gate(key).and_then(|place| {
            if self.busy_kind(place, key).is_some() {
                Err(ErrKind::Reentrant)
            } else {
                Ok(place)
            }
        });
        let place = match checked {
            Ok(place) => place,
            Err(kind) => {
                // Decision 4.
                self.release_and_drop(value.into_iter().collect())?;
                return Err(Pan::Misuse(kind));
            }
        };
        if let Err(fail) = self.ensure_init(place, key) {
            match fail {
                Fail::Panic(p) => {
                    self.drop_unwinding(value.into_iter().collect());
                    return Err(p);
                }
                Fail::Misuse(kind) => {
                    self.release_and_drop(value.into_iter().collect())?;
                    return Err(Pan::Misuse(kind));
                }
            }
        }
        let old = self.remove(place, key);
        if let Some(v) = value {
            self.insert(place, key, v);
        }
        match write {
            Write::Set => {
                self.release_and_drop(old.into_iter().collect())?;
                Ok(Out::Unit)
            }
            Write::Delete => {
                self.release_and_drop(old.into_iter().collect())?;
                Ok(Out::Flag(old.is_some()))
            }
            Write::Take | Write::Replace => match old {
                None => Ok(Out::Val(None)),
                Some(tag) => {
                    let tag = self.move_out(tag)?;
                    let seen = self.seen(tag);
                    self.drop_seq(vec![tag])?;
                    Ok(Out::Val(Some(seen)))
                }
            },
        }
    }

    fn op_with(&mut self, id: u32, key: Key, try_: bool, body: &Block) -> Result<Out, Fail> {
        let place = self.read_check(key)?;
        self.ensure_init(place, key)?;
        self.ensure_default(place, key)?;
        let Some(tag) = self.lookup(place, key) else {
            return if try_ { Err(Fail::Misuse(ErrKind::Unset)) } else { Ok(Out::Val(None)) };
        };
        let n = self.vals[&tag].n;
        self.busy.push(BusyEntry { place, key: Some(key), busy: Busy::Read { tag, parked: Vec::new() } });
        self.trace.push(Ev::Saw(id, tag, n));
        let r = self.exec_block(body);
        if r.is_ok() {
            self.trace.push(Ev::Saw(id, tag, self.vals[&tag].n));
        }
        let dropped = self.end_read(r.is_err());
        r?;
        dropped?;
        Ok(Out::Val(Some((tag, n))))
    }

    /// Ends an `update` (or its failed start): the value goes back unless a
    /// guard rewrote the field meanwhile.
    fn put_back(&mut self, place: Place, key: Key, tag: Tag, unwinding: bool) -> Result<(), Pan> {
        let Busy::Write { rewritten } = self.pop_busy() else { unreachable!("a write entry") };
        let let_go: Vec<Tag> = if rewritten { vec![tag] } else { self.insert(place, key, tag).into_iter().collect() };
        let now = self.release_all(let_go);
        if unwinding {
            self.thm().unwinding += 1;
            let _ = self.drop_group(now);
            self.thm().unwinding -= 1;
            Ok(())
        } else {
            self.drop_group(now)
        }
    }

    fn op_update(&mut self, id: u32, key: Key, try_: bool, body: &Block) -> Result<Out, Fail> {
        let place = self.gate(key).map_err(Fail::Misuse)?;
        if self.busy_kind(place, key).is_some() {
            return Err(Fail::Misuse(ErrKind::Reentrant));
        }
        self.ensure_init(place, key)?;
        self.ensure_default(place, key)?;
        let Some(orig) = self.remove(place, key) else {
            return if try_ { Err(Fail::Misuse(ErrKind::Unset)) } else { Ok(Out::Val(None)) };
        };
        self.busy.push(BusyEntry { place, key: Some(key), busy: Busy::Write { rewritten: false } });
        let mut cur = orig;
        if self.shared(orig) {
            match self.clone_val(orig) {
                Err(p) => {
                    self.put_back(place, key, orig, true)?;
                    return Err(Fail::Panic(p));
                }
                Ok(copy) => {
                    cur = copy;
                    if let Err(p) = self.release_and_drop(vec![orig]) {
                        self.put_back(place, key, copy, true)?;
                        return Err(Fail::Panic(p));
                    }
                }
            }
        }
        self.vals.get_mut(&cur).expect("the leased value").n += 1;
        let n = self.vals[&cur].n;
        self.trace.push(Ev::Saw(id, cur, n));
        let r = self.exec_block(body);
        if r.is_ok() {
            self.trace.push(Ev::Saw(id, cur, n));
        }
        let back = self.put_back(place, key, cur, r.is_err());
        r?;
        back?;
        Ok(Out::Val(Some((cur, n))))
    }

    fn op_get_or_insert_with(&mut self, key: Key, val: &Val, body: &Block) -> Result<Out, Fail> {
        let place = self.read_check(key)?;
        self.ensure_init(place, key)?;
        if self.lookup(place, key).is_none() {
            // Decision 2: storing is a write.
            if self.busy_kind(place, key).is_some() {
                return Err(Fail::Misuse(ErrKind::Reentrant));
            }
            self.busy.push(BusyEntry { place, key: Some(key), busy: Busy::Write { rewritten: false } });
            let r = self.exec_block(body);
            let made = r.is_ok().then(|| self.new_from(val));
            self.pop_busy();
            r?;
            self.store_computed(place, key, made.expect("made"))?;
            if self.lookup(place, key).is_none() {
                // Decision 7.
                if key != Key::D {
                    return Err(Fail::Misuse(ErrKind::Unset));
                }
                self.ensure_default(place, key)?;
            }
        }
        let tag = self.lookup(place, key).expect("set");
        let copy = self.clone_read(place, key, tag)?;
        let seen = self.seen(copy);
        self.drop_seq(vec![copy])?;
        Ok(Out::Val(Some(seen)))
    }

    fn struct_check(&self, s: S) -> Result<Place, ErrKind> {
        let place = self.gate(s.keys()[0])?;
        if self.struct_busy(place, s) {
            return Err(ErrKind::Reentrant);
        }
        Ok(place)
    }

    fn op_clear(&mut self, s: S) -> Result<Out, Fail> {
        let place = self.struct_check(s).map_err(Fail::Misuse)?;
        let tags: Vec<Tag> = s.keys().iter().filter_map(|k| self.remove(place, *k)).collect();
        if s == S::Sess {
            self.set_init(place, false);
        }
        self.release_and_drop(tags)?;
        Ok(Out::Unit)
    }

    fn op_take_struct(&mut self, s: S) -> Result<Out, Fail> {
        let place = self.struct_check(s).map_err(Fail::Misuse)?;
        self.ensure_init(place, s.keys()[0])?;
        self.ensure_default(place, s.keys()[1])?;
        let keys = s.keys();
        if !keys.iter().all(|k| self.lookup(place, *k).is_some()) {
            return Ok(Out::Pair(None));
        }
        let taken: Vec<Tag> = keys.iter().map(|k| self.remove(place, *k).expect("set")).collect();
        let mut got = Vec::new();
        for (at, tag) in taken.iter().enumerate() {
            match self.move_out(*tag) {
                Ok(v) => got.push(v),
                Err(p) => {
                    let rest: Vec<Tag> = taken[at + 1..].iter().copied().chain(got).collect();
                    self.drop_unwinding(rest);
                    return Err(Fail::Panic(p));
                }
            }
        }
        let pair = (self.seen(got[0]), self.seen(got[1]));
        self.drop_seq(got)?;
        Ok(Out::Pair(Some(pair)))
    }

    fn op_current_plain(&mut self) -> Result<Out, Fail> {
        let place = self.gate(Key::C).map_err(Fail::Misuse)?;
        for key in [Key::C, Key::D] {
            if matches!(self.busy_kind(place, key), Some(Kind::Write | Kind::Init)) {
                return Err(Fail::Misuse(ErrKind::Reentrant));
            }
        }
        self.ensure_default(place, Key::D)?;
        let (Some(c), Some(d)) = (self.lookup(place, Key::C), self.lookup(place, Key::D)) else {
            return Ok(Out::Pair(None));
        };
        // `S::current` of a struct whose fields are all inherited holds a
        // count of each value, clones each field in place (no field is
        // marked in use), then lets go of the counts.
        for tag in [c, d] {
            self.vals.get_mut(&tag).expect("a live value").refs += 1;
        }
        let c2 = match self.clone_val(c) {
            Ok(c2) => c2,
            Err(p) => {
                self.drop_unwinding(vec![c, d]);
                return Err(Fail::Panic(p));
            }
        };
        let d2 = match self.clone_val(d) {
            Ok(d2) => d2,
            Err(p) => {
                self.drop_unwinding(vec![c2, c, d]);
                return Err(Fail::Panic(p));
            }
        };
        if let Err(p) = self.release_and_drop(vec![c, d]) {
            let _ = self.drop_seq(vec![c2, d2]);
            return Err(Fail::Panic(p));
        }
        let pair = (self.seen(c2), self.seen(d2));
        self.drop_seq(vec![c2, d2])?;
        Ok(Out::Pair(Some(pair)))
    }

    fn op_enter(&mut self, ent: &Ent) -> Result<Out, Pan> {
        let (s, tags): (S, Vec<Tag>) = match ent {
            Ent::Sess(a, b) => {
                let a = self.new_from(a);
                (S::Sess, vec![a, self.new_from(b)])
            }
            Ent::Plain(c, d) => {
                let c = self.new_from(c);
                (S::Plain, vec![c, self.new_from(d)])
            }
            Ent::Thread(t) => (S::Thread, vec![self.new_from(t)]),
        };
        let place = match self.struct_check(s) {
            Ok(place) => place,
            Err(kind) => {
                // Decision 4.
                self.release_and_drop(tags)?;
                return Err(Pan::Misuse(kind));
            }
        };
        let saved: Vec<(Key, Option<Tag>)> =
            s.keys().iter().zip(tags).map(|(k, t)| (*k, self.insert(place, *k, t))).collect();
        let saved_init = (s == S::Sess).then(|| {
            let was = self.initialised(place);
            self.set_init(place, true);
            was
        });
        self.thm().guards.push(Some(MGuard { place, saved, saved_init }));
        Ok(Out::Unit)
    }

    fn drop_guard(&mut self, guard: MGuard) -> Result<(), Pan> {
        let saved: Vec<Tag> = guard.saved.iter().filter_map(|(_, t)| *t).collect();
        let restore = match guard.place {
            Place::Thread(_) => true,
            Place::Ctx(id) => self.cur() == Some(id),
        };
        if !restore {
            return self.release_and_drop(saved);
        }
        let mut displaced = Vec::new();
        for (key, value) in guard.saved.iter().rev() {
            self.mark_rewritten(guard.place, *key);
            displaced.extend(self.remove(guard.place, *key));
            if let Some(tag) = value {
                self.insert(guard.place, *key, *tag);
            }
        }
        if let Some(init) = guard.saved_init {
            self.set_init(guard.place, init);
        }
        self.release_and_drop(displaced)
    }

    fn op_drop_guard(&mut self, i: u8) -> Result<Out, Pan> {
        let th = self.thm();
        let live: Vec<usize> = (0..th.guards.len()).filter(|&at| th.guards[at].is_some()).collect();
        if live.is_empty() {
            return Ok(Out::NoGuard);
        }
        let guard = th.guards[live[i as usize % live.len()]].take().expect("live");
        self.drop_guard(guard)?;
        Ok(Out::Unit)
    }

    fn slot_at(&self, i: u8) -> usize {
        i as usize % self.slots.len()
    }

    fn snapshot(&mut self) -> MCtx {
        let Some(id) = self.cur() else { return MCtx::default() };
        let src = &self.ctxs[&id];
        let vals: BTreeMap<Key, Tag> = src.vals.iter().filter(|(k, _)| k.inherited()).map(|(k, t)| (*k, *t)).collect();
        let init = src.init;
        for tag in vals.values() {
            self.vals.get_mut(tag).expect("a live value").refs += 1;
        }
        MCtx { vals, init }
    }

    fn op_run(&mut self, i: u8, body: &Block, top: impl FnOnce(CtxId) -> Top) -> Result<Out, Pan> {
        let at = self.slot_at(i);
        let Some(id) = self.slots[at].take() else { return Ok(Out::Busy) };
        self.thm().stack.push(top(id));
        let r = self.exec_block(body);
        self.thm().stack.pop();
        self.slots[at] = Some(id);
        r.map(|()| Out::Unit)
    }

    /// A `Context` the program drops (Decision 8): installed while the
    /// values it alone holds are dropped (as an `InContext`'s are), then it
    /// lets go of the rest.
    fn drop_context(&mut self, id: CtxId) -> Result<(), Pan> {
        self.thm().stack.push(Top::Ctx(id));
        let drained = self.drain_installed(id);
        self.thm().stack.pop();
        let ctx = self.ctxs.remove(&id).expect("context");
        let rest = self.drop_held(ctx.vals.into_values().collect());
        drained.and(rest)
    }

    /// A context being dropped lets go of its values, in an unobservable
    /// order (Decision 13): a value it alone holds (or only other dying
    /// holders) is dropped, in the real run's order, each on its own; the
    /// first panic is resumed.
    fn drop_held(&mut self, tags: Vec<Tag>) -> Result<(), Pan> {
        for tag in &tags {
            self.vals.get_mut(tag).expect("a live value").dying += 1;
        }
        let swallow = self.swallowing();
        let mut pending = tags;
        let mut first = None;
        loop {
            let droppable: Vec<usize> = (0..pending.len())
                .filter(|&at| self.vals.get(&pending[at]).is_some_and(|v| v.dying > 0 && v.refs == v.dying))
                .collect();
            let Some(&at) = droppable.first() else { break };
            let at = match self.real.get(self.trace.len()) {
                Some(Ev::Drop(t)) => droppable.iter().copied().find(|&i| pending[i] == *t).unwrap_or(at),
                _ => at,
            };
            let tag = pending.remove(at);
            self.vals.get_mut(&tag).expect("a live value").dying -= 1;
            for now in self.release_all([tag]) {
                if let Err(p) = self.drop_one(now) {
                    first.get_or_insert(p);
                }
            }
        }
        // Held elsewhere too: let go (unless `shared` found it let go already).
        for tag in pending {
            if self.vals.get(&tag).is_some_and(|v| v.dying > 0) {
                self.vals.get_mut(&tag).expect("a live value").dying -= 1;
                let none = self.release_all([tag]);
                debug_assert!(none.is_empty());
            }
        }
        match first {
            Some(p) if !swallow => Err(p),
            _ => Ok(()),
        }
    }

    /// Whether a value is shared with another holder (a clone is due before
    /// it is changed or moved out). When the only other holders are contexts
    /// being dropped, either is right (Decision 13): the real run decides.
    fn shared(&mut self, tag: Tag) -> bool {
        let v = &self.vals[&tag];
        let firm = v.refs - v.dying;
        match (firm > 1, v.dying > 0) {
            (true, _) => true,
            (false, false) => false,
            (false, true) => {
                let cloned = matches!(self.real.get(self.trace.len()), Some(Ev::Clone(t)) if *t == tag);
                if !cloned {
                    // The dying holders let go already.
                    let v = self.vals.get_mut(&tag).expect("a live value");
                    v.refs -= v.dying;
                    v.dying = 0;
                }
                cloned
            }
        }
    }

    fn op_on_thread(&mut self, i: u8, body: &Block) -> Result<Out, Pan> {
        let at = self.slot_at(i);
        let Some(id) = self.slots[at].take() else { return Ok(Out::Busy) };
        let root = self.new_ctx(MCtx::default());
        let mut thread = MThread::new(root);
        thread.stack.push(Top::Ctx(id));
        self.threads.push(thread);
        let r = self.exec_block(body);
        self.thm().stack.pop();
        self.cleanup_guards();
        self.cleanup_exit();
        self.teardown_thread();
        self.threads.pop();
        self.slots[at] = Some(id);
        r.map(|()| Out::Unit)
    }

    /// A dropped `InContext`'s values are dropped with its context installed, so a value's `Drop` sees the context's other fields.
    /// Decision 12: one at a time (the real order), each taken out first, the
    /// rest still there; what a `Drop` stores meanwhile is dropped as well;
    /// each contained, then the first panic resumed.
    fn drain_installed(&mut self, id: CtxId) -> Result<(), Pan> {
        let mut first = None;
        loop {
            // Only what the context alone holds: dropping it would not drop
            // a value a snapshot shares, which stays in place meanwhile.
            let held: Vec<(Key, Tag)> = self.ctxs[&id]
                .vals
                .iter()
                .filter(|(_, t)| self.vals.get(*t).is_some_and(|v| v.refs == 1 && v.dying == 0))
                .map(|(k, t)| (*k, *t))
                .collect();
            let Some(&(key, _)) = held.first() else { break };
            let key = match self.real.get(self.trace.len()) {
                Some(Ev::Drop(t)) => held.iter().find(|(_, held)| held == t).map_or(key, |(k, _)| *k),
                _ => key,
            };
            let tag = self.remove(Place::Ctx(id), key).expect("held");
            for now in self.release_all([tag]) {
                if let Err(p) = self.drop_one(now) {
                    first.get_or_insert(p);
                }
            }
        }
        match first {
            Some(p) if !self.swallowing() => Err(p),
            _ => Ok(()),
        }
    }

    fn cleanup_guards(&mut self) {
        loop {
            let th = self.thm();
            let Some(at) = th.guards.iter().rposition(Option::is_some) else { break };
            let guard = th.guards[at].take().expect("live");
            let r = self.drop_guard(guard);
            self.trace.push(Ev::Res(0, r.map(|()| Out::Unit)));
        }
    }

    fn cleanup_exit(&mut self) {
        if !self.skip.has("exit-drops") {
            return;
        }
        for key in [Key::A, Key::B, Key::C, Key::D, Key::T] {
            let r = self.op_write(Write::Delete, key, None);
            self.trace.push(Ev::Res(0, r));
        }
    }

    fn cleanup_contexts(&mut self) {
        let mut at = 0;
        while at < self.slots.len() {
            if let Some(id) = self.slots[at].take() {
                let r = self.drop_context(id);
                self.trace.push(Ev::Res(0, r.map(|()| Out::Unit)));
            }
            at += 1;
        }
    }

    /// The thread exits: its root context's values and its thread-scoped
    /// value are dropped, in any order, with every access `Destroyed`.
    fn teardown_thread(&mut self) {
        self.thm().teardown = true;
        let root = self.th().root;
        let ctx = self.ctxs.remove(&root).expect("root context");
        let mut tags: Vec<Tag> = ctx.vals.into_values().collect();
        tags.extend(self.thm().t.take());
        // Guards made while the clean-up ran (by a destructor) live in a
        // thread-local of the harness: dropped at thread exit, they restore
        // nothing (their context is gone, or the state is) and drop what
        // they saved.
        let late: Vec<MGuard> = self.thm().guards.drain(..).flatten().collect();
        tags.extend(late.into_iter().flat_map(|guard| guard.saved.into_iter().filter_map(|(_, tag)| tag)));
        let _ = self.drop_held(tags);
    }

    // ----- the interpreter -----

    fn exec_block(&mut self, steps: &[Step]) -> Result<(), Pan> {
        for step in steps {
            self.exec_step(step)?;
        }
        Ok(())
    }

    fn exec_step(&mut self, step: &Step) -> Result<(), Pan> {
        let r = self.step(step);
        self.trace.push(Ev::Res(step.id, r.clone()));
        r.map(|_| ())
    }

    fn step(&mut self, step: &Step) -> Result<Out, Pan> {
        let th = self.th();
        let (teardown, no_runtime) = (th.teardown, th.teardown || th.in_runtime > 0 || th.in_clone_hook > 0);
        match &step.op {
            Op::Get(k) => plain(self.op_get(*k, false)),
            Op::TryGet(k) => settle(true, self.op_get(*k, true)),
            Op::Set(k, v) => self.op_write(Write::Set, *k, Some(v)),
            Op::Replace(k, v) => self.op_write(Write::Replace, *k, Some(v)),
            Op::Take(k) => self.op_write(Write::Take, *k, None),
            Op::Delete(k) => self.op_write(Write::Delete, *k, None),
            Op::IsSet(k) => plain(self.op_is_set(*k)),
            Op::With { key, try_, body } => settle(*try_, self.op_with(step.id, *key, *try_, body)),
            Op::Update { key, try_, body } => settle(*try_, self.op_update(step.id, *key, *try_, body)),
            Op::GetOrInsertWith { key, val, body } => plain(self.op_get_or_insert_with(*key, val, body)),
            Op::Clear(s) => plain(self.op_clear(*s)),
            Op::TakeStruct(s) => plain(self.op_take_struct(*s)),
            Op::CurrentPlain => plain(self.op_current_plain()),
            Op::Enter(e) => self.op_enter(e),
            Op::DropGuard(i) => self.op_drop_guard(*i),
            Op::NewContext | Op::Snapshot if teardown || self.closing => Ok(Out::Skipped),
            Op::NewContext => {
                let id = self.new_ctx(MCtx::default());
                self.slots.push(Some(id));
                Ok(Out::Unit)
            }
            Op::Snapshot => {
                let ctx = self.snapshot();
                let id = self.new_ctx(ctx);
                self.slots.push(Some(id));
                Ok(Out::Unit)
            }
            Op::Run(..) | Op::DropContext(..) | Op::OnThread(..) if teardown => Ok(Out::Skipped),
            Op::Run(i, body) => self.op_run(*i, body, Top::Ctx),
            Op::DropContext(i) => {
                let at = self.slot_at(*i);
                let Some(id) = self.slots[at].take() else { return Ok(Out::Busy) };
                self.drop_context(id)?;
                Ok(Out::Unit)
            }
            Op::Panic => Err(Pan::Injected(step.id)),
            Op::Catch(body) => Ok(match self.exec_block(body) {
                Ok(()) => Out::Unit,
                Err(p) => Out::Caught(p),
            }),
            Op::ArmInit(body) => {
                self.armed_init = Some(body.clone());
                Ok(Out::Unit)
            }
            Op::ArmDefault(body) => {
                self.armed_default = Some(body.clone());
                Ok(Out::Unit)
            }
            Op::OnThread(i, body) => self.op_on_thread(*i, body),
            Op::InTask(..) | Op::PlainTask(..) | Op::NewContextTask(..) if no_runtime => Ok(Out::Skipped),
            Op::NewContextTask(body) => {
                self.thm().in_runtime += 1;
                let id = self.new_ctx(MCtx::default());
                self.thm().stack.push(Top::Ctx(id));
                let r = self.exec_block(body);
                let dropped = self.drain_installed(id);
                self.thm().stack.pop();
                let ctx = self.ctxs.remove(&id).expect("context");
                let rest = self.drop_held(ctx.vals.into_values().collect());
                let dropped = dropped.and(rest);
                self.thm().in_runtime -= 1;
                dropped?;
                r.map(|()| Out::Unit)
            }
            Op::InTask(i, body) => {
                self.thm().in_runtime += 1;
                let r = self.op_run(*i, body, Top::Ctx);
                self.thm().in_runtime -= 1;
                r
            }
            Op::PlainTask(body) => {
                self.thm().in_runtime += 1;
                self.thm().stack.push(Top::Unscoped);
                let r = self.exec_block(body);
                self.thm().stack.pop();
                self.thm().in_runtime -= 1;
                r.map(|()| Out::Unit)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------

fn report(expected: &[Ev], actual: &[Ev], at: usize) -> String {
    let mut text =
        format!("the real trace leaves the model's at event {at}\n{:>5}  {:<58} | actual\n", "#", "expected (model)");
    let from = at.saturating_sub(40);
    let to = (at + 8).min(expected.len().max(actual.len()));
    for i in from..to {
        let e = expected.get(i).map(ToString::to_string).unwrap_or_else(|| "-".into());
        let a = actual.get(i).map(ToString::to_string).unwrap_or_else(|| "-".into());
        let mark = if i == at {
            ">>"
        } else if e == a {
            "  "
        } else {
            "!="
        };
        text.push_str(&format!("{mark}{i:>3}  {e:<58} | {a}\n"));
    }
    text
}

/// Running totals of what the real runs did (`NESTED_MODEL_STATS=1` prints
/// them every 250 programs): to see that the generator reaches the cases.
static STATS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn count(trace: &[Ev], program: &Program) {
    if std::env::var_os("NESTED_MODEL_STATS").is_none() {
        return;
    }
    fn walk(steps: &[Step], depth: usize, stats: &mut BTreeMap<String, u64>) {
        for step in steps {
            *stats.entry(format!("step {}", step.op.kind())).or_default() += 1;
            *stats.entry(format!("steps at depth {depth}")).or_default() += 1;
            let blocks: Vec<&Block> = match &step.op {
                Op::With { body, .. } | Op::Update { body, .. } | Op::GetOrInsertWith { body, .. } => vec![body],
                Op::Run(_, b) | Op::Catch(b) | Op::ArmInit(b) | Op::ArmDefault(b) => vec![b],
                Op::OnThread(_, b) | Op::InTask(_, b) | Op::PlainTask(b) | Op::NewContextTask(b) => vec![b],
                _ => vec![],
            };
            for b in blocks {
                walk(b, depth + 1, stats);
            }
        }
    }
    let mut stats = lock(&STATS);
    walk(&program.0, 0, &mut stats);
    for ev in trace {
        let key = match ev {
            Ev::Res(_, Ok(Out::Caught(p))) => format!("caught {}", p.to_string().split(' ').next().unwrap_or("")),
            Ev::Res(_, Ok(out)) => format!("result {}", format!("{out:?}").split('(').next().unwrap_or("")),
            Ev::Res(_, Err(Pan::Injected(_))) => "unwinds injected panic".into(),
            Ev::Res(_, Err(p)) => format!("unwinds {p}"),
            Ev::Saw(..) => "closure runs".into(),
            Ev::Clone(_) => "clones".into(),
            Ev::Drop(_) => "drops".into(),
            Ev::Init => "inits".into(),
            Ev::Default => "defaults".into(),
            Ev::Contained(_) => "contained hook panics".into(),
            Ev::Bad(_) => "BAD".into(),
        };
        *stats.entry(key).or_default() += 1;
    }
    let programs = stats.entry("programs".into()).or_default();
    *programs += 1;
    if programs.is_multiple_of(250) {
        let lines: Vec<String> = stats.iter().map(|(k, v)| format!("  {k}: {v}")).collect();
        eprintln!("nested_model stats:\n{}", lines.join("\n"));
    }
}

fn check(program: &Program) -> Result<(), TestCaseError> {
    let _serial = lock(&SERIAL);
    RUNNING.store(true, Ordering::SeqCst);
    let (actual, drops) = run_real(program);
    RUNNING.store(false, Ordering::SeqCst);
    count(&actual, program);
    let expected = Model::new(&actual, skip()).run(program);
    if let Some(at) = (0..expected.len().max(actual.len())).find(|&i| expected.get(i) != actual.get(i)) {
        return Err(TestCaseError::fail(report(&expected, &actual, at)));
    }
    let wrong: Vec<String> = drops
        .iter()
        .enumerate()
        .filter(|(_, &count)| count != 1)
        .map(|(tag, count)| format!("v{tag} dropped {count} times"))
        .collect();
    if !wrong.is_empty() {
        return Err(TestCaseError::fail(format!("values not dropped exactly once: {}", wrong.join(", "))));
    }
    Ok(())
}

/// While a program runs, panics are expected by the thousand: the hook only
/// prints them with `NESTED_MODEL_VERBOSE=1`. Proptest's own report goes
/// through the default hook.
static RUNNING: AtomicBool = AtomicBool::new(false);

fn quiet_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !RUNNING.load(Ordering::SeqCst) || verbose() {
                default(info);
            }
        }));
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nested_programs_match_the_model(program in program()) {
        quiet_panics();
        check(&program)?;
    }
}
