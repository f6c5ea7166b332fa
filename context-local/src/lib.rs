//! Typed per-task and per-thread context storage.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod context;
mod error;
mod field;
mod future;
mod local;
mod map;
mod slot;
mod state;

#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
mod private;

pub mod task;
pub mod thread;

pub use crate::context::Context;
pub use crate::error::AccessError;
pub use crate::field::Field;
pub use crate::future::{FutureExt, InContext};
pub use crate::local::{ContextLocal, Entered};

#[cfg(feature = "derive")]
pub use context_local_derive::ContextLocal;
