//! Attacks on the scalar read copy and the cached scalar writes, written from
//! the README and API.md alone: every scalar type at its extremes (NaN
//! payloads, -0.0), re-entrancy through the copy (also through a second cache
//! or another field's cache named by hand), guards and `Context::run` after a
//! cached write, panics, thread exit, tokio tasks with and without a context,
//! 40+ fields, a small model and a multi-threaded service.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use context_local::{AccessError, Context, ContextLocal, Field, FutureExt as _};

fn cur_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}
fn mt_rt(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
}

fn is_reentrant<T: std::fmt::Debug>(r: impl std::borrow::Borrow<Result<T, AccessError>>) -> bool {
    matches!(r.borrow(), Err(AccessError::Reentrant { .. }))
}

// ---------------------------------------------------------------------------
// Every scalar type, task and thread scope
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct TaskScalars {
    u8_: u8,
    i8_: i8,
    u16_: u16,
    i16_: i16,
    u32_: u32,
    i32_: i32,
    u64_: u64,
    i64_: i64,
    usize_: usize,
    isize_: isize,
    bool_: bool,
    char_: char,
    f32_: f32,
    f64_: f64,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadScalars {
    u8_: u8,
    i8_: i8,
    u16_: u16,
    i16_: i16,
    u32_: u32,
    i32_: i32,
    u64_: u64,
    i64_: i64,
    usize_: usize,
    isize_: isize,
    bool_: bool,
    char_: char,
    f32_: f32,
    f64_: f64,
}

/// Bit-exact identity for the scalar types (floats compared by bits).
trait Bits: Copy + std::fmt::Debug + Send + 'static {
    fn bits(self) -> u64;
}
macro_rules! bits_int {
    ($($t:ty),*) => {$(impl Bits for $t { fn bits(self) -> u64 { self as u64 } })*};
}
bits_int!(u8, i8, u16, i16, u32, i32, u64, i64, usize, isize);
impl Bits for bool {
    fn bits(self) -> u64 {
        self as u64
    }
}
impl Bits for char {
    fn bits(self) -> u64 {
        self as u64
    }
}
impl Bits for f32 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Bits for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
}

fn same<T: Bits>(a: Option<T>, b: Option<T>) -> bool {
    a.map(Bits::bits) == b.map(Bits::bits)
}

/// Runs every operation on `field` for each value, checking each answer
/// bit for bit, on cached and uncached paths (a snapshot forces the full one).
fn exercise<T: Bits + Clone>(field: Field<T>, values: &[T], task_scope: bool) {
    field.delete();
    assert!(same(field.get(), None), "{}: unset reads None", field.name());
    let mut prev: Option<T> = None;
    for &v in values {
        // set then read twice (second read from the copy)
        field.set(v);
        assert!(same(field.get(), Some(v)), "{} set {:?}: got {:?}", field.name(), v, field.get());
        assert!(same(field.get(), Some(v)));
        assert!(same(field.with(|x| *x), Some(v)));
        assert!(same(field.try_get().ok(), Some(v)));
        // a snapshot sees it (full path), and the source still does
        let snap = Context::current();
        let mut snap2 = snap.snapshot();
        let seen = snap2.run(|| field.get());
        if task_scope {
            assert!(same(seen, Some(v)), "{} snapshot of {:?}: got {:?}", field.name(), v, seen);
        } else {
            assert!(same(seen, Some(v)), "{}: thread scope ignores contexts", field.name());
        }
        assert!(same(field.get(), Some(v)));
        // update identity, then replace
        assert_eq!(field.update(|x| x.bits()), Some(v.bits()));
        assert!(same(field.get(), Some(v)));
        let r = field.replace(v);
        assert!(same(r, Some(v)), "{} replace returned {:?}", field.name(), r);
        // take and put back
        assert!(same(field.take(), Some(v)));
        assert!(same(field.get(), None), "{} after take", field.name());
        assert!(!field.is_set());
        assert!(same(field.replace(v), None));
        assert!(same(field.get(), Some(v)));
        // update writes a whole new value through the cache
        if let Some(p) = prev {
            field.update(|x| *x = p);
            assert!(same(field.get(), Some(p)), "{} update to {:?}: got {:?}", field.name(), p, field.get());
            field.update(|x| *x = v);
            assert!(same(field.get(), Some(v)));
        }
        prev = Some(v);
    }
    assert!(field.delete());
    assert!(!field.delete());
    assert!(same(field.get(), None));
}

macro_rules! all_scalars {
    ($s:ident, $task:expr) => {{
        exercise($s::u8_(), &[0, 1, u8::MAX, 0x80, 0x7f, 0], $task);
        exercise($s::i8_(), &[0, -1, i8::MIN, i8::MAX, 1, -1, 0], $task);
        exercise($s::u16_(), &[0, u16::MAX, 0x8000, 1, 0], $task);
        exercise($s::i16_(), &[0, -1, i16::MIN, i16::MAX, 0], $task);
        exercise($s::u32_(), &[0, u32::MAX, 0x8000_0000, 1, 0], $task);
        exercise($s::i32_(), &[0, -1, i32::MIN, i32::MAX, 0], $task);
        exercise($s::u64_(), &[0, u64::MAX, 1 << 63, 1, 0], $task);
        exercise($s::i64_(), &[0, -1, i64::MIN, i64::MAX, 0], $task);
        exercise($s::usize_(), &[0, usize::MAX, 1, 0], $task);
        exercise($s::isize_(), &[0, -1, isize::MIN, isize::MAX, 0], $task);
        exercise($s::bool_(), &[false, true, false, true, true, false], $task);
        exercise($s::char_(), &['\0', 'a', char::MAX, '\u{d7ff}', '\u{e000}', 'é', '\0'], $task);
        exercise(
            $s::f32_(),
            &[
                0.0,
                -0.0,
                0.0,
                f32::NAN,
                -f32::NAN,
                f32::from_bits(0x7fc0_0001),
                f32::from_bits(0xffbf_ffff),
                f32::from_bits(0x7f80_0001),
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MIN_POSITIVE,
                f32::from_bits(1),
                f32::MAX,
                f32::MIN,
                -0.0,
            ],
            $task,
        );
        exercise(
            $s::f64_(),
            &[
                0.0,
                -0.0,
                0.0,
                f64::NAN,
                -f64::NAN,
                f64::from_bits(0x7ff8_0000_0000_0001),
                f64::from_bits(0xfff7_ffff_ffff_ffff),
                f64::from_bits(0x7ff0_0000_0000_0001),
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::from_bits(1),
                f64::MAX,
                f64::MIN,
                -0.0,
            ],
            $task,
        );
    }};
}

#[test]
fn every_scalar_type_round_trips_bit_exact_task_scope() {
    all_scalars!(TaskScalars, true);
    // and again inside a context of its own, with warm entries
    Context::new().run(|| all_scalars!(TaskScalars, true));
    std::thread::spawn(|| all_scalars!(TaskScalars, true)).join().unwrap();
}

#[test]
fn every_scalar_type_round_trips_bit_exact_thread_scope() {
    all_scalars!(ThreadScalars, false);
    Context::new().run(|| all_scalars!(ThreadScalars, false));
    std::thread::spawn(|| all_scalars!(ThreadScalars, false)).join().unwrap();
}

#[test]
fn negative_zero_after_zero_and_nan_payloads_survive_snapshots_and_switches() {
    let mut ctx = Context::new();
    ctx.run(|| {
        TaskScalars::f64_().set(0.0);
        assert_eq!(TaskScalars::f64_().get().unwrap().to_bits(), 0);
        TaskScalars::f64_().set(-0.0);
        TaskScalars::f32_().set(f32::from_bits(0x7fc0_1234));
    });
    // the cached writes must have reached the context at the switch
    let mut again = ctx.snapshot();
    again.run(|| {
        assert_eq!(TaskScalars::f64_().get().unwrap().to_bits(), (-0.0f64).to_bits());
        assert_eq!(TaskScalars::f32_().get().unwrap().to_bits(), 0x7fc0_1234);
    });
    ctx.run(|| {
        TaskScalars::f64_().update(|x| *x = f64::from_bits(0x7ff8_dead_beef_0001));
        TaskScalars::f64_().set(f64::from_bits(0x7ff8_dead_beef_0002)); // NaN != NaN, must still replace
    });
    let seen = std::thread::spawn(move || ctx.run(|| TaskScalars::f64_().get().unwrap().to_bits())).join().unwrap();
    assert_eq!(seen, 0x7ff8_dead_beef_0002);
    // thread scope: the same across contexts
    ThreadScalars::f64_().set(0.0);
    assert_eq!(ThreadScalars::f64_().get().unwrap().to_bits(), 0);
    Context::new().run(|| ThreadScalars::f64_().update(|x| *x = -0.0));
    assert_eq!(ThreadScalars::f64_().get().unwrap().to_bits(), (-0.0f64).to_bits());
    Context::new().run(|| ThreadScalars::f32_().set(-0.0));
    Context::new().run(|| ThreadScalars::f32_().set(0.0));
    assert_eq!(ThreadScalars::f32_().get().unwrap().to_bits(), 0);
}

// ---------------------------------------------------------------------------
// Re-entrancy through the scalar copy
// ---------------------------------------------------------------------------

fn reentrancy_of<T: Bits + Clone + PartialEq>(field: Field<T>, a: T, b: T, other: Field<u64>) {
    field.set(a);
    assert!(same(field.get(), Some(a)));
    assert!(same(field.get(), Some(a))); // warm copy
    let inside = field.update(|x| {
        *x = b;
        let get = field.try_get();
        let with = field.try_with(|v| *v);
        let set = field.try_set(a);
        let upd = field.try_update(|_| ());
        let take = field.try_take();
        let del = field.try_delete();
        let rep = field.try_replace(a);
        let is = field.try_is_set();
        // other fields stay usable, through their own cache
        other.set(41);
        other.update(|o| *o += 1);
        let o = other.get();
        let snap_has = Context::current().run(|| field.try_is_set());
        (
            is_reentrant(get),
            is_reentrant(with),
            is_reentrant(set),
            is_reentrant(upd),
            is_reentrant(take),
            is_reentrant(del),
            is_reentrant(rep),
            is_reentrant(is),
            o,
            snap_has,
        )
    });
    let (g, w, s, u, t, d, r, i, o, _snap_has) = inside.unwrap();
    let name = field.name();
    assert!(g, "{name}: get inside its own update must be Reentrant");
    assert!(w, "{name}: with inside its own update must be Reentrant");
    assert!(s, "{name}: set inside update");
    assert!(u, "{name}: update inside update");
    assert!(t, "{name}: take inside update");
    assert!(d, "{name}: delete inside update");
    assert!(r, "{name}: replace inside update");
    assert!(i, "{name}: is_set inside update");
    assert_eq!(o, Some(42));
    assert!(same(field.get(), Some(b)), "{name}: the update's write");
    assert_eq!(other.get(), Some(42));

    // inside with: reads work (the same value), writes are Reentrant
    let inside = field.with(|x| {
        let v = *x;
        let g = field.get();
        let w = field.with(|y| *y);
        let g2 = field.try_get();
        (
            v,
            g,
            w,
            g2.ok(),
            is_reentrant(field.try_set(a)),
            is_reentrant(field.try_update(|_| ())),
            is_reentrant(field.try_take()),
            is_reentrant(field.try_delete()),
            is_reentrant(field.try_replace(a)),
        )
    });
    let (v, g, w, g2, s, u, t, d, r) = inside.unwrap();
    assert!(
        same(Some(v), Some(b)) && same(g, Some(b)) && same(w, Some(b)) && same(g2, Some(b)),
        "{name}: reads inside with"
    );
    assert!(s && u && t && d && r, "{name}: writes inside with must be Reentrant: {s} {u} {t} {d} {r}");
    assert!(same(field.get(), Some(b)));
    // after all that the field is usable
    field.update(|x| *x = a);
    assert!(same(field.get(), Some(a)));
}

