//! Two real services on 127.0.0.1: A receives a request with baggage and
//! calls B through a hyper-util client wrapped in `PropagateLayer`; B reports
//! what it saw. Values with `%`, `\`, `,`, `;`, `=`, spaces, non-ASCII and
//! emoji arrive exactly, and members neither service knows pass through A
//! byte for byte.

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use context_local::tower::{ContextLayer, PropagateLayer, PropagateService};
use context_local::{baggage, ContextLocal, FutureExt as _};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};

#[derive(ContextLocal)]
struct RequestContext {
    #[context_local(baggage)]
    tenant: String,
    #[context_local(baggage = "user.id")]
    user: u64,
}

type Propagating = PropagateService<Client<HttpConnector, Empty<Bytes>>>;

/// A server on 127.0.0.1:0 that stops when the test says so.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(router: Router) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server");
        });
        Server { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task");
    }
}

fn propagating_client() -> Propagating {
    PropagateLayer::new().layer(Client::builder(TokioExecutor::new()).build_http())
}

async fn get_json(client: Propagating, url: String, headers: &[&str]) -> Value {
    let mut request = axum::http::Request::get(url);
    for value in headers {
        request = request.header("baggage", *value);
    }
    let response = client.oneshot(request.body(Empty::new()).expect("request")).await.expect("response");
    assert!(response.status().is_success(), "status {}", response.status());
    let body = response.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("JSON body")
}

/// B: what its handler sees.
async fn b_handler(headers: axum::http::HeaderMap) -> String {
    let received: Vec<&str> = headers.get_all("baggage").iter().map(|v| v.to_str().expect("ASCII")).collect();
    json!({
        "tenant": RequestContext::tenant().get(),
        "user": RequestContext::user().get(),
        "forwards": baggage::to_header(),
        "headers": received,
    })
    .to_string()
}

/// A: bumps the user id and calls B; the request's baggage goes along.
async fn a_handler(State((client, b)): State<(Propagating, SocketAddr)>) -> String {
    RequestContext::user().update(|user| *user += 1);
    get_json(client, format!("http://{b}/"), &[]).await.to_string()
}

async fn start_both() -> (Server, Server) {
    let b = Server::start(Router::new().route("/", get(b_handler)).layer(ContextLayer::new().baggage())).await;
    let a_routes = Router::new().route("/", get(a_handler)).with_state((propagating_client(), b.addr));
    let a = Server::start(a_routes.layer(ContextLayer::new().baggage())).await;
    (a, b)
}

const TRICKY: &[&str] = &[
    "50%41",
    "100%",
    "back\\slash",
    "comma,separated",
    "semi;colon",
    "a=b=c",
    "  spaces  inside and around  ",
    "café Ünïcödé 東京",
    "emoji 😀🚀👩‍👩‍👧",
    "%25%2C literal escapes",
    "\"quoted\" \t tab",
    "",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_sees_the_fields_and_the_members_a_forwards() {
    let (a, b) = start_both().await;
    // Hand-written headers, split over two lines, as another SDK might send.
    let headers = [
        "tenant=50%2541%20a%5Cb%2Cc%3Bd%3De%20f%20%C3%A9%20%F0%9F%98%80, vendor.flag = on ;ttl=3;private",
        "user.id=41,other=x%2Cy=z",
    ];
    let seen = get_json(propagating_client(), format!("http://{}/", a.addr), &headers).await;
    assert_eq!(seen["tenant"], "50%41 a\\b,c;d=e f é 😀");
    assert_eq!(seen["user"], 42, "A's update travels on");
    assert_eq!(
        seen["headers"],
        // `=` is a baggage-octet, so the field's value is written with it as
        // is; the members no field claims go on byte for byte.
        json!(["tenant=50%2541%20a%5Cb%2Cc%3Bd=e%20f%20%C3%A9%20%F0%9F%98%80,user.id=42,vendor.flag = on ;ttl=3;private,other=x%2Cy=z"]),
        "one header line: fields in declaration order, then the forwarded members"
    );
    assert_eq!(seen["forwards"], seen["headers"][0], "B would forward the same");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_values_round_trip_exactly_through_two_services() {
    let (a, b) = start_both().await;
    for (i, value) in TRICKY.iter().enumerate() {
        let client = propagating_client();
        let url = format!("http://{}/", a.addr);
        let user = i as u64;
        let seen = async move {
            RequestContext::tenant().set((*value).to_string());
            RequestContext::user().set(user);
            get_json(client, url, &[]).await
        }
        .in_new_context()
        .await;
        assert_eq!(seen["tenant"], *value, "value {value:?}");
        assert_eq!(seen["user"], user + 1);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_own_header_is_merged_and_wins_on_the_same_key() {
    let (a, b) = start_both().await;
    let seen = async {
        RequestContext::tenant().set("from-context".into());
        RequestContext::user().set(1);
        let headers = ["tenant=from-request", "extra=1;p"];
        get_json(propagating_client(), format!("http://{}/", b.addr), &headers).await
    }
    .in_new_context()
    .await;
    assert_eq!(seen["tenant"], "from-request");
    assert_eq!(seen["headers"], json!(["tenant=from-request,user.id=1,extra=1;p"]));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_keep_their_own_baggage() {
    let (a, b) = start_both().await;
    let requests = (0..32u64).map(|i| {
        let url = format!("http://{}/", a.addr);
        tokio::spawn(
            async move {
                RequestContext::tenant().set(format!("tenant {i}, ü"));
                RequestContext::user().set(i * 10);
                (i, get_json(propagating_client(), url, &[&format!("req={i}")]).await)
            }
            .in_new_context(),
        )
    });
    for request in requests.collect::<Vec<_>>() {
        let (i, seen) = request.await.expect("request task");
        assert_eq!(seen["tenant"], format!("tenant {i}, ü"));
        assert_eq!(seen["user"], i * 10 + 1);
        assert!(seen["headers"][0].as_str().unwrap().ends_with(&format!(",req={i}")), "{seen}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_baggage_means_no_header() {
    let (a, b) = start_both().await;
    let seen = get_json(propagating_client(), format!("http://{}/", b.addr), &[]).in_new_context().await;
    assert_eq!(seen["headers"], json!([]));
    assert_eq!(seen["tenant"], Value::Null);
    a.stop().await;
    b.stop().await;
}
