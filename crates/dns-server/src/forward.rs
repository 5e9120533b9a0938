//! Forwarding to upstream resolvers (CoreDNS's `forward` plugin): a policy picks the
//! order, unhealthy upstreams are skipped until a health check passes, a truncated UDP
//! answer is retried over TCP, and `max_concurrent` bounds the queries in flight.
//!
//! Exchanges are blocking: they run on the forwarding threads (UDP) or the connection's
//! thread (TCP), never on a UDP worker.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use rand::RngExt;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Random,
    RoundRobin,
    Sequential,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Policy::Random),
            "round_robin" => Ok(Policy::RoundRobin),
            "sequential" => Ok(Policy::Sequential),
            _ => Err(format!(
                "policy {s:?}: must be random, round_robin or sequential"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    #[error("no upstream configured")]
    NoUpstream,
    #[error("max_concurrent {max} queries already in flight")]
    Overloaded { max: usize },
    #[error("every upstream failed; last: {addr}: {source}")]
    AllFailed {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    pub policy: Policy,
    pub max_concurrent: usize,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Failures after which an upstream counts as down until a health check passes.
    pub max_fails: u32,
    pub health_check: Duration,
}

impl ForwardConfig {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        ForwardConfig {
            upstreams,
            policy: Policy::Random,
            max_concurrent: 1000,
            timeout: Duration::from_secs(2),
            max_fails: 2,
            health_check: Duration::from_millis(500),
        }
    }
}

/// Nameservers of a resolv.conf, port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next()).flatten()
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct Upstream {
    addr: SocketAddr,
    label: String,
    fails: AtomicU32,
}

pub struct Forwarder {
    config: ForwardConfig,
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    metrics: Arc<Metrics>,
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn query_message(qname: &Name, qtype: RecordType) -> Message {
    let mut m = Message::new(rand::rng().random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    m
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

fn check_reply(req: &Message, bytes: &[u8]) -> std::io::Result<Option<Message>> {
    let m = Message::from_vec(bytes).map_err(invalid)?;
    if m.metadata.id != req.metadata.id || m.queries != req.queries {
        return Ok(None);
    }
    Ok(Some(m))
}

fn exchange_udp(addr: SocketAddr, req: &Message, timeout: Duration) -> std::io::Result<Message> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .map_err(invalid)?;
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.connect(addr)?;
    sock.send(&req.to_vec().map_err(invalid)?)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf)?;
        // A reply with the wrong id or question is someone else's (or spoofed): keep waiting.
        if let Some(m) = check_reply(req, &buf[..n])? {
            return Ok(m);
        }
    }
}

pub fn exchange_tcp(
    addr: SocketAddr,
    req: &Message,
    timeout: Duration,
) -> std::io::Result<Message> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = req.to_vec().map_err(invalid)?;
    let mut framed = (body.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    check_reply(req, &buf)?.ok_or_else(|| invalid("reply does not match the query"))
}

impl Forwarder {
    pub fn new(config: ForwardConfig, metrics: Arc<Metrics>) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .map(|a| Upstream {
                addr: *a,
                label: a.to_string(),
                fails: AtomicU32::new(0),
            })
            .collect();
        Forwarder {
            config,
            upstreams,
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            metrics,
        }
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// Upstream indexes in the order this query tries them: healthy ones by policy, then
    /// the unhealthy ones (so a total outage still gets an attempt, as CoreDNS does).
    fn order(&self) -> Vec<usize> {
        let n = self.upstreams.len();
        let mut idx: Vec<usize> = (0..n).collect();
        match self.config.policy {
            Policy::Sequential => {}
            Policy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
                idx.rotate_left(start);
            }
            Policy::Random => {
                let mut rng = rand::rng();
                for i in (1..n).rev() {
                    idx.swap(i, rng.random_range(0..=i));
                }
            }
        }
        let down =
            |i: &usize| self.upstreams[*i].fails.load(Ordering::Relaxed) >= self.config.max_fails;
        let (mut up, down): (Vec<usize>, Vec<usize>) = idx.into_iter().partition(|i| !down(i));
        up.extend(down);
        up
    }

    /// Ask the upstreams for (`qname`, `qtype`).
    pub fn exchange(&self, qname: &Name, qtype: RecordType) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let max = self.config.max_concurrent;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.forward_max_concurrent_rejects.inc();
            return Err(ForwardError::Overloaded { max });
        }
        let _guard = InFlight(&self.in_flight);
        let req = query_message(qname, qtype);
        let mut last = None;
        for i in self.order() {
            let u = &self.upstreams[i];
            self.metrics.forward_request(&u.label);
            let result = exchange_udp(u.addr, &req, self.config.timeout).and_then(|m| {
                if m.metadata.truncation {
                    exchange_tcp(u.addr, &req, self.config.timeout)
                } else {
                    Ok(m)
                }
            });
            match result {
                Ok(m) => {
                    u.fails.store(0, Ordering::Relaxed);
                    self.metrics
                        .forward_response(&u.label, m.metadata.response_code);
                    return Ok(m);
                }
                Err(e) => {
                    u.fails.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(upstream = %u.addr, error = %e, "upstream exchange failed");
                    last = Some((u.addr, e));
                }
            }
        }
        let (addr, source) = last.ok_or(ForwardError::NoUpstream)?;
        Err(ForwardError::AllFailed { addr, source })
    }

    /// One round of health checks: every upstream marked down is asked `. IN NS`; an
    /// answer (any rcode) marks it up again.
    pub fn health_check(&self) {
        for u in &self.upstreams {
            if u.fails.load(Ordering::Relaxed) < self.config.max_fails {
                continue;
            }
            let req = query_message(&Name::root(), RecordType::NS);
            match exchange_udp(u.addr, &req, self.config.timeout) {
                Ok(_) => u.fails.store(0, Ordering::Relaxed),
                Err(_) => self.metrics.healthcheck_failure(&u.label),
            }
        }
    }

    pub fn healthy(&self) -> usize {
        self.upstreams
            .iter()
            .filter(|u| u.fails.load(Ordering::Relaxed) < self.config.max_fails)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(n: usize, policy: Policy) -> Forwarder {
        let ups = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
            .collect();
        let mut c = ForwardConfig::new(ups);
        c.policy = policy;
        Forwarder::new(c, Arc::new(Metrics::new("t")))
    }

    #[test]
    fn sequential_keeps_the_configured_order_and_round_robin_rotates() {
        let f = forwarder(3, Policy::Sequential);
        assert_eq!(f.order(), [0, 1, 2]);
        assert_eq!(f.order(), [0, 1, 2]);
        let f = forwarder(3, Policy::RoundRobin);
        assert_eq!(f.order(), [0, 1, 2]);
        assert_eq!(f.order(), [1, 2, 0]);
        assert_eq!(f.order(), [2, 0, 1]);
    }

    #[test]
    fn random_order_is_a_permutation() {
        let f = forwarder(5, Policy::Random);
        let mut o = f.order();
        o.sort();
        assert_eq!(o, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn upstreams_marked_down_are_tried_last() {
        let f = forwarder(3, Policy::Sequential);
        f.upstreams[0].fails.store(5, Ordering::Relaxed);
        assert_eq!(f.order(), [1, 2, 0]);
        assert_eq!(f.healthy(), 2);
    }

    #[test]
    fn max_concurrent_zero_rejects_without_sending() {
        let mut c = ForwardConfig::new(vec![SocketAddr::from(([127, 0, 0, 1], 9))]);
        c.max_concurrent = 0;
        let f = Forwarder::new(c, Arc::new(Metrics::new("t")));
        let err = f.exchange(&Name::root(), RecordType::NS).unwrap_err();
        assert!(matches!(err, ForwardError::Overloaded { max: 0 }), "{err}");
    }

    #[test]
    fn resolv_conf_nameservers_become_port_53_upstreams() {
        let ups = upstreams_from_resolv_conf(
            "# x\nnameserver 10.0.0.2\nsearch a\nnameserver fd00::1\nnameserver bogus\n",
        );
        assert_eq!(
            ups,
            [
                "10.0.0.2:53".parse().unwrap(),
                "[fd00::1]:53".parse().unwrap()
            ]
        );
    }
}
