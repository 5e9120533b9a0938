//! Forwarding to upstream resolvers (CoreDNS's `forward` plugin): a policy picks the
//! order, unhealthy upstreams are skipped until a health check passes, a truncated UDP
//! answer is retried over TCP, and `max_concurrent` bounds the queries in flight.
//!
//! Exchanges are asynchronous (tokio sockets and timers on the server's forwarding
//! runtime), so an upstream that never answers holds one in-flight slot per query, not a
//! thread. As in CoreDNS, each attempt waits at most `timeout` (its read timeout, 2 s)
//! and a query gives up after `deadline` (its `defaultTimeout`, 5 s) over all attempts;
//! a query beyond `max_concurrent` is refused at once and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

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
    #[error("no upstream answered within {0:?}")]
    Deadline(Duration),
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
    /// Longest a query may take over all its attempts.
    pub deadline: Duration,
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
            deadline: Duration::from_secs(5),
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

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time")
}

async fn exchange_udp(addr: SocketAddr, req: &Message) -> std::io::Result<Message> {
    // A fresh socket (and so a random source port) per query, as CoreDNS dials them.
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(&req.to_vec().map_err(invalid)?).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // A reply with the wrong id or question is someone else's (or spoofed): keep waiting.
        if let Some(m) = check_reply(req, &buf[..n])? {
            return Ok(m);
        }
    }
}

async fn exchange_tcp(addr: SocketAddr, req: &Message) -> std::io::Result<Message> {
    let mut s = TcpStream::connect(addr).await?;
    let body = req.to_vec().map_err(invalid)?;
    let mut framed = (body.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    s.write_all(&framed).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    check_reply(req, &buf)?.ok_or_else(|| invalid("reply does not match the query"))
}

/// One attempt at one upstream: UDP, then TCP when the UDP answer is truncated.
async fn attempt(addr: SocketAddr, req: &Message, limit: Duration) -> std::io::Result<Message> {
    let ask = async {
        let m = exchange_udp(addr, req).await?;
        if m.metadata.truncation {
            exchange_tcp(addr, req).await
        } else {
            Ok(m)
        }
    };
    timeout(limit, ask)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
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

    /// Take an in-flight slot, or refuse the query (counted) when `max_concurrent` are
    /// already out.
    fn admit(&self) -> Result<InFlight<'_>, ForwardError> {
        let max = self.config.max_concurrent;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.forward_max_concurrent_rejects.inc();
            return Err(ForwardError::Overloaded { max });
        }
        Ok(InFlight(&self.in_flight))
    }

    /// Queries waiting on an upstream now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Ask the upstreams for (`qname`, `qtype`): each in the policy's order until one
    /// answers, each attempt within `timeout`, all of them within `deadline`.
    pub async fn exchange(&self, qname: &Name, qtype: RecordType) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let _slot = self.admit()?;
        let req = query_message(qname, qtype);
        let deadline = Instant::now() + self.config.deadline;
        let mut last = None;
        for i in self.order() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ForwardError::Deadline(self.config.deadline));
            }
            let u = &self.upstreams[i];
            self.metrics.forward_request(&u.label);
            match attempt(u.addr, &req, self.config.timeout.min(left)).await {
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
    pub async fn health_check(&self) {
        let checks = self
            .upstreams
            .iter()
            .filter(|u| u.fails.load(Ordering::Relaxed) >= self.config.max_fails)
            .map(|u| async move {
                let req = query_message(&Name::root(), RecordType::NS);
                let asked = timeout(self.config.timeout, exchange_udp(u.addr, &req)).await;
                match asked {
                    Ok(Ok(_)) => u.fails.store(0, Ordering::Relaxed),
                    _ => self.metrics.healthcheck_failure(&u.label),
                }
            });
        futures::future::join_all(checks).await;
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
        let metrics = Arc::new(Metrics::new("t"));
        let f = Forwarder::new(c, metrics.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(f.exchange(&Name::root(), RecordType::NS))
            .unwrap_err();
        assert!(matches!(err, ForwardError::Overloaded { max: 0 }), "{err}");
        assert_eq!(metrics.forward_max_concurrent_rejects.get(), 1);
        assert_eq!(f.in_flight(), 0);
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
