//! The node agent and cluster DNS fed by the Kubernetes API, tested against recorded
//! API server exchanges (`crates/kube-source/tests/recorded/`, replayed by the same
//! support code the source's own tests use):
//!
//! - in process: the proxy rules rendered from the replayed state, and the DNS answers
//!   from it, equal those from the equivalent manifests; DNS answers SERVFAIL until the
//!   source says synced;
//! - the real binary against a loopback HTTP server named by a kubeconfig: `twill dns
//!   --source kube` (SERVFAIL until synced, then the cluster's records) and `twill agent
//!   --proxy-mode iptables` in a network namespace (it ends up with exactly the iptables
//!   rules `twill proxy` writes for the manifests, and keeps them, counting the errors,
//!   when the API server goes away).
#![cfg(feature = "kube")]

#[path = "../../kube-source/tests/support/replay.rs"]
#[allow(dead_code)] // shared with the source's own tests, which use all of it
mod replay;

use std::convert::Infallible;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::client::Body;
use serde_json::Value;
use twill_kube_source::{Backoff, SourceConfig, watch};
use twill_model::{ClusterState, IpFamily, ObjectEvent};
use twill_proxy_core::{FeatureGates, ModelConfig, build_model};
use twill_proxy_iptables::{Config, LocalDetector, SyncMode, render};

use replay::Replay;

const NODE: &str = "node-a";
const NODE_IP: &str = "192.168.56.10";
const CLUSTER_CIDR: &str = "10.244.0.0/16";

fn recorded(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kube-source/tests/recorded")
        .join(name)
}

fn load(name: &str) -> Value {
    let path = recorded(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn manifests_state(name: &str) -> ClusterState {
    let loaded = twill_manifest::files::load_paths(&[recorded(name).to_str().unwrap()]);
    assert!(!loaded.has_errors(), "{:?}", loaded.problems);
    ClusterState::from_objects(loaded.into_objects())
}

fn fast(config: SourceConfig) -> SourceConfig {
    SourceConfig {
        backoff: Some(Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
        }),
        ..config
    }
}

/// Every event the source emits over the whole recording, in order.
async fn replay_events(recording: &Value, config: &SourceConfig) -> Vec<ObjectEvent> {
    let replay = Replay::load(recording);
    let client = kube::Client::new(replay.service(), "default");
    let mut events = std::pin::pin!(watch(client, config));
    let waiter = replay.clone();
    let finished = async move { waiter.finished().await };
    let mut finished = std::pin::pin!(finished);
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    let mut deadline = std::pin::pin!(deadline);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            biased;
            item = events.next() => {
                if let Ok(e) = item.expect("the source never ends") {
                    if e == ObjectEvent::Synced {
                        replay.release_watches();
                    }
                    out.push(e);
                }
            }
            () = &mut finished => break,
            () = &mut deadline => panic!("replay did not finish: {:?}", replay.mismatches()),
        }
    }
    assert_eq!(replay.mismatches(), Vec::<String>::new());
    out
}

fn state_of(events: &[ObjectEvent]) -> ClusterState {
    let mut s = ClusterState::default();
    for e in events {
        s.apply(e.clone());
    }
    s
}

fn proxy_rules(state: &ClusterState) -> String {
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: NODE.into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    let (model, skipped) = build_model(state, &mc);
    assert!(skipped.is_empty(), "{skipped:?}");
    let cfg = Config::new(
        IpFamily::V4,
        vec![NODE_IP.parse().unwrap()],
        LocalDetector::ClusterCidr(CLUSTER_CIDR.parse().unwrap()),
    );
    render(&cfg, &model, SyncMode::Full { existing: None }).text
}

