//! What the derive knows about a struct and its fields, as the runtime uses
//! it. The types prove what the runtime relies on: a `FieldDesc<T>` stores
//! only `T`s, in the form its space keeps, because the only way to make one is
//! a constructor that picks the wrapping function for `T` itself.

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::LocalKey;

use crate::baggage_codec::BaggageCodec;
use crate::cache::{Cache, Forms};
use crate::slot::{Loc, SlotCell, Space};
use crate::value::{init_marker, SharedArc, SharedValue, Stored};

/// What the derive knows about one struct.
pub struct StructDesc {
    pub(crate) name: &'static str,
    pub(crate) init: Option<fn(&mut Batch)>,
    pub(crate) init_slot: SlotCell,
    pub(crate) fields: &'static [&'static dyn ErasedField],
    /// Whether some field is `#[context_local(baggage)]`: then received
    /// members are bound on the first access, as `init` runs, and the struct
    /// has an "initialised" marker even without `init`.
    pub(crate) baggage: bool,
}

impl StructDesc {
    /// `space` is where the struct's "initialised" marker lives: `Shared` for
    /// an inherited task-scoped struct, `Local` for `inherit = false`,
    /// `Thread` for thread scope.
    pub const fn new(
        name: &'static str,
        space: Space,
        init: Option<fn(&mut Batch)>,
        fields: &'static [&'static dyn ErasedField],
    ) -> StructDesc {
        StructDesc { name, init, init_slot: SlotCell::new(space), fields, baggage: false }
    }

    /// Marks a struct that has `#[context_local(baggage)]` fields.
    pub const fn with_baggage(self) -> StructDesc {
        StructDesc { baggage: true, ..self }
    }

    pub(crate) fn space(&self) -> Space {
        self.init_slot.space()
    }

    /// The marker slot, for structs that have an `init` or baggage fields.
    #[inline]
    pub(crate) fn init_loc(&self) -> Option<Loc> {
        (self.init.is_some() || self.baggage).then(|| self.init_slot.loc())
    }

    /// The marker to store once `init` has run.
    pub(crate) fn marker(&self) -> Option<(Loc, Stored)> {
        self.init_loc().map(|loc| (loc, init_marker(loc.space)))
    }

    /// Every slot of the struct: its fields, then its init marker.
    pub(crate) fn locs(&self) -> impl Iterator<Item = Loc> + '_ {
        self.fields.iter().map(|field| field.loc()).chain(self.init_loc())
    }

    /// Whether every field is inherited task-scoped (so each can be cloned
    /// on its own, in place).
    pub(crate) fn all_shared(&self) -> bool {
        self.fields.iter().all(|field| field.loc().space == Space::Shared)
    }
}

/// How a logged field's value is written: `Display::fmt` or `Debug::fmt`.
pub type FormatFn<T> = fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result;

/// What the derive knows about one field of type `T`.
pub struct FieldDesc<T: 'static> {
    pub(crate) name: &'static str,
    pub(crate) owner: &'static StructDesc,
    pub(crate) slot: SlotCell,
    pub(crate) default: Option<fn() -> T>,
    /// How the field's values are stored, picked by the constructor for `T`.
    pub(crate) forms: Forms<T>,
    /// The one cache entries of this field may live in (the derive gives
    /// each field one). Two caches for one field would each answer from
    /// what they last saw.
    pub(crate) cache: Option<&'static LocalKey<Cache<T>>>,
    /// For `#[context_local(log)]` fields: the key in log lines and how the
    /// value is formatted.
    pub(crate) log: Option<(&'static str, FormatFn<T>)>,
    /// For `#[context_local(baggage)]` fields: the member key and how the
    /// value is written and parsed.
    pub(crate) baggage: Option<BaggageCodec<T>>,
}

impl<T: 'static> FieldDesc<T> {
    /// An inherited task-scoped field (`name` is `Struct::accessor`).
    pub const fn shared(name: &'static str, owner: &'static StructDesc, default: Option<fn() -> T>) -> FieldDesc<T>
    where
        T: TaskValue + InheritedValue,
    {
        let forms = Forms {
            wrap: wrap_shared::<T>,
            typed_arc: typed_arc::<T>,
            share: Some(share::<T>),
            unshare: Some(T::clone),
        };
        FieldDesc::build(name, owner, Space::Shared, default, forms)
    }

    /// A task-scoped field that child contexts do not inherit.
    pub const fn local(name: &'static str, owner: &'static StructDesc, default: Option<fn() -> T>) -> FieldDesc<T>
    where
        T: TaskValue,
    {
        FieldDesc::build(name, owner, Space::Local, default, Forms::owned(wrap_local::<T>))
    }

    /// A thread-scoped field.
    pub const fn thread(name: &'static str, owner: &'static StructDesc, default: Option<fn() -> T>) -> FieldDesc<T> {
        FieldDesc::build(name, owner, Space::Thread, default, Forms::owned(wrap_thread::<T>))
    }

    const fn build(
        name: &'static str,
        owner: &'static StructDesc,
        space: Space,
        default: Option<fn() -> T>,
        forms: Forms<T>,
    ) -> FieldDesc<T> {
        FieldDesc { name, owner, slot: SlotCell::new(space), default, forms, cache: None, log: None, baggage: None }
    }

    /// Marks the field for log lines: `key=value`, formatted by `format`.
    pub const fn logged(self, key: &'static str, format: FormatFn<T>) -> Self {
        FieldDesc { log: Some((key, format)), ..self }
    }

    /// Marks the field as a W3C Baggage member (`#[context_local(baggage)]`).
    pub const fn baggage(self, codec: BaggageCodec<T>) -> Self {
        FieldDesc { baggage: Some(codec), ..self }
    }

    /// Gives the field its read cache (see `Field::__cached`).
    pub const fn cached(self, cache: &'static LocalKey<Cache<T>>) -> Self {
        FieldDesc { cache: Some(cache), ..self }
    }

    /// `value` in the form this field's space stores.
    #[inline]
    pub(crate) fn wrap(&self, value: T) -> Stored {
        (self.forms.wrap)(value)
    }

    /// The field's slot; the first use in the process registers a logged
    /// field for log lines.
    #[inline]
    pub(crate) fn loc(&'static self) -> Loc {
        self.slot.loc_or_first(|| {
            if self.log.is_some() {
                crate::logged::register(self);
            }
            #[cfg(feature = "baggage")]
            if self.owner.baggage {
                crate::baggage::register(self.owner);
            }
        })
    }
}

