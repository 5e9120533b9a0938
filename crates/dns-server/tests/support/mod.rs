//! Shared helpers: a server on a loopback port, a scripted upstream, tiny clients.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use twill_dns::{Config, Snapshot};
use twill_dns_server::{
    Cache, CacheConfig, Engine, ForwardConfig, Forwarder, Metrics, Running, ServerConfig,
};
use twill_model::{
    ClusterState, Endpoint, EndpointSlice, Namespace, Object, ObjectKey, Service, ServicePort,
    TargetPort,
};

/// A corpus file's objects and configuration.
pub fn corpus_fixture(file: &str) -> (Vec<Object>, Config) {
    let path = twill_testkit::testdata::area_dir("dns").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let f = twill_conformance::dns::parse_query_file(&v).unwrap_or_else(|e| panic!("{file}: {e}"));
    (f.state.objects(), f.config)
}

/// A headless service `big.testns` with `n` ready IPv4 endpoints.
pub fn big_headless(n: usize) -> (ClusterState, Config) {
    let svc = Service {
        key: ObjectKey::new("testns", "big"),
        headless: true,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: twill_model::Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(80),
            node_port: None,
            app_protocol: None,
        }],
        ..Default::default()
    };
    let endpoints = (0..n)
        .map(|i| Endpoint {
            addresses: vec![IpAddr::V4(Ipv4Addr::new(
                10,
                1,
                (i / 250) as u8,
                (i % 250) as u8 + 1,
            ))],
            ..Default::default()
        })
        .collect();
    let slice = EndpointSlice {
        key: ObjectKey::new("testns", "big-1"),
        service_name: Some("big".into()),
        endpoints,
        ..Default::default()
    };
    let ns = Namespace {
        name: "testns".into(),
        ..Default::default()
    };
    let state = ClusterState::from_objects([
        Object::Namespace(ns),
        Object::Service(svc),
        Object::EndpointSlice(slice),
    ]);
    (state, Config::new("cluster.local").unwrap())
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    running: Option<Running>,
}

impl TestServer {
    pub fn corpus(file: &str, upstream: Option<SocketAddr>) -> Self {
        let (objects, config) = corpus_fixture(file);
        Self::with_state(&ClusterState::from_objects(objects), &config, upstream)
    }

    pub fn with_state(state: &ClusterState, config: &Config, upstream: Option<SocketAddr>) -> Self {
        Self::start(
            state,
            config,
            upstream,
            "127.0.0.1:0".parse().unwrap(),
            None,
        )
    }

    /// A corpus server listening on `listen` (such as port 53 inside a test namespace).
    pub fn corpus_at(file: &str, listen: SocketAddr) -> Self {
        let (objects, config) = corpus_fixture(file);
        Self::start(
            &ClusterState::from_objects(objects),
            &config,
            None,
            listen,
            None,
        )
    }

    /// A server whose upstream is itself, with the loop probe on.
    pub fn looping(addr: SocketAddr) -> Self {
        let (objects, config) = corpus_fixture("clusterip-a-aaaa.json");
        let probe = Name::from_ascii("loop-probe.twill-test.").unwrap();
        Self::start(
            &ClusterState::from_objects(objects),
            &config,
            Some(addr),
            addr,
            Some(probe),
        )
    }

    /// A corpus server forwarding with these settings.
    pub fn forwarding(file: &str, forward: ForwardConfig) -> Self {
        let (objects, config) = corpus_fixture(file);
        Self::start_with(
            &ClusterState::from_objects(objects),
            &config,
            Some(forward),
            "127.0.0.1:0".parse().unwrap(),
            None,
        )
    }

    fn start(
        state: &ClusterState,
        config: &Config,
        upstream: Option<SocketAddr>,
        listen: SocketAddr,
        probe: Option<Name>,
    ) -> Self {
        let forward = upstream.map(|u| {
            let mut f = ForwardConfig::new(vec![u]);
            f.timeout = Duration::from_millis(300);
            f
        });
        Self::start_with(state, config, forward, listen, probe)
    }

