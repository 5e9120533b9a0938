//! The proxy's HTTP endpoints: `/healthz` (10256), `/metrics` (10249), and one server
//! per health-check node port of `externalTrafficPolicy: Local` services.
//!
//! Hand-rolled on std's `TcpListener` with a thread per listener: each answer is one
//! small response per connection, and pulling an async HTTP stack into a daemon that
//! is otherwise synchronous would cost more than it gives.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the health answers are computed from (updated after each sync).
#[derive(Debug, Default)]
pub struct HealthState {
    pub last_success: Option<Instant>,
    pub sync_period: Duration,
    /// Exposition text of the metrics registry.
    pub metrics_text: String,
    /// Health-check node port → (namespace/name, local endpoint count).
    pub service_health: BTreeMap<u16, (String, String, usize)>,
}

pub type Shared = Arc<Mutex<HealthState>>;

fn respond(
    mut s: TcpStream,
    status: &str,
    content_type: &str,
    extra: &[(&str, String)],
    body: &str,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
}

fn read_path(s: &mut TcpStream) -> Option<String> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    line.split_whitespace().nth(1).map(str::to_string)
}

/// `/healthz`: 200 when the last sync is recent (within two sync periods), else 503.
pub fn healthz_answer(st: &HealthState, now: Instant) -> (bool, String) {
    let healthy = st
        .last_success
        .is_some_and(|t| now.duration_since(t) <= st.sync_period * 2 + Duration::from_secs(1));
    let age = st.last_success.map(|t| now.duration_since(t).as_secs_f64());
    (
        healthy,
        format!(
            "{{\"healthy\":{healthy},\"secondsSinceLastSync\":{}}}",
            age.map(|a| format!("{a:.3}")).unwrap_or("null".into())
        ),
    )
}

/// Serve `/healthz` and/or `/metrics` on `addr` (one listener can serve both).
pub fn serve(addr: SocketAddr, state: Shared) -> std::io::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(addr)?;
    Ok(std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut conn = conn;
            let path = read_path(&mut conn).unwrap_or_default();
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            match path.as_str() {
                "/healthz" | "/livez" => {
                    let (ok, body) = healthz_answer(&st, Instant::now());
                    respond(
                        conn,
                        if ok {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        },
                        "application/json",
                        &[],
                        &body,
                    );
                }
                "/metrics" => respond(
                    conn,
                    "200 OK",
                    "text/plain; version=0.0.4",
                    &[],
                    &st.metrics_text,
                ),
                _ => respond(conn, "404 Not Found", "text/plain", &[], "not found\n"),
            }
        }
    }))
}

/// Serve one service's health-check node port, answering as kube-proxy does: 200 with
/// the local endpoint count when there is a local endpoint, 503 otherwise.
pub fn serve_service_health(
    port: u16,
    state: Shared,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
    Ok(std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut conn = conn;
            let _ = read_path(&mut conn);
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            let Some((ns, name, n)) = st.service_health.get(&port).cloned() else {
                respond(
                    conn,
                    "503 Service Unavailable",
                    "application/json",
                    &[],
                    "{}",
                );
                continue;
            };
            let body = format!(
                "{{\"service\":{{\"namespace\":\"{ns}\",\"name\":\"{name}\"}},\"localEndpoints\":{n},\"serviceProxyHealthy\":true}}"
            );
            let status = if n > 0 {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(
                conn,
                status,
                "application/json",
                &[
                    ("X-Content-Type-Options", "nosniff".into()),
                    ("X-Load-Balancing-Endpoint-Weight", n.to_string()),
                ],
                &body,
            );
        }
    }))
}
