//! A `tower` layer that runs each request in its own context (feature `tower`).
//!
//! [`ContextLayer`] wraps a service so that `call()`, the response future and
//! every frame of the response body run inside the request's context: a value
//! set at the edge (a request id, the user) is in every handler, every
//! spawned child (with [`task::spawn`](crate::task::spawn)), every blocking
//! call, and never in another request. This is werkzeug's
//! `LocalManager.make_middleware` for tower and axum.
//!
//! # Examples
//!
//! ```
//! use context_local::tower::ContextLayer;
//! use context_local::ContextLocal;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! #[derive(ContextLocal)]
//! struct RequestContext {
//!     request_id: String,
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let layer = ContextLayer::new().on_request(|req: &http::Request<String>| {
//!     let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("none");
//!     RequestContext::request_id().set(id.to_string());
//! });
//! let mut service = layer.layer(service_fn(|_req: http::Request<String>| async {
//!     // Deep in the handler: the id set by the hook.
//!     let id = RequestContext::request_id().get().unwrap_or_default();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(id))))
//! }));
//! let request = http::Request::builder().header("x-request-id", "req-1").body(String::new()).unwrap();
//! let response = service.ready().await.unwrap().call(request).await.unwrap();
//! # use http_body_util::BodyExt;
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "req-1");
//! assert_eq!(RequestContext::request_id().get(), None, "nothing leaks out of the request");
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{HeaderName, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::field::Field;
use crate::switch::{drop_inside, Installed};
use crate::{Context, InContext};

#[cfg(feature = "baggage")]
mod propagate;
#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
pub use self::propagate::{PropagateLayer, PropagateService};

/// A hook that does nothing: the default for [`ContextLayer::on_request`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHook;

/// What runs at the start of each request, inside its fresh context.
pub trait OnRequest<B> {
    /// Called with the request before the inner service sees it.
    fn on_request(&self, request: &Request<B>);
}

impl<B> OnRequest<B> for NoHook {
    fn on_request(&self, _request: &Request<B>) {}
}

impl<B, F: Fn(&Request<B>)> OnRequest<B> for F {
    fn on_request(&self, request: &Request<B>) {
        self(request)
    }
}

/// A hook chained after another (from calling `on_request` or `request_id`
/// more than once).
#[derive(Clone, Copy, Debug)]
pub struct Both<A, B>(A, B);

impl<Req, A: OnRequest<Req>, B: OnRequest<Req>> OnRequest<Req> for Both<A, B> {
    fn on_request(&self, request: &Request<Req>) {
        self.0.on_request(request);
        self.1.on_request(request);
    }
}

/// Stores a request header's value in a field (the hook
/// [`ContextLayer::request_id`] and [`ContextLayer::request_id_from`] add).
#[derive(Clone)]
pub struct RequestIdInto {
    header: HeaderName,
    field: Field<String>,
}

impl fmt::Debug for RequestIdInto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestIdInto").field("header", &self.header).field("field", &self.field.name()).finish()
    }
}

impl<B> OnRequest<B> for RequestIdInto {
    fn on_request(&self, request: &Request<B>) {
        // The first value, if it is visible ASCII (`HeaderValue::to_str`).
        if let Some(id) = request.headers().get(&self.header).and_then(|value| value.to_str().ok()) {
            self.field.set(id.to_string());
        }
    }
}

/// A [`tower_layer::Layer`] running each request in its own context.
///
/// By default each request starts from a fresh, empty context; with
/// [`inherit`](ContextLayer::inherit) it starts from a snapshot of the context
/// the service is called from (the server's). See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ContextLayer<H = NoHook> {
    inherit: bool,
    hook: H,
}

impl ContextLayer {
    /// A layer giving each request a fresh, empty context.
    pub fn new() -> ContextLayer {
        ContextLayer { inherit: false, hook: NoHook }
    }

    /// A layer giving each request a snapshot of the caller's context.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = context_local::tower::ContextLayer::inherit();
    /// # let _ = layer;
    /// ```
    pub fn inherit() -> ContextLayer {
        ContextLayer { inherit: true, hook: NoHook }
    }
}

impl Default for ContextLayer {
    fn default() -> Self {
        ContextLayer::new()
    }
}

impl<H> ContextLayer<H> {
    /// Runs `hook` with each request, inside its context, before the inner
    /// service: fill the context from the request there.
    pub fn on_request<G>(self, hook: G) -> ContextLayer<Both<H, G>> {
        ContextLayer { inherit: self.inherit, hook: Both(self.hook, hook) }
    }

