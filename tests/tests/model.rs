//! Model-based test: random programs of context-local operations over several
//! contexts and two threads, compared step by step with a plain reference
//! model built from `HashMap`s. A failing program is shrunk and printed as
//! Rust-like code.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use context_local::{Context, ContextLocal, Field};
use proptest::prelude::*;

static INIT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(ContextLocal)]
#[context_local(init = Session::fresh)]
struct Session {
    a: u32,
    #[context_local(no_inherit)]
    b: u32,
}

impl Session {
    fn fresh() -> Session {
        INIT_RUNS.fetch_add(1, Ordering::SeqCst);
        Session { a: 1000, b: 2000 }
    }
}

#[derive(ContextLocal)]
struct Plain {
    c: u32,
    #[context_local(default = 7)]
    d: u32,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct PerThread {
    t: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    A,
    B,
    C,
    D,
    T,
}

impl Key {
    fn field(self) -> Field<u32> {
        match self {
            Key::A => Session::a(),
            Key::B => Session::b(),
            Key::C => Plain::c(),
            Key::D => Plain::d(),
            Key::T => PerThread::t(),
        }
    }

    fn in_session(self) -> bool {
        matches!(self, Key::A | Key::B)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Key::A => "Session::a()",
            Key::B => "Session::b()",
            Key::C => "Plain::c()",
            Key::D => "Plain::d()",
            Key::T => "PerThread::t()",
        })
    }
}

#[derive(Clone, Copy)]
enum Action {
    Get(Key),
    Set(Key, u32),
    Take(Key),
    Delete(Key),
    Replace(Key, u32),
    Increment(Key),
    IsSet(Key),
    ClearSession,
    /// A child context: a snapshot of this one (`Context::current()`).
    Snapshot,
    /// The child finishes: its context is dropped.
    Finish,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Get(k) => write!(f, "{k:?}.get()"),
            Action::Set(k, v) => write!(f, "{k:?}.set({v})"),
            Action::Take(k) => write!(f, "{k:?}.take()"),
            Action::Delete(k) => write!(f, "{k:?}.delete()"),
            Action::Replace(k, v) => write!(f, "{k:?}.replace({v})"),
            Action::Increment(k) => write!(f, "{k:?}.update(|v| {{ *v += 1; *v }})"),
            Action::IsSet(k) => write!(f, "{k:?}.is_set()"),
            Action::ClearSession => write!(f, "Session::clear()"),
            Action::Snapshot => write!(f, "contexts.push(Context::current())"),
            Action::Finish => write!(f, "drop(this context)"),
        }
    }
}

/// One step: `action` inside context number `context` (modulo the live ones),
/// on worker thread `thread`.
#[derive(Clone, Copy)]
struct Step {
    context: usize,
    thread: usize,
    action: Action,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "on thread {}: contexts[{} % live].run(|| {:?});", self.thread, self.context, self.action)
    }
}

/// A program, printed as code when it fails.
#[derive(Clone)]
struct Program(Vec<Step>);

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n// contexts = [Context::new(), Context::new()]")?;
        for step in &self.0 {
            writeln!(f, "{step:?}")?;
        }
        Ok(())
    }
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![Just(Key::A), Just(Key::B), Just(Key::C), Just(Key::D), Just(Key::T)]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => key().prop_map(Action::Get),
        3 => (key(), 0..100u32).prop_map(|(k, v)| Action::Set(k, v)),
        1 => key().prop_map(Action::Take),
        1 => key().prop_map(Action::Delete),
        1 => (key(), 0..100u32).prop_map(|(k, v)| Action::Replace(k, v)),
        2 => key().prop_map(Action::Increment),
        1 => key().prop_map(Action::IsSet),
        1 => Just(Action::ClearSession),
        1 => Just(Action::Snapshot),
        1 => Just(Action::Finish),
    ]
}

fn program() -> impl Strategy<Value = Program> {
    prop::collection::vec(
        (0..8usize, 0..2usize, action()).prop_map(|(context, thread, action)| Step { context, thread, action }),
        1..40,
    )
    .prop_map(Program)
}

/// The reference model of one context.
#[derive(Clone, Default, Debug)]
struct ModelContext {
    initialised: bool,
    values: HashMap<Key, u32>,
}

/// What a step returned, in both worlds.
#[derive(Debug, PartialEq)]
enum Out {
    Value(Option<u32>),
    Flag(bool),
    Done,
}

#[derive(Default)]
struct Model {
    contexts: Vec<ModelContext>,
    threads: [HashMap<Key, u32>; 2],
    init_runs: usize,
}

impl Model {
    /// `init` runs on the first access (not `is_set`) to a `Session` field.
    fn touch(&mut self, context: usize, key: Key) {
        let ctx = &mut self.contexts[context];
        if key.in_session() && !ctx.initialised {
            ctx.initialised = true;
            ctx.values.insert(Key::A, 1000);
            ctx.values.insert(Key::B, 2000);
            self.init_runs += 1;
        }
    }