#[derive(ContextLocal)]
struct Other {
    n: u64,
}
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct OtherThread {
    n: u64,
}

macro_rules! reentrancy_all {
    ($s:ident, $o:expr) => {{
        reentrancy_of($s::u8_(), 1, 200, $o);
        reentrancy_of($s::i8_(), -1, 100, $o);
        reentrancy_of($s::u16_(), 1, 60000, $o);
        reentrancy_of($s::i16_(), -3, 3000, $o);
        reentrancy_of($s::u32_(), 1, u32::MAX, $o);
        reentrancy_of($s::i32_(), -1, i32::MIN, $o);
        reentrancy_of($s::u64_(), 1, u64::MAX, $o);
        reentrancy_of($s::i64_(), -1, i64::MAX, $o);
        reentrancy_of($s::usize_(), 1, 2, $o);
        reentrancy_of($s::isize_(), -1, 2, $o);
        reentrancy_of($s::bool_(), false, true, $o);
        reentrancy_of($s::char_(), 'a', 'z', $o);
        reentrancy_of($s::f32_(), 1.5, -0.0, $o);
        reentrancy_of($s::f64_(), -2.5, f64::INFINITY, $o);
    }};
}

#[test]
fn scalar_reads_inside_own_update_are_reentrant_every_type_task_scope() {
    reentrancy_all!(TaskScalars, Other::n());
    Context::new().run(|| reentrancy_all!(TaskScalars, OtherThread::n()));
}

#[test]
fn scalar_reads_inside_own_update_are_reentrant_every_type_thread_scope() {
    reentrancy_all!(ThreadScalars, OtherThread::n());
    Context::new().run(|| reentrancy_all!(ThreadScalars, Other::n()));
}

#[test]
fn a_snapshot_taken_inside_update_does_not_hold_the_half_written_scalar() {
    #[derive(ContextLocal)]
    struct Snap {
        a: u64,
        b: i32,
    }
    let mut ctx = Context::new();
    ctx.run(|| {
        Snap::a().set(1);
        Snap::b().set(-1);
        assert_eq!(Snap::a().get(), Some(1));
        let inner = Snap::a().update(|a| {
            *a = 99;
            Snap::b().set(-7); // cached write of another field, right before the snapshot
            let mut snap = Context::current();
            snap.run(|| (Snap::a().get(), Snap::b().get()))
        });
        let (a_in_snap, b_in_snap) = inner.unwrap();
        assert_ne!(a_in_snap, Some(99), "a value half-way through update leaked into a snapshot");
        assert_eq!(b_in_snap, Some(-7), "the other field's cached write must be in the snapshot");
        assert_eq!(Snap::a().get(), Some(99));
        let mut after = Context::current();
        assert_eq!(after.run(|| Snap::a().get()), Some(99));
    });
}

#[test]
fn drop_during_unwinding_inside_update_sees_reentrant_and_writes_other_fields() {
    struct OnUnwind(Field<u32>, Field<u64>, Arc<AtomicUsize>);
    impl Drop for OnUnwind {
        fn drop(&mut self) {
            if is_reentrant(self.0.try_get()) && is_reentrant(self.0.try_set(5)) {
                self.2.fetch_add(1, Ordering::SeqCst);
            }
            self.1.set(77);
            self.1.update(|v| *v += 1);
            if self.1.get() == Some(78) {
                self.2.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    for scope in 0..2 {
        let (f, o): (Field<u32>, Field<u64>) =
            if scope == 0 { (TaskScalars::u32_(), Other::n()) } else { (ThreadScalars::u32_(), OtherThread::n()) };
        let ok = Arc::new(AtomicUsize::new(0));
        f.set(10);
        o.set(0);
        assert_eq!(f.get(), Some(10));
        let r = catch_unwind(AssertUnwindSafe(|| {
            f.update(|x| {
                let _guard = OnUnwind(f, o, ok.clone());
                *x = 11;
                panic!("boom in update");
            })
        }));
        assert!(r.is_err());
        assert_eq!(ok.load(Ordering::SeqCst), 2, "scope {scope}: inside the unwinding closure");
        assert_eq!(o.get(), Some(78));
        // the field must be usable again, and every path must agree on its value
        let v = f.get();
        assert!(v == Some(10) || v == Some(11), "scope {scope}: {v:?}");
        assert_eq!(f.with(|x| *x), v);
        assert_eq!(Context::current().run(|| f.get()), v, "scope {scope}: cached and full path disagree");
        f.set(12);
        assert_eq!(f.get(), Some(12));
        assert_eq!(f.update(|x| *x), Some(12));
    }
}

// ---------------------------------------------------------------------------
// The hidden items: caches named by hand
// ---------------------------------------------------------------------------

#[test]
fn a_second_cache_for_one_scalar_field_is_reentrant_inside_the_first_ones_update() {
    thread_local! {
        static SECOND_T: context_local::__private::Cache<u64> = const { context_local::__private::Cache::new() };
        static SECOND_TH: context_local::__private::Cache<u64> = const { context_local::__private::Cache::new() };
    }
    for (mine, other) in [
        (TaskScalars::u64_(), Field::__cached(TaskScalars::u64_().__desc(), &SECOND_T)),
        (ThreadScalars::u64_(), Field::__cached(ThreadScalars::u64_().__desc(), &SECOND_TH)),
    ] {
        Context::new().run(|| {
            mine.set(1);
            assert_eq!(other.get(), Some(1));
            assert_eq!(other.get(), Some(1)); // the second cache's copy is warm
            assert_eq!(mine.get(), Some(1));
            let inside = mine.update(|v| {
                *v = 2;
                (other.try_get(), other.try_set(3), other.try_update(|x| *x))
            });
            let (g, s, u) = inside.unwrap();
            assert!(is_reentrant(&g), "{}: read via a second cache inside update: {g:?}", mine.name());
            assert!(is_reentrant(&s), "{}: {s:?}", mine.name());
            assert!(is_reentrant(&u), "{}: {u:?}", mine.name());
            assert_eq!(mine.get(), Some(2));
            assert_eq!(other.get(), Some(2), "{}: the second cache answered an old value", mine.name());
            // the other way round
            let inside = other.update(|v| {
                *v = 4;
                mine.try_get()
            });
            assert!(is_reentrant(inside.unwrap()));
            assert_eq!(mine.get(), Some(4));
            other.set(5);
            assert_eq!(mine.get(), Some(5));
            mine.update(|v| *v += 1);
            assert_eq!(other.get(), Some(6));
            assert_eq!(other.with(|v| *v), Some(6));
        });
    }
}

#[test]
fn a_forged_field_using_another_fields_cache_never_mixes_values_inside_updates() {
    #[derive(ContextLocal)]
    struct X {
        x: u64,
    }
    #[derive(ContextLocal)]
    struct Y {
        y: u64,
    }
    let y_key = Y::y().__cache().expect("cache");
    let forged_x = Field::__cached(X::x().__desc(), y_key);
    let mut ctx = Context::new();
    ctx.run(|| {
        X::x().set(10);
        Y::y().set(20);
        assert_eq!(Y::y().get(), Some(20));
        assert_eq!(forged_x.get(), Some(10));
        assert_eq!(Y::y().get(), Some(20));
        // update of x through y's cache; y is another field and stays usable
        let inside = forged_x.update(|x| {
            *x = 11;
            let y1 = Y::y().get();
            Y::y().set(21);
            let y2 = Y::y().get();
            Y::y().update(|y| *y += 1);
            let y3 = Y::y().get();
            let xr = X::x().try_get();
            (y1, y2, y3, xr)
        });
        let (y1, y2, y3, xr) = inside.unwrap();
        assert_eq!((y1, y2, y3), (Some(20), Some(21), Some(22)), "y inside an update of x through y's cache");
        assert!(is_reentrant(&xr), "x inside its own update: {xr:?}");
        assert_eq!(X::x().get(), Some(11));
        assert_eq!(Y::y().get(), Some(22));
        assert_eq!(forged_x.get(), Some(11));
        // and the other way round: y's own update, x through y's cache inside
        let inside = Y::y().update(|y| {
            *y = 30;
            let x1 = forged_x.get();
            forged_x.set(12);
            forged_x.update(|x| *x += 1);
            (x1, forged_x.get(), X::x().get(), Y::y().try_get())
        });
        let (x1, x2, x3, yr) = inside.unwrap();
        assert_eq!((x1, x2, x3), (Some(11), Some(13), Some(13)));
        assert!(is_reentrant(yr));
        assert_eq!(Y::y().get(), Some(30));
        assert_eq!(X::x().get(), Some(13));
        assert_eq!(forged_x.get(), Some(13));
    });
    let mut snap = ctx.snapshot();
    assert_eq!(snap.run(|| (X::x().get(), Y::y().get())), (Some(13), Some(30)));
}

#[test]
fn one_cache_shared_by_a_thread_scoped_and_a_task_scoped_field_keeps_them_apart() {
    thread_local! {
        static BOTH: context_local::__private::Cache<i64> = const { context_local::__private::Cache::new() };
    }
    let task = Field::__cached(TaskScalars::i64_().__desc(), &BOTH);
    let thread = Field::__cached(ThreadScalars::i64_().__desc(), &BOTH);
    thread.set(-1);
    let mut a = Context::new();
    let mut b = Context::new();
    a.run(|| {
        task.set(1);
        assert_eq!(thread.get(), Some(-1));
        assert_eq!(task.get(), Some(1));
        thread.update(|v| *v -= 1);
        assert_eq!(task.get(), Some(1));
        task.update(|v| *v += 1);
        assert_eq!(thread.get(), Some(-2));
        assert_eq!(task.get(), Some(2));
        let inside = thread.update(|v| {
            *v = -3;
            (task.get(), task.try_set(5), thread.try_get())
        });
        let (t, s, r) = inside.unwrap();
        assert_eq!(t, Some(2));
        assert!(s.is_ok());
        assert!(is_reentrant(r));
        assert_eq!(task.get(), Some(5));
        b.run(|| {
            assert_eq!(task.get(), None, "another context");
            assert_eq!(thread.get(), Some(-3), "thread scope ignores contexts");
            task.set(100);
        });
        assert_eq!(task.get(), Some(5));
        assert_eq!(TaskScalars::i64_().get(), Some(5));
        assert_eq!(ThreadScalars::i64_().get(), Some(-3));
    });
    assert_eq!(b.run(|| TaskScalars::i64_().get()), Some(100));
    assert_eq!(ThreadScalars::i64_().get(), Some(-3));
    assert_eq!(task.get(), TaskScalars::i64_().get());
}

// ---------------------------------------------------------------------------
// Guards and contexts after cached writes
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct Pair {
    a: u32,
    b: bool,
}
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ThreadPair {
    a: u32,
    b: bool,
}

#[test]
fn a_guard_restores_over_cached_scalar_writes_task_and_thread_scope() {
    let mut ctx = Context::new();
    ctx.run(|| {
        Pair::a().set(1);
        Pair::b().set(false);
        assert_eq!(Pair::a().get(), Some(1));
        let g = Pair { a: 2, b: true }.enter();
        assert_eq!(Pair::a().get(), Some(2));
        Pair::a().set(3);
        Pair::a().update(|a| *a += 1);
        Pair::b().set(false);
        assert_eq!(Pair::a().get(), Some(4));
        drop(g);
        assert_eq!(Pair::a().get(), Some(1), "the guard must restore over a cached write");
        assert_eq!(Pair::b().get(), Some(false));
        assert_eq!(Context::current().run(|| Pair::a().get()), Some(1));
    });
    assert_eq!(ctx.run(|| Pair::a().get()), Some(1));

    ThreadPair::a().delete();
    ThreadPair::a().set(1);
    assert_eq!(ThreadPair::a().get(), Some(1));
    let g = ThreadPair { a: 2, b: true }.enter();
    ThreadPair::a().update(|a| *a = 40);
    ThreadPair::b().set(false);
    assert_eq!(ThreadPair::a().get(), Some(40));
    drop(g);
    assert_eq!(ThreadPair::a().get(), Some(1), "thread scope: the guard must restore over a cached update");
    assert_eq!(ThreadPair::b().get(), None, "b was unset before the guard");
    assert_eq!(Context::new().run(|| ThreadPair::a().get()), Some(1));
}

#[test]
fn a_guard_dropped_in_another_context_changes_nothing_after_cached_writes() {
    let mut a = Context::new();
    let mut b = Context::new();
    b.run(|| Pair::a().set(500));
    a.run(|| {
        Pair::a().set(1);
        let g = Pair { a: 2, b: true }.enter();
        Pair::a().set(3); // cached
        assert_eq!(Pair::a().get(), Some(3));
        b.run(|| {
            assert_eq!(Pair::a().get(), Some(500));
            Pair::a().set(501); // cached in b
            drop(g); // made in a: changes nothing in b
            assert_eq!(Pair::a().get(), Some(501), "a foreign guard changed b");
            assert_eq!(Pair::b().get(), None);
        });
        assert_eq!(Pair::a().get(), Some(3), "a guard dropped elsewhere must not restore a");
        assert_eq!(Pair::b().get(), Some(true));
    });
    assert_eq!(b.run(|| Pair::a().get()), Some(501));
    assert_eq!(a.run(|| Pair::a().get()), Some(3));
}

#[test]
fn ctx_run_that_panics_keeps_its_cached_scalar_writes_and_restores_the_outer() {
    Pair::a().set(7);
    assert_eq!(Pair::a().get(), Some(7));
    let mut ctx = Context::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        ctx.run(|| {
            Pair::a().set(1);
            Pair::a().update(|a| *a += 1);
            Pair::b().set(true);
            assert_eq!(Pair::a().get(), Some(2));
            panic!("boom");
        })
    }));
    assert!(r.is_err());
    assert_eq!(Pair::a().get(), Some(7), "the outer context is back");
    assert_eq!(Pair::b().get(), None);
    assert_eq!(ctx.run(|| (Pair::a().get(), Pair::b().get())), (Some(2), Some(true)), "writes stay in ctx");
}

