//! Typed per-task and per-thread context storage: Python's `threading.local`
//! and `contextvars` for Rust.
//!
//! Derive [`ContextLocal`] on a struct with named fields. Every field gets an
//! accessor returning a [`Field`], whose value lives in the current async
//! task's [`Context`] (task scope, the default) or the current OS thread
//! (thread scope):
//!
//! ```
//! use context_local::ContextLocal;
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     request_id: String,
//!     user: Option<u64>,
//! }
//!
//! RequestContext::user().set(Some(42));
//! assert_eq!(RequestContext::user().get(), Some(Some(42)));
//! assert_eq!(RequestContext::request_id().get(), None); // unset is None, not a panic
//! ```
//!
//! - **Task scope** (`contextvars`, asgiref's default `Local`): values live in
//!   a [`Context`]. Each OS thread has a root context; [`FutureExt`] and the
//!   spawn helpers in [`task`] and [`thread`] run code in another one. A child
//!   starts from an O(1) snapshot of its parent's context, and a write on
//!   either side afterwards is invisible to the other. A tokio task spawned
//!   without a context gets [`AccessError::Unscoped`], so values never leak
//!   between tasks sharing a worker thread.
//! - **Thread scope** (`threading.local`, asgiref's `thread_critical=True`):
//!   `#[context_local(scope = "thread")]`. Values stay with the OS thread, are
//!   dropped when it exits, and may be `!Send` (`Rc`, `RefCell`).
//!
//! # Attributes
//!
//! | attribute | on | meaning |
//! |---|---|---|
//! | `scope = "task"` / `"thread"` | struct | where values live (default `"task"`) |
//! | `init = path` / `init` | struct | a `fn() -> Self` run once per context (thread) on the first access of any field, and again after [`ContextLocal::clear`]; bare `init` is `Default::default` |
//! | `inherit = false` | struct | children start fresh and run `init` again (a per-task `threading.local` subclass) |
//! | `crate = path` | struct | where this crate is, when used through a re-export |
//! | `default = expr` | field | the value used whenever the field is unset (stored on first read) |
//! | `no_inherit` | field | child contexts start without it (for connections and other `!Clone` values) |
//! | `rename = "name"` | field | the accessor's name |
//! | `log` / `log = "display"` / `log = "debug"` | field | the field goes on every log line while it has a value, as `key=value` (the key is the accessor's name), formatted with `Display` or `Debug`: see [`log_fields`] and the `tracing` and `log` features |
//! | `baggage` / `baggage = "key"` | field | the field crosses services as a W3C Baggage member (the key is the accessor's name unless given; an RFC 7230 token); task scope, a `Display + FromStr` type, feature `baggage` |
//!
//! Task-scoped field types must be `Send + 'static`, and inherited ones also
//! `Clone + Send + Sync` (wrap others in `Arc`, or mark them `no_inherit`).
//! Mistakes are compile errors that point at the offending token.
//!
//! # Use cases
//!
//! ## A request context, read deep in the call stack
//!
//! ```
//! use context_local::{ContextLocal, FutureExt};
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     request_id: String,
//!     user: Option<u64>,
//! }
//!
//! async fn business_logic() -> String {
//!     match RequestContext::user().get().flatten() {
//!         Some(user) => format!("user {user}"),
//!         None => "anonymous".into(),
//!     }
//! }
//!
//! async fn handle(id: u32, user: Option<u64>) -> String {
//!     RequestContext::request_id().set(format!("req-{id}"));
//!     RequestContext::user().set(user);
//!     let who = business_logic().await;
//!     format!("{} for {who}", RequestContext::request_id().get().unwrap())
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let a = tokio::spawn(handle(1, Some(7)).in_new_context());
//! let b = tokio::spawn(handle(2, None).in_new_context());
//! assert_eq!(a.await.unwrap(), "req-1 for user 7");
//! assert_eq!(b.await.unwrap(), "req-2 for anonymous");
//! # });
//! ```
//!
//! ## A per-thread connection
//!
//! ```
//! use std::rc::Rc;
//! use context_local::ContextLocal;
//!
//! struct Connection {
//!     thread: String,
//! }
//!
//! #[derive(ContextLocal)]
//! #[context_local(scope = "thread")]
//! struct Db {
//!     conn: Rc<Connection>, // thread scope allows !Send types
//! }
//!
//! fn connection() -> Rc<Connection> {
//!     let name = format!("{:?}", std::thread::current().id());
//!     Db::conn().get_or_insert_with(|| Rc::new(Connection { thread: name }))
//! }
//!
//! let here = connection();
//! assert!(Rc::ptr_eq(&here, &connection()), "one connection per thread, reused");
//! let there = std::thread::spawn(|| connection().thread.clone()).join().unwrap();
//! assert_ne!(here.thread, there);
//! ```
//!
//! ## A logging context
//!
//! ```
//! use context_local::ContextLocal;
//!
//! #[derive(ContextLocal)]
//! struct LogContext {
//!     request_id: String,
//! }
//!
//! fn log_line(message: &str) -> String {
//!     let id = LogContext::request_id().get().unwrap_or_else(|| "-".into());
//!     format!("[{id}] {message}")
//! }
//!
//! let lines = context_local::thread::spawn(|| {
//!     let _ctx = LogContext { request_id: "r-9".into() }.enter();
//!     vec![log_line("Starting request"), log_line("Request completed")]
//! })
//! .join()
//! .unwrap();
//! assert_eq!(lines, ["[r-9] Starting request", "[r-9] Request completed"]);
//! assert_eq!(log_line("idle"), "[-] idle");
//! ```
//!
//! ## A transaction scope
//!
//! ```
//! use context_local::ContextLocal;
//!
//! #[derive(ContextLocal)]
//! struct Tx {
//!     #[context_local(no_inherit)]
//!     operations: Vec<String>,
//! }
//!
//! fn transaction<R>(f: impl FnOnce() -> R) -> Result<(R, usize), &'static str> {
//!     if Tx::operations().is_set() {
//!         return Err("Nested transactions not supported");
//!     }
//!     Tx::operations().set(Vec::new());
//!     let result = f();
//!     let committed = Tx::operations().take().map_or(0, |ops| ops.len());
//!     Ok((result, committed))
//! }
//!
//! let outcome = transaction(|| {
//!     Tx::operations().push("insert".into());
//!     transaction(|| ()).unwrap_err()
//! });
//! assert_eq!(outcome, Ok(("Nested transactions not supported", 1)));
//! ```
//!
//! # Cargo features
//!
//! - `derive` (default): re-exports `#[derive(ContextLocal)]`.
//! - `tokio` (default): the [`task`] module (spawning with a snapshot,
//!   `run_blocking`, `JoinSet` helpers), [`StreamExt`], and `Unscoped`
//!   detection inside tokio tasks.
//! - `tower` (off): `tower::ContextLayer`, a context per request for tower
//!   and axum services, including the response body.
//! - `tracing` (off): `tracing::ContextFields`, `#[context_local(log)]`
//!   fields on every `tracing_subscriber::fmt` line (text or JSON); the
//!   spawn helpers also carry the current `tracing::Span` into the child.
//! - `log` (off): `log::ContextLogger`, the same fields as `log` key-values.
//! - `rayon` (off): `rayon::{spawn, join, scope, install}` and a
//!   parallel-iterator adaptor running jobs in the submitter's context.
//! - `baggage` (off): `#[context_local(baggage)]` fields cross process
//!   boundaries as W3C Baggage members: `baggage::{to_header, extract}`, and
//!   with `tower`, `tower::ContextLayer::baggage` and `tower::PropagateLayer`.
//! - `opentelemetry` (off, implies `baggage`):
//!   `opentelemetry::BaggagePropagator`, a `TextMapPropagator` for
//!   OpenTelemetry 0.33 that carries the fields, and `opentelemetry::from_otel`.
//!
//! [`log_fields`] (always available) returns the `log` fields with a value
//! here, for any other output.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Bottom-up: each module uses only modules listed above it.
mod baggage_codec;
mod cache;
mod context;
mod context_local;
mod descriptor;
mod error;
mod field;
mod future;
mod init;
mod logged;
mod map;
mod running;
mod slot;
mod span;
mod state;
#[cfg(feature = "tokio")]
mod stream;
mod switch;
mod value;
mod word;

#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
mod private;

#[cfg(test)]
mod tests;

#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
pub mod baggage;
#[cfg(feature = "log")]
#[cfg_attr(docsrs, doc(cfg(feature = "log")))]
pub mod log;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod opentelemetry;
#[cfg(feature = "rayon")]
#[cfg_attr(docsrs, doc(cfg(feature = "rayon")))]
pub mod rayon;
pub mod task;
pub mod thread;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod tracing;

pub use crate::context::Context;
pub use crate::context_local::{ContextLocal, Entered};
pub use crate::error::AccessError;
pub use crate::field::Field;
pub use crate::future::{FutureExt, InContext};
pub use crate::logged::log_fields;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use crate::stream::{InContextStream, StreamExt};

#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use context_local_derive::ContextLocal;
