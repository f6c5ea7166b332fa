//! An axum server on an ephemeral loopback port and a real HTTP client, for
//! the tests that go through the network.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Serves `router` on 127.0.0.1 with a port the OS picks; the server runs
/// until the runtime shuts down.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("server") });
    addr
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A pooled HTTP/1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GETs `path` with `headers`; returns the status and the body as text.
pub async fn get_with(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (hyper::StatusCode, String) {
    let mut request = hyper::Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(Empty::new()).expect("request")).await.expect("response");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8 body"))
}

/// GETs `path`, with `x-request-id: id` if given; returns the body as text.
pub async fn get(client: &HttpClient, addr: SocketAddr, path: &str, id: Option<&str>) -> String {
    let mut request = hyper::Request::get(format!("http://{addr}{path}"));
    if let Some(id) = id {
        request = request.header("x-request-id", id);
    }
    let response = client.request(request.body(Empty::new()).expect("request")).await.expect("response");
    assert!(response.status().is_success(), "status {}", response.status());
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("utf-8 body")
}
