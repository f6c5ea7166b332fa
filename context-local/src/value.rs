//! Type-erased values in the form each space keeps them, and how the library
//! drops them: one value at a time, each destructor contained on its own.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

use crate::slot::Space;

/// A value that may be shared between snapshots: copy-on-write needs `Clone`.
pub(crate) trait SharedValue: Any + Send + Sync {
    /// A fresh, unshared copy of the value.
    fn clone_arc(&self) -> Arc<dyn SharedValue>;
    /// The value on its own, cloned if a snapshot still shares it.
    fn into_boxed(self: Arc<Self>) -> Box<dyn Any>;
    /// The same count, as `Any` (to downcast to `Arc<T>`).
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<T: Clone + Send + Sync + 'static> SharedValue for T {
    fn clone_arc(&self) -> Arc<dyn SharedValue> {
        Arc::new(self.clone())
    }

    fn into_boxed(self: Arc<Self>) -> Box<dyn Any> {
        Box::new(Arc::unwrap_or_clone(self))
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// A shared (inherited, task-scoped) value.
pub(crate) type SharedArc = Arc<dyn SharedValue>;
/// A task-scoped value that children do not inherit.
pub(crate) type LocalBox = Box<dyn Any + Send>;
/// A thread-scoped value. Reference-counted so that `with` can keep the value
/// it lends alive by holding a count, whatever happens to the slot meanwhile.
pub(crate) type ThreadRc = Rc<dyn Any>;

/// A type-erased stored value, in the form its space keeps.
pub(crate) enum Stored {
    /// In a context's shared map.
    Shared(SharedArc),
    /// In a context's own (not inherited) slots.
    Local(LocalBox),
    /// In the thread's slots.
    Thread(ThreadRc),
}

impl Stored {
    /// Another count of a shared value (`None` for values of other spaces).
    pub(crate) fn share(&self) -> Option<Stored> {
        match self {
            Stored::Shared(arc) => Some(Stored::Shared(arc.clone())),
            _ => None,
        }
    }

    /// Moves the value out as `T`; `None` if it is not a `T` (or, for a
    /// thread-scoped value, if a `with` closure still holds it, which the
    /// busy checks rule out before any caller gets here).
    pub(crate) fn into_value<T: 'static>(self) -> Option<T> {
        let boxed: Box<dyn Any> = match self {
            Stored::Shared(arc) => <dyn SharedValue as SharedValue>::into_boxed(arc),
            Stored::Local(boxed) => boxed,
            Stored::Thread(rc) => return Rc::downcast::<T>(rc).ok().and_then(|rc| Rc::try_unwrap(rc).ok()),
        };
        boxed.downcast::<T>().ok().map(|value| *value)
    }

    /// The value, for writing in place: a shared value is copied first if a
    /// snapshot still holds it. `None` only for a thread-scoped value that
    /// something else still holds (ruled out by the busy checks).
    pub(crate) fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        match self {
            Stored::Shared(arc) => {
                if Arc::get_mut(arc).is_none() {
                    // Fully qualified: `Arc<dyn SharedValue>` is itself a
                    // `SharedValue`, and method syntax would clone the `Arc`.
                    *arc = <dyn SharedValue as SharedValue>::clone_arc(&**arc);
                }
                Arc::get_mut(arc).map(|value| value as &mut dyn Any)
            }
            Stored::Local(boxed) => Some(&mut **boxed as &mut dyn Any),
            Stored::Thread(rc) => Rc::get_mut(rc),
        }
    }
}

/// Whether cloning a `T` runs only the standard library's code, never a
/// user's `Clone` impl: for these types a read clones with the thread's state
/// borrowed, the cheapest way. Any other type may run user code that uses
/// context-locals (drops a guard, drops a context), so reads clone it with the
/// state released, from a count they hold. The comparisons fold to a constant
/// for each `T`.
#[inline(always)]
pub(crate) fn plain_clone<T: 'static>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    t == TypeId::of::<()>()
        || t == TypeId::of::<bool>()
        || t == TypeId::of::<char>()
        || t == TypeId::of::<u8>()
        || t == TypeId::of::<u16>()
        || t == TypeId::of::<u32>()
        || t == TypeId::of::<u64>()
        || t == TypeId::of::<u128>()
        || t == TypeId::of::<usize>()
        || t == TypeId::of::<i8>()
        || t == TypeId::of::<i16>()
        || t == TypeId::of::<i32>()
        || t == TypeId::of::<i64>()
        || t == TypeId::of::<i128>()
        || t == TypeId::of::<isize>()
        || t == TypeId::of::<f32>()
        || t == TypeId::of::<f64>()
        || t == TypeId::of::<String>()
        || t == TypeId::of::<&'static str>()
        || t == TypeId::of::<Arc<str>>()
        || t == TypeId::of::<Option<u32>>()
        || t == TypeId::of::<Option<u64>>()
        || t == TypeId::of::<Option<String>>()
        || t == TypeId::of::<Vec<String>>()
        || t == TypeId::of::<Vec<u8>>()
        || t == TypeId::of::<Vec<u32>>()
        || t == TypeId::of::<Vec<u64>>()
        || t == TypeId::of::<Vec<i32>>()
        || t == TypeId::of::<Vec<i64>>()
}

