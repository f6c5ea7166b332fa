//! Items used only by code that `#[derive(ContextLocal)]` generates. Not part
//! of the public API: they may change in any release.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::AccessError;
use crate::field::Field;
use crate::slot::{init_marker, Loc, SlotCell, Stored};

pub use crate::slot::Space;

/// A value erased into the form its field's space stores.
pub struct Erased(pub(crate) Stored);

/// What the derive knows about one struct.
pub struct StructDesc {
    pub(crate) name: &'static str,
    pub(crate) init: Option<fn(&mut Batch)>,
    pub(crate) init_slot: SlotCell,
    pub(crate) fields: &'static [&'static dyn ErasedField],
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
        StructDesc { name, init, init_slot: SlotCell::new(space), fields }
    }

    pub(crate) fn space(&self) -> Space {
        self.init_slot.space()
    }

    /// The marker slot, for structs that have an `init`.
    #[inline]
    pub(crate) fn init_loc(&self) -> Option<Loc> {
        self.init.map(|_| self.init_slot.loc())
    }

    pub(crate) fn marker(&self) -> Option<(Loc, Stored)> {
        self.init_loc().map(|loc| (loc, init_marker(loc.space)))
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
    pub(crate) wrap: fn(T) -> Erased,
    /// For `#[context_local(log)]` fields: the key in log lines and how the
    /// value is formatted.
    pub(crate) log: Option<(&'static str, FormatFn<T>)>,
    _type: PhantomData<fn() -> T>,
}

impl<T: 'static> FieldDesc<T> {
    /// `name` is `Struct::accessor`; `wrap` is one of [`wrap_shared`],
    /// [`wrap_local`], [`wrap_thread`], matching `space`.
    pub const fn new(
        name: &'static str,
        owner: &'static StructDesc,
        space: Space,
        default: Option<fn() -> T>,
        wrap: fn(T) -> Erased,
    ) -> FieldDesc<T> {
        FieldDesc { name, owner, slot: SlotCell::new(space), default, wrap, log: None, _type: PhantomData }
    }

    /// Marks the field for log lines: `key=value`, formatted by `format`.
    pub const fn logged(self, key: &'static str, format: FormatFn<T>) -> Self {
        FieldDesc { log: Some((key, format)), ..self }
    }

    /// The field's slot; the first use in the process registers a logged
    /// field for log lines.
    #[inline]
    pub(crate) fn loc(&'static self) -> Loc {
        self.slot.loc_or_first(|| {
            if self.log.is_some() {
                crate::logged::register(self);
            }
        })
    }
}

impl<T: 'static> crate::logged::LoggedField for FieldDesc<T> {
    fn render(&'static self) -> Option<(&'static str, String)> {
        let (key, format) = self.log?;
        let value = Field::__new(self).with_stored(|value| Formatted(value, format).to_string()).ok()??;
        Some((key, value))
    }
}

/// A value with the formatting function its field was marked with.
struct Formatted<'a, T>(&'a T, FormatFn<T>);

impl<T> fmt::Display for Formatted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.1)(self.0, f)
    }
}

/// A field seen without its type, for operations on a whole struct.
pub trait ErasedField: Sync {
    #[doc(hidden)]
    fn loc(&'static self) -> Loc;
    #[doc(hidden)]
    fn fill_default(&'static self) -> Result<(), AccessError>;
}

impl<T: 'static> ErasedField for FieldDesc<T> {
    fn loc(&'static self) -> Loc {
        FieldDesc::loc(self)
    }

    fn fill_default(&'static self) -> Result<(), AccessError> {
        Field::__new(self).fill_default()
    }
}

/// Values of a struct's fields on their way into storage.
#[derive(Default)]
pub struct Batch {
    pub(crate) items: Vec<(Loc, Stored)>,
}

impl Batch {
    /// Adds `value` for `field`.
    pub fn put<T: 'static>(&mut self, field: &'static FieldDesc<T>, value: T) {
        self.items.push((field.loc(), (field.wrap)(value).0));
    }
}

/// Values of a struct's fields on their way out of storage, in field order.
pub struct Parts {
    pub(crate) items: std::vec::IntoIter<Stored>,
}

impl Parts {
    /// The next field's value.
    pub fn next<T: 'static>(&mut self, _field: &'static FieldDesc<T>) -> T {
        self.items.next().expect("one stored value per field").into_value::<T>()
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

/// Erases a value of an inherited task-scoped field.
pub fn wrap_shared<T: TaskValue + InheritedValue>(value: T) -> Erased {
    Erased(Stored::Shared(Arc::new(value)))
}

/// Erases a value of a task-scoped field that children do not inherit.
pub fn wrap_local<T: TaskValue>(value: T) -> Erased {
    Erased(Stored::Local(Box::new(value)))
}

/// Erases a value of a thread-scoped field.
pub fn wrap_thread<T: 'static>(value: T) -> Erased {
    Erased(Stored::Thread(Box::new(value)))
}

/// A type a `#[context_local(log)]` field may have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be logged with `#[context_local(log)]`: it does not implement `Display`",
    label = "this field type is not `Display`",
    note = "use `#[context_local(log = \"debug\")]` to log it with `Debug`, or implement `Display` for it"
)]
pub trait LogDisplay: fmt::Display {}

impl<T: fmt::Display + ?Sized> LogDisplay for T {}

/// A type a `#[context_local(log = "debug")]` field may have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be logged with `#[context_local(log = \"debug\")]`: it does not implement `Debug`",
    label = "this field type is not `Debug`",
    note = "derive or implement `Debug` for it, or use `#[context_local(log)]` for a `Display` type"
)]
pub trait LogDebug: fmt::Debug {}

impl<T: fmt::Debug + ?Sized> LogDebug for T {}

/// Writes a `log` field with `Display`.
pub fn display_fmt<T: LogDisplay>(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Display::fmt(value, f)
}

/// Writes a `log = "debug"` field with `Debug`.
pub fn debug_fmt<T: LogDebug>(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Debug::fmt(value, f)
}