#[test]
fn an_in_context_future_that_panics_keeps_its_cached_scalar_writes() {
    let rt = cur_rt();
    rt.block_on(async {
        let mut fut = Box::pin(
            async {
                Pair::a().set(9);
                tokio::task::yield_now().await;
                Pair::a().update(|a| *a += 1);
                Pair::b().set(true);
                panic!("inside in_context");
            }
            .in_new_context(),
        );
        let r = futures::FutureExt::catch_unwind(AssertUnwindSafe(fut.as_mut())).await;
        assert!(r.is_err());
        let mut ctx = fut.context().snapshot();
        assert_eq!(ctx.run(|| (Pair::a().get(), Pair::b().get())), (Some(10), Some(true)));
    });
}

#[test]
fn a_context_carried_to_another_thread_after_cached_writes_has_them() {
    let mut ctx = Context::new();
    for i in 0..50u32 {
        ctx.run(|| {
            Pair::a().update(|a| *a += 1);
            if Pair::a().get().is_none() {
                Pair::a().set(1);
            }
        });
        ctx = std::thread::spawn(move || {
            let got = ctx.run(|| Pair::a().get());
            assert_eq!(got, Some(i + 1), "round {i}");
            ctx.run(|| Pair::b().set(i % 2 == 0));
            ctx
        })
        .join()
        .unwrap();
        assert_eq!(ctx.run(|| Pair::b().get()), Some(i % 2 == 0));
    }
}

#[test]
fn into_context_after_a_cached_write_in_the_last_poll() {
    let rt = cur_rt();
    rt.block_on(async {
        let fut = async {
            Pair::a().set(1);
            tokio::task::yield_now().await;
            Pair::a().update(|a| *a *= 10);
            Pair::b().set(true);
        }
        .in_new_context();
        let mut fut = Box::pin(fut);
        fut.as_mut().await;
        let mut ctx = fut.context().snapshot();
        assert_eq!(ctx.run(|| (Pair::a().get(), Pair::b().get())), (Some(10), Some(true)));
    });
}

#[test]
fn nested_runs_with_warm_copies_never_answer_for_the_wrong_context() {
    let mut outer = Context::new();
    let mut inner = Context::new();
    outer.run(|| {
        Pair::a().set(1);
        assert_eq!(Pair::a().get(), Some(1));
        for i in 0..20u32 {
            inner.run(|| {
                assert_eq!(Pair::a().get(), if i == 0 { None } else { Some(100 + i - 1) });
                Pair::a().set(100 + i);
                assert_eq!(Pair::a().get(), Some(100 + i));
                let mut snap = Context::current();
                snap.run(|| {
                    assert_eq!(Pair::a().get(), Some(100 + i));
                    Pair::a().set(0);
                });
                assert_eq!(Pair::a().get(), Some(100 + i));
            });
            assert_eq!(Pair::a().get(), Some(1 + i));
            Pair::a().update(|a| *a += 1);
        }
    });
}

// ---------------------------------------------------------------------------
// Children: snapshots right after a cached write
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct Kid {
    inherited: i16,
    #[context_local(no_inherit)]
    private: i16,
    #[context_local(default = 'd')]
    letter: char,
}

#[derive(ContextLocal, Default)]
#[context_local(init, inherit = false)]
struct Fresh {
    n: u8,
}

#[test]
fn children_see_the_cached_write_made_right_before_they_were_made() {
    let rt = mt_rt(2);
    rt.block_on(
        async {
            for i in 0..100i16 {
                Kid::inherited().set(i);
                Kid::private().set(-i);
                Kid::letter().set('x');
                Fresh::n().set(i as u8);
                let t = context_local::task::spawn(async {
                    (Kid::inherited().get(), Kid::private().get(), Kid::letter().get(), Fresh::n().get())
                })
                .await
                .unwrap();
                assert_eq!(t, (Some(i), None, Some('x'), Some(0)), "task::spawn");
                Kid::inherited().update(|v| *v += 1000);
                let b = context_local::task::spawn_blocking(|| (Kid::inherited().get(), Kid::private().get()))
                    .await
                    .unwrap();
                assert_eq!(b, (Some(i + 1000), None), "spawn_blocking");
                Kid::inherited().set(i);
                let c = async { (Kid::inherited().get(), Kid::private().get(), Fresh::n().get()) }
                    .in_current_context()
                    .await;
                assert_eq!(c, (Some(i), None, Some(0)), "in_current_context");
                Kid::inherited().set(i + 1);
                let th =
                    context_local::thread::spawn(|| (Kid::inherited().get(), Kid::private().get())).join().unwrap();
                assert_eq!(th, (Some(i + 1), None), "thread::spawn");
                // run_blocking: sees the cached write, its write comes back and is read at once
                Kid::inherited().update(|v| *v += 1);
                let seen = context_local::task::run_blocking(|| {
                    let seen = Kid::inherited().get();
                    Kid::inherited().update(|v| *v = -*v);
                    Kid::letter().set('r');
                    seen
                })
                .await;
                assert_eq!(seen, Some(i + 2));
                assert_eq!(Kid::inherited().get(), Some(-(i + 2)), "run_blocking write-back");
                assert_eq!(Kid::letter().get(), Some('r'));
                assert_eq!(Kid::private().get(), Some(-i));
                assert_eq!(Fresh::n().get(), Some(i as u8));
            }
        }
        .in_new_context(),
    );
}

#[test]
fn default_scalar_reads_store_it_and_take_delete_bring_it_back() {
    Context::new().run(|| {
        assert!(!Kid::letter().is_set());
        assert_eq!(Kid::letter().get(), Some('d'));
        assert!(Kid::letter().is_set(), "a read of a default stores it");
        assert_eq!(Kid::letter().take(), Some('d'));
        assert!(!Kid::letter().is_set());
        assert_eq!(Kid::letter().get(), Some('d'));
        Kid::letter().set('q');
        assert_eq!(Kid::letter().get(), Some('q'));
        assert!(Kid::letter().delete());
        assert!(!Kid::letter().is_set());
        assert_eq!(Kid::letter().with(|c| *c), Some('d'));
        Kid::letter().set('z');
        assert_eq!(Kid::letter().replace('y'), Some('z'));
        assert_eq!(Kid::letter().take(), Some('y'));
        assert_eq!(Kid::letter().update(|c| *c), Some('d'));
        assert!(Kid::letter().delete());
        assert_eq!(Kid::inherited().get_or_insert_with(|| 5), 5);
        assert_eq!(Kid::inherited().get(), Some(5));
        assert!(Kid::inherited().delete());
        assert_eq!(Kid::inherited().get(), None);
        assert_eq!(Kid::inherited().get_or_insert_with(|| 6), 6);
        assert_eq!(Kid::inherited().get_or_insert_with(|| 7), 6);
    });
}

// ---------------------------------------------------------------------------
// Thread scope: init, clear, take with cached updates
// ---------------------------------------------------------------------------

static THREAD_INITS: AtomicUsize = AtomicUsize::new(0);

#[derive(ContextLocal, Clone)]
#[context_local(scope = "thread", init = ThreadInit::fresh)]
struct ThreadInit {
    count: u32,
    flag: bool,
}
impl ThreadInit {
    fn fresh() -> Self {
        THREAD_INITS.fetch_add(1, Ordering::SeqCst);
        ThreadInit { count: 100, flag: true }
    }
}