#[tokio::test]
async fn proxy_rules_rendered_from_the_replayed_api_equal_those_from_the_equivalent_manifests() {
    let events = replay_events(
        &load("node-agent.json"),
        &fast(SourceConfig::node_agent().local_pods_only(NODE)),
    )
    .await;
    let from_api = proxy_rules(&state_of(&events));
    let from_files = proxy_rules(&manifests_state("node-agent.final.yaml"));
    assert_eq!(from_api, from_files);
    // Not vacuous: the replay ends with shop/web (updated live) and shop/api (added by
    // the relist after 410 Gone) programmed, and shop/legacy (deleted meanwhile) gone.
    assert!(from_api.contains("shop/web:http cluster IP"), "{from_api}");
    assert!(
        from_api.contains("shop/api:grpc has no endpoints"),
        "{from_api}"
    );
    assert!(!from_api.contains("shop/legacy"), "{from_api}");
    // And what the proxy would have had at the sync differs (the watch changed it).
    let at_sync = events
        .iter()
        .position(|e| *e == ObjectEvent::Synced)
        .unwrap();
    assert_ne!(proxy_rules(&state_of(&events[..=at_sync])), from_api);
}

/// Every question a cluster DNS client may ask about `state`'s objects, and some it
/// should be told do not exist.
fn questions(state: &ClusterState) -> Vec<(Name, RecordType)> {
    let mut names: Vec<String> = vec![
        "legacy.shop.svc.cluster.local.".into(),
        "nope.nowhere.svc.cluster.local.".into(),
        "shop.svc.cluster.local.".into(),
        "cluster.local.".into(),
    ];
    for s in state.services.values() {
        let base = format!("{}.{}.svc.cluster.local.", s.key.name, s.key.namespace);
        names.push(base.clone());
        for p in s.ports.iter().filter(|p| !p.name.is_empty()) {
            names.push(format!(
                "_{}._{}.{base}",
                p.name,
                p.protocol.as_str().to_lowercase()
            ));
        }
        for ip in &s.cluster_ips {
            names.push(reverse(ip));
        }
    }
    for p in state.pods.values() {
        for ip in &p.pod_ips {
            names.push(format!(
                "{}.{}.pod.cluster.local.",
                ip.to_string().replace('.', "-"),
                p.key.namespace
            ));
        }
    }
    let mut out = Vec::new();
    for n in names {
        let name = Name::from_ascii(&n).unwrap();
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::PTR,
        ] {
            out.push((name.clone(), t));
        }
    }
    out
}

fn reverse(ip: &std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(_) => "ip6.arpa.".into(),
    }
}

fn dns_config() -> twill_dns::Config {
    let mut c = twill_dns::Config::new("cluster.local")
        .unwrap()
        .with_reverse_zones(&["in-addr.arpa".to_string()])
        .unwrap();
    c.pods = "insecure".parse().unwrap();
    c
}

fn answers(state: &ClusterState, qs: &[(Name, RecordType)]) -> Vec<String> {
    let snap = twill_dns::Snapshot::build(state, &dns_config(), 1);
    qs.iter()
        .map(|(n, t)| format!("{n} {t}: {:?}", twill_dns::resolve(&snap, n, *t)))
        .collect()
}

