//! The cache's side of [`Field`]'s operations: answering from this thread's
//! entry for the field, filling it, and writing into it (see `cache.rs`).

use super::{Field, Fill};
use crate::cache::{self, Entry, Held};
use crate::error::AccessError;
use crate::slot::{Loc, Space};
use crate::state::{self, with_state, ThreadState};
use crate::value::{drop_contained, plain_clone, unseen_drop};
use crate::word::copy_of;

impl<T: 'static> Field<T> {
    /// `op` run on the value in this thread's cache entry, if the entry is
    /// current; `op` back otherwise.
    ///
    /// `plain`: `op` runs no user code (a clone of a standard type), so it
    /// may read a value `set` left in the entry; user code never sees such a
    /// value through a borrow of the entry (it is written back first).
    #[inline(always)]
    pub(super) fn cached<R, F: FnOnce(&T) -> R>(&self, plain: bool, op: F) -> Result<R, F> {
        match self.cache {
            Some(key) => cache::read(key, self.identity(), self.task_scoped(), plain, op),
            None => Err(op),
        }
    }

    /// The value from this thread's cache entry's word, for a scalar type
    /// whose entry is current (see `cache::read_word`).
    #[inline(always)]
    pub(super) fn cached_word(&self) -> Option<T> {
        cache::read_word(self.cache?, self.identity(), self.task_scoped())
    }

    /// `set`: into the cache entry when nothing can tell when the type's
    /// values are dropped (`value::unseen_drop`) and the entry is current and
    /// writable; the full path otherwise.
    #[inline(always)]
    pub(super) fn store(&self, value: T) -> Result<(), AccessError> {
        match self.store_cached(value) {
            Ok(()) => Ok(()),
            Err(value) => self.store_uncached(value),
        }
    }

    /// Writes `value` into the cache entry, if the type and the entry allow
    /// it; `value` back otherwise.
    #[inline(always)]
    fn store_cached(&self, value: T) -> Result<(), T> {
        match (self.cache, unseen_drop::<T>()) {
            (Some(key), true) => cache::write(key, self.identity(), self.task_scoped(), value),
            _ => Err(value),
        }
    }

    #[inline(never)]
    fn store_uncached(&self, value: T) -> Result<(), AccessError> {
        // A value is here to fill the entry from: write into the entry, so
        // the context is not copied now (a snapshot may share it) but once,
        // when it is next looked at.
        let value = match unseen_drop::<T>() && self.fill_cache() {
            true => match self.store_cached(value) {
                Ok(()) => return Ok(()),
                Err(value) => value,
            },
            false => value,
        };
        drop_contained(self.write(Some(value))?);
        if unseen_drop::<T>() {
            // So that the next `set` here writes into the entry.
            self.fill_cache();
        }
        Ok(())
    }

    /// Which field this is, for cache entries: its descriptor's address (a
    /// `static`, so one address per field).
    #[inline(always)]
    fn identity(&self) -> usize {
        std::ptr::from_ref(self.desc) as usize
    }

    /// Whether the field lives in a context (not in the thread).
    #[inline(always)]
    fn task_scoped(&self) -> bool {
        self.desc.slot.space() != Space::Thread
    }

    /// `get` when the cache could not answer: fills it and answers from it,
    /// or takes the full path (`init`, `default`, misuse errors).
    #[inline(never)]
    pub(super) fn get_uncached(self, clone: impl FnOnce(&T) -> T) -> Result<T, AccessError>
    where
        T: Clone,
    {
        match self.filled(plain_clone::<T>(), clone) {
            Ok(value) => Ok(value),
            Err(clone) => self.read(plain_clone::<T>(), Fill::<fn() -> T>::Default, clone),
        }
    }

    /// `with` when the cache could not answer (see `get_uncached`).
    #[inline(never)]
    pub(super) fn with_uncached<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, AccessError> {
        match self.filled(false, f) {
            Ok(result) => Ok(result),
            Err(f) => self.lend(f),
        }
    }

    /// [`cached`](Field::cached) after filling the entry; `op` back if there
    /// was nothing to fill it from.
    fn filled<R, F: FnOnce(&T) -> R>(&self, plain: bool, op: F) -> Result<R, F> {
        match self.fill_cache() {
            true => self.cached(plain, op),
            false => Err(op),
        }
    }

    /// Fills this thread's cache entry from the value here, if there is one
    /// that a read may see now. `false` otherwise: the full path knows why.
    fn fill_cache(&self) -> bool {
        let Some(key) = self.cache else {
            return false;
        };
        if !self.desc.cache.is_some_and(|own| cache::same_cache(own, key)) {
            return false;
        }
        let loc = self.loc();
        let name = self.desc.name;
        let generation = cache::generation();
        let (field, forms) = (self.identity(), &self.desc.forms);
        let entry = state::for_cache(|state| {
            state.check_scope(name, loc.space).ok()?;
            state.check_readable(loc, name).ok()?;
            let held = match loc.space {
                Space::Shared => {
                    let count = state.current.get_shared(loc.index)?;
                    match copy_of::<T>(&**count) {
                        Some(value) => Held::Copied(value),
                        None => Held::Shared((forms.typed_arc)(count.clone())?),
                    }
                }
                Space::Thread => {
                    let count = state.thread_rc(loc.index)?;
                    match copy_of::<T>(&**count) {
                        Some(value) => Held::Copied(value),
                        None => Held::Thread(count.clone().downcast::<T>().ok()?),
                    }
                }
                Space::Local => return None,
            };
            let writable = self.writable_here(state, loc);
            let context = state.context_for_cache(loc);
            Some(Entry { generation, owner: state.owner, field, forms, loc, context, writable, held })
        });
        entry.is_some_and(|entry| cache::fill(key, entry))
    }

    /// Whether `set` could store here without running anything first: no
    /// closure uses the field, and the struct's `init` has run.
    fn writable_here(&self, state: &ThreadState, loc: Loc) -> bool {
        let initialised = match self.desc.owner.init_loc() {
            Some(marker) => state.check_free(marker, self.desc.name).is_ok() && state.contains(marker),
            None => true,
        };
        initialised && state.check_free(loc, self.desc.name).is_ok()
    }

    /// Moves the value out of storage, runs `op` on it, and puts it back
    /// (also when `op` panics), unless the slot was rewritten meanwhile.
    /// Inlined: the accessor names the cache as a constant, so the
    /// thread-local access compiles to a direct one.
    #[inline(always)]
    pub(super) fn modify<F: FnOnce() -> T, R>(
        &self,
        fill: Fill<F>,
        op: impl FnOnce(&mut T) -> R,
    ) -> Result<R, AccessError> {
        match (self.cache, unseen_drop::<T>()) {
            (Some(key), true) => match cache::update(key, self.identity(), self.task_scoped(), settle_state, op) {
                Ok(result) => Ok(result),
                Err(op) => self.modify_filling(fill, op),
            },
            _ => self.modify_uncached(fill, op),
        }
    }

    /// `modify` on the full path, then filling the cache entry, so that the
    /// next `update` here works in it.
    #[inline(never)]
    fn modify_filling<F: FnOnce() -> T, R>(
        &self,
        fill: Fill<F>,
        op: impl FnOnce(&mut T) -> R,
    ) -> Result<R, AccessError> {
        let result = self.modify_uncached(fill, op);
        if result.is_ok() {
            self.fill_cache();
        }
        result
    }
}

/// Writes the cache's entries back after an `update` through one of them,
/// when the thread's state changed while its closure ran.
fn settle_state() {
    let _ = with_state(|_| ());
}
