//! The server over real sockets on loopback: wire robustness, truncation and TCP, zone
//! transfers, sync state, forwarding with cache and metrics, HTTP endpoints, dig.

mod support;

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::*;

#[test]
fn cluster_names_answer_over_udp_with_the_question_echoed() {
    let s = TestServer::corpus("clusterip-a-aaaa.json", None);
    let m = s.ask("SVC1.testns.svc.cluster.local.", RecordType::A, true);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(
        m.queries[0].name().to_string(),
        "SVC1.testns.svc.cluster.local."
    );
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].name.to_string(),
        "SVC1.testns.svc.cluster.local."
    );
    assert!(m.edns.is_some(), "an EDNS query gets an OPT record back");
}

#[test]
fn garbage_gets_formerr_or_silence_and_never_stops_the_server() {
    let s = TestServer::corpus("clusterip-a-aaaa.json", None);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let header = |qd: u16| {
        let mut h = vec![0xab, 0xcd, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
        h[4..6].copy_from_slice(&qd.to_be_bytes());
        h
    };
    // A header promising a question that is not there.
    let mut truncated = header(1);
    truncated.extend_from_slice(&[3, b'f', b'o']);
    // A name that is a compression pointer to itself.
    let mut looped = header(1);
    looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    // A label longer than 63 bytes.
    let mut long_label = header(1);
    long_label.push(64);
    long_label.extend(std::iter::repeat_n(b'a', 64));
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    for (what, packet) in [
        ("truncated", truncated),
        ("compression loop", looped),
        ("long label", long_label),
    ] {
        sock.send_to(&packet, s.addr).unwrap();
        let mut buf = [0u8; 512];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: no FORMERR: {e}"));
        assert!(n >= 12, "{what}");
        assert_eq!(&buf[..2], &[0xab, 0xcd], "{what}: id echoed");
        assert_eq!(buf[2] & 0x80, 0x80, "{what}: QR set");
        assert_eq!(
            buf[3] & 0x0f,
            ResponseCode::FormErr.low(),
            "{what}: FORMERR"
        );
    }
    // Too short for a header, and a response (QR set): silently dropped.
    for packet in [vec![], vec![1, 2, 3, 4, 5], {
        let mut r = header(0);
        r[2] |= 0x80;
        r
    }] {
        sock.send_to(&packet, s.addr).unwrap();
        let mut buf = [0u8; 512];
        assert!(sock.recv(&mut buf).is_err(), "{packet:?} must be dropped");
    }
    // Pseudo-random junk, then a good query still works.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..500 {
        let len = (x % 300) as usize;
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = sock.send_to(&packet, s.addr);
    }
    let m = s.ask("svc1.testns.svc.cluster.local.", RecordType::A, false);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(s.engine.metrics().panics.get(), 0);
}

#[test]
fn a_large_answer_is_truncated_over_udp_and_complete_over_tcp() {
    let (state, config) = big_headless(120);
    let s = TestServer::with_state(&state, &config, None);
    let udp = s.ask("big.testns.svc.cluster.local.", RecordType::A, false);
    assert!(
        udp.metadata.truncation,
        "120 A records do not fit 512 bytes"
    );
    // As many records as fit, as CoreDNS sends: 12 header bytes, 34 of question, then
    // 16 per A record with a compressed name: (512 - 46) / 16 = 29.
    assert_eq!(udp.answers.len(), 29);
    let tcp = s.ask_tcp("big.testns.svc.cluster.local.", RecordType::A);
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 120);
    assert_eq!(
        udp.answers[..],
        tcp.answers[..29],
        "the first records, in order"
    );
    // With EDNS0 the limit is our 1232 bytes, less the 11-byte OPT record: 73 records.
    let edns = s.ask("big.testns.svc.cluster.local.", RecordType::A, true);
    assert!(edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 73);
}

#[test]
fn zone_transfers_are_refused() {
    let s = TestServer::corpus("zone-apex.json", None);
    let m = s.ask_tcp("cluster.local.", RecordType::AXFR);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty() && m.authorities.is_empty());
}

#[test]
fn missing_names_servfail_until_a_synced_snapshot_is_swapped_in() {
    let (objects, config) = corpus_fixture("clusterip-a-aaaa.json");
    let mut state = twill_model::ClusterState::from_objects(objects);
    state.synced = false;
    let s = TestServer::with_state(&state, &config, None);
    assert!(!s.engine.snapshot().is_synced(), "not ready");
    let m = s.ask("svc0.testns.svc.cluster.local.", RecordType::A, true);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    state.synced = true;
    s.engine
        .swap(twill_dns::Snapshot::build(&state, &config, 2));
    let m = s.ask("svc0.testns.svc.cluster.local.", RecordType::A, true);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(s.engine.snapshot().is_synced(), "ready");
}