#[test]
fn thread_scoped_cached_update_as_first_access_runs_init_once_and_clear_runs_it_again() {
    std::thread::spawn(|| {
        let before = THREAD_INITS.load(Ordering::SeqCst);
        assert_eq!(
            ThreadInit::count().update(|c| {
                *c += 1;
                *c
            }),
            Some(101)
        );
        assert_eq!(THREAD_INITS.load(Ordering::SeqCst), before + 1);
        assert_eq!(ThreadInit::flag().get(), Some(true));
        for i in 0..50 {
            Context::new().run(|| ThreadInit::count().update(|c| *c += 1));
            assert_eq!(ThreadInit::count().get(), Some(102 + i));
        }
        assert_eq!(THREAD_INITS.load(Ordering::SeqCst), before + 1, "init ran again");
        let cur = ThreadInit::current().unwrap();
        assert_eq!((cur.count, cur.flag), (151, true));
        ThreadInit::count().update(|c| *c = 7);
        let taken = ThreadInit::take().unwrap();
        assert_eq!((taken.count, taken.flag), (7, true), "take sees the cached update");
        assert!(!ThreadInit::count().is_set());
        ThreadInit::count().set(9);
        ThreadInit::clear();
        assert!(!ThreadInit::count().is_set());
        assert_eq!(ThreadInit::count().get(), Some(100), "init runs again after clear");
        assert_eq!(THREAD_INITS.load(Ordering::SeqCst), before + 2);
        // another thread starts fresh
        let other = std::thread::spawn(|| ThreadInit::count().get()).join().unwrap();
        assert_eq!(other, Some(100));
        assert_eq!(ThreadInit::count().get(), Some(100));
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------
// Thread exit
// ---------------------------------------------------------------------------

struct ReadAtExit {
    tx: mpsc::Sender<(Result<u64, AccessError>, Result<bool, AccessError>)>,
}
impl Drop for ReadAtExit {
    fn drop(&mut self) {
        let task = TaskScalars::u64_().try_get();
        let thread = ThreadScalars::bool_().try_get();
        let _ = self.tx.send((task, thread));
    }
}

#[test]
fn a_thread_local_destructor_after_the_library_state_never_reads_a_stale_scalar() {
    thread_local! {
        static EARLY: RefCell<Option<ReadAtExit>> = const { RefCell::new(None) };
        static LATE: RefCell<Option<ReadAtExit>> = const { RefCell::new(None) };
    }
    for _ in 0..20 {
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            // registered before the library's state: destroyed after it
            EARLY.with(|e| *e.borrow_mut() = Some(ReadAtExit { tx }));
            TaskScalars::u64_().set(1);
            ThreadScalars::bool_().set(false);
            let _ = Context::current(); // the writes reach the storage
            TaskScalars::u64_().set(2); // then cached writes
            ThreadScalars::bool_().set(true);
            assert_eq!(TaskScalars::u64_().get(), Some(2));
            assert_eq!(ThreadScalars::bool_().get(), Some(true));
            // registered after the library's state: destroyed before it
            LATE.with(|e| *e.borrow_mut() = Some(ReadAtExit { tx: tx2 }));
        })
        .join()
        .unwrap();
        let results: Vec<_> = rx.iter().collect();
        assert_eq!(results.len(), 2);
        for (task, thread) in results {
            assert!(matches!(task, Ok(2) | Err(AccessError::Destroyed { .. })), "task-scoped read at exit: {task:?}");
            assert!(
                matches!(thread, Ok(true) | Err(AccessError::Destroyed { .. })),
                "thread-scoped read at exit: {thread:?}"
            );
        }
    }
}

/// Counts drops; the value of a thread-scoped field whose sibling reads it in `Drop`.
#[derive(Clone)]
struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
struct ReadsSibling(Arc<AtomicUsize>);
impl Drop for ReadsSibling {
    fn drop(&mut self) {
        // reads (and so fills the cache of) the sibling while the thread's values go
        let _ = ExitPair::counted().try_with(|_| ());
        let _ = ExitPair::counted().try_get();
        let _ = ExitPair::n().try_get();
        let _ = ExitPair::n().try_set(3);
        let _ = ExitTask::counted().try_with(|_| ());
        let _ = ExitTask::counted().try_get();
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ExitPair {
    reader: ReadsSibling,
    counted: Counted,
    n: u64,
    reader2: ReadsSibling,
}
#[derive(ContextLocal)]
struct ExitTask {
    #[context_local(no_inherit)]
    reader: ReadsSibling,
    counted: Counted,
}

#[test]
fn values_read_by_destructors_at_thread_exit_are_still_dropped_exactly_once() {
    for _ in 0..20 {
        let drops = Arc::new(AtomicUsize::new(0));
        let readers = Arc::new(AtomicUsize::new(0));
        let (d, r) = (drops.clone(), readers.clone());
        std::thread::spawn(move || {
            ExitPair::reader().set(ReadsSibling(r.clone()));
            ExitPair::counted().set(Counted(d.clone()));
            ExitPair::n().set(1);
            ExitPair::reader2().set(ReadsSibling(r.clone()));
            ExitTask::reader().set(ReadsSibling(r.clone()));
            ExitTask::counted().set(Counted(d.clone()));
            assert!(ExitPair::counted().with(|_| ()).is_some());
            assert!(ExitTask::counted().with(|_| ()).is_some());
        })
        .join()
        .unwrap();
        assert_eq!(readers.load(Ordering::SeqCst), 3);
        assert_eq!(drops.load(Ordering::SeqCst), 2, "a value read at thread exit was leaked or dropped twice");
    }
}

// ---------------------------------------------------------------------------
// tokio: tasks without a context never see one through the cache
// ---------------------------------------------------------------------------

#[test]
fn plain_spawned_tasks_in_block_on_inside_ctx_run_are_unscoped_with_warm_copies() {
    let rt = cur_rt();
    let mut ctx = Context::new();
    ctx.run(|| {
        TaskScalars::u64_().set(42);
        TaskScalars::f64_().set(1.5);
        assert_eq!(TaskScalars::u64_().get(), Some(42));
        rt.block_on(async {
            TaskScalars::u64_().set(43); // the block_on future itself: this context
            assert_eq!(TaskScalars::u64_().get(), Some(43));
            assert_eq!(TaskScalars::f64_().get(), Some(1.5));
            let seen = tokio::spawn(async {
                let a = TaskScalars::u64_().try_get();
                let b = TaskScalars::f64_().try_get();
                let c = TaskScalars::u64_().try_set(666);
                let d = TaskScalars::u64_().try_update(|v| *v);
                tokio::task::yield_now().await;
                let e = TaskScalars::u64_().try_get();
                (a, b, c, d, e)
            })
            .await
            .unwrap();
            assert!(matches!(seen.0, Err(AccessError::Unscoped { .. })), "{:?}", seen.0);
            assert!(matches!(seen.1, Err(AccessError::Unscoped { .. })), "{:?}", seen.1);
            assert!(matches!(seen.2, Err(AccessError::Unscoped { .. })), "{:?}", seen.2);
            assert!(matches!(seen.3, Err(AccessError::Unscoped { .. })), "{:?}", seen.3);
            assert!(matches!(seen.4, Err(AccessError::Unscoped { .. })), "{:?}", seen.4);
            assert_eq!(TaskScalars::u64_().get(), Some(43));
            // thread scope is the thread's, whatever task
            ThreadScalars::u16_().set(9);
            let th = tokio::spawn(async { ThreadScalars::u16_().get() }).await.unwrap();
            assert_eq!(th, Some(9));
        });
        assert_eq!(TaskScalars::u64_().get(), Some(43));
    });
    assert_eq!(ctx.run(|| TaskScalars::u64_().get()), Some(43));
}

#[test]
fn a_local_set_in_an_in_context_task_gives_its_plain_children_no_context() {
    // run the LocalSet in an in_context future on the current thread
    let rt = cur_rt();
    let local = tokio::task::LocalSet::new();
    let got = rt.block_on(
        local
            .run_until(async {
                TaskScalars::i32_().set(-5);
                assert_eq!(TaskScalars::i32_().get(), Some(-5));
                let child = tokio::task::spawn_local(async {
                    let a = TaskScalars::i32_().try_get();
                    tokio::task::yield_now().await;
                    let b = TaskScalars::i32_().try_get();
                    (a, b)
                });
                TaskScalars::i32_().update(|v| *v -= 1);
                let (a, b) = child.await.unwrap();
                assert!(matches!(a, Err(AccessError::Unscoped { .. })), "{a:?}");
                assert!(matches!(b, Err(AccessError::Unscoped { .. })), "{b:?}");
                TaskScalars::i32_().get()
            })
            .in_new_context(),
    );
    assert_eq!(got, Some(-6));
}

#[test]
fn run_blocking_from_a_task_without_context_is_unscoped_even_after_warm_reads() {
    let rt = cur_rt();
    rt.block_on(async {
        TaskScalars::u8_().set(3); // block_on's future: the thread's root context
        assert_eq!(TaskScalars::u8_().get(), Some(3));
        let r = tokio::spawn(async {
            let r = catch_unwind(AssertUnwindSafe(|| {
                drop(context_local::task::run_blocking(|| TaskScalars::u8_().get()));
            }));
            r.is_err()
        })
        .await
        .unwrap();
        assert!(r, "run_blocking from a task with no context must panic (Unscoped)");
    });
}

#[test]
fn interleaved_tasks_on_a_multi_thread_runtime_never_see_each_others_scalars() {
    let rt = mt_rt(4);
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..64u64 {
            handles.push(tokio::spawn(
                async move {
                    TaskScalars::u64_().set(t);
                    TaskScalars::i8_().set((t % 100) as i8 - 50);
                    TaskScalars::char_().set(char::from_u32(0x4e00 + t as u32).unwrap());
                    ThreadScalars::u32_().set(0); // noise on the worker's thread scope
                    for i in 0..200u64 {
                        let expected = if i == 0 { t } else { t * 1000 + i - 1 };
                        assert_eq!(TaskScalars::u64_().get(), Some(expected), "task {t} step {i}");
                        tokio::task::yield_now().await;
                        assert_eq!(TaskScalars::u64_().get(), Some(expected), "task {t} step {i} after yield");
                        TaskScalars::u64_().set(t * 1000 + i);
                        TaskScalars::i8_().update(|v| *v = v.wrapping_add(1));
                        ThreadScalars::u32_().update(|v| *v += 1);
                        if i % 7 == 0 {
                            let child = context_local::task::spawn(async move { TaskScalars::u64_().get() });
                            assert_eq!(child.await.unwrap(), Some(t * 1000 + i));
                        }
                    }
                    assert_eq!(TaskScalars::i8_().get(), Some(((t % 100) as i8 - 50).wrapping_add(200u8 as i8)));
                    assert_eq!(TaskScalars::char_().get(), char::from_u32(0x4e00 + t as u32));
                }
                .in_new_context(),
            ));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// Many fields
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct Wide {
    f00: u8,
    f01: i8,
    f02: u16,
    f03: i16,
    f04: u32,
    f05: i32,
    f06: u64,
    f07: i64,
    f08: usize,
    f09: isize,
    f10: bool,
    f11: char,
    f12: f32,
    f13: f64,
    f14: u8,
    f15: i8,
    f16: u16,
    f17: i16,
    f18: u32,
    f19: i32,
    f20: u64,
    f21: i64,
    f22: usize,
    f23: isize,
    f24: bool,
    f25: char,
    f26: f32,
    f27: f64,
    f28: u64,
    f29: u64,
    f30: u64,
    f31: u64,
    f32_: u64,
    f33: u64,
    f34: u64,
    f35: u64,
    f36: u64,
    f37: u64,
    f38: u64,
    f39: u64,
    f40: u64,
    f41: u64,
    f42: u64,
    f43: u64,
    #[context_local(no_inherit)]
    f44: u64,
    #[context_local(default = 4545)]
    f45: u64,
}

fn wide_u64s() -> Vec<Field<u64>> {
    vec![
        Wide::f06(),
        Wide::f20(),
        Wide::f28(),
        Wide::f29(),
        Wide::f30(),
        Wide::f31(),
        Wide::f32_(),
        Wide::f33(),
        Wide::f34(),
        Wide::f35(),
        Wide::f36(),
        Wide::f37(),
        Wide::f38(),
        Wide::f39(),
        Wide::f40(),
        Wide::f41(),
        Wide::f42(),
        Wide::f43(),
        Wide::f44(),
        Wide::f45(),
    ]
}

#[test]
fn forty_six_fields_set_updated_and_snapshotted_keep_their_own_values() {
    let fields = wide_u64s();
    let mut ctx = Context::new();
    ctx.run(|| {
        for (k, f) in fields.iter().enumerate() {
            f.set(k as u64);
        }
        Wide::f00().set(200);
        Wide::f01().set(-100);
        Wide::f12().set(-0.0);
        Wide::f26().set(f32::NAN);
        Wide::f11().set('∀');
        Wide::f25().set('∃');
        Wide::f10().set(true);
        Wide::f24().set(false);
        for round in 0..5u64 {
            for (k, f) in fields.iter().enumerate() {
                assert_eq!(f.get(), Some(k as u64 + round * 3), "{} round {round}", f.name());
            }
            let mut snap = Context::current();
            snap.run(|| {
                for (k, f) in fields.iter().enumerate() {
                    let want = if f.name().ends_with("f44") { None } else { Some(k as u64 + round * 3) };
                    assert_eq!(f.get(), want, "{} in snapshot", f.name());
                    f.set(9999);
                }
            });
            for f in &fields {
                f.update(|v| *v += 1);
            }
            let inner = Wide::f30().update(|v| {
                *v += 1;
                let all: Vec<_> = fields.iter().filter(|f| f.name() != Wide::f30().name()).map(|f| f.get()).collect();
                all
            });
            assert!(inner.unwrap().iter().all(|v| v.is_some()));
            for f in &fields {
                if f.name() != Wide::f30().name() {
                    f.update(|v| *v += 1);
                }
            }
            // f30 got +1 twice already; all others +2 this round; line them up to +3
            for f in &fields {
                f.update(|v| *v += 1);
            }
        }
        assert_eq!(Wide::f00().get(), Some(200));
        assert_eq!(Wide::f01().get(), Some(-100));
        assert_eq!(Wide::f12().get().map(f32::to_bits), Some((-0.0f32).to_bits()));
        assert!(Wide::f26().get().unwrap().is_nan());
        assert_eq!(Wide::f11().get(), Some('∀'));
        assert_eq!(Wide::f25().get(), Some('∃'));
        assert_eq!(Wide::f10().get(), Some(true));
        assert_eq!(Wide::f24().get(), Some(false));
        assert_eq!(Wide::f02().get(), None);
    });
}

// ---------------------------------------------------------------------------
// A small model: random scalar operations across contexts and snapshots
// ---------------------------------------------------------------------------

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(ContextLocal)]
struct ModelS {
    a: i32,
    #[context_local(default = -1)]
    b: i32,
    #[context_local(no_inherit)]
    c: i32,
}
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ModelT {
    t: i32,
}

#[derive(Clone, Default, Debug)]
struct ModelCtx {
    a: Option<i32>,
    b: Option<i32>,
    c: Option<i32>,
}

#[test]
fn model_random_scalar_operations_agree_with_a_plain_model() {
    for seed in 1..=40u64 {
        std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut ctxs: Vec<(Context, ModelCtx)> = Vec::new();
            for _ in 0..3 {
                ctxs.push((Context::new(), ModelCtx::default()));
            }
            let mut thread_val: Option<i32> = None;
            for step in 0..400 {
                let which = rng.below(ctxs.len() as u64) as usize;
                let ops: Vec<u64> = (0..rng.below(6) + 1).map(|_| rng.next()).collect();
                let (ctx, model) = &mut ctxs[which];
                let mut snapshot: Option<(Context, ModelCtx)> = None;
                ctx.run(|| {
                    for op in &ops {
                        let field = (op >> 8) % 4;
                        let val = (op >> 16) as i32;
                        let (f, m): (Field<i32>, &mut Option<i32>) = match field {
                            0 => (ModelS::a(), &mut model.a),
                            1 => (ModelS::b(), &mut model.b),
                            2 => (ModelS::c(), &mut model.c),
                            _ => (ModelT::t(), &mut thread_val),
                        };
                        let default = if field == 1 { Some(-1) } else { None };
                        match op % 9 {
                            0 => {
                                if m.is_none() {
                                    *m = default;
                                }
                                assert_eq!(f.get(), *m, "seed {seed} step {step} get {}", f.name());
                            }
                            1 => {
                                f.set(val);
                                *m = Some(val);
                            }
                            2 => {
                                if m.is_none() {
                                    *m = default;
                                }
                                let r = f.update(|v| {
                                    *v = v.wrapping_add(val);
                                    *v
                                });
                                if let Some(x) = m.as_mut() {
                                    *x = x.wrapping_add(val);
                                }
                                assert_eq!(r, *m, "seed {seed} step {step} update");
                            }
                            3 => assert_eq!(f.take(), m.take(), "seed {seed} step {step} take"),
                            4 => assert_eq!(f.delete(), m.take().is_some(), "seed {seed} step {step} delete"),
                            5 => assert_eq!(f.replace(val), m.replace(val), "seed {seed} step {step} replace"),
                            6 => assert_eq!(f.is_set(), m.is_some(), "seed {seed} step {step} is_set"),
                            7 => {
                                if m.is_none() {
                                    *m = default;
                                }
                                assert_eq!(f.with(|v| *v), *m, "seed {seed} step {step} with");
                            }
                            _ => {
                                let mut s = model.clone();
                                s.c = None;
                                snapshot = Some((Context::current(), s));
                            }
                        }
                    }
                });
                if let Some(s) = snapshot {
                    if ctxs.len() < 8 {
                        ctxs.push(s);
                    } else {
                        let k = rng.below(ctxs.len() as u64) as usize;
                        ctxs[k] = s;
                    }
                }
                // check every context on the full path now and then
                if step % 50 == 0 {
                    for (ctx, m) in ctxs.iter_mut() {
                        let got = ctx.run(|| (ModelS::a().is_set(), ModelS::b().is_set(), ModelS::c().is_set()));
                        assert_eq!(got, (m.a.is_some(), m.b.is_some(), m.c.is_some()), "seed {seed} step {step}");
                    }
                }
            }
        })
        .join()
        .unwrap();
    }
}

// ---------------------------------------------------------------------------
// A small service: a request context of scalars on a multi-thread runtime
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
pub struct Req {
    pub id: u64,
    pub user: u32,
    pub admin: bool,
    pub grade: char,
    pub score: f64,
    #[context_local(default = 0)]
    pub hops: u16,
    #[context_local(no_inherit)]
    pub local_tick: i64,
}

fn check_req(id: u64) {
    assert_eq!(Req::id().get(), Some(id), "request {id} sees another id");
    assert_eq!(Req::user().get(), Some(id as u32 * 3), "request {id}");
    assert_eq!(Req::admin().get(), Some(id & 1 == 0), "request {id}");
    assert_eq!(Req::grade().get(), char::from_u32(0x1F600 + (id % 50) as u32));
    assert_eq!(Req::score().get().map(f64::to_bits), Some((id as f64 * 0.5).to_bits()));
}

async fn deep_handler(id: u64) -> u16 {
    check_req(id);
    Req::hops().update(|h| *h += 1);
    Req::local_tick().set(id as i64);
    tokio::task::yield_now().await;
    check_req(id);
    assert_eq!(Req::local_tick().get(), Some(id as i64));
    let child = context_local::task::spawn(async move {
        check_req(id);
        assert_eq!(Req::local_tick().get(), None, "no_inherit");
        Req::hops().update(|h| *h += 100); // stays in the child
        tokio::task::yield_now().await;
        check_req(id);
        Req::hops().get()
    });
    let blocking = context_local::task::run_blocking(move || {
        check_req(id);
        Req::hops().update(|h| *h += 1);
        Req::hops().get()
    });
    let (c, b) = tokio::join!(child, blocking);
    assert_eq!(c.unwrap(), Some(101));
    assert_eq!(b, Some(2));
    check_req(id);
    Req::hops().get().unwrap()
}

#[test]
fn a_service_of_scalar_request_contexts_never_mixes_requests() {
    let rt = mt_rt(4);
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, tokio::sync::oneshot::Sender<(u64, u16)>)>(64);
        // the server: one task per request, each in a fresh context
        let server = tokio::spawn(async move {
            let mut jobs = tokio::task::JoinSet::new();
            while let Some((id, reply)) = rx.recv().await {
                jobs.spawn(
                    async move {
                        Req::id().set(id);
                        Req::user().set(id as u32 * 3);
                        Req::admin().set(id & 1 == 0);
                        Req::grade().set(char::from_u32(0x1F600 + (id % 50) as u32).unwrap());
                        Req::score().set(id as f64 * 0.5);
                        let hops = deep_handler(id).await;
                        let _ = reply.send((Req::id().get().unwrap(), hops));
                    }
                    .in_new_context(),
                );
            }
            while let Some(r) = jobs.join_next().await {
                r.unwrap();
            }
        });
        let mut clients = Vec::new();
        for id in 1..=400u64 {
            let tx = tx.clone();
            clients.push(tokio::spawn(async move {
                let (otx, orx) = tokio::sync::oneshot::channel();
                tx.send((id, otx)).await.unwrap();
                let (got, hops) = orx.await.unwrap();
                assert_eq!(got, id);
                assert_eq!(hops, 2);
                // the client task has no context
                assert!(matches!(Req::id().try_get(), Err(AccessError::Unscoped { .. })));
            }));
        }
        drop(tx);
        for c in clients {
            c.await.unwrap();
        }
        server.await.unwrap();
    });
}