    fn slot(&mut self, context: usize, thread: usize, key: Key) -> &mut HashMap<Key, u32> {
        if key == Key::T {
            &mut self.threads[thread]
        } else {
            &mut self.contexts[context].values
        }
    }

    fn apply(&mut self, context: usize, thread: usize, action: Action) -> Out {
        match action {
            Action::Get(k) => {
                self.touch(context, k);
                let map = self.slot(context, thread, k);
                if k == Key::D {
                    Out::Value(Some(*map.entry(k).or_insert(7)))
                } else {
                    Out::Value(map.get(&k).copied())
                }
            }
            Action::Set(k, v) | Action::Replace(k, v) => {
                self.touch(context, k);
                let old = self.slot(context, thread, k).insert(k, v);
                if matches!(action, Action::Set(..)) {
                    Out::Done
                } else {
                    Out::Value(old)
                }
            }
            Action::Take(k) => {
                self.touch(context, k);
                Out::Value(self.slot(context, thread, k).remove(&k))
            }
            Action::Delete(k) => {
                self.touch(context, k);
                Out::Flag(self.slot(context, thread, k).remove(&k).is_some())
            }
            Action::Increment(k) => {
                self.touch(context, k);
                let map = self.slot(context, thread, k);
                if k == Key::D {
                    map.entry(k).or_insert(7);
                }
                Out::Value(map.get_mut(&k).map(|v| {
                    *v += 1;
                    *v
                }))
            }
            Action::IsSet(k) => Out::Flag(self.slot(context, thread, k).contains_key(&k)),
            Action::ClearSession => {
                let ctx = &mut self.contexts[context];
                ctx.initialised = false;
                ctx.values.remove(&Key::A);
                ctx.values.remove(&Key::B);
                Out::Done
            }
            Action::Snapshot => {
                let mut child = self.contexts[context].clone();
                child.values.remove(&Key::B); // no_inherit
                self.contexts.push(child);
                Out::Done
            }
            Action::Finish => {
                self.contexts.remove(context);
                Out::Done
            }
        }
    }
}

/// Runs `action` in the current context of the calling worker thread.
fn perform(action: Action) -> (Out, Option<Context>) {
    let out = match action {
        Action::Get(k) => Out::Value(k.field().get()),
        Action::Set(k, v) => {
            k.field().set(v);
            Out::Done
        }
        Action::Take(k) => Out::Value(k.field().take()),
        Action::Delete(k) => Out::Flag(k.field().delete()),
        Action::Replace(k, v) => Out::Value(k.field().replace(v)),
        Action::Increment(k) => Out::Value(k.field().update(|v| {
            *v += 1;
            *v
        })),
        Action::IsSet(k) => Out::Flag(k.field().is_set()),
        Action::ClearSession => {
            Session::clear();
            Out::Done
        }
        Action::Snapshot => return (Out::Done, Some(Context::current())),
        Action::Finish => Out::Done,
    };
    (out, None)
}

type Job = Box<dyn FnOnce() + Send>;

/// Two worker threads that run jobs in order.
struct Workers {
    queues: Vec<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start() -> Workers {
        let (queues, threads) = (0..2)
            .map(|_| {
                let (send, receive) = mpsc::channel::<Job>();
                (send, std::thread::spawn(move || receive.into_iter().for_each(|job| job())))
            })
            .unzip();
        Workers { queues, threads }
    }

    fn run<R: Send + 'static>(&self, thread: usize, job: impl FnOnce() -> R + Send + 'static) -> R {
        let (send, receive) = mpsc::channel();
        self.queues[thread].send(Box::new(move || send.send(job()).expect("reply"))).expect("worker");
        receive.recv().expect("worker reply")
    }

    fn stop(self) {
        drop(self.queues);
        self.threads.into_iter().for_each(|t| t.join().expect("worker thread"));
    }
}

fn check(program: &Program) -> Result<(), TestCaseError> {
    let workers = Workers::start();
    let mut contexts = vec![Context::new(), Context::new()];
    let mut model = Model { contexts: vec![ModelContext::default(); 2], ..Model::default() };
    let init_before = INIT_RUNS.load(Ordering::SeqCst);
    for (n, step) in program.0.iter().enumerate() {
        if contexts.is_empty() {
            contexts.push(Context::new());
            model.contexts.push(ModelContext::default());
        }
        let at = step.context % contexts.len();
        let expected = model.apply(at, step.thread, step.action);
        let mut context = contexts.remove(at);
        let action = step.action;
        let (out, child, context) = workers.run(step.thread, move || {
            let (out, child) = context.run(|| perform(action));
            (out, child, context)
        });
        prop_assert_eq!(&out, &expected, "step {} ({:?}) on context {}", n, action, at);
        match action {
            Action::Finish => drop(context),
            _ => contexts.insert(at, context),
        }
        contexts.extend(child);
    }
    prop_assert_eq!(INIT_RUNS.load(Ordering::SeqCst) - init_before, model.init_runs, "init runs");
    workers.stop();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_reference_model(program in program()) {
        check(&program)?;
    }
}