#[test]
fn a_swapped_snapshot_replaces_cached_wire_answers() {
    let (objects, config) = corpus_fixture("clusterip-a-aaaa.json");
    let state = twill_model::ClusterState::from_objects(objects.clone());
    let s = TestServer::with_state(&state, &config, None);
    let q = "svc1.testns.svc.cluster.local.";
    assert_eq!(s.ask(q, RecordType::A, false).answers.len(), 1);
    assert_eq!(
        s.ask(q, RecordType::A, false).answers.len(),
        1,
        "second ask is a wire-cache hit"
    );
    let without: Vec<_> = objects
        .into_iter()
        .filter(|o| !matches!(o, twill_model::Object::Service(svc) if svc.key.name == "svc1"))
        .collect();
    s.engine.swap(twill_dns::Snapshot::build(
        &twill_model::ClusterState::from_objects(without),
        &config,
        3,
    ));
    assert_eq!(
        s.ask(q, RecordType::A, false).metadata.response_code,
        ResponseCode::NXDomain
    );
}

#[test]
fn names_outside_the_zone_are_forwarded_cached_and_counted() {
    let up = FakeUpstream::start();
    let s = TestServer::corpus("clusterip-a-aaaa.json", Some(up.addr));
    for _ in 0..3 {
        let m = s.ask("www.example.org.", RecordType::A, true);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert!(!m.metadata.authoritative);
    }
    assert_eq!(
        up.seen.load(Ordering::SeqCst),
        1,
        "two of three answers come from the cache"
    );
    let nx = s.ask("nothing.example.org.", RecordType::A, true);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let body = s.engine.metrics().encode();
    for name in [
        "coredns_dns_requests_total",
        "coredns_dns_responses_total",
        "coredns_dns_request_duration_seconds_bucket",
        "coredns_cache_hits_total",
        "coredns_cache_misses_total",
        "coredns_forward_requests_total",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert!(
        body.contains(
            "coredns_cache_hits_total{server=\"test\",zones=\".\",view=\"\",type=\"success\"} 2"
        ),
        "{body}"
    );
}

#[test]
fn an_unreachable_upstream_gives_servfail_quickly() {
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let s = TestServer::corpus("clusterip-a-aaaa.json", Some(addr));
    let m = s.ask("www.example.org.", RecordType::A, true);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

/// An upstream that never answers holds only `max_concurrent` queries: the rest are
/// refused at once and counted (CoreDNS's `forward`), every query gets an answer, and
/// cluster names keep answering meanwhile.
#[test]
fn a_silent_upstream_costs_max_concurrent_queries_and_the_rest_are_refused_at_once() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut f = twill_dns_server::ForwardConfig::new(vec![silent.local_addr().unwrap()]);
    f.max_concurrent = 20;
    f.timeout = Duration::from_secs(2);
    let s = TestServer::forwarding("clusterip-a-aaaa.json", f);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let total = 200;
    for i in 0..total {
        let q = support::query(&format!("n{i}.example.org."), RecordType::A, true);
        client.send_to(&q.to_vec().unwrap(), s.addr).unwrap();
    }
    // Refusals come before any upstream attempt has timed out.
    let mut refused = 0;
    let mut servfail = 0;
    let mut buf = vec![0u8; 4096];
    while refused + servfail < total {
        let n = client
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{refused} refused, {servfail} SERVFAIL, then {e}"));
        match Message::from_vec(&buf[..n]).unwrap().metadata.response_code {
            ResponseCode::Refused => {
                assert_eq!(servfail, 0, "a refusal waited for a timeout");
                refused += 1
            }
            ResponseCode::ServFail => servfail += 1,
            other => panic!("unexpected {other}"),
        }
        if refused == total - 20 {
            // All 180 refusals are out while 20 queries wait on the upstream: the
            // cluster's own names still answer.
            let m = s.ask("svc1.testns.svc.cluster.local.", RecordType::A, false);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
    }
    assert_eq!((refused, servfail), (total - 20, 20));
    let body = s.engine.metrics().encode();
    assert!(
        body.contains("coredns_forward_max_concurrent_rejects_total 180"),
        "{body}"
    );
    assert_eq!(s.engine.forwarder().unwrap().in_flight(), 0);
}

#[test]
fn forwarding_to_ourselves_is_detected_as_a_loop() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let s = TestServer::looping(addr);
    for _ in 0..50 {
        if s.engine.loop_detected() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the probe went round the loop but was not noticed");
}

#[test]
fn dig_reads_cluster_answers_over_udp_and_tcp() {
    if !twill_testkit::require_tool("dig_reads_cluster_answers_over_udp_and_tcp", "dig") {
        return;
    }
    let s = TestServer::corpus("srv-records.json", None);
    let port = s.addr.port().to_string();
    let dig = |args: &[&str]| {
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+short", "+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("running dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig(&["svc1.testns.svc.cluster.local", "A"]), "10.0.0.1");
    assert_eq!(
        dig(&["+tcp", "svc1.testns.svc.cluster.local", "A"]),
        "10.0.0.1"
    );
    assert_eq!(
        dig(&["_http._tcp.svc1.testns.svc.cluster.local", "SRV"]),
        "0 100 80 svc1.testns.svc.cluster.local."
    );
    let mut hdls: Vec<String> = dig(&["hdls1.testns.svc.cluster.local", "A"])
        .lines()
        .map(String::from)
        .collect();
    hdls.sort();
    assert_eq!(hdls, ["172.0.0.2", "172.0.0.3", "172.0.0.4", "172.0.0.5"]);
    let status = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port,
            "+time=2",
            "+tries=1",
            "svc0.testns.svc.cluster.local",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("status: NXDOMAIN"));
}

mod garbage {
    use std::sync::{Arc, LazyLock};

    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;
    use proptest::prelude::*;
    use twill_dns_server::{Engine, Metrics, Transport};

    use super::support::{big_headless, query};

    static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
        let (state, config) = big_headless(40);
        Engine::new(
            twill_dns::Snapshot::build(&state, &config, 1),
            None,
            None,
            Arc::new(Metrics::new("t")),
        )
    });

    fn check(data: &[u8]) {
        for t in [Transport::Udp, Transport::Tcp] {
            if let Some(reply) = ENGINE.handle(data, t, false) {
                assert!(reply.len() >= 12);
                assert_eq!(reply[..2], data[..2], "id echoed");
                if reply.len() > 12 {
                    Message::from_vec(&reply).expect("our reply parses");
                }
                if t == Transport::Udp {
                    assert!(reply.len() <= 1232);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic_and_replies_parse(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            check(&data);
        }

        #[test]
        fn mutated_queries_never_panic_and_replies_parse(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut data = query("big.testns.svc.cluster.local.", RecordType::A, true).to_vec().unwrap();
            for (at, b) in flips {
                let i = at % data.len();
                data[i] = b;
            }
            data.truncate(cut % (data.len() + 1));
            check(&data);
        }
    }
}

#[test]
fn a_truncated_upstream_answer_is_retried_over_tcp() {
    let up = TruncatingUpstream::start();
    let s = TestServer::corpus("clusterip-a-aaaa.json", Some(up.addr));
    let m = s.ask_tcp("big.example.org.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 3, "the full answer came over TCP");
    assert!(up.tcp_queries.load(Ordering::SeqCst) >= 1);
}

#[test]
fn edns_versions_above_zero_get_badvers() {
    let s = TestServer::corpus("clusterip-a-aaaa.json", None);
    let mut q = support::query("svc1.testns.svc.cluster.local.", RecordType::A, true);
    if let Some(e) = q.edns.as_mut() {
        e.set_version(1);
    }
    let m = s.send_raw(&q.to_vec().unwrap());
    // BADVERS and BADSIG share code 16 (RFC 6891, RFC 8945); the parser names it BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16);
}

/// CoreDNS's size histograms count every answer, wire-cache hits included, and
/// `coredns_build_info` is there for dashboards that join on it.
#[test]
fn request_and_response_sizes_are_counted_for_every_answer() {
    let s = TestServer::corpus("clusterip-a-aaaa.json", None);
    for _ in 0..5 {
        let m = s.ask("svc1.testns.svc.cluster.local.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    let body = s.engine.metrics().encode();
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix) && l.contains("proto=\"udp\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing:\n{body}"))
    };
    assert_eq!(value("coredns_dns_request_size_bytes_count"), 5.0);
    assert_eq!(value("coredns_dns_response_size_bytes_count"), 5.0);
    // The same query each time: 5 × its length.
    let q = support::query("svc1.testns.svc.cluster.local.", RecordType::A, false);
    let len = q.to_vec().unwrap().len() as f64;
    assert_eq!(value("coredns_dns_request_size_bytes_sum"), 5.0 * len);
    assert!(
        body.contains("coredns_build_info{version=\"") && body.contains("goversion=\"rust\"} 1"),
        "{body}"
    );
}

/// `loadbalance`: the same records, in varying order; without it, one fixed order.
#[test]
fn loadbalance_shuffles_address_records_and_keeps_the_set() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use twill_dns_server::{Engine, Metrics, Transport};
    let (state, config) = big_headless(8);
    let engine = |lb: bool| {
        let e = Engine::new(
            twill_dns::Snapshot::build(&state, &config, 1),
            None,
            None,
            Arc::new(Metrics::new("t")),
        );
        if lb { e.with_loadbalance() } else { e }
    };
    let q = support::query("big.testns.svc.cluster.local.", RecordType::A, true)
        .to_vec()
        .unwrap();
    let orders = |e: &Engine| -> BTreeSet<Vec<String>> {
        (0..20)
            .map(|_| {
                let m = Message::from_vec(&e.handle(&q, Transport::Udp, false).unwrap()).unwrap();
                m.answers.iter().map(|r| r.data.to_string()).collect()
            })
            .collect()
    };
    let shuffled = orders(&engine(true));
    assert!(shuffled.len() > 1, "20 answers, one order: {shuffled:?}");
    let sets: BTreeSet<BTreeSet<String>> = shuffled
        .iter()
        .map(|o| o.iter().cloned().collect())
        .collect();
    assert_eq!(sets.len(), 1, "always the same 8 records");
    assert_eq!(orders(&engine(false)).len(), 1);
}
