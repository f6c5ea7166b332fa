//! Runtime tests that need neither the derive nor tokio, so they also run with
//! `--no-default-features`. The descriptors are written by hand, as the
//! derive would generate them.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::private::{wrap_local, wrap_shared, wrap_thread, Batch, FieldDesc, Parts, Space, StructDesc};
use crate::{AccessError, Context, ContextLocal, Field};

struct Request {
    id: u64,
    conn: String,
}

static INITS: AtomicUsize = AtomicUsize::new(0);

fn init(batch: &mut Batch) {
    INITS.fetch_add(1, Ordering::SeqCst);
    Request { id: 0, conn: "fresh".into() }.__store(batch);
}

static REQUEST: StructDesc = StructDesc::new("Request", Space::Shared, Some(init), &[&REQUEST_ID, &REQUEST_CONN]);
static REQUEST_ID: FieldDesc<u64> = FieldDesc::new("Request::id", &REQUEST, Space::Shared, None, wrap_shared::<u64>);
static REQUEST_CONN: FieldDesc<String> =
    FieldDesc::new("Request::conn", &REQUEST, Space::Local, None, wrap_local::<String>);

impl Request {
    const fn id() -> Field<u64> {
        Field::__new(&REQUEST_ID)
    }
    const fn conn() -> Field<String> {
        Field::__new(&REQUEST_CONN)
    }
}

impl ContextLocal for Request {
    fn __descriptor() -> &'static StructDesc {
        &REQUEST
    }
    fn __store(self, batch: &mut Batch) {
        batch.put(&REQUEST_ID, self.id);
        batch.put(&REQUEST_CONN, self.conn);
    }
    fn __load(parts: &mut Parts) -> Self {
        Request { id: parts.next(&REQUEST_ID), conn: parts.next(&REQUEST_CONN) }
    }
}

struct PerThread {
    hits: u32,
}

static PER_THREAD: StructDesc = StructDesc::new("PerThread", Space::Thread, None, &[&PER_THREAD_HITS]);
static PER_THREAD_HITS: FieldDesc<u32> =
    FieldDesc::new("PerThread::hits", &PER_THREAD, Space::Thread, Some(|| 0), wrap_thread::<u32>);

impl ContextLocal for PerThread {
    fn __descriptor() -> &'static StructDesc {
        &PER_THREAD
    }
    fn __store(self, batch: &mut Batch) {
        batch.put(&PER_THREAD_HITS, self.hits);
    }
    fn __load(parts: &mut Parts) -> Self {
        PerThread { hits: parts.next(&PER_THREAD_HITS) }
    }
}

#[test]
fn task_scope_init_snapshot_and_no_inherit() {
    let mut ctx = Context::new();
    ctx.run(|| {
        let before = INITS.load(Ordering::SeqCst);
        assert_eq!(Request::id().get(), Some(0));
        assert_eq!(INITS.load(Ordering::SeqCst), before + 1);
        Request::id().set(5);
        let mut child = Context::current();
        assert_eq!(child.run(|| (Request::id().get(), Request::conn().get())), (Some(5), None));
        assert_eq!(INITS.load(Ordering::SeqCst), before + 1, "the child inherited the init state");
        let taken = Request::take().expect("every field is set");
        assert_eq!((taken.id, taken.conn.as_str()), (5, "fresh"));
    });
}

#[test]
fn thread_scope_default_and_errors() {
    std::thread::spawn(|| {
        let hits = Field::__new(&PER_THREAD_HITS);
        assert_eq!(hits.get(), Some(0));
        hits.update(|h| *h += 2);
        assert_eq!(Context::new().run(|| hits.get()), Some(2), "thread scope ignores contexts");
        hits.update(|_| assert_eq!(hits.try_get(), Err(AccessError::Reentrant { field: "PerThread::hits" })));
        PerThread::clear();
        assert!(!hits.is_set());
    })
    .join()
    .unwrap();
}

/// The unchecked cast behind every read keeps its type check in debug builds,
/// so any bug that put a value in the wrong slot fails the test suite.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "a slot held a value of another type")]
fn reads_check_the_slot_type_in_debug_builds() {
    let value: &dyn std::any::Any = &5u64;
    let _ = crate::state::downcast::<u32>(value);
}

#[test]
fn reads_cast_values_of_the_slot_type() {
    let mut value = String::from("slot");
    assert_eq!(crate::state::downcast::<String>(&value as &dyn std::any::Any), "slot");
    crate::state::downcast_mut::<String>(&mut value as &mut dyn std::any::Any).push('!');
    assert_eq!(value, "slot!");
}
