//! Bytes in, bytes out: parse a query, answer it from the current snapshot (or the
//! upstream), and encode the response within the transport's size limit.
//!
//! Malformed input never panics: anything with a readable header gets FORMERR, anything
//! shorter (or that is itself a response) is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use twill_dns::{Reply, Resolution, Snapshot, resolve};

use crate::cache::{Cache, Entry};
use crate::forward::{ForwardError, Forwarder};
use crate::metrics::{Metrics, Source, rcode_index, type_index};

/// The largest UDP response we offer to send (the DNS flag day 2020 value).
pub const OUR_UDP_PAYLOAD: u16 = 1232;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with one datagram or TCP frame.
pub enum Step {
    /// Send these bytes. `cacheable`: the same request bytes (id aside) always get the
    /// same response until the snapshot changes.
    Reply {
        bytes: Vec<u8>,
        cacheable: bool,
        qtype: usize,
    },
    /// Needs the upstream: finish with [`Engine::complete`] off the hot path.
    Upstream(Box<Pending>),
    Drop,
}

pub struct Pending {
    request: Message,
    request_len: usize,
    kind: PendingKind,
    limit: usize,
    started: Instant,
    tcp: bool,
    v6: bool,
}

enum PendingKind {
    Forward,
    Chase {
        reply: Reply,
        target: Name,
        qtype: RecordType,
    },
}

pub struct Engine {
    snapshot: ArcSwap<Snapshot>,
    generation: AtomicU64,
    forwarder: Option<Forwarder>,
    cache: Option<Cache>,
    metrics: Arc<Metrics>,
    /// The loop-detection probe name (CoreDNS's `loop` plugin) and how often it came back.
    loop_probe: Option<Name>,
    loop_hits: AtomicU32,
    loop_detected: AtomicBool,
    /// CoreDNS's `loadbalance`: A, AAAA and MX records of an answer in random order.
    loadbalance: bool,
}

/// Shuffle the A, AAAA and MX records among their own places (a CNAME stays ahead of
/// the addresses it leads to), as CoreDNS's `loadbalance` does. Whether the order may
/// have changed (two or more such records).
fn shuffle_addresses(records: &mut [Record]) -> bool {
    use rand::RngExt;
    let places: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            matches!(
                r.record_type(),
                RecordType::A | RecordType::AAAA | RecordType::MX
            )
        })
        .map(|(i, _)| i)
        .collect();
    if places.len() < 2 {
        return false;
    }
    let mut rng = rand::rng();
    for k in (1..places.len()).rev() {
        let j = rng.random_range(0..=k);
        records.swap(places[k], places[j]);
    }
    true
}

/// A header-only reply (FORMERR, NOTIMP, ...) built from the raw request bytes, for when
/// the message cannot be parsed. Hand-written because there is no message to give hickory.
fn header_reply(req: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    if req.len() < 12 || req[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0u8; 12];
    out[0] = req[0];
    out[1] = req[1];
    // QR=1, opcode copied, RD copied.
    out[2] = 0x80 | (req[2] & 0x79);
    out[3] = rcode.low() & 0x0f;
    Some(out)
}

