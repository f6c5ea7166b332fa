//! When a struct's `init` runs: once per context (per thread, for thread
//! scope), on the first access of any of its fields. Received W3C Baggage
//! members are bound to the struct's baggage fields at the same moment.

use crate::descriptor::{Batch, StructDesc};
use crate::error::AccessError;
#[cfg(feature = "baggage")]
use crate::slot::Space;
use crate::state::{self, Ending, Use};
use crate::value::drop_each;

/// Runs the struct's `init` here if it has one that has not run yet.
///
/// `init` runs with the storage released, so it may use other structs; using
/// its own struct is `Reentrant`. If it panics, nothing is stored (what it
/// built is dropped, each destructor contained) and the next access runs it
/// again.
///
/// A struct with `#[context_local(baggage)]` fields has a marker too: the
/// members received in this context are parsed into its fields right after
/// `init` (over what `init` set), once.
pub(crate) fn run_init(desc: &'static StructDesc, field: &'static str) -> Result<(), AccessError> {
    let Some(marker) = desc.init_loc() else {
        return Ok(());
    };
    let due = state::write(field, desc.space(), |state| {
        state.check_free(marker, field)?;
        if state.contains(marker) {
            return Ok(None);
        }
        // `init` writes every field: not while a closure here uses one (a
        // guard may have emptied the field it reads and unmarked `init`).
        for loc in desc.fields.iter().map(|field| field.loc()) {
            state.check_free(loc, field)?;
        }
        Ok(Some(state.begin(marker, Use::Init)))
    })?;
    let Some(token) = due else {
        return Ok(());
    };
    let mut batch = Batch::default();
    {
        let _ending = Ending(token);
        if let Some(init) = desc.init {
            init(&mut batch);
        }
        #[cfg(feature = "baggage")]
        crate::baggage::bind_received(desc, &mut batch);
    }
    let items = batch.with_marker(desc);
    let displaced =
        state::write(field, desc.space(), |state| Ok(state.apply(items.into_iter().map(|(loc, v)| (loc, Some(v))))))?;
    drop_each(displaced);
    Ok(())
}

/// Whether the struct's `init` (or baggage binding) has run in the current
/// context (thread, for thread scope).
#[cfg(feature = "baggage")]
pub(crate) fn is_initialised_here(desc: &'static StructDesc) -> bool {
    let Some(marker) = desc.init_loc() else {
        return false;
    };
    state::read(desc.name, desc.space(), |state| Ok(state.contains(marker))).unwrap_or(false)
}

/// Stores the values in `batch` here, as `init` would (without the marker).
#[cfg(feature = "baggage")]
pub(crate) fn store_batch(desc: &'static StructDesc, batch: Batch) {
    if desc.space() == Space::Thread {
        return;
    }
    let mut items = Some(batch.into_items());
    let displaced = state::write(desc.name, desc.space(), |state| {
        let pending = items.as_ref().into_iter().flatten();
        pending.into_iter().try_for_each(|(loc, _)| state.check_free(*loc, desc.name))?;
        let items = items.take().unwrap_or_default();
        Ok(state.apply(items.into_iter().map(|(loc, v)| (loc, Some(v)))))
    });
    // Values that never reached storage are dropped here, outside the borrow.
    drop_each(items.into_iter().flatten().map(|(_, value)| value).chain(displaced.unwrap_or_default()));
}