    /// Stores each request's `x-request-id` header in `field`, as the client
    /// sent it or as a layer placed outside this one set it (tower-http's
    /// `SetRequestIdLayer::x_request_id`, any version). A request without the
    /// header, or whose value is not visible ASCII, leaves `field` unset.
    ///
    /// Only the header is read: extensions such as tower-http's `RequestId`
    /// are not, so this works whatever version of tower-http (or none) the
    /// application uses. For another header, use
    /// [`request_id_from`](ContextLayer::request_id_from).
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::tower::ContextLayer;
    /// use context_local::ContextLocal;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct RequestContext {
    ///     request_id: String,
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let layer = ContextLayer::new().request_id(RequestContext::request_id());
    /// let service = layer.layer(service_fn(|_: http::Request<()>| async {
    ///     let id = RequestContext::request_id().get().unwrap_or_else(|| "unset".into());
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from(id))))
    /// }));
    /// let body_for = |request| async {
    ///     let response = service.clone().oneshot(request).await.unwrap();
    ///     response.into_body().collect().await.unwrap().to_bytes()
    /// };
    /// let request = http::Request::builder().header("x-request-id", "req-1").body(()).unwrap();
    /// assert_eq!(body_for(request).await, "req-1");
    /// assert_eq!(body_for(http::Request::new(())).await, "unset");
    /// # });
    /// ```
    pub fn request_id(self, field: Field<String>) -> ContextLayer<Both<H, RequestIdInto>> {
        self.request_id_from(HeaderName::from_static("x-request-id"), field)
    }

    /// Stores each request's header `name` in `field`: the request id of
    /// services that use another header than `x-request-id`. A request
    /// without the header, or whose value is not visible ASCII, leaves
    /// `field` unset.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::tower::ContextLayer;
    /// use context_local::ContextLocal;
    /// use http::HeaderName;
    ///
    /// #[derive(ContextLocal)]
    /// struct RequestContext {
    ///     trace_id: String,
    /// }
    ///
    /// let layer = ContextLayer::new()
    ///     .request_id_from(HeaderName::from_static("x-amzn-trace-id"), RequestContext::trace_id());
    /// # let _ = layer;
    /// ```
    pub fn request_id_from(self, name: HeaderName, field: Field<String>) -> ContextLayer<Both<H, RequestIdInto>> {
        self.on_request(RequestIdInto { header: name, field })
    }
}

/// Reads a request's `baggage` headers into its context (the hook
/// [`ContextLayer::baggage`] adds).
#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct BaggageFromHeaders {
    _private: (),
}

#[cfg(feature = "baggage")]
impl<B> OnRequest<B> for BaggageFromHeaders {
    fn on_request(&self, request: &Request<B>) {
        crate::baggage::receive(propagate::received_from(request.headers()));
    }
}

#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
impl<H> ContextLayer<H> {
    /// Reads every `baggage` header of each request (W3C Baggage) into the
    /// request's context before the inner service runs: the
    /// `#[context_local(baggage)]` fields get their members' values, and the
    /// other members are kept so that outgoing calls made while handling the
    /// request forward them ([`PropagateLayer`],
    /// [`baggage::to_header`](crate::baggage::to_header)). A member whose value
    /// does not parse leaves its field unset and is forwarded as received.
    ///
    /// # Examples
    ///
    /// ```
    /// use context_local::tower::ContextLayer;
    /// use context_local::ContextLocal;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// #[derive(ContextLocal)]
    /// struct RequestContext {
    ///     #[context_local(baggage = "user.id")]
    ///     user: u64,
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let service = ContextLayer::new().baggage().layer(service_fn(|_: http::Request<()>| async {
    ///     let seen = (RequestContext::user().get(), context_local::baggage::to_header());
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!("{seen:?}")))))
    /// }));
    /// let request = http::Request::builder()
    ///     .header("baggage", "user.id=7")
    ///     .header("baggage", "region=eu;ttl=3")
    ///     .body(())
    ///     .unwrap();
    /// # use http_body_util::BodyExt;
    /// let body = service.oneshot(request).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(body, r#"(Some(7), Some("user.id=7,region=eu;ttl=3"))"#);
    /// # });
    /// ```
    pub fn baggage(self) -> ContextLayer<Both<H, BaggageFromHeaders>> {
        self.on_request(BaggageFromHeaders { _private: () })
    }
}

impl<S, H: Clone> Layer<S> for ContextLayer<H> {
    type Service = ContextService<S, H>;

    fn layer(&self, inner: S) -> ContextService<S, H> {
        ContextService { inner, inherit: self.inherit, hook: self.hook.clone() }
    }
}

/// The service [`ContextLayer`] produces.
#[derive(Clone, Debug)]
pub struct ContextService<S, H = NoHook> {
    inner: S,
    inherit: bool,
    hook: H,
}

impl<S, H, ReqBody, ResBody> Service<Request<ReqBody>> for ContextService<S, H>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    H: OnRequest<ReqBody>,
{
    type Response = Response<ContextBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut context = if self.inherit { Context::current() } else { Context::new() };
        let future = context.run(|| {
            self.hook.on_request(&request);
            self.inner.call(request)
        });
        ResponseFuture { future: InContext::new(future, context) }
    }
}

pin_project! {
    /// The response future of [`ContextService`]: polled (and, if the
    /// request is cancelled, dropped) inside the request's context, which
    /// then moves into the response body.
    pub struct ResponseFuture<F> {
        #[pin]
        future: InContext<F>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("context", self.future.context()).finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ContextBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut future = self.project().future;
        let output = match future.as_mut().poll(cx) {
            Poll::Ready(output) => output,
            Poll::Pending => return Poll::Pending,
        };
        let context = future.take_context();
        Poll::Ready(output.map(|response| response.map(|body| ContextBody { body: Some(body), context })))
    }
}

pin_project! {
    /// A response body whose frames are produced inside the request's
    /// context (for streaming bodies that read context-locals). When it is
    /// dropped (sent, or abandoned by a client that disconnected), the inner
    /// body and then the context's values are dropped inside the context too.
    pub struct ContextBody<B> {
        #[pin]
        body: Option<B>,
        context: Context,
    }

    impl<B> PinnedDrop for ContextBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.body.is_some() {
                drop_inside(this.context, || this.body.set(None));
            }
        }
    }
}

impl<B> ContextBody<B> {
    /// The request's context, for inspection.
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl<B> fmt::Debug for ContextBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBody").field("context", &self.context).finish_non_exhaustive()
    }
}

impl<B: Body> Body for ContextBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let _installed = Installed::new(this.context);
        match this.body.as_pin_mut() {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