fn encode(msg: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = msg.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Too big for the transport: as many whole records as fit, in section order (answer,
    // authority, additional; the OPT record always stays), with TC set so the client may
    // retry over TCP for the rest (RFC 1035 4.2.1, RFC 6891 7). CoreDNS sends the same
    // (miekg/dns `Msg.Truncate`), so a resolver that never retries still gets addresses.
    let total = msg.answers.len() + msg.authorities.len() + msg.additionals.len();
    let first = |k: usize| {
        let mut t = msg.truncate();
        t.metadata = msg.metadata;
        t.metadata.truncation = true;
        let mut left = k;
        for (from, to) in [
            (&msg.answers, &mut t.answers),
            (&msg.authorities, &mut t.authorities),
            (&msg.additionals, &mut t.additionals),
        ] {
            let n = left.min(from.len());
            to.extend_from_slice(&from[..n]);
            left -= n;
        }
        t.to_vec().ok()
    };
    // The longest prefix that fits: its length grows with k, so bisect (a few encodes
    // instead of one per record).
    let (mut fits, mut too_big) = (0, total);
    while too_big - fits > 1 {
        let mid = (fits + too_big) / 2;
        match first(mid) {
            Some(b) if b.len() <= limit => fits = mid,
            _ => too_big = mid,
        }
    }
    first(fits)
}

impl Engine {
    pub fn new(
        snapshot: Snapshot,
        forwarder: Option<Forwarder>,
        cache: Option<Cache>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Engine {
            snapshot: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(0),
            forwarder,
            cache,
            metrics,
            loop_probe: None,
            loop_hits: AtomicU32::new(0),
            loop_detected: AtomicBool::new(false),
            loadbalance: false,
        }
    }

    /// Answer A, AAAA and MX records in random order (CoreDNS's `loadbalance`). Such
    /// answers are no longer served from the per-worker wire cache.
    pub fn with_loadbalance(mut self) -> Self {
        self.loadbalance = true;
        self
    }

    /// Set the loop-detection probe name (see [`crate::Server::start`]).
    pub fn with_loop_probe(mut self, probe: Name) -> Self {
        self.loop_probe = Some(probe);
        self
    }

    /// Replace the snapshot; in-flight queries finish on the old one.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Bumped on every swap; per-worker wire caches compare it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.forwarder.as_ref()
    }

    pub fn loop_detected(&self) -> bool {
        self.loop_detected.load(Ordering::Relaxed)
    }

    /// First half of handling `bytes`: everything that needs no I/O.
    pub fn step(&self, bytes: &[u8], transport: Transport, v6: bool) -> Step {
        let started = Instant::now();
        let tcp = transport == Transport::Tcp;
        let request_len = bytes.len();
        let done = |out: Option<Vec<u8>>, rcode: ResponseCode, qtype: usize, source: Source| {
            self.metrics.observe(
                tcp,
                v6,
                qtype,
                rcode_index(rcode),
                source,
                started.elapsed().as_secs_f64(),
            );
            if let Some(o) = &out {
                self.metrics.observe_sizes(tcp, request_len, o.len());
            }
            match out {
                Some(bytes) => Step::Reply {
                    bytes,
                    cacheable: false,
                    qtype,
                },
                None => Step::Drop,
            }
        };
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                return done(
                    header_reply(bytes, ResponseCode::FormErr),
                    ResponseCode::FormErr,
                    10,
                    Source::Server,
                );
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return Step::Drop;
        }
        if request.metadata.op_code != OpCode::Query {
            return done(
                header_reply(bytes, ResponseCode::NotImp),
                ResponseCode::NotImp,
                10,
                Source::Server,
            );
        }
        if request.queries.len() != 1 {
            return done(
                header_reply(bytes, ResponseCode::FormErr),
                ResponseCode::FormErr,
                10,
                Source::Server,
            );
        }
        let limit = match (transport, &request.edns) {
            (Transport::Tcp, _) => 65535,
            (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, OUR_UDP_PAYLOAD)),
            (Transport::Udp, None) => 512,
        };
        let q = &request.queries[0];
        let (qname, qtype) = (q.name().clone(), q.query_type());
        let tidx = type_index(qtype);
        if let Some(e) = &request.edns
            && e.version() > 0
        {
            let mut m = self.response_to(&request);
            m.metadata.response_code = ResponseCode::BADVERS;
            return done(
                encode(&m, limit),
                ResponseCode::BADVERS,
                tidx,
                Source::Server,
            );
        }
        if let Some(probe) = &self.loop_probe
            && qname.eq(probe)
            && self.loop_hits.fetch_add(1, Ordering::Relaxed) >= 2
        {
            if !self.loop_detected.swap(true, Ordering::Relaxed) {
                tracing::error!(probe = %probe, "forwarding loop detected: the upstream sends our queries back to us");
                self.metrics.loop_detected.set(1);
            }
            let mut m = self.response_to(&request);
            m.metadata.response_code = ResponseCode::ServFail;
            return done(
                encode(&m, limit),
                ResponseCode::ServFail,
                tidx,
                Source::Server,
            );
        }
        if q.query_class() != DNSClass::IN {
            let mut m = self.response_to(&request);
            m.metadata.response_code = ResponseCode::Refused;
            return done(
                encode(&m, limit),
                ResponseCode::Refused,
                tidx,
                Source::Server,
            );
        }
        let snap = self.snapshot.load();
        let kind = match resolve(&snap, &qname, qtype) {
            Resolution::Reply(mut reply) => {
                let rcode = reply.rcode;
                let shuffled = self.loadbalance && shuffle_addresses(&mut reply.answers);
                let m = self.reply_message(&request, reply);
                let out = done(encode(&m, limit), rcode, tidx, Source::Kubernetes);
                return match out {
                    Step::Reply { bytes, qtype, .. } => Step::Reply {
                        bytes,
                        cacheable: !shuffled,
                        qtype,
                    },
                    other => other,
                };
            }
            Resolution::Chase {
                reply,
                target,
                qtype,
            } => PendingKind::Chase {
                reply,
                target,
                qtype,
            },
            Resolution::Forward => PendingKind::Forward,
        };
        Step::Upstream(Box::new(Pending {
            request,
            request_len,
            kind,
            limit,
            started,
            tcp,
            v6,
        }))
    }

    /// Second half: ask the upstream (or the cache) and encode.
    pub async fn complete(&self, p: Box<Pending>) -> Option<Vec<u8>> {
        let answer = match &p.kind {
            PendingKind::Chase { target, qtype, .. } => self.upstream(target, *qtype).await,
            PendingKind::Forward => {
                let q = &p.request.queries[0];
                self.upstream(q.name(), q.query_type()).await
            }
        };
        self.finish(p, answer)
    }

    fn finish(&self, p: Box<Pending>, answer: Result<Entry, ForwardError>) -> Option<Vec<u8>> {
        let q = &p.request.queries[0];
        let tidx = type_index(q.query_type());
        let (m, source) = match p.kind {
            PendingKind::Chase { mut reply, .. } => {
                match answer {
                    Ok(e) => reply.answers.extend(e.answers),
                    // CoreDNS drops the unfinished chain: NODATA. Its SOA comes from the
                    // same name's NODATA classification (any type the name lacks).
                    Err(_) => {
                        reply.answers.clear();
                        if let Resolution::Reply(r) =
                            resolve(&self.snapshot.load(), q.name(), RecordType::NULL)
                        {
                            reply.authority = r.authority;
                        }
                    }
                }
                (self.reply_message(&p.request, reply), Source::Kubernetes)
            }
            PendingKind::Forward => {
                let mut m = self.response_to(&p.request);
                match answer {
                    Ok(mut e) => {
                        if self.loadbalance {
                            shuffle_addresses(&mut e.answers);
                        }
                        m.metadata.response_code = e.rcode;
                        m.answers = e.answers;
                        m.authorities = e.authority;
                        m.additionals = e.additional;
                    }
                    // CoreDNS's forward refuses what is over max_concurrent, at once.
                    Err(ForwardError::Overloaded { .. }) => {
                        m.metadata.response_code = ResponseCode::Refused
                    }
                    Err(_) => m.metadata.response_code = ResponseCode::ServFail,
                }
                (m, Source::Forward)
            }
        };
        let rcode = m.metadata.response_code;
        self.metrics.observe(
            p.tcp,
            p.v6,
            tidx,
            rcode_index(rcode),
            source,
            p.started.elapsed().as_secs_f64(),
        );
        let out = encode(&m, p.limit);
        if let Some(o) = &out {
            self.metrics.observe_sizes(p.tcp, p.request_len, o.len());
        }
        out
    }

    /// Both halves, for callers that may block and have no runtime of their own (tests,
    /// fuzzing): an upstream query runs on a runtime made for it.
    pub fn handle(&self, bytes: &[u8], transport: Transport, v6: bool) -> Option<Vec<u8>> {
        match self.step(bytes, transport, v6) {
            Step::Reply { bytes, .. } => Some(bytes),
            Step::Upstream(p) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?
                .block_on(self.complete(p)),
            Step::Drop => None,
        }
    }

    /// Cached or fresh upstream answer.
    async fn upstream(&self, qname: &Name, qtype: RecordType) -> Result<Entry, ForwardError> {
        let key = qname.to_ascii();
        if let Some(cache) = &self.cache
            && let Some(e) = cache.get(&key, qtype, Instant::now(), &self.metrics)
        {
            return Ok(e);
        }
        let fwd = self.forwarder.as_ref().ok_or(ForwardError::NoUpstream)?;
        let m = fwd.exchange(qname, qtype).await.inspect_err(|e| {
            tracing::debug!(name = %qname, error = %e, "forward failed");
        })?;
        let entry = Entry {
            rcode: m.metadata.response_code,
            answers: m.answers,
            authority: m.authorities,
            additional: m
                .additionals
                .into_iter()
                .filter(|r: &Record| r.record_type() != RecordType::OPT)
                .collect(),
        };
        if let Some(cache) = &self.cache {
            cache.put(&key, qtype, entry.clone(), Instant::now(), &self.metrics);
        }
        Ok(entry)
    }

    /// An empty response echoing the question, RD and EDNS presence.
    fn response_to(&self, req: &Message) -> Message {
        let mut m = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.checking_disabled = req.metadata.checking_disabled;
        m.metadata.recursion_available = self.forwarder.is_some();
        m.queries = req.queries.clone();
        if req.edns.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(OUR_UDP_PAYLOAD);
            m.set_edns(e);
        }
        m
    }

    fn reply_message(&self, req: &Message, reply: Reply) -> Message {
        let mut m = self.response_to(req);
        m.metadata.response_code = reply.rcode;
        m.metadata.authoritative = reply.authoritative;
        m.answers = reply.answers;
        m.authorities = reply.authority;
        m.additionals = reply.additional;
        m
    }
}