// ---------------------------------------------------------------------------
// Writes that bypass the Reentrant checks, during a cached update or with
// ---------------------------------------------------------------------------

#[test]
fn a_guard_restoring_during_a_cached_scalar_update_wins_over_the_closure() {
    // task scope
    let mut ctx = Context::new();
    ctx.run(|| {
        Pair::a().set(1);
        assert_eq!(Pair::a().get(), Some(1));
        let g = Pair { a: 2, b: true }.enter();
        assert_eq!(Pair::a().get(), Some(2));
        Pair::a().update(|a| *a += 1); // cached update, warm entry
        assert_eq!(Pair::a().get(), Some(3));
        Pair::a().update(move |a| {
            *a = 99;
            drop(g); // restores a = 1 while the closure holds the field
        });
        assert_eq!(Pair::a().get(), Some(1), "the guard's restore is the later write and must win");
        assert_eq!(Pair::a().with(|a| *a), Some(1));
        assert_eq!(Context::current().run(|| Pair::a().get()), Some(1));
        assert_eq!(Pair::b().get(), None);
    });
    assert_eq!(ctx.run(|| Pair::a().get()), Some(1));
    // thread scope
    std::thread::spawn(|| {
        ThreadPair::a().set(1);
        assert_eq!(ThreadPair::a().get(), Some(1));
        let g = ThreadPair { a: 2, b: true }.enter();
        ThreadPair::a().update(|a| *a += 1);
        assert_eq!(ThreadPair::a().get(), Some(3));
        ThreadPair::a().update(move |a| {
            *a = 99;
            drop(g);
        });
        assert_eq!(ThreadPair::a().get(), Some(1), "thread scope: the guard's restore must win");
        assert_eq!(ThreadPair::a().with(|a| *a), Some(1));
        assert_eq!(ThreadPair::b().get(), None);
    })
    .join()
    .unwrap();
}

#[test]
fn a_read_inside_with_after_a_guard_restored_the_field_sees_the_restored_value() {
    for scope in 0..2 {
        let (a, b): (Field<u32>, Field<bool>) =
            if scope == 0 { (Pair::a(), Pair::b()) } else { (ThreadPair::a(), ThreadPair::b()) };
        let mut ctx = Context::new();
        ctx.run(|| {
            a.set(1);
            b.delete();
            let g =
                if scope == 0 { Ok(Pair { a: 2, b: true }.enter()) } else { Err(ThreadPair { a: 2, b: true }.enter()) };
            assert_eq!(a.get(), Some(2));
            assert_eq!(a.get(), Some(2)); // warm copy
            let inside = a.with(move |seen| {
                let before = *seen;
                drop(g);
                (before, a.get(), b.get())
            });
            assert_eq!(inside, Some((2, Some(1), None)), "scope {scope}: a read after the restore inside with");
            assert_eq!(a.get(), Some(1));
        });
    }
}

