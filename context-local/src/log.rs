//! Context fields on every `log` record (feature `log`).
//!
//! [`ContextLogger`] wraps any `log::Log` and adds the `#[context_local(log)]`
//! fields that have a value on the logging thread to each record's
//! key-values, after the record's own.
//!
//! # Examples
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use context_local::log::ContextLogger;
//! use context_local::ContextLocal;
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     #[context_local(log)]
//!     request_id: String,
//! }
//!
//! /// A logger that keeps each line: message, then key=value pairs.
//! #[derive(Default, Clone)]
//! struct Lines(Arc<Mutex<Vec<String>>>);
//!
//! impl log::Log for Lines {
//!     fn enabled(&self, _: &log::Metadata) -> bool { true }
//!     fn log(&self, record: &log::Record) {
//!         struct Pairs(String);
//!         impl<'kvs> log::kv::VisitSource<'kvs> for Pairs {
//!             fn visit_pair(&mut self, k: log::kv::Key<'kvs>, v: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
//!                 self.0 += &format!(" {k}={v}");
//!                 Ok(())
//!             }
//!         }
//!         let mut pairs = Pairs(record.args().to_string());
//!         record.key_values().visit(&mut pairs).unwrap();
//!         self.0.lock().unwrap().push(pairs.0);
//!     }
//!     fn flush(&self) {}
//! }
//!
//! let lines = Lines::default();
//! let logger = ContextLogger::new(lines.clone());
//! RequestContext::request_id().set("req-9".into());
//! log::Log::log(&logger, &log::Record::builder().args(format_args!("paid")).build());
//! assert_eq!(lines.0.lock().unwrap()[0], "paid request_id=req-9");
//! ```

use log::kv::{Error, Key, Source, Value, VisitSource};
use log::{Log, Metadata, Record};

use crate::log_fields;

/// A `log::Log` that adds the context's `log` fields to every record before
/// passing it to the wrapped logger. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct ContextLogger<L> {
    inner: L,
}

impl<L: Log + 'static> ContextLogger<L> {
    /// Wraps `inner`.
    pub fn new(inner: L) -> ContextLogger<L> {
        ContextLogger { inner }
    }

    /// Installs the logger as the global `log` logger with `level` as the
    /// maximum level.
    ///
    /// # Errors
    ///
    /// `log::SetLoggerError` if a global logger is installed already.
    pub fn install(self, level: log::LevelFilter) -> Result<(), log::SetLoggerError> {
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl<L: Log> Log for ContextLogger<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let fields = log_fields();
        if fields.is_empty() {
            return self.inner.log(record);
        }
        let pairs = WithContext { own: record.key_values(), context: &fields };
        self.inner.log(&record.to_builder().key_values(&pairs).build());
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// A record's own key-values followed by the context's fields.
struct WithContext<'a> {
    own: &'a dyn Source,
    context: &'a [(&'static str, String)],
}

impl Source for WithContext<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), Error> {
        self.own.visit(visitor)?;
        for (key, value) in self.context {
            visitor.visit_pair(Key::from_str(key), Value::from(value.as_str()))?;
        }
        Ok(())
    }
}
