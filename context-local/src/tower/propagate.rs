//! The client side of W3C Baggage: [`PropagateLayer`] adds the current
//! context's `baggage` header to every outgoing request.

use std::task::{Context as TaskContext, Poll};

use http::header::{HeaderMap, HeaderValue};
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::baggage::{header_with, Received};

const BAGGAGE: &str = "baggage";

/// A [`tower_layer::Layer`] for HTTP clients that sends the current context
/// along as one `baggage` header (feature `baggage`).
///
/// Wrap any tower HTTP client (`hyper_util::client::legacy::Client`, a tonic
/// channel, a `tower::ServiceBuilder` stack): each request gets the header
/// [`baggage::to_header`](crate::baggage::to_header) renders where `call` is
/// made, merged with any `baggage` header the request already carries. The
/// request's own members win on the same key (in the place the context's
/// member would have had), its other members follow the context's, and the
/// limits apply to the whole. Exactly one `baggage` header goes out; none if
/// there is nothing to send.
///
/// # Examples
///
/// ```
/// use context_local::tower::PropagateLayer;
/// use context_local::ContextLocal;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// #[derive(ContextLocal)]
/// struct RequestContext {
///     #[context_local(baggage)]
///     tenant: String,
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// // A stand-in for an HTTP client: answers with the header it was sent.
/// let client = PropagateLayer::new().layer(service_fn(|request: http::Request<()>| async move {
///     let sent = request.headers().get_all("baggage").iter().map(|v| v.to_str().unwrap().to_owned());
///     Ok::<_, std::convert::Infallible>(sent.collect::<Vec<_>>())
/// }));
/// RequestContext::tenant().set("acme".into());
/// let request = http::Request::builder().header("baggage", "debug=1").body(()).unwrap();
/// assert_eq!(client.oneshot(request).await.unwrap(), ["tenant=acme,debug=1"]);
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateLayer {
    _private: (),
}

impl PropagateLayer {
    /// The layer.
    pub fn new() -> PropagateLayer {
        PropagateLayer { _private: () }
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = PropagateService<S>;

    fn layer(&self, inner: S) -> PropagateService<S> {
        PropagateService { inner }
    }
}

/// The service [`PropagateLayer`] produces.
#[derive(Clone, Debug)]
pub struct PropagateService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for PropagateService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        set_header(request.headers_mut());
        self.inner.call(request)
    }
}

/// Replaces the `baggage` headers of `headers` with one: the current
/// context's members merged with theirs.
fn set_header(headers: &mut HeaderMap) {
    let own = received_from(headers);
    let line = header_with(own.members());
    headers.remove(BAGGAGE);
    if let Some(value) = line.and_then(|line| HeaderValue::from_str(&line).ok()) {
        headers.insert(BAGGAGE, value);
    }
}

/// The valid members of every `baggage` header in `headers`.
pub(crate) fn received_from(headers: &HeaderMap) -> Received {
    let values: Vec<_> =
        headers.get_all(BAGGAGE).iter().map(|value| String::from_utf8_lossy(value.as_bytes())).collect();
    Received::parse(values.iter().map(|value| value.as_ref()))
}