#[test]
fn run_blocking_write_back_inside_a_cached_update_wins_over_the_closure() {
    let rt = mt_rt(2);
    rt.block_on(
        async {
            Pair::a().set(1);
            assert_eq!(Pair::a().get(), Some(1));
            let r = Pair::a().update(|a| {
                *a = 50;
                let mut fut = Box::pin(context_local::task::run_blocking(|| {
                    let seen = Pair::a().get();
                    Pair::a().set(7);
                    seen
                }));
                // the blocking job runs on its own thread; poll until done
                loop {
                    if let Some(seen) = futures::FutureExt::now_or_never(fut.as_mut()) {
                        break seen;
                    }
                    std::thread::yield_now();
                }
            });
            let seen = r.unwrap();
            assert_ne!(seen, Some(50), "the half-updated value leaked into run_blocking's copy");
            assert_eq!(Pair::a().get(), Some(7), "the write-back is the later write and must win");
            assert_eq!(Context::current().run(|| Pair::a().get()), Some(7));
        }
        .in_new_context(),
    );
}

#[test]
fn a_thread_scoped_field_in_update_stays_reentrant_in_any_context() {
    std::thread::spawn(|| {
        ThreadScalars::u64_().set(1);
        assert_eq!(ThreadScalars::u64_().get(), Some(1));
        let inside = ThreadScalars::u64_().update(|v| {
            *v = 2;
            let mut other = Context::new();
            let in_new = other.run(|| {
                (
                    ThreadScalars::u64_().try_get(),
                    ThreadScalars::u64_().try_set(3),
                    ThreadScalars::u64_().try_update(|x| *x),
                )
            });
            let mut snap = Context::current();
            let in_snap = snap.run(|| ThreadScalars::u64_().try_get());
            (in_new, in_snap)
        });
        let ((g, s, u), sg) = inside.unwrap();
        assert!(is_reentrant(&g), "thread-scoped get in another context during its update: {g:?}");
        assert!(is_reentrant(&s), "thread-scoped set in another context during its update: {s:?}");
        assert!(is_reentrant(&u), "{u:?}");
        assert!(is_reentrant(&sg), "{sg:?}");
        assert_eq!(ThreadScalars::u64_().get(), Some(2));
        let inside = ThreadScalars::u64_().with(|_| Context::new().run(|| ThreadScalars::u64_().try_set(9)));
        let s = inside.unwrap();
        assert!(is_reentrant(&s), "thread-scoped set in another context inside its with: {s:?}");
        assert_eq!(ThreadScalars::u64_().get(), Some(2));
        // a task-scoped field in update: another context is another value
        TaskScalars::u64_().set(5);
        let inside = TaskScalars::u64_().update(|v| {
            *v = 6;
            Context::new().run(|| {
                let g = TaskScalars::u64_().try_get();
                TaskScalars::u64_().set(8);
                (g, TaskScalars::u64_().get())
            })
        });
        let (g, after) = inside.unwrap();
        assert!(matches!(g, Err(AccessError::Unset { .. })), "another context has no value: {g:?}");
        assert_eq!(after, Some(8));
        assert_eq!(TaskScalars::u64_().get(), Some(6));
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------
// Thread exit with pending cached writes
// ---------------------------------------------------------------------------

type ExitReport = mpsc::Sender<(&'static str, Result<u64, AccessError>, Result<i8, AccessError>)>;

/// Reads scalar siblings when the thread's values are dropped.
struct ReportsScalars(&'static str, ExitReport);
impl Drop for ReportsScalars {
    fn drop(&mut self) {
        let (n, m) = if self.0.starts_with("thread") {
            (ExitScalarsThread::n().try_get(), ExitScalarsThread::m().try_get())
        } else {
            (ExitScalarsTask::n().try_get(), ExitScalarsTask::m().try_get())
        };
        let _ = self.1.send((self.0, n, m));
    }
}
#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct ExitScalarsThread {
    first: ReportsScalars,
    n: u64,
    m: i8,
    last: ReportsScalars,
}
#[derive(ContextLocal)]
struct ExitScalarsTask {
    #[context_local(no_inherit)]
    first: ReportsScalars,
    n: u64,
    m: i8,
    #[context_local(no_inherit)]
    last: ReportsScalars,
}

#[test]
fn destructors_at_thread_exit_never_see_an_older_scalar_than_the_last_write() {
    for _ in 0..10 {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            ExitScalarsThread::first().set(ReportsScalars("thread first", tx.clone()));
            ExitScalarsTask::first().set(ReportsScalars("task first", tx.clone()));
            ExitScalarsThread::n().set(1);
            ExitScalarsThread::m().set(-1);
            ExitScalarsTask::n().set(1);
            ExitScalarsTask::m().set(-1);
            // the full path: every write reaches the storage
            let _ = Context::current();
            assert!(ExitScalarsThread::first().with(|_| ()).is_some());
            ExitScalarsThread::last().set(ReportsScalars("thread last", tx.clone()));
            ExitScalarsTask::last().set(ReportsScalars("task last", tx));
            // then cached writes, left pending when the thread ends
            assert_eq!(ExitScalarsThread::n().get(), Some(1));
            ExitScalarsThread::n().update(|n| *n = 2);
            ExitScalarsThread::m().set(-2);
            assert_eq!(ExitScalarsTask::n().get(), Some(1));
            ExitScalarsTask::n().update(|n| *n = 2);
            ExitScalarsTask::m().set(-2);
            assert_eq!(ExitScalarsThread::n().get(), Some(2));
            assert_eq!(ExitScalarsTask::m().get(), Some(-2));
        })
        .join()
        .unwrap();
        let reports: Vec<_> = rx.iter().collect();
        assert_eq!(reports.len(), 4, "every value dropped once: {reports:?}");
        for (who, n, m) in reports {
            assert!(
                matches!(n, Ok(2) | Err(AccessError::Destroyed { .. }) | Err(AccessError::Unset { .. })),
                "{who}: n at exit was {n:?}, an older value than the last write"
            );
            assert!(
                matches!(m, Ok(-2) | Err(AccessError::Destroyed { .. }) | Err(AccessError::Unset { .. })),
                "{who}: m at exit was {m:?}"
            );
        }
    }
}

#[test]
fn writes_from_a_destructor_during_teardown_are_not_silently_lost() {
    type WriteThenRead = (Result<(), AccessError>, Result<u16, AccessError>);
    type Report = (WriteThenRead, WriteThenRead);
    struct WritesAtExit(mpsc::Sender<Report>);
    impl Drop for WritesAtExit {
        fn drop(&mut self) {
            let s = ThreadScalars::u16_().try_set(77);
            let g = ThreadScalars::u16_().try_get();
            let s2 = TaskScalars::u16_().try_set(78);
            let g2 = TaskScalars::u16_().try_get();
            let _ = self.0.send(((s, g), (s2, g2)));
        }
    }
    thread_local! {
        static EARLY: RefCell<Option<WritesAtExit>> = const { RefCell::new(None) };
        static LATE: RefCell<Option<WritesAtExit>> = const { RefCell::new(None) };
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        EARLY.with(|e| *e.borrow_mut() = Some(WritesAtExit(tx.clone())));
        ThreadScalars::u16_().set(1);
        TaskScalars::u16_().set(1);
        assert_eq!(ThreadScalars::u16_().get(), Some(1));
        assert_eq!(TaskScalars::u16_().get(), Some(1));
        LATE.with(|e| *e.borrow_mut() = Some(WritesAtExit(tx)));
    })
    .join()
    .unwrap();
    let reports: Vec<_> = rx.iter().collect();
    assert_eq!(reports.len(), 2);
    for ((s, g), (s2, g2)) in reports {
        if s.is_ok() {
            assert_eq!(g, Ok(77), "a set that said Ok must be readable right after: {s:?} {g:?}");
        } else {
            assert!(matches!(s, Err(AccessError::Destroyed { .. })), "{s:?}");
        }
        if s2.is_ok() {
            assert_eq!(g2, Ok(78), "a set that said Ok must be readable right after: {s2:?} {g2:?}");
        } else {
            assert!(matches!(s2, Err(AccessError::Destroyed { .. })), "{s2:?}");
        }
    }
}

#[test]
fn a_hand_made_cache_holding_a_value_at_thread_exit_does_not_leak_it() {
    thread_local! {
        static MINE: context_local::__private::Cache<Counted> = const { context_local::__private::Cache::new() };
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    std::thread::spawn(move || {
        let f = Field::__cached(ExitTask::counted().__desc(), &MINE);
        f.set(Counted(d.clone()));
        assert!(f.with(|_| ()).is_some());
        assert!(f.with(|_| ()).is_some());
        let g = Field::__cached(ExitPair::counted().__desc(), &MINE);
        g.set(Counted(d));
        assert!(g.with(|_| ()).is_some());
        assert!(g.get().is_some());
    })
    .join()
    .unwrap();
    // two stored values and one clone from get
    assert_eq!(drops.load(Ordering::SeqCst), 3, "a value held by a hand-made cache was leaked");
}

// ---------------------------------------------------------------------------
// init and clear after warm copies
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
#[context_local(init = Inited::fresh)]
struct Inited {
    a: u64,
    b: bool,
}
thread_local! {
    static SEEN_IN_INIT: RefCell<Vec<Result<u64, AccessError>>> = const { RefCell::new(Vec::new()) };
}
impl Inited {
    fn fresh() -> Self {
        let seen = Inited::a().try_get();
        SEEN_IN_INIT.with(|s| s.borrow_mut().push(seen));
        Inited { a: 10, b: false }
    }
}

#[test]
fn init_after_clear_never_reads_the_warm_copy_of_the_cleared_value() {
    std::thread::spawn(|| {
        Context::new().run(|| {
            assert_eq!(Inited::a().get(), Some(10));
            Inited::a().set(5);
            Inited::a().update(|a| *a += 1);
            assert_eq!(Inited::a().get(), Some(6));
            assert_eq!(Inited::a().get(), Some(6));
            Inited::clear();
            assert!(!Inited::a().is_set());
            assert_eq!(Inited::a().get(), Some(10), "init runs again after clear");
            Inited::a().set(7);
            assert_eq!(Inited::a().get(), Some(7));
            let taken = Inited::take().map(|s| (s.a, s.b));
            assert_eq!(taken, Some((7, false)));
            assert_eq!(Inited::a().get(), None, "take leaves the fields unset, init already ran");
        });
        let seen = SEEN_IN_INIT.with(|s| s.borrow().clone());
        assert_eq!(seen.len(), 2);
        for r in seen {
            assert!(r.is_err(), "init read a value of its own struct: {r:?}");
        }
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------
// Guards across awaits and tasks, nested InContext, S::scope
// ---------------------------------------------------------------------------

#[test]
fn a_guard_held_across_an_await_restores_over_a_cached_write_and_a_foreign_task_drop_changes_nothing() {
    use std::rc::Rc;
    let rt = cur_rt();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        // same task, across an await
        let own = context_local::task::spawn_local(
            async {
                Pair::a().set(1);
                let g = Pair { a: 2, b: true }.enter();
                tokio::task::yield_now().await;
                assert_eq!(Pair::a().get(), Some(2));
                Pair::a().set(3);
                Pair::a().update(|a| *a += 1);
                tokio::task::yield_now().await;
                assert_eq!(Pair::a().get(), Some(4));
                drop(g);
                (Pair::a().get(), Pair::b().get())
            }
            .in_new_context(),
        );
        assert_eq!(own.await.unwrap(), (Some(1), None));

        // a guard handed to another task on the same thread and dropped there
        let slot: Rc<RefCell<Option<context_local::Entered<Pair>>>> = Rc::new(RefCell::new(None));
        let (made_tx, made_rx) = tokio::sync::oneshot::channel::<()>();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let s1 = slot.clone();
        let maker = tokio::task::spawn_local(
            async move {
                Pair::a().set(10);
                *s1.borrow_mut() = Some(Pair { a: 20, b: true }.enter());
                Pair::a().set(21); // cached write after the guard
                made_tx.send(()).unwrap();
                dropped_rx.await.unwrap();
                (Pair::a().get(), Pair::b().get())
            }
            .in_new_context(),
        );
        let s2 = slot.clone();
        let dropper = tokio::task::spawn_local(
            async move {
                Pair::a().set(100);
                assert_eq!(Pair::a().get(), Some(100));
                made_rx.await.unwrap();
                Pair::a().set(101); // cached write in this context
                let g = s2.borrow_mut().take().unwrap();
                drop(g); // made in the maker's context: changes nothing here
                let here = (Pair::a().get(), Pair::b().get());
                dropped_tx.send(()).unwrap();
                here
            }
            .in_new_context(),
        );
        assert_eq!(dropper.await.unwrap(), (Some(101), None), "a foreign guard changed this task's context");
        assert_eq!(maker.await.unwrap(), (Some(21), Some(true)), "a guard dropped elsewhere must not restore");
    });
}

#[test]
fn nested_in_context_futures_keep_their_cached_writes_apart() {
    let rt = cur_rt();
    rt.block_on(
        async {
            Pair::a().set(1);
            let inner = async {
                assert_eq!(Pair::a().get(), None);
                Pair::a().set(2);
                tokio::task::yield_now().await;
                assert_eq!(Pair::a().get(), Some(2));
                Pair::a().update(|a| *a += 1);
                tokio::task::yield_now().await;
                Pair::a().get()
            }
            .in_new_context();
            let mut inner = Box::pin(inner);
            let mut out = None;
            for _ in 0..10 {
                // poll the inner future by hand, then read the outer's value in the same poll
                if let Some(v) = futures::FutureExt::now_or_never(inner.as_mut()) {
                    out = Some(v);
                    break;
                }
                assert_eq!(Pair::a().get(), Some(1), "the inner context's cached write leaked out");
                Pair::a().update(|a| *a += 0);
                tokio::task::yield_now().await;
            }
            assert_eq!(out, Some(Some(3)));
            assert_eq!(Pair::a().get(), Some(1));
            let mut ictx = inner.context().snapshot();
            assert_eq!(ictx.run(|| Pair::a().get()), Some(3));
        }
        .in_new_context(),
    );
}

#[test]
fn struct_scope_after_cached_writes_sets_only_the_child() {
    let rt = mt_rt(2);
    rt.block_on(
        async {
            Pair::a().set(1);
            Pair::b().set(false);
            assert_eq!(Pair::a().get(), Some(1));
            let child = Pair { a: 5, b: true }.scope(async {
                let before = (Pair::a().get(), Pair::b().get());
                Pair::a().update(|a| *a += 1);
                tokio::task::yield_now().await;
                (before, Pair::a().get())
            });
            Pair::a().set(2); // after the scope future was made, before it runs
            let (before, after) = child.await;
            assert_eq!(before, (Some(5), Some(true)));
            assert_eq!(after, Some(6));
            assert_eq!((Pair::a().get(), Pair::b().get()), (Some(2), Some(false)));
        }
        .in_new_context(),
    );
}

#[test]
fn a_panic_inside_with_of_a_scalar_leaves_it_usable_everywhere() {
    for scope in 0..2 {
        let f: Field<char> = if scope == 0 { TaskScalars::char_() } else { ThreadScalars::char_() };
        f.set('a');
        assert_eq!(f.get(), Some('a'));
        let r = catch_unwind(AssertUnwindSafe(|| {
            f.with(|c| {
                assert_eq!(*c, 'a');
                panic!("inside with");
            })
        }));
        assert!(r.is_err());
        assert_eq!(f.try_set('b'), Ok(()), "scope {scope}: the field stayed busy after a panic in with");
        assert_eq!(f.get(), Some('b'));
        assert_eq!(f.update(|c| *c), Some('b'));
        let r = catch_unwind(AssertUnwindSafe(|| {
            f.update(|c| {
                *c = 'c';
                panic!("inside update");
            })
        }));
        assert!(r.is_err());
        let v = f.get();
        assert!(v == Some('b') || v == Some('c'), "{v:?}");
        assert_eq!(Context::current().run(|| f.get()), v, "scope {scope}: paths disagree after a panic in update");
        assert_eq!(f.try_update(|c| *c), Ok(v.unwrap()));
    }
}

// ---------------------------------------------------------------------------
// Hand-made caches, thread scope: pending writes never lost, never stale
// ---------------------------------------------------------------------------

#[test]
fn hand_made_caches_on_thread_scoped_scalars_never_lose_or_stale_a_pending_write() {
    thread_local! {
        static B_CACHE: context_local::__private::Cache<i32> = const { context_local::__private::Cache::new() };
    }
    std::thread::spawn(|| {
        #[derive(ContextLocal)]
        #[context_local(scope = "thread")]
        struct TX {
            x: i32,
        }
        #[derive(ContextLocal)]
        #[context_local(scope = "thread")]
        struct TY {
            y: i32,
        }
        let a = TX::x();
        let b = Field::__cached(TX::x().__desc(), &B_CACHE); // same field, second cache
        let y_cache = TY::y().__cache().unwrap();
        let forged = Field::__cached(TX::x().__desc(), y_cache); // x through y's cache
        a.set(1);
        for i in 0..30i32 {
            match i % 5 {
                0 => a.set(i),
                1 => assert!(b.update(|v| *v = i).is_some()),
                2 => forged.set(i),
                3 => assert!(a.update(|v| *v = i).is_some()),
                _ => assert!(forged.update(|v| *v = i).is_some()),
            }
            TY::y().set(-i); // y's own pending write into the cache x also uses
            assert_eq!(a.get(), Some(i), "step {i} via a");
            assert_eq!(b.get(), Some(i), "step {i} via b");
            assert_eq!(forged.get(), Some(i), "step {i} via forged");
            assert_eq!(TY::y().get(), Some(-i), "step {i}: y lost its write to x through its cache");
            TY::y().update(|v| *v -= 1000);
            assert_eq!(forged.with(|v| *v), Some(i));
            assert_eq!(TY::y().get(), Some(-i - 1000), "step {i}: y's update");
            assert_eq!(Context::new().run(|| (a.get(), TY::y().get())), (Some(i), Some(-i - 1000)));
        }
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------
// Log fields and baggage read pending scalar writes
// ---------------------------------------------------------------------------

#[derive(ContextLocal)]
struct Logged {
    #[context_local(log)]
    req: u64,
    #[context_local(log = "debug")]
    ratio: f32,
    #[context_local(baggage = "user.id")]
    user: u64,
    #[context_local(baggage)]
    admin: bool,
}

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct LoggedThread {
    #[context_local(log)]
    worker: i16,
}

fn field_value(key: &str) -> Option<String> {
    context_local::log_fields().into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

#[test]
fn log_fields_and_baggage_see_pending_cached_scalar_writes() {
    std::thread::spawn(|| {
        Context::new().run(|| {
            Logged::req().set(1);
            assert_eq!(field_value("req").as_deref(), Some("1"));
            Logged::req().set(2); // cached
            assert_eq!(field_value("req").as_deref(), Some("2"), "a log line after a cached set");
            Logged::req().update(|r| *r += 1);
            assert_eq!(field_value("req").as_deref(), Some("3"), "a log line after a cached update");
            Logged::ratio().set(-0.0);
            assert_eq!(field_value("ratio").as_deref(), Some("-0.0"));
            LoggedThread::worker().set(-4);
            LoggedThread::worker().update(|w| *w -= 1);
            assert_eq!(field_value("worker").as_deref(), Some("-5"));
            Context::new().run(|| {
                assert_eq!(field_value("req"), None);
                assert_eq!(field_value("worker").as_deref(), Some("-5"), "thread scope ignores contexts");
            });
            Logged::user().set(41);
            Logged::user().update(|u| *u += 1);
            Logged::admin().set(true);
            let header = context_local::baggage::to_header().unwrap();
            assert!(header.contains("user.id=42"), "{header}");
            assert!(header.contains("admin=true"), "{header}");
            // a request context built from the header: reads and cached updates start from it
            let mut received = context_local::baggage::extract([header.as_str()]);
            received.run(|| {
                assert!(Logged::user().is_set());
                assert_eq!(
                    Logged::user().update(|u| {
                        *u += 1;
                        *u
                    }),
                    Some(43)
                );
                assert_eq!(Logged::user().get(), Some(43));
                assert_eq!(Logged::admin().get(), Some(true));
                Logged::admin().set(false);
                let out = context_local::baggage::to_header().unwrap();
                assert!(out.contains("user.id=43") && out.contains("admin=false"), "{out}");
                assert_eq!(Logged::req().get(), None);
            });
        });
    })
    .join()
    .unwrap();
}

#[test]
fn rayon_helpers_see_a_cached_scalar_write_and_jobs_do_not_leak_theirs() {
    use context_local::rayon::ParallelIteratorExt;
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    Context::new().run(|| {
        for i in 0..20u32 {
            Pair::a().set(i);
            let (x, y) = context_local::rayon::join(
                || {
                    let seen = Pair::a().get();
                    Pair::a().set(1000);
                    seen
                },
                || {
                    let seen = Pair::a().get();
                    Pair::a().update(|a| *a += 2000);
                    seen
                },
            );
            assert_eq!((x, y), (Some(i), Some(i)), "round {i}");
            assert_eq!(Pair::a().get(), Some(i), "a job's write came back to the submitter");
            Pair::a().update(|a| *a += 1);
            let all: Vec<Option<u32>> = context_local::rayon::install(&pool, || {
                (0..8)
                    .into_par_iter()
                    .in_current_context()
                    .map(|_| {
                        let seen = Pair::a().get();
                        Pair::a().set(7777);
                        seen
                    })
                    .collect()
            });
            assert!(all.iter().all(|v| *v == Some(i + 1)), "round {i}: {all:?}");
        }
    });
}

// ---------------------------------------------------------------------------
// Blocking pool threads reused by plain jobs
// ---------------------------------------------------------------------------

#[test]
fn a_plain_spawn_blocking_on_a_reused_blocking_thread_never_sees_a_previous_jobs_scalars() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(
        async {
            for i in 1..=30u64 {
                TaskScalars::u64_().set(i);
                let a = context_local::task::spawn_blocking(move || {
                    let seen = TaskScalars::u64_().get();
                    TaskScalars::u64_().set(i * 1000); // cached, in the job's snapshot
                    TaskScalars::u64_().update(|v| *v += 1);
                    seen
                })
                .await
                .unwrap();
                assert_eq!(a, Some(i));
                let b = context_local::task::run_blocking(move || {
                    TaskScalars::u64_().update(|v| *v += 1);
                    TaskScalars::bool_().set(true);
                    TaskScalars::u64_().get()
                })
                .await;
                assert_eq!(b, Some(i + 1));
                assert_eq!(TaskScalars::u64_().get(), Some(i + 1));
                assert_eq!(TaskScalars::bool_().get(), Some(true));
                TaskScalars::bool_().delete();
                let leftover =
                    tokio::task::spawn_blocking(|| (TaskScalars::u64_().try_get(), TaskScalars::bool_().try_get()))
                        .await
                        .unwrap();
                assert!(
                    !matches!(leftover.0, Ok(v) if v == i * 1000 + 1 || v == i + 1 || v == i),
                    "round {i}: a plain blocking job saw another job's value: {leftover:?}"
                );
                assert!(!matches!(leftover.1, Ok(true)), "round {i}: {leftover:?}");
            }
        }
        .in_new_context(),
    );
}

// ---------------------------------------------------------------------------
// Panics and unwinding with pending cached writes
// ---------------------------------------------------------------------------

#[test]
fn a_panicking_update_does_not_lose_another_fields_pending_write() {
    for scope in 0..2 {
        let (a, b): (Field<u32>, Field<bool>) =
            if scope == 0 { (Pair::a(), Pair::b()) } else { (ThreadPair::a(), ThreadPair::b()) };
        let mut ctx = Context::new();
        ctx.run(|| {
            a.set(1);
            b.set(false);
            assert_eq!(a.get(), Some(1));
            a.set(5); // pending
            a.update(|v| *v += 1); // pending
            let r = catch_unwind(AssertUnwindSafe(|| {
                b.update(|v| {
                    *v = true;
                    panic!("boom");
                })
            }));
            assert!(r.is_err());
            assert_eq!(a.get(), Some(6), "scope {scope}");
            assert_eq!(Context::current().run(|| a.get()), Some(6), "scope {scope}: the pending write was lost");
        });
        if scope == 0 {
            assert_eq!(ctx.run(|| a.get()), Some(6));
        }
    }
}

#[test]
fn contexts_run_by_destructors_during_unwinding_keep_their_own_scalars() {
    struct RunsOnDrop(Option<Context>, mpsc::Sender<(Option<u32>, Option<u32>)>);
    impl Drop for RunsOnDrop {
        fn drop(&mut self) {
            let mut b = self.0.take().unwrap();
            let in_b = b.run(|| {
                let before = Pair::a().get();
                Pair::a().set(2);
                Pair::a().update(|a| *a += 1);
                before
            });
            let here = Pair::a().get();
            let _ = self.1.send((in_b, here));
            let after = b.run(|| Pair::a().get());
            let _ = self.1.send((after, Pair::a().get()));
        }
    }
    let (tx, rx) = mpsc::channel();
    let mut a = Context::new();
    let mut b = Context::new();
    b.run(|| Pair::a().set(20));
    Pair::a().set(99);
    let r = catch_unwind(AssertUnwindSafe(|| {
        a.run(|| {
            let _d = RunsOnDrop(Some(b), tx);
            Pair::a().set(1);
            Pair::a().update(|a| *a += 0);
            panic!("unwinding through a's run");
        })
    }));
    assert!(r.is_err());
    let got: Vec<_> = rx.iter().collect();
    assert_eq!(got, vec![(Some(20), Some(1)), (Some(3), Some(1))], "inside a while unwinding, b run from a destructor");
    assert_eq!(Pair::a().get(), Some(99), "the root context is back");
    assert_eq!(a.run(|| Pair::a().get()), Some(1));
}

#[test]
fn clear_and_take_after_pending_scalar_writes() {
    Context::new().run(|| {
        Pair::a().set(3);
        Pair::b().set(true);
        assert_eq!(Pair::a().get(), Some(3));
        Pair::a().update(|a| *a += 1);
        Pair::clear();
        assert_eq!((Pair::a().get(), Pair::b().get()), (None, None), "clear after a pending write");
        assert_eq!(Context::current().run(|| Pair::a().get()), None);
        Pair::a().set(8);
        Pair::b().set(false);
        Pair::a().update(|a| *a += 1);
        let t = Pair::take().map(|p| (p.a, p.b));
        assert_eq!(t, Some((9, false)));
        assert_eq!((Pair::a().get(), Pair::b().is_set()), (None, false));
        Pair::a().set(1);
        assert_eq!(Pair::take().map(|p| p.a), None, "b unset: take moves nothing");
        assert_eq!(Pair::a().get(), Some(1));
    });
    std::thread::spawn(|| {
        ThreadPair::a().set(3);
        ThreadPair::a().update(|a| *a += 1);
        ThreadPair::clear();
        assert_eq!(ThreadPair::a().get(), None, "thread scope: clear after a pending update");
        ThreadPair::a().set(5);
        ThreadPair::b().set(true);
        ThreadPair::a().update(|a| *a *= 2);
        assert_eq!(ThreadPair::take().map(|p| (p.a, p.b)), Some((10, true)));
        assert_eq!(ThreadPair::a().get(), None);
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------
// Differential: whatever odd composition ran, every read path agrees
// ---------------------------------------------------------------------------

thread_local! {
    static COLD_TASK_A: context_local::__private::Cache<u32> = const { context_local::__private::Cache::new() };
    static COLD_THREAD_A: context_local::__private::Cache<u32> = const { context_local::__private::Cache::new() };
}

/// The value of `a` read through its own warm cache, `with`, a cold second
/// cache, and (task scope) a snapshot's full path: all must agree.
fn agree(scope: usize, what: &str) -> Option<u32> {
    let (a, cold) = if scope == 0 {
        (Pair::a(), Field::__cached(Pair::a().__desc(), &COLD_TASK_A))
    } else {
        (ThreadPair::a(), Field::__cached(ThreadPair::a().__desc(), &COLD_THREAD_A))
    };
    let v = a.get();
    assert_eq!(a.get(), v, "{what}: two reads");
    assert_eq!(a.with(|x| *x), v, "{what}: with");
    assert_eq!(cold.get(), v, "{what}: another cache");
    if scope == 0 {
        assert_eq!(Context::current().run(|| a.get()), v, "{what}: snapshot");
    } else {
        assert_eq!(Context::new().run(|| a.get()), v, "{what}: another context");
    }
    v
}

#[test]
fn every_read_path_agrees_after_odd_compositions() {
    for scope in 0..2 {
        std::thread::spawn(move || {
            let (a, b): (Field<u32>, Field<bool>) =
                if scope == 0 { (Pair::a(), Pair::b()) } else { (ThreadPair::a(), ThreadPair::b()) };
            let clear = move || if scope == 0 { Pair::clear() } else { ThreadPair::clear() };
            type Guard = Result<context_local::Entered<Pair>, context_local::Entered<ThreadPair>>;
            let enter = move |v: u32| -> Guard {
                if scope == 0 {
                    Ok(Pair { a: v, b: true }.enter())
                } else {
                    Err(ThreadPair { a: v, b: true }.enter())
                }
            };
            let mut ctx = Context::new();
            ctx.run(|| {
                a.set(1);
                agree(scope, "set");
                // clear inside with of the same field
                let _ = catch_unwind(AssertUnwindSafe(|| a.with(|_| clear())));
                agree(scope, "clear inside with");
                a.set(2);
                // clear inside update of the same field
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    a.update(|v| {
                        *v = 3;
                        clear();
                    })
                }));
                agree(scope, "clear inside update");
                a.set(4);
                // clear inside update of the other field
                let _ = catch_unwind(AssertUnwindSafe(|| b.update(|_| clear())));
                agree(scope, "clear inside the other field's update");
                // a guard made inside update, dropped after it
                a.set(5);
                let g = a.update(|v| {
                    *v = 6;
                    catch_unwind(AssertUnwindSafe(|| enter(7))).ok()
                });
                agree(scope, "guard made inside update");
                drop(g);
                agree(scope, "guard made inside update, dropped after");
                // a guard made before, dropped inside with
                a.set(8);
                let g = enter(9);
                a.update(|v| *v += 1);
                let _ = a.with(move |_| drop(g));
                let v = agree(scope, "guard dropped inside with");
                assert_eq!(v, Some(8));
                // a guard dropped inside the other field's update
                let g = enter(11);
                a.set(12);
                b.update(move |_| drop(g));
                let v = agree(scope, "guard dropped inside the other field's update");
                assert_eq!(v, Some(8));
                // take inside the other field's update, delete inside its with
                b.set(true);
                let t = b.update(|_| a.take());
                assert_eq!(t, Some(Some(8)));
                agree(scope, "take inside other update");
                a.set(13);
                let _ = b.with(|_| a.delete());
                assert_eq!(agree(scope, "delete inside other with"), None);
                // nested updates of both, panicking in the inner one
                a.set(14);
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    b.update(|_| {
                        a.update(|v| {
                            *v = 15;
                            b.try_get().unwrap_err();
                            panic!("inner");
                        })
                    })
                }));
                let v = agree(scope, "panic in a nested update");
                assert!(v == Some(14) || v == Some(15), "{v:?}");
                assert!(b.try_set(false).is_ok(), "b still busy after the panic");
            });
        })
        .join()
        .unwrap();
    }
}

#[test]
fn writes_through_a_second_cache_inside_with_are_reentrant() {
    thread_local! {
        static SECOND_W: context_local::__private::Cache<u64> = const { context_local::__private::Cache::new() };
        static SECOND_WT: context_local::__private::Cache<u64> = const { context_local::__private::Cache::new() };
    }
    for (mine, other) in [
        (TaskScalars::u64_(), Field::__cached(TaskScalars::u64_().__desc(), &SECOND_W)),
        (ThreadScalars::u64_(), Field::__cached(ThreadScalars::u64_().__desc(), &SECOND_WT)),
    ] {
        Context::new().run(|| {
            mine.set(1);
            assert_eq!(other.get(), Some(1));
            let inside = mine.with(|v| {
                let r = (other.get(), other.try_set(2), other.try_update(|x| *x), other.try_take());
                (*v, r)
            });
            let (v, (g, s, u, t)) = inside.unwrap();
            assert_eq!((v, g), (1, Some(1)));
            assert!(is_reentrant(&s) && is_reentrant(&u) && is_reentrant(&t), "{}: {s:?} {u:?} {t:?}", mine.name());
            assert_eq!(mine.get(), Some(1));
            assert_eq!(other.get(), Some(1));
        });
    }
}

static DEFAULT_SAW: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn default_reading_itself() -> i64 {
    let seen = WithDefault::d().try_get();
    DEFAULT_SAW.lock().unwrap().push(format!("{seen:?}"));
    -9
}

#[derive(ContextLocal)]
struct WithDefault {
    #[context_local(default = default_reading_itself())]
    d: i64,
}

#[test]
fn a_default_that_reads_its_own_field_is_reentrant_never_a_stale_copy() {
    std::thread::spawn(|| {
        Context::new().run(|| {
            WithDefault::d().set(5);
            assert_eq!(WithDefault::d().get(), Some(5));
            assert_eq!(WithDefault::d().get(), Some(5)); // warm copy of 5
            assert!(WithDefault::d().delete());
            assert_eq!(WithDefault::d().get(), Some(-9));
            WithDefault::d().set(6);
            assert_eq!(WithDefault::d().take(), Some(6));
            assert_eq!(WithDefault::d().update(|d| *d), Some(-9));
        });
    })
    .join()
    .unwrap();
    let saw = DEFAULT_SAW.lock().unwrap().clone();
    assert_eq!(saw.len(), 2, "{saw:?}");
    for s in saw {
        assert!(s.contains("Reentrant"), "default read its own field: {s}");
    }
}
