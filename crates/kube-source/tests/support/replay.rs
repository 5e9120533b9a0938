//! A tower service that answers kube's requests from a recorded exchange file, the way
//! an API server would: list bodies, watch bodies as JSON lines, error statuses.
//!
//! Exchanges are consumed in order per resource path; a request matches when its path
//! and the parameters that change the answer (`watch`, `resourceVersion`,
//! `fieldSelector`, `labelSelector`, `continue`) equal the recorded request's. Paging
//! and timeouts (`limit`, `timeoutSeconds`, ...) are not compared. Once a path's
//! exchanges are used up, further requests hang like an idle watch; when every path is
//! in that state (or on the first request off the recording) the replay is
//! [`Replay::finished`].
//!
//! Watch responses are held until the test calls [`Replay::release_watches`] (when it
//! has seen `Synced`), so which changes land after the sync is deterministic. An API
//! server may interleave lists and watch events any way; the gate's own tests cover
//! changes that arrive before the sync.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tokio::sync::Notify;

/// The parameters that decide what a server answers.
const KEY_PARAMS: &[&str] = &[
    "watch",
    "resourceVersion",
    "fieldSelector",
    "labelSelector",
    "continue",
];

#[derive(Debug, Clone)]
struct Exchange {
    request: String,
    params: BTreeMap<String, String>,
    is_list: bool,
    status: u16,
    body: Vec<u8>,
}

/// A request the source made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub path: String,
    pub watch: bool,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Inner {
    queues: BTreeMap<String, VecDeque<Exchange>>,
    lists_left: usize,
    /// Lists recorded before each path's first watch.
    initial_lists: usize,
    idle: BTreeSet<String>,
    calls: Vec<Call>,
    mismatches: Vec<String>,
}

#[derive(Clone)]
pub struct Replay {
    inner: Arc<Mutex<Inner>>,
    lists_served: Arc<tokio::sync::watch::Sender<usize>>,
    finished: Arc<Notify>,
    watches_released: Arc<tokio::sync::watch::Sender<bool>>,
}

fn key_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| KEY_PARAMS.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Replay {
    /// Load a recorded exchange file (`{"exchanges": [{"request": "GET /path?query",
    /// "status": 200, "body": {...}} | {..., "watch": [event, ...]}]}`).
    pub fn load(recording: &Value) -> Self {
        let mut inner = Inner::default();
        for e in recording["exchanges"].as_array().expect("exchanges") {
            let request = e["request"].as_str().expect("request").to_string();
            let target = request.strip_prefix("GET ").expect("GET requests only");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let params = key_params(query);
            let is_list = !params.contains_key("watch");
            let body = match e.get("watch") {
                Some(Value::Array(lines)) => lines
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
                    .into_bytes(),
                _ => serde_json::to_vec(&e["body"]).unwrap(),
            };
            inner.lists_left += usize::from(is_list);
            let watched = inner
                .queues
                .get(path)
                .is_some_and(|q| q.iter().any(|e| !e.is_list));
            inner.initial_lists += usize::from(is_list && !watched);
            inner
                .queues
                .entry(path.to_string())
                .or_default()
                .push_back(Exchange {
                    request,
                    params,
                    is_list,
                    status: e["status"].as_u64().expect("status") as u16,
                    body,
                });
        }
        let (tx, _) = tokio::sync::watch::channel(0);
        Replay {
            inner: Arc::new(Mutex::new(inner)),
            lists_served: Arc::new(tx),
            finished: Arc::new(Notify::new()),
            watches_released: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// The service to give `kube::Client::new`.
    pub fn service(
        &self,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |req: Request<Body>| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.serve(req).await) }
        })
    }

    /// Answer one request (what [`Replay::service`] and the loopback server call).
    pub async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let params = key_params(&query);
        let next = {
            let mut inner = self.inner.lock().unwrap();
            inner.calls.push(Call {
                path: path.clone(),
                watch: params.contains_key("watch"),
                authorization: req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            });
            let queue = inner.queues.get_mut(&path).map(|q| q.pop_front());
            match queue {
                None => {
                    inner
                        .mismatches
                        .push(format!("unrecorded path: GET {path}?{query}"));
                    self.finished.notify_one();
                    None
                }
                Some(None) => {
                    inner.idle.insert(path.clone());
                    if inner.idle.len() == inner.queues.len() {
                        self.finished.notify_one();
                    }
                    None
                }
                Some(Some(ex)) if ex.params != params => {
                    inner.mismatches.push(format!(
                        "GET {path}?{query} does not match the recorded {}",
                        ex.request
                    ));
                    // Stop the run now; the test reports the mismatch.
                    self.finished.notify_one();
                    None
                }
                Some(Some(ex)) => {
                    if ex.is_list {
                        inner.lists_left -= 1;
                        self.lists_served.send_modify(|n| *n += 1);
                    }
                    Some(ex)
                }
            }
        };
        let Some(ex) = next else {
            // Idle like a watch with nothing to say (or stuck, for a mismatch: the test
            // reports mismatches).
            return std::future::pending().await;
        };
        if !ex.is_list {
            let mut rx = self.watches_released.subscribe();
            rx.wait_for(|released| *released).await.unwrap();
        }
        Response::builder()
            .status(ex.status)
            .header("content-type", "application/json")
            .body(Body::from(ex.body))
            .unwrap()
    }

    /// Let watch requests be answered (they wait until then).
    pub fn release_watches(&self) {
        self.watches_released.send_replace(true);
    }

    /// Initial lists (those before each path's first watch) not served yet.
    pub fn initial_lists_left(&self) -> usize {
        let initial = self.inner.lock().unwrap().initial_lists;
        initial.saturating_sub(*self.lists_served.borrow())
    }

    /// Resolves once every recorded exchange has been served and every path is idle.
    pub async fn finished(&self) {
        self.finished.notified().await
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    pub fn mismatches(&self) -> Vec<String> {
        self.inner.lock().unwrap().mismatches.clone()
    }
}
