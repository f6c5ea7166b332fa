//! The `tracing` span a child starts in: with the `tracing` feature, the
//! spawn helpers (`task`, `thread`, `rayon`) carry the span current at the
//! call into the child, as they carry the context; without it, nothing.

#[cfg(feature = "tokio")]
use std::future::Future;

/// The span current when a child was created.
#[derive(Clone, Debug)]
pub(crate) struct CurrentSpan {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl CurrentSpan {
    /// The span current here.
    #[inline]
    pub(crate) fn capture() -> CurrentSpan {
        CurrentSpan {
            #[cfg(feature = "tracing")]
            span: tracing::Span::current(),
        }
    }

    /// Runs `f` inside the span.
    #[inline]
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        return self.span.in_scope(f);
        #[cfg(not(feature = "tracing"))]
        f()
    }

    /// `future`, entering the span on every poll (and while it is dropped).
    #[cfg(feature = "tokio")]
    #[inline]
    pub(crate) fn wrap<F: Future>(self, future: F) -> Carried<F> {
        #[cfg(feature = "tracing")]
        return tracing::Instrument::instrument(future, self.span);
        #[cfg(not(feature = "tracing"))]
        future
    }
}

/// A future that runs in the carried span.
#[cfg(all(feature = "tokio", feature = "tracing"))]
pub(crate) type Carried<F> = tracing::instrument::Instrumented<F>;
#[cfg(all(feature = "tokio", not(feature = "tracing")))]
pub(crate) type Carried<F> = F;
