//! Which structs have baggage fields, and how received members meet them.
//!
//! The members a context received are kept in it as one hidden inherited
//! value. A struct's baggage fields are bound from them on the struct's first
//! access in the context (with `init`, see `init.rs`), so a struct no code in
//! the process has used yet still gets its values. A struct registers here on
//! the first use of any of its fields, which is what `to_header` walks.

use std::ptr;
use std::sync::{Mutex, PoisonError};

use super::outgoing::Outgoing;
use super::wire::{Member, Received};
use crate::descriptor::{Batch, ErasedField, FieldDesc, StructDesc};
use crate::field::Field;
use crate::init::{is_initialised_here, store_batch};
use crate::slot::Space;

static STRUCTS: Mutex<Vec<&'static StructDesc>> = Mutex::new(Vec::new());

static RECEIVED_STRUCT: StructDesc = StructDesc::new("context_local::baggage", Space::Shared, None, &[&RECEIVED]);
static RECEIVED: FieldDesc<Received> = FieldDesc::shared("context_local::baggage::received", &RECEIVED_STRUCT, None);

fn received_field() -> Field<Received> {
    Field::__new(&RECEIVED)
}

/// The members received in the current context, if any.
pub(crate) fn received_here() -> Option<Received> {
    received_field().try_get().ok()
}

/// Records a struct with baggage fields (once).
pub(crate) fn register(desc: &'static StructDesc) {
    let mut structs = STRUCTS.lock().unwrap_or_else(PoisonError::into_inner);
    if !structs.iter().any(|known| ptr::eq(*known, desc)) {
        structs.push(desc);
    }
}

fn registered() -> Vec<&'static StructDesc> {
    STRUCTS.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Stores `received` in the current context. Structs already initialised
/// here (a context that started from a snapshot) are bound now; the others
/// are bound on their first access.
pub(crate) fn receive(received: Received) {
    if received_field().try_set(received.clone()).is_err() {
        return;
    }
    for desc in registered() {
        if is_initialised_here(desc) {
            let mut batch = Batch::default();
            bind(desc, &received, &mut batch);
            store_batch(desc, batch);
        }
    }
}

/// Parses the received members into `desc`'s baggage fields (from `init.rs`).
pub(crate) fn bind_received(desc: &'static StructDesc, batch: &mut Batch) {
    if let Some(received) = received_here() {
        bind(desc, &received, batch);
    }
}

/// Whether the struct's first access here would set `field` from a received
/// member (for `is_set`, which runs neither `init` nor the binding).
pub(crate) fn would_bind<T: 'static>(field: &'static FieldDesc<T>) -> bool {
    let Some(key) = field.baggage_key() else {
        return false;
    };
    received_here().is_some_and(|received| {
        received.members().iter().any(|member| member.key() == key && field.parses_baggage(member.value()))
    })
}

fn bind(desc: &'static StructDesc, received: &Received, batch: &mut Batch) {
    for field in desc.fields {
        let Some(key) = field.baggage_key() else { continue };
        // The first member with the key whose value parses.
        let _ = received
            .members()
            .iter()
            .filter(|member| member.key() == key)
            .any(|member| field.bind_baggage(member.value(), batch));
    }
}

/// Offers what the current context sends: the baggage fields of every
/// registered struct in declaration order (a struct used in this context:
/// its set fields; one not used here yet: the received members it will
/// bind, as they will go out, with no `init` run), then the received members
/// no field claims, as received. The header thus does not depend on what
/// other contexts did.
pub(crate) fn offer(out: &mut Outgoing<'_>) {
    let structs = registered();
    let received = received_here();
    for desc in &structs {
        let used = is_initialised_here(desc);
        for field in desc.fields {
            let Some(key) = field.baggage_key() else { continue };
            let value = match (used, &received) {
                (true, _) => field.render_baggage(),
                (false, Some(received)) => bound_text(*field, key, received),
                (false, None) => None,
            };
            if let Some(value) = value {
                out.offer_value(key, &value);
            }
        }
    }
    if let Some(received) = received {
        for member in received.members() {
            if !claimed(&structs, member) {
                out.offer_member(member);
            }
        }
    }
}

/// The text the first received member with `key` whose value parses will
/// give `field` once bound.
fn bound_text(field: &'static dyn ErasedField, key: &str, received: &Received) -> Option<String> {
    received
        .members()
        .iter()
        .filter(|member| member.key() == key)
        .find_map(|member| field.reencode_baggage(member.value()))
}

/// Whether a received member belongs to a field (its key is a baggage
/// field's and its value parses): then the field, not the member, goes out.
fn claimed(structs: &[&'static StructDesc], member: &Member) -> bool {
    structs
        .iter()
        .flat_map(|desc| desc.fields)
        .any(|field| field.baggage_key() == Some(member.key()) && field.parses_baggage(member.value()))
}
