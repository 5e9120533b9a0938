//! The agent's one HTTP server, on hyper: every listener (health, metrics, the proxy's
//! health-check node ports) runs on one small tokio runtime of its own, each connection
//! a task, so a client that connects and sends nothing delays no other request (the
//! hand-written listeners this replaces answered one connection at a time).
//!
//! Routes on an agent listener: `/healthz` and `/livez` (kube-proxy's JSON), `/readyz`,
//! `/metrics` (OpenMetrics text from the one registry), `/flows` (the NetworkPolicy flow
//! log as JSON lines), and CoreDNS's `/health` and
//! `/ready` for DNS pods. A health-check node port answers any path as kube-proxy's
//! service health server does.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::status::{Status, healthz_body, readyz_body};

/// OpenMetrics' content type: Prometheus keeps counter and histogram types with it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A connection that has not sent its request headers by then is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/healthz`, `/livez`, `/readyz`, `/metrics`, `/flows`, `/health`, `/ready`.
    Agent,
    /// Health only (`/healthz`, `/livez`, `/readyz`, `/health`, `/ready`): kube-proxy's
    /// healthz address, which listens on every interface; metrics and the flow log
    /// (pod addresses and who talks to whom) stay on the metrics address.
    Health,
    /// One `externalTrafficPolicy: Local` service's health-check node port.
    ServiceHealth(u16),
}

pub struct HttpServer {
    runtime: tokio::runtime::Runtime,
    status: Arc<Status>,
    service_ports: Mutex<BTreeSet<u16>>,
}

impl HttpServer {
    pub fn new(status: Arc<Status>) -> std::io::Result<HttpServer> {
        // One worker: answers are small; a stalled peer only parks its own task.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("twill-http")
            .enable_all()
            .build()?;
        Ok(HttpServer {
            runtime,
            status,
            service_ports: Mutex::new(BTreeSet::new()),
        })
    }

    /// Bind `addr` now (errors are the caller's) and serve it from then on. Returns the
    /// bound address (port 0 picks one).
    pub fn listen(&self, addr: SocketAddr, routes: Routes) -> std::io::Result<SocketAddr> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let _guard = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let status = self.status.clone();
        self.runtime.spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let status = status.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let status = status.clone();
                        async move { Ok::<_, Infallible>(answer(&status, routes, &req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "http connection");
                    }
                });
            }
        });
        Ok(local)
    }

    /// Serve every health-check node port in the status that is not served yet.
    pub fn serve_service_health_ports(&self) {
        let ports: Vec<u16> = self.status.lock().service_health.keys().copied().collect();
        let mut served = self.service_ports.lock().unwrap_or_else(|p| p.into_inner());
        for port in ports {
            if served.contains(&port) {
                continue;
            }
            match self.listen(
                SocketAddr::from(([0, 0, 0, 0], port)),
                Routes::ServiceHealth(port),
            ) {
                Ok(_) => {
                    served.insert(port);
                }
                Err(e) => tracing::warn!(port, error = %e, "health check node port"),
            }
        }
    }
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    let h = r.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn status_code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn answer(status: &Status, routes: Routes, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let now = Instant::now();
    let wall = SystemTime::now();
    if let Routes::ServiceHealth(port) = routes {
        return service_health(status, port);
    }
    let path = req.uri().path();
    if routes == Routes::Health && matches!(path, "/metrics" | "/flows") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not on the health address (see the metrics address)\n".into(),
        );
    }
    match path {
        "/healthz" | "/livez" => {
            let with_node = req.uri().path() == "/healthz";
            let (ok, body) = healthz_body(&status.lock(), now, wall, with_node);
            reply(status_code(ok), "application/json", body)
        }
        "/readyz" => {
            let (ok, body) = readyz_body(&status.lock(), now);
            reply(status_code(ok), "application/json", body)
        }
        // CoreDNS's health plugin: 200 while the process serves.
        "/health" => {
            let (ok, _) = healthz_body(&status.lock(), now, wall, false);
            reply(
                status_code(ok),
                "text/plain",
                if ok { "OK" } else { "unhealthy" }.into(),
            )
        }
        // CoreDNS's ready plugin: 200 once the data is listed.
        "/ready" => {
            let (ok, _) = readyz_body(&status.lock(), now);
            reply(
                status_code(ok),
                "text/plain",
                if ok { "OK" } else { "not ready" }.into(),
            )
        }
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, status.encode_metrics()),
        "/flows" => flows(status, req.uri().query().unwrap_or("")),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The flow log as JSON lines, oldest first (`?verdict=dropped|allowed`, `?pod=NS/NAME`,
/// `?since=SEQ`, `?limit=N`).
fn flows(status: &Status, query: &str) -> Response<Full<Bytes>> {
    let Some(log) = status.flows() else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "this agent keeps no flow log (it enforces no NetworkPolicy, or --flow-log off)\n"
                .into(),
        );
    };
    match twill_netpol_agent::flows::FlowQuery::parse(query) {
        Ok(q) => reply(StatusCode::OK, "application/jsonl", log.json_lines(&q)),
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

/// kube-proxy's service health server: 200 with the local endpoint count when the
/// service has a ready local endpoint, 503 otherwise; the weight header lets load
/// balancers that read it spread by local endpoints.
fn service_health(status: &Status, port: u16) -> Response<Full<Bytes>> {
    let st = status.lock();
    let Some(h) = st.service_health.get(&port) else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            "{}".into(),
        );
    };
    let body = format!(
        "{{\"service\":{{\"namespace\":{:?},\"name\":{:?}}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        h.namespace, h.name, h.local_endpoints
    );
    let mut r = reply(status_code(h.local_endpoints > 0), "application/json", body);
    if let Ok(v) = header::HeaderValue::from_str(&h.local_endpoints.to_string()) {
        r.headers_mut()
            .insert("X-Load-Balancing-Endpoint-Weight", v);
    }
    r
}

#[cfg(test)]
mod tests;

/// One answer of a [`serve_fn`] handler.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// A handler: path and query in, reply out. It runs on a blocking thread (it may read
/// files or run a command).
pub type Handler = Arc<dyn Fn(&str, &str) -> Reply + Send + Sync>;

/// Serve `handler` on `addr` (for pages such as `twill lab ui`): one small runtime, a
/// task per connection, the handler on the blocking pool. Returns the bound address and
/// the runtime, which serves for as long as it is kept.
pub fn serve_fn(
    addr: SocketAddr,
    handler: Handler,
) -> std::io::Result<(SocketAddr, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("twill-http")
        .enable_all()
        .build()?;
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener)?
    };
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let path = req.uri().path().to_string();
                    let query = req.uri().query().unwrap_or("").to_string();
                    async move {
                        let r = tokio::task::spawn_blocking(move || handler(&path, &query))
                            .await
                            .unwrap_or_else(|_| Reply {
                                status: 500,
                                content_type: "text/plain",
                                body: b"handler failed\n".to_vec(),
                            });
                        let mut resp = reply(
                            StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK),
                            r.content_type,
                            String::new(),
                        );
                        *resp.body_mut() = Full::new(Bytes::from(r.body));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = conn.await;
            });
        }
    });
    Ok((local, runtime))
}
