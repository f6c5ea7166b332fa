//! Runtime tests that need neither the derive nor tokio, so they also run with
//! `--no-default-features`. The descriptors are written by hand, as the
//! derive would generate them.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::private::{Batch, FieldDesc, Parts, Space, StructDesc};
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
static REQUEST_ID: FieldDesc<u64> = FieldDesc::shared("Request::id", &REQUEST, None);
static REQUEST_CONN: FieldDesc<String> = FieldDesc::local("Request::conn", &REQUEST, None);

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
static PER_THREAD_HITS: FieldDesc<u32> = FieldDesc::thread("PerThread::hits", &PER_THREAD, Some(|| 0));

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

/// Hidden items used by hand with mismatched fields: `Parts::next` checks the
/// type and panics; it never reads a value as another type.
#[test]
#[should_panic(expected = "no value of the field's type")]
fn mismatched_parts_panic_instead_of_reading_another_type() {
    let mut batch = Batch::default();
    batch.put(&REQUEST_ID, 7u64);
    let items: Vec<_> = batch.into_items().into_iter().map(|(_, value)| value).collect();
    let _: String = Parts { items: items.into_iter() }.next(&REQUEST_CONN);
}
