//! `twill lab flows`: the NetworkPolicy flow log of every node of a lab, merged.
//!
//! Each node's `twill netpol` agent keeps its own log and serves it on its HTTP server,
//! on the loopback of the node's namespace ([`AGENT_HTTP`]); this asks each node on a
//! thread that enters the node's namespace, and merges the answers by time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use twill_netpol_agent::flows::{Flow, FlowEnd, FlowQuery, Verdict};

use crate::kubectl::table;
use crate::netns;
use crate::spec::LabSpec;

/// Where each node's NetworkPolicy agent serves `/metrics` and `/flows` (in the node's
/// namespace).
pub const AGENT_HTTP: &str = "127.0.0.1:10255";

/// A query as `GET /flows` takes it.
pub fn query_string(q: &FlowQuery) -> String {
    let mut parts = Vec::new();
    if let Some(v) = q.verdict {
        parts.push(format!("verdict={}", v.as_str()));
    }
    if let Some(p) = &q.pod {
        parts.push(format!("pod={}", p.replace('/', "%2F")));
    }
    if let Some(s) = q.since {
        parts.push(format!("since={s}"));
    }
    if let Some(l) = q.limit {
        parts.push(format!("limit={l}"));
    }
    parts.join("&")
}

/// GET `path` from `addr` (HTTP/1.1, `Connection: close`): status and body. Hand-written:
/// one request to a server we run, on a thread inside a namespace, where a client runtime
/// would be more machinery than the request.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no HTTP answer"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: bad status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One node's records for `q` (`since` applies per node: sequence numbers are each
/// node's own).
pub fn node_flows(netns_name: &str, q: &FlowQuery) -> Result<Vec<Flow>, String> {
    let addr: SocketAddr = AGENT_HTTP.parse().map_err(|e| format!("{e}"))?;
    let path = format!("/flows?{}", query_string(q));
    let ns = netns_name.to_string();
    let (code, body) = std::thread::spawn(move || {
        netns::in_netns_thread(&ns, || get(addr, &path, Duration::from_secs(3)))
    })
    .join()
    .map_err(|_| "the query thread panicked".to_string())??;
    if code != 200 {
        return Err(format!("HTTP {code}: {}", body.trim()));
    }
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("record {l:?}: {e}")))
        .collect()
}

/// Every node's records, by time; nodes that did not answer come back with why.
pub fn lab_flows(
    spec: &LabSpec,
    q: &FlowQuery,
    since: &std::collections::BTreeMap<String, u64>,
) -> (Vec<Flow>, Vec<String>) {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for node in &spec.nodes {
        let mut nq = q.clone();
        nq.since = since.get(&node.name).copied().or(q.since);
        match node_flows(&node.netns, &nq) {
            Ok(f) => all.extend(f),
            Err(e) => errors.push(format!("{}: {e}", node.name)),
        }
    }
    all.sort_by(|a, b| (&a.time, &a.node, a.seq).cmp(&(&b.time, &b.node, b.seq)));
    (all, errors)
}

fn end(e: &FlowEnd) -> String {
    let who = e.pod.clone().unwrap_or_else(|| e.ip.to_string());
    match e.port {
        Some(p) => format!("{who}:{p}"),
        None => who,
    }
}

/// `kubectl`-style table: one line per record; `wide` adds the sentence.
pub fn flows_table(flows: &[Flow], wide: bool, header: bool) -> String {
    let mut rows = Vec::new();
    if header {
        let mut h: Vec<String> = [
            "TIME",
            "NODE",
            "VERDICT",
            "DIRECTION",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "POLICY",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if wide {
            h.push("REASON".into());
        }
        rows.push(h);
    }
    for f in flows {
        let time = f
            .time
            .split_once('T')
            .map_or(f.time.as_str(), |(_, t)| t)
            .trim_end_matches('Z');
        let time = time.get(..12).unwrap_or(time);
        let policy = match (&f.rule, f.verdict) {
            (Some(r), _) => r.clone(),
            (None, Verdict::Dropped) if !f.policies.is_empty() => f.policies.join(","),
            _ => "<none>".into(),
        };
        let mut row = vec![
            time.to_string(),
            f.node.clone(),
            f.verdict.as_str().to_string(),
            f.direction.clone(),
            f.protocol.clone(),
            end(&f.src),
            end(&f.dst),
            policy,
        ];
        if wide {
            row.push(f.reason.clone());
        }
        rows.push(row);
    }
    table(&rows)
}