/// Whether nothing can tell when a value of type `T` is dropped: a type of
/// [`plain_clone`] that owns what it holds alone (not `Arc<str>`, whose
/// count others can read). `set` and `update` of these types may work in the
/// cache entry (see `cache.rs`), which keeps the value they replace in the
/// slot until the entry is written back.
#[inline(always)]
pub(crate) fn unseen_drop<T: 'static>() -> bool {
    plain_clone::<T>() && std::any::TypeId::of::<T>() != std::any::TypeId::of::<Arc<str>>()
}

/// The marker stored in a struct's init slot once `init` has run.
pub(crate) fn init_marker(space: Space) -> Stored {
    match space {
        Space::Shared => Stored::Shared(Arc::new(())),
        Space::Local => Stored::Local(Box::new(())),
        Space::Thread => Stored::Thread(Rc::new(())),
    }
}

/// Drops values one at a time, each in its own `catch_unwind`, so that one
/// panicking destructor neither skips the others nor, while unwinding, aborts
/// the process. The first panic is kept to be resumed at the end.
#[derive(Default)]
pub(crate) struct Drops {
    panic: Option<Box<dyn Any + Send>>,
}

impl Drops {
    /// Drops `value`, containing a panic from its destructor.
    pub(crate) fn drop_one<V>(&mut self, value: V) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
            self.panic.get_or_insert(panic);
        }
    }

    /// Drops every value, in order.
    pub(crate) fn drop_all<V>(&mut self, values: impl IntoIterator<Item = V>) {
        for value in values {
            self.drop_one(value);
        }
    }

    /// Resumes the first panic, unless the thread is already unwinding (a
    /// second panic then would abort the process; the first one goes on).
    pub(crate) fn finish(self) {
        if let Some(panic) = self.panic {
            if !std::thread::panicking() {
                resume_unwind(panic);
            }
        }
    }

    /// Forgets any panic: for destructors run at thread exit, where a panic
    /// cannot go anywhere.
    pub(crate) fn swallow(self) {
        drop(self.panic);
    }
}

/// Drops one value the library took out of storage: a panic in its
/// destructor propagates, except while the thread is already unwinding.
pub(crate) fn drop_contained<V>(value: V) {
    let mut drops = Drops::default();
    drops.drop_one(value);
    drops.finish();
}

/// Drops several values the library took out of storage, every one of them
/// even if some panic; then the first panic propagates (as [`Drops::finish`]).
pub(crate) fn drop_each<V>(values: impl IntoIterator<Item = V>) {
    let mut drops = Drops::default();
    drops.drop_all(values);
    drops.finish();
}

/// A value (or closure) the caller handed to the library, held while user
/// code (`init`, `default`, a `Clone`) runs: if that code panics, the value
/// is dropped on the way out with its destructor contained, so a destructor
/// that panics too cannot abort the process.
pub(crate) struct Contained<V>(Option<V>);

impl<V> Contained<V> {
    pub(crate) fn new(value: V) -> Self {
        Contained(Some(value))
    }

    /// Holds a value that may be absent.
    pub(crate) fn maybe(value: Option<V>) -> Self {
        Contained(value)
    }

    /// The value, to use it; `None` once taken.
    pub(crate) fn take(&mut self) -> Option<V> {
        self.0.take()
    }

    /// The value, to use it (made with [`new`](Contained::new), not yet taken).
    pub(crate) fn into_inner(mut self) -> V {
        match self.0.take() {
            Some(value) => value,
            None => unreachable!("a contained value is used once"),
        }
    }
}

impl<V> Drop for Contained<V> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            drop_contained(value);
        }
    }
}

/// Values the library holds for a while (counts kept alive during a call):
/// when it lets go, each is dropped on its own (see [`drop_each`]), also
/// while the thread unwinds.
pub(crate) struct Each<V>(pub(crate) Vec<V>);

impl<V> Drop for Each<V> {
    fn drop(&mut self) {
        drop_each(std::mem::take(&mut self.0));
    }
}

/// Drops `guard` (which may run destructors: a value put back displaces
/// another, a count let go of is the last) once `result` is made. If that
/// panics, `result` is dropped, contained, before the panic goes on: without
/// this a panic from a guard's destructor would leak the caller's result.
pub(crate) fn end_after<G, R>(guard: G, result: R) -> R {
    match catch_unwind(AssertUnwindSafe(move || drop(guard))) {
        Ok(()) => result,
        Err(panic) => {
            // A second panic from `result` is dropped: the first one goes on.
            Drops::default().drop_one(result);
            resume_unwind(panic)
        }
    }
}
