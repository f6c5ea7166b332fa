//! When a struct's `init` runs: once per context (per thread, for thread
//! scope), on the first access of any of its fields.

use crate::descriptor::{Batch, StructDesc};
use crate::error::AccessError;
use crate::state::{self, Ending, Use};
use crate::value::drop_each;

/// Runs the struct's `init` here if it has one that has not run yet.
///
/// `init` runs with the storage released, so it may use other structs; using
/// its own struct is `Reentrant`. If it panics, nothing is stored (what it
/// built is dropped, each destructor contained) and the next access runs it
/// again.
pub(crate) fn run_init(desc: &'static StructDesc, field: &'static str) -> Result<(), AccessError> {
    let (Some(init), Some(marker)) = (desc.init, desc.init_loc()) else {
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
        init(&mut batch);
    }
    let items = batch.with_marker(desc);
    let displaced =
        state::write(field, desc.space(), |state| Ok(state.apply(items.into_iter().map(|(loc, v)| (loc, Some(v))))))?;
    drop_each(displaced);
    Ok(())
}
