//! Streams polled inside a context (feature `tokio`).

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::switch::{drop_inside, Installed};
use crate::Context;

/// Runs a [`Stream`]'s polls inside a [`Context`], as
/// [`FutureExt`](crate::FutureExt) does for futures.
///
/// Implemented for every `Stream`. Import it under another name if
/// `futures::StreamExt` or `tokio_stream::StreamExt` is in scope too.
///
/// # Examples
///
/// ```
/// use context_local::{ContextLocal, StreamExt as _};
/// use futures::StreamExt as _;
///
/// #[derive(ContextLocal)]
/// struct Feed {
///     user: u64,
/// }
///
/// # futures::executor::block_on(async {
/// Feed::user().set(3);
/// let items: Vec<_> = futures::stream::iter(0..3)
///     .map(|n| (n, Feed::user().get()))
///     .in_current_context()
///     .collect()
///     .await;
/// assert!(items.iter().all(|(_, user)| *user == Some(3)));
/// # });
/// ```
pub trait StreamExt: Stream + Sized {
    /// Polls the stream inside `context`.
    fn in_context(self, context: Context) -> InContextStream<Self> {
        InContextStream { stream: Some(self), context }
    }

    /// Polls the stream inside a snapshot of the current context.
    fn in_current_context(self) -> InContextStream<Self> {
        self.in_context(Context::current())
    }
}

impl<S: Stream> StreamExt for S {}

pin_project! {
    /// A stream polled inside a [`Context`]; see [`StreamExt`]. When dropped,
    /// the inner stream and then the context's values are dropped with the
    /// context installed.
    #[derive(Debug)]
    #[must_use = "streams do nothing unless polled"]
    pub struct InContextStream<S> {
        #[pin]
        stream: Option<S>,
        context: Context,
    }

    impl<S> PinnedDrop for InContextStream<S> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.stream.is_some() {
                drop_inside(this.context, || this.stream.set(None));
            }
        }
    }
}

impl<S> InContextStream<S> {
    /// The context the stream runs in.
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl<S: Stream> Stream for InContextStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let _installed = Installed::new(this.context);
        match this.stream.as_pin_mut() {
            Some(stream) => stream.poll_next(cx),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.as_ref().map_or((0, Some(0)), Stream::size_hint)
    }
}