fn wrap_shared<T: TaskValue + InheritedValue>(value: T) -> Stored {
    Stored::Shared(Arc::new(value))
}

fn typed_arc<T: TaskValue + InheritedValue>(count: SharedArc) -> Option<Arc<T>> {
    <dyn SharedValue as SharedValue>::into_any(count).downcast::<T>().ok()
}

fn share<T: TaskValue + InheritedValue>(count: Arc<T>) -> SharedArc {
    count
}

fn wrap_local<T: TaskValue>(value: T) -> Stored {
    Stored::Local(Box::new(value))
}

fn wrap_thread<T: 'static>(value: T) -> Stored {
    Stored::Thread(Rc::new(value))
}

mod sealed {
    pub trait Sealed {}
}

/// A field seen without its type, for operations on a whole struct.
/// Implemented only by [`FieldDesc`].
pub trait ErasedField: Sync + sealed::Sealed {
    #[doc(hidden)]
    fn loc(&'static self) -> Loc;
    #[doc(hidden)]
    fn fill_default(&'static self) -> Result<(), crate::AccessError>;
    /// For a baggage field: its member key.
    #[doc(hidden)]
    fn baggage_key(&'static self) -> Option<&'static str>;
    /// For a baggage field: `value` parsed into a value for this field,
    /// added to `batch`; `false` if it does not parse (or this is not a
    /// baggage field).
    #[doc(hidden)]
    fn bind_baggage(&'static self, value: &str, batch: &mut Batch) -> bool;
    /// For a baggage field: whether `value` parses as this field's type.
    #[doc(hidden)]
    fn parses_baggage(&'static self, value: &str) -> bool;
    /// For a baggage field with a value here: the value's `Display` text.
    /// `init` and `default` are not run.
    #[doc(hidden)]
    fn render_baggage(&'static self) -> Option<String>;
    /// For a baggage field: a received `value` as it will go out once bound
    /// (parsed, then its `Display` text); `None` if it does not parse.
    #[doc(hidden)]
    fn reencode_baggage(&'static self, value: &str) -> Option<String>;
}

impl<T: 'static> sealed::Sealed for FieldDesc<T> {}

/// Values of a struct's fields on their way into storage.
#[derive(Default)]
pub struct Batch {
    items: Vec<(Loc, Stored)>,
}

impl Batch {
    /// Adds `value` for `field`.
    pub fn put<T: 'static>(&mut self, field: &'static FieldDesc<T>, value: T) {
        self.items.push((field.loc(), field.wrap(value)));
    }

    /// The values, then the struct's init marker.
    pub(crate) fn with_marker(mut self, desc: &StructDesc) -> Vec<(Loc, Stored)> {
        self.items.extend(desc.marker());
        self.into_items()
    }

    /// The values.
    pub(crate) fn into_items(mut self) -> Vec<(Loc, Stored)> {
        std::mem::take(&mut self.items)
    }
}

impl Drop for Batch {
    /// Values that never reached storage (`init` panicked half way, say) are
    /// dropped one at a time, each destructor contained.
    fn drop(&mut self) {
        crate::value::drop_each(std::mem::take(&mut self.items).into_iter().map(|(_, value)| value));
    }
}

/// Values of a struct's fields on their way out of storage, in field order.
pub struct Parts {
    pub(crate) items: std::vec::IntoIter<Stored>,
}

impl Parts {
    /// The next field's value.
    ///
    /// # Panics
    ///
    /// If the values do not match the fields (only possible by calling these
    /// hidden items by hand).
    pub fn next<T: 'static>(&mut self, field: &'static FieldDesc<T>) -> T {
        let value = self.items.next().and_then(Stored::into_value::<T>);
        value.unwrap_or_else(|| panic!("context-local: no value of the field's type for `{}`", field.name))
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        crate::value::drop_each(self.items.by_ref());
    }
}

/// A task-scoped field's type: the value moves between threads with its task.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a task-scoped context-local field: it must be `Send + 'static`",
    label = "this field type is not `Send`",
    note = "task-scoped values move between threads with their task; use `#[context_local(scope = \"thread\")]` for a value that stays on one thread, or a `Send` type such as `Arc` instead of `Rc`"
)]
pub trait TaskValue: Send + 'static {}

impl<T: Send + 'static> TaskValue for T {}

/// An inherited task-scoped field's type: snapshots share it between contexts.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be inherited by child contexts: an inherited task-scoped field must be `Clone + Send + Sync`",
    label = "this field type is not `Clone + Send + Sync`",
    note = "mark the field `#[context_local(no_inherit)]` so child contexts start without it, or wrap the value in `Arc` (`Arc<Mutex<..>>` for a type that is not `Sync`)"
)]
pub trait InheritedValue: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> InheritedValue for T {}