    fn start_with(
        state: &ClusterState,
        config: &Config,
        forward: Option<ForwardConfig>,
        listen: SocketAddr,
        probe: Option<Name>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new("test"));
        let forwarder = forward.map(|f| Forwarder::new(f, metrics.clone()));
        let cache = Some(Cache::new(CacheConfig::default()));
        let mut engine = Engine::new(Snapshot::build(state, config, 1), forwarder, cache, metrics);
        if let Some(p) = &probe {
            engine = engine.with_loop_probe(p.clone());
        }
        let engine = Arc::new(engine);
        let mut sc = ServerConfig::new(vec![listen]);
        sc.workers = 2;
        sc.loop_probe = probe;
        let running = twill_dns_server::start(&sc, engine.clone()).expect("server starts");
        TestServer {
            addr: running.udp[0],
            engine,
            running: Some(running),
        }
    }

    pub fn ask(&self, qname: &str, qtype: RecordType, edns: bool) -> Message {
        let req = query(qname, qtype, edns);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        sock.send_to(&req.to_vec().unwrap(), self.addr).unwrap();
        let mut buf = vec![0u8; 65535];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no answer for {qname} {qtype}: {e}"));
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, req.metadata.id);
        m
    }

    /// Send raw bytes over UDP and parse the reply.
    pub fn send_raw(&self, bytes: &[u8]) -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        sock.send_to(bytes, self.addr).unwrap();
        let mut buf = vec![0u8; 65535];
        let n = sock.recv(&mut buf).expect("an answer");
        Message::from_vec(&buf[..n]).unwrap()
    }

    pub fn ask_tcp(&self, qname: &str, qtype: RecordType) -> Message {
        let req = query(qname, qtype, false).to_vec().unwrap();
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut framed = (req.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&req);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).unwrap();
        Message::from_vec(&body).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

pub fn query(qname: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(qname).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

fn rand_id() -> u16 {
    static N: AtomicUsize = AtomicUsize::new(0x1234);
    (N.fetch_add(7919, Ordering::Relaxed) & 0xffff) as u16
}

/// An upstream that answers `www.example.org. A 192.0.2.1` and NXDOMAIN for the rest,
/// counting the queries it sees.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    pub fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
                m.queries = req.queries.clone();
                let q = &req.queries[0];
                if q.name().to_ascii().eq_ignore_ascii_case("www.example.org.")
                    && q.query_type() == RecordType::A
                {
                    m.answers.push(Record::from_rdata(
                        q.name().clone(),
                        300,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                    ));
                } else {
                    m.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = sock.send_to(&m.to_vec().unwrap(), peer);
            }
        });
        FakeUpstream { addr, seen, stop }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An upstream that answers every UDP query with TC set and no records, and the same
/// query over TCP with three A records.
pub struct TruncatingUpstream {
    pub addr: SocketAddr,
    pub tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TruncatingUpstream {
    pub fn start() -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = std::net::TcpListener::bind(addr).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let answer = |req: &Message, full: bool| {
            let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
            m.queries = req.queries.clone();
            if full {
                for i in 1..=3 {
                    let name = req.queries[0].name().clone();
                    m.answers.push(Record::from_rdata(
                        name,
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                    ));
                }
            } else {
                m.metadata.truncation = true;
            }
            m.to_vec().unwrap()
        };
        let (flag, count) = (stop.clone(), tcp_queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf)
                    && let Ok(req) = Message::from_vec(&buf[..n])
                {
                    let _ = udp.send_to(&answer(&req, false), peer);
                }
                if let Ok((mut s, _)) = tcp.accept() {
                    s.set_nonblocking(false).unwrap();
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_ok() {
                        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut body).is_ok()
                            && let Ok(req) = Message::from_vec(&body)
                        {
                            count.fetch_add(1, Ordering::SeqCst);
                            let out = answer(&req, true);
                            let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&out);
                            let _ = s.write_all(&framed);
                        }
                    }
                }
            }
        });
        TruncatingUpstream {
            addr,
            tcp_queries,
            stop,
        }
    }
}

impl Drop for TruncatingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