fn rcode_of(state: &ClusterState, name: &str) -> ResponseCode {
    let snap = twill_dns::Snapshot::build(state, &dns_config(), 1);
    match twill_dns::resolve(&snap, &Name::from_ascii(name).unwrap(), RecordType::A) {
        twill_dns::Resolution::Reply(r) => r.rcode,
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn dns_answers_from_the_replayed_api_equal_those_from_the_equivalent_manifests() {
    let events = replay_events(
        &load("node-agent.json"),
        &fast(SourceConfig::node_agent().local_pods_only(NODE)),
    )
    .await;
    let from_api = state_of(&events);
    let from_files = manifests_state("node-agent.final.yaml");
    let qs = questions(&from_files);
    assert!(qs.len() > 40, "{}", qs.len());
    assert_eq!(answers(&from_api, &qs), answers(&from_files, &qs));
    assert_eq!(
        rcode_of(&from_api, "api.shop.svc.cluster.local."),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode_of(&from_api, "legacy.shop.svc.cluster.local."),
        ResponseCode::NXDomain
    );
}

#[tokio::test]
async fn dns_answers_servfail_for_cluster_names_until_the_source_says_synced() {
    let events = replay_events(&load("dns.json"), &fast(SourceConfig::dns())).await;
    let at_sync = events
        .iter()
        .position(|e| *e == ObjectEvent::Synced)
        .unwrap();
    // Before the first event, DNS knows nothing: every cluster name is SERVFAIL (never
    // NXDOMAIN, which a client would cache for a name that merely was not listed yet).
    let nothing = ClusterState::default();
    for name in [
        "web.shop.svc.cluster.local.",
        "kubernetes.default.svc.cluster.local.",
        "nope.shop.svc.cluster.local.",
    ] {
        assert_eq!(rcode_of(&nothing, name), ResponseCode::ServFail, "{name}");
    }
    // Part of the listing applied but not the synced mark (a consumer reading the
    // channel mid-batch): known names answer, unknown ones are still SERVFAIL.
    let half = state_of(&events[..at_sync]);
    assert!(half.services.len() >= 3);
    assert_eq!(
        rcode_of(&half, "web.shop.svc.cluster.local."),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode_of(&half, "nope.shop.svc.cluster.local."),
        ResponseCode::ServFail
    );
    // Synced: the zone is authoritative, unknown names are NXDOMAIN.
    let synced = state_of(&events[..=at_sync]);
    assert_eq!(
        rcode_of(&synced, "web.shop.svc.cluster.local."),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode_of(&synced, "nope.shop.svc.cluster.local."),
        ResponseCode::NXDomain
    );
}

// ---------------------------------------------------------------------------------------
// The binary against a kubeconfig.

/// Serve `replay` over HTTP/1.1 on `listener`.
fn serve(listener: tokio::net::TcpListener, replay: Replay) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let replay = replay.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let replay = replay.clone();
                    async move {
                        let req = req.map(|_| Body::from(Vec::new()));
                        Ok::<_, Infallible>(replay.serve(req).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// A scratch directory with a kubeconfig for `server`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str, server: SocketAddr) -> Self {
        let dir =
            std::env::temp_dir().join(format!("twill-agent-replay-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: replay\n  cluster:\n    server: http://{server}\n\
             users:\n- name: agent\n  user:\n    token: replay-token\n\
             contexts:\n- name: replay\n  context:\n    cluster: replay\n    user: agent\n\
             current-context: replay\n"
        );
        std::fs::write(dir.join("kubeconfig"), text).unwrap();
        Scratch(dir)
    }

    fn kubeconfig(&self) -> String {
        self.0.join("kubeconfig").display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One UDP query; `None` on timeout.
fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    sock.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

#[test]
fn twill_dns_from_a_kubeconfig_answers_servfail_until_synced_then_from_the_cluster() {
    let api_port = free_port();
    let api: SocketAddr = ([127, 0, 0, 1], api_port).into();
    let scratch = Scratch::new("dns", api);
    let dns: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let http = |_| format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_twill"))
        .args([
            "dns",
            "--source",
            "kube",
            "--kubeconfig",
            &scratch.kubeconfig(),
        ])
        .args(["--listen", &dns.to_string(), "--workers", "1"])
        .args([
            "--health",
            &http(0),
            "--ready",
            &http(1),
            "--metrics",
            &http(2),
        ])
        .args(["--upstream-resolv-conf", "/dev/null", "--no-loop-check"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twill dns starts");
    let mut child = Running(child);
    // The API server is not up yet: the cluster zone is not known, so SERVFAIL.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(m) = ask(dns, "web.shop.svc.cluster.local.", RecordType::A) {
            break m;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("twill dns exited: {status}");
        }
        assert!(Instant::now() < deadline, "twill dns never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        first.metadata.response_code,
        ResponseCode::ServFail,
        "{first:?}"
    );

    // Now the API server comes up with the recorded cluster.
    let recording = load("dns.json");
    let replay = Replay::load(&recording);
    replay.release_watches();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(api))
        .expect("the API port is still free");
    rt.block_on(async { serve(listener, replay.clone()) });

    let deadline = Instant::now() + Duration::from_secs(40);
    let answer = loop {
        let m = ask(dns, "web.shop.svc.cluster.local.", RecordType::A);
        if let Some(m) = m.filter(|m| m.metadata.response_code != ResponseCode::ServFail) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "still SERVFAIL after the API came up; requests: {:?}",
            replay.calls()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected = manifests_state_of_dns_recording(&recording);
    let web = expected
        .services
        .values()
        .find(|s| s.key.name == "web" && s.key.namespace == "shop")
        .unwrap();
    let got: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, [web.cluster_ips[0].to_string()], "{answer:?}");
    let nx = ask(dns, "nope.shop.svc.cluster.local.", RecordType::A).unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    for c in replay.calls() {
        assert_eq!(
            c.authorization.as_deref(),
            Some("Bearer replay-token"),
            "{c:?}"
        );
    }
    drop(child);
    drop(rt);
}

/// The state the DNS recording's lists describe (it has no watch changes), from the
/// list bodies decoded as manifests are.
fn manifests_state_of_dns_recording(recording: &Value) -> ClusterState {
    let mut objects = Vec::new();
    for ex in recording["exchanges"].as_array().unwrap() {
        let body = &ex["body"];
        let Some(items) = body["items"].as_array() else {
            continue;
        };
        let kind = body["kind"].as_str().unwrap().trim_end_matches("List");
        for item in items {
            let mut item = item.clone();
            item["kind"] = kind.into();
            item["apiVersion"] = body["apiVersion"].clone();
            if let Ok(twill_manifest::Decoded::Object(o)) = twill_manifest::decode_value(&item) {
                objects.push(o);
            }
        }
    }
    ClusterState::from_objects(objects)
}

/// `iptables-save` of the nat and filter tables without comments and counters, then
/// `ipset save` (without the random hash seeds).
fn saved_rules() -> String {
    let mut out = String::new();
    if let Ok(o) = Command::new("ipset").arg("save").output() {
        // A set's hash seed (`initval`) is random per creation: not part of the state.
        let mut sets: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| match l.find(" initval ") {
                Some(i) => {
                    let rest = &l[i + " initval ".len()..];
                    let after = rest.find(' ').map_or("", |j| &rest[j..]);
                    format!("{}{after}", &l[..i])
                }
                None => l.to_string(),
            })
            .collect();
        sets.sort();
        for l in sets {
            out.push_str(&l);
            out.push('\n');
        }
    }
    // kube-proxy's nftables table, when the nftables mode made one.
    if let Ok(o) = Command::new("nft")
        .args(["list", "table", "ip", "kube-proxy"])
        .output()
        && o.status.success()
    {
        // The kernel lists objects in creation order, which depends on the sync history
        // (a full sync versus incremental ones); compare them as a set.
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut blocks: Vec<&str> = text
            .trim_end()
            .trim_end_matches('}')
            .split("\n\n")
            .map(str::trim_end)
            .collect();
        blocks.sort_unstable();
        out.push_str(&blocks.join("\n\n"));
        out.push('\n');
    }
    for table in ["nat", "filter"] {
        let o = Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if line.starts_with('#') {
                continue;
            }
            let line = match line.rsplit_once(" [") {
                Some((head, tail)) if line.starts_with(':') && tail.ends_with(']') => head,
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn twill_agent_from_a_kubeconfig_programs_what_twill_proxy_and_netpol_program_for_the_manifests() {
    agent_programs_what_the_standalone_commands_program(
        "twill_agent_from_a_kubeconfig_programs_what_twill_proxy_and_netpol_program_for_the_manifests",
        "iptables",
    );
}

#[test]
fn twill_agent_in_nftables_mode_programs_what_twill_proxy_programs_for_the_manifests() {
    agent_programs_what_the_standalone_commands_program(
        "twill_agent_in_nftables_mode_programs_what_twill_proxy_programs_for_the_manifests",
        "nftables",
    );
}

fn agent_programs_what_the_standalone_commands_program(name: &str, mode: &str) {
    if !twill_testkit::require_root(name)
        || (mode == "nftables" && !twill_testkit::require_tool(name, "nft"))
        || !twill_testkit::require_tool(name, "iptables-restore")
        || !twill_testkit::require_tool(name, "ipset")
    {
        return;
    }
    let twill = env!("CARGO_BIN_EXE_twill");
    // What `twill proxy` and `twill netpol` write for the equivalent manifests, in a
    // namespace of their own.
    let files_ns = twill_testkit::netns::Netns::new("apf");
    let final_yaml = recorded("node-agent.final.yaml").display().to_string();
    let expected = files_ns.run(|| {
        let out = Command::new(twill)
            .args([
                "proxy",
                "-f",
                &final_yaml,
                "--once",
                "--hostname-override",
                NODE,
                "--mode",
                mode,
            ])
            .args(["--node-ip", NODE_IP, "--cluster-cidr", CLUSTER_CIDR])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "twill proxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(twill)
            .args(["netpol", "-f", &final_yaml, "--once", "--node", NODE])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "twill netpol: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        saved_rules()
    });
    let service_comment = match mode {
        "nftables" => "service-",
        _ => "\"shop/web:http cluster IP\"",
    };
    assert!(expected.contains(service_comment), "{expected}");
    assert!(expected.contains("TWILL-NP"), "{expected}");

    // The agent against the recorded API server, in another.
    let api_ns = twill_testkit::netns::Netns::new("apa");
    let (got, log, healthz, metrics) = api_ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let replay = unfiltered_node_agent_replay();
            // Watches answer as soon as asked: the agent cannot tell the test when it
            // synced. The end state is what is compared.
            replay.release_watches();
            // The API server on a runtime of its own, so that shutting the runtime down
            // takes the server and every open watch away at once.
            let api = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let scratch = Scratch::new(&format!("agent-{mode}"), listener.local_addr().unwrap());
            {
                let replay = replay.clone();
                api.spawn(async move {
                    serve(tokio::net::TcpListener::from_std(listener).unwrap(), replay)
                });
            }
            let log_path = scratch.0.join("agent.log");
            let child = Command::new(twill)
                .args([
                    "--log",
                    "info",
                    "agent",
                    "--kubeconfig",
                    &scratch.kubeconfig(),
                ])
                .args(["--hostname-override", NODE, "--network-policy"])
                .args(["--proxy-mode", mode, "--cluster-cidr", CLUSTER_CIDR])
                .args(["--min-sync-period", "100ms", "--sync-period", "30s"])
                // kube-proxy's default /healthz and /metrics ports (in this namespace).
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("twill agent starts");
            let mut child = Running(child);
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut got = String::new();
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(Some(status)) = child.0.try_wait() {
                    panic!(
                        "twill agent exited: {status}: {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                got = saved_rules();
                if got == expected {
                    break;
                }
            }
            // Converged: the one HTTP server says healthy and serves every part's metrics.
            let healthz = http_get("127.0.0.1:10256", "/healthz");
            let metrics = http_get("127.0.0.1:10249", "/metrics");
            // The API server goes away (fault suite: source loss). The agent keeps
            // retrying, counts the errors, and the data plane stays exactly as it was.
            api.shutdown_background();
            let lost = Instant::now();
            let errors = || {
                http_get("127.0.0.1:10249", "/metrics")
                    .lines()
                    .find_map(|l| l.strip_prefix("twill_agent_source_errors_total "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            while errors() < 1.0 && lost.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(errors() >= 1.0, "the lost API server is counted");
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "the agent keeps running without its API server"
            );
            assert_eq!(
                saved_rules(),
                got,
                "the rules stay as they were with the API server gone"
            );
            drop(child);
            (
                got,
                std::fs::read_to_string(&log_path).unwrap_or_default(),
                healthz,
                metrics,
            )
        })
    });
    assert_eq!(got, expected, "agent log:\n{log}");
    // Nothing was programmed before the source said synced.
    let synced_at = log.find("initial lists complete").expect("synced");
    let first_sync = log.find("proxy sync").expect("a proxy sync");
    assert!(synced_at < first_sync, "{log}");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    for metric in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "twill_netpol_",
        "twill_agent_synced 1",
    ] {
        assert!(metrics.contains(metric), "{metric} missing: {metrics}");
    }
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
}

#[test]
fn twill_agent_retries_a_restore_the_kernel_rejects_and_reports_it_in_healthz_and_metrics() {
    let name =
        "twill_agent_retries_a_restore_the_kernel_rejects_and_reports_it_in_healthz_and_metrics";
    if !twill_testkit::require_root(name) || !twill_testkit::require_tool(name, "iptables-restore")
    {
        return;
    }
    let twill = env!("CARGO_BIN_EXE_twill");
    let ns = twill_testkit::netns::Netns::new("apr");
    // A stale service chain the first full sync deletes, held by a rule of a chain the
    // agent does not own: the kernel refuses, and every restore fails as a whole.
    const HELD: &str = "KUBE-SEP-TWILLTESTHELD00";
    for args in [
        &["-t", "nat", "-N", HELD][..],
        &["-t", "nat", "-N", "TWILL-TEST-HOLD"],
        &["-t", "nat", "-A", "TWILL-TEST-HOLD", "-j", HELD],
    ] {
        assert!(ns.exec("iptables", args).status.success(), "{args:?}");
    }
    let (failed, during, after, released_for, log) = ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let replay = unfiltered_node_agent_replay();
            replay.release_watches();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let scratch = Scratch::new("agent-retry", listener.local_addr().unwrap());
            serve(listener, replay.clone());
            let log_path = scratch.0.join("agent.log");
            let child = Command::new(twill)
                .args([
                    "--log",
                    "info",
                    "agent",
                    "--kubeconfig",
                    &scratch.kubeconfig(),
                ])
                .args(["--hostname-override", NODE, "--proxy-mode", "iptables"])
                .args(["--cluster-cidr", CLUSTER_CIDR])
                // Health timeout: 2 × 2 s.
                .args(["--min-sync-period", "100ms", "--sync-period", "2s"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("twill agent starts");
            let _child = Running(child);
            let get = |addr: &str, path: &str| {
                if std::net::TcpStream::connect(addr).is_ok() {
                    http_get(addr, path)
                } else {
                    String::new()
                }
            };
            let failures = || {
                get("127.0.0.1:10249", "/metrics")
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(
                            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total ",
                        )
                        .and_then(|v| v.trim().parse::<f64>().ok())
                    })
                    .unwrap_or(0.0)
            };
            // The fake API server runs on this thread: wait with the runtime's sleep.
            wait_until("two failed restores", || failures() >= 2.0).await;
            wait_until("/healthz 503", || {
                get("127.0.0.1:10256", "/healthz").starts_with("HTTP/1.1 503")
            })
            .await;
            let during = get("127.0.0.1:10256", "/readyz");
            let out = Command::new("iptables")
                .args(["-t", "nat", "-F", "TWILL-TEST-HOLD"])
                .output()
                .unwrap();
            assert!(out.status.success());
            let released = Instant::now();
            wait_until("the rules after the release", || {
                saved_rules().contains("\"shop/web:http cluster IP\"")
            })
            .await;
            let released_for = released.elapsed();
            wait_until("/healthz 200", || {
                get("127.0.0.1:10256", "/healthz").starts_with("HTTP/1.1 200")
            })
            .await;
            (
                failures(),
                during,
                get("127.0.0.1:10256", "/readyz"),
                released_for,
                std::fs::read_to_string(&log_path).unwrap_or_default(),
            )
        })
    });
    eprintln!("programmed {released_for:?} after the kernel accepted");
    assert!(failed >= 2.0, "{log}");
    assert!(during.starts_with("HTTP/1.1 503"), "{during}");
    assert!(during.contains("iptables-restore"), "{during}");
    assert!(after.starts_with("HTTP/1.1 200"), "{after}\n{log}");
}

/// The node agent recording, answering unfiltered Pod lists too: it was made with
/// node-a's Pods only (a field selector); policy needs every Pod, so the same answers
/// stand in for an unfiltered list.
fn unfiltered_node_agent_replay() -> Replay {
    let mut recording = load("node-agent.json");
    for ex in recording["exchanges"].as_array_mut().unwrap() {
        let r = ex["request"].as_str().unwrap();
        ex["request"] = r
            .replace("fieldSelector=spec.nodeName%3Dnode-a&", "")
            .into();
    }
    Replay::load(&recording)
}

/// Poll `check` every 100 ms (yielding to the runtime) for up to 30 s.
async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One plain HTTP/1.1 GET; the whole response (status line, headers, body).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A request body, whole.
async fn body_bytes(mut body: Incoming) -> Vec<u8> {
    use hyper::body::Body as _;
    let mut out = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame.expect("a body frame").into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

type Patches = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// Like [`serve`], but Nodes come from `nodes` for every watcher that lists them (the
/// source's and the pod network's own), their watches stay idle, and PATCHes of a Node
/// are recorded and answered with the Node as patched.
fn serve_with_nodes(
    listener: tokio::net::TcpListener,
    replay: Replay,
    nodes: Vec<Value>,
    patches: Patches,
) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (replay, nodes, patches) = (replay.clone(), nodes.clone(), patches.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (replay, nodes, patches) = (replay.clone(), nodes.clone(), patches.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let watch = req.uri().query().unwrap_or("").contains("watch=true");
                        let json = |v: &Value| {
                            http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .body(Body::from(serde_json::to_vec(v).unwrap()))
                                .unwrap()
                        };
                        let resp = if path == "/api/v1/nodes" && watch {
                            std::future::pending().await
                        } else if path == "/api/v1/nodes" {
                            json(&serde_json::json!({
                                "kind": "NodeList", "apiVersion": "v1",
                                "metadata": {"resourceVersion": "5000"}, "items": nodes,
                            }))
                        } else if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
                            assert_eq!(req.method(), http::Method::PATCH, "{path}");
                            let body: Value =
                                serde_json::from_slice(&body_bytes(req.into_body()).await).unwrap();
                            patches
                                .lock()
                                .unwrap()
                                .push((name.to_string(), body.clone()));
                            let mut node = nodes
                                .iter()
                                .find(|n| n["metadata"]["name"] == name)
                                .cloned()
                                .unwrap();
                            node["metadata"]["annotations"] =
                                body["metadata"]["annotations"].clone();
                            json(&node)
                        } else {
                            replay.serve(req.map(|_| Body::from(Vec::new()))).await
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

#[test]
fn twill_agent_pod_network_takes_the_node_pod_cidr_publishes_its_lease_and_routes_to_peers() {
    let name =
        "twill_agent_pod_network_takes_the_node_pod_cidr_publishes_its_lease_and_routes_to_peers";
    if !twill_testkit::require_root(name) || !twill_testkit::require_tool(name, "iptables-restore")
    {
        return;
    }
    let twill = env!("CARGO_BIN_EXE_twill");
    let node_ns = twill_testkit::netns::Netns::new("pna");
    let peer_ns = twill_testkit::netns::Netns::new("pnb");
    twill_testkit::netns::veth_pair(&node_ns, "eth0", &peer_ns, "eth0");
    node_ns.ip(&["addr", "add", "192.168.56.10/24", "dev", "eth0"]);
    peer_ns.ip(&["addr", "add", "192.168.56.11/24", "dev", "eth0"]);
    // node-a (us): a pod CIDR, nothing published yet. node-b: published by its agent (or
    // by flanneld: the same annotations). node-c: no pod CIDR allocated yet.
    let nodes = vec![
        serde_json::json!({"metadata": {"name": "node-a", "resourceVersion": "10"},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.10"}]}}),
        serde_json::json!({"metadata": {"name": "node-b", "resourceVersion": "11", "annotations": {
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0a:00:00:00:00:0b\"}",
                "flannel.alpha.coreos.com/public-ip": "192.168.56.11",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.11"}]}}),
        serde_json::json!({"metadata": {"name": "node-c", "resourceVersion": "12"}, "spec": {}}),
    ];
    let patches: Patches = Default::default();
    let (status, stdout, log, subnet_env) = node_ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let replay = Replay::load(&load("node-agent.json"));
            replay.release_watches();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let scratch = Scratch::new("podnet", listener.local_addr().unwrap());
            serve_with_nodes(listener, replay, nodes, patches.clone());
            let net_conf = scratch.0.join("net-conf.json");
            std::fs::write(
                &net_conf,
                r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#,
            )
            .unwrap();
            let subnet_file = scratch.0.join("subnet.env");
            let log_path = scratch.0.join("agent.log");
            let mut child = Running(
                Command::new(twill)
                    .args([
                        "--log",
                        "info",
                        "agent",
                        "--kubeconfig",
                        &scratch.kubeconfig(),
                    ])
                    .args(["--hostname-override", "node-a", "--local-pods-only"])
                    .args(["--pod-network", "--subnet-store", "kube", "--iface", "eth0"])
                    .args(["--net-conf", net_conf.to_str().unwrap()])
                    .args(["--subnet-file", subnet_file.to_str().unwrap()])
                    .args(["--min-sync-period", "100ms", "--exit-after-sync"])
                    .stdout(Stdio::piped())
                    .stderr(std::fs::File::create(&log_path).unwrap())
                    .spawn()
                    .expect("twill agent starts"),
            );
            let deadline = Instant::now() + Duration::from_secs(40);
            let status = loop {
                if let Some(s) = child.0.try_wait().unwrap() {
                    break Some(s);
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let mut stdout = String::new();
            if let Some(mut out) = child.0.stdout.take() {
                use std::io::Read as _;
                if status.is_some() {
                    out.read_to_string(&mut stdout).unwrap();
                }
            }
            (
                status,
                stdout,
                std::fs::read_to_string(&log_path).unwrap_or_default(),
                std::fs::read_to_string(&subnet_file).unwrap_or_default(),
            )
        })
    });
    let status = status.unwrap_or_else(|| panic!("the agent did not converge in 40 s:\n{log}"));
    assert!(status.success(), "{status}:\n{log}");
    assert!(stdout.contains("programmed:"), "{stdout}");
    assert!(
        subnet_env.contains("FLANNEL_SUBNET=10.244.0.1/24"),
        "{subnet_env}"
    );
    // The lease, published on our Node only, with the VTEP's real MAC.
    let patches = patches.lock().unwrap().clone();
    assert!(!patches.is_empty(), "no PATCH:\n{log}");
    assert!(patches.iter().all(|(n, _)| n == "node-a"), "{patches:?}");
    let annotations = &patches[0].1["metadata"]["annotations"];
    assert_eq!(
        annotations["flannel.alpha.coreos.com/public-ip"],
        "192.168.56.10"
    );
    assert_eq!(
        annotations["flannel.alpha.coreos.com/backend-type"],
        "vxlan"
    );
    assert_eq!(
        annotations["flannel.alpha.coreos.com/kube-subnet-manager"],
        "true"
    );
    let link = node_ns.ip(&["-d", "link", "show", "flannel.1"]);
    assert!(link.contains("vxlan id 1"), "{link}");
    let mac = link
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let data: Value = serde_json::from_str(
        annotations["flannel.alpha.coreos.com/backend-data"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data, serde_json::json!({"VNI": 1, "VtepMAC": mac}));
    // node-b is routed through the overlay; node-c (no pod CIDR) is not a peer yet.
    let routes = node_ns.ip(&["route", "show"]);
    assert!(
        routes.contains("10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink"),
        "{routes}"
    );
    assert_eq!(routes.matches("dev flannel.1").count(), 1, "{routes}");
    let fdb = String::from_utf8_lossy(
        &node_ns
            .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .stdout,
    )
    .into_owned();
    assert!(fdb.contains("0a:00:00:00:00:0b dst 192.168.56.11"), "{fdb}");
}
