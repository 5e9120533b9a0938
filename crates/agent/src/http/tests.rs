use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{HttpServer, Routes};
use crate::status::{PartHealth, ServiceHealth, Status};

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn server() -> (HttpServer, std::sync::Arc<Status>, SocketAddr) {
    let status = Status::new(Duration::from_secs(30));
    let server = HttpServer::new(status.clone()).unwrap();
    let addr = server
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)), Routes::Agent)
        .unwrap();
    (server, status, addr)
}

#[test]
fn healthz_answers_within_100ms_while_50_idle_connections_are_open() {
    let (_server, status, addr) = server();
    status.lock().parts.insert("proxy", PartHealth::default());
    let idle: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // One that sent half a request line and stalled, too.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /hea").unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let answer = get(addr, "/healthz");
        worst = worst.max(t.elapsed());
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"nodeEligible\": true"), "{answer}");
    }
    assert!(
        worst < Duration::from_millis(100),
        "slowest /healthz: {worst:?}"
    );
    drop(idle);
}

#[test]
fn metrics_are_openmetrics_text_with_their_types() {
    let (_server, status, addr) = server();
    status.metrics.syncs.inc();
    let answer = get(addr, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{answer}"
    );
    assert!(
        answer.contains("# TYPE twill_agent_syncs counter"),
        "{answer}"
    );
    assert!(answer.contains("twill_agent_syncs_total 1"), "{answer}");
    assert_eq!(answer.matches("# EOF").count(), 1);
}

#[test]
fn an_unhealthy_part_turns_healthz_and_readyz_503() {
    let (_server, status, addr) = server();
    {
        let mut st = status.lock();
        st.sync_period = Duration::from_millis(10);
        st.parts.insert(
            "proxy",
            PartHealth {
                pending_since: Some(Instant::now() - Duration::from_secs(1)),
                consecutive_failures: 3,
                failures_total: 3,
                last_error: Some("iptables-restore: line 4 failed".into()),
                ..Default::default()
            },
        );
    }
    assert!(get(addr, "/healthz").starts_with("HTTP/1.1 503"));
    assert!(get(addr, "/livez").starts_with("HTTP/1.1 503"));
    let ready = get(addr, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("line 4 failed"), "{ready}");
    assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn a_health_check_node_port_answers_with_local_endpoints() {
    let (server, status, _) = server();
    // A free port for the test: bind, read, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    status.lock().service_health.insert(
        port,
        ServiceHealth {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: 2,
        },
    );
    server.serve_service_health_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let answer = get(addr, "/");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"localEndpoints\":2"), "{answer}");
    assert!(
        answer
            .to_lowercase()
            .contains("x-load-balancing-endpoint-weight: 2"),
        "{answer}"
    );
    status
        .lock()
        .service_health
        .get_mut(&port)
        .unwrap()
        .local_endpoints = 0;
    assert!(get(addr, "/").starts_with("HTTP/1.1 503"));
}

#[test]
fn every_parts_metrics_parse_with_prometheus_own_openmetrics_parser_and_keep_their_types() {
    const PY: &str = "/usr/bin/python3";
    let test =
        "every_parts_metrics_parse_with_prometheus_own_openmetrics_parser_and_keep_their_types";
    if !twill_testkit::require_tool(test, PY) {
        return;
    }
    let (_server, status, addr) = server();
    let proxy = twill_proxy::metrics::Metrics::new();
    let policy = twill_netpol_agent::daemon::Metrics::new();
    status.register(|r| {
        proxy.register(r);
        policy.register(r);
    });
    proxy.restore_failures.inc();
    proxy.sync_duration.observe(0.25);
    policy.rules.set(7);
    let answer = get(addr, "/metrics");
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    // Python's prometheus_client (Debian python3-prometheus-client): the parser
    // Prometheus users reach for; it rejects text that breaks the format.
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   print(f.name, f.type, sum(1 for _ in f.samples))\n";
    let mut child = std::process::Command::new(PY)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "kubeproxy_sync_proxy_rules_iptables_restore_failures counter",
        "kubeproxy_sync_proxy_rules_duration_seconds histogram",
        "twill_netpol_iptables_rules gauge",
        "twill_agent_syncs counter",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
}

#[test]
fn flows_are_json_lines_with_filters_and_stay_off_the_health_address() {
    let (server, status, addr) = server();
    let missing = get(addr, "/flows");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let log = twill_netpol_agent::flows::FlowLog::new("n1", Default::default());
    // A TCP SYN from 10.0.0.1:40000 to 10.0.0.2:5432, refused at ingress.
    let mut syn = vec![
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    syn.extend(40000u16.to_be_bytes());
    syn.extend(5432u16.to_be_bytes());
    syn.extend([0; 16]);
    assert!(log.record("twill-np drop ingress", &syn));
    assert!(log.record("twill-np allow ingress", &syn));
    status.set_flows(log);
    let all = get(addr, "/flows");
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("application/jsonl"), "{all}");
    let body = all.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(body.lines().count(), 2, "{all}");
    let dropped = get(addr, "/flows?verdict=dropped");
    let line = dropped.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {dropped}"));
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["dst"]["port"], 5432);
    assert_eq!(v["seq"], 1);
    let after = get(addr, "/flows?since=1");
    assert!(
        after.contains("\"seq\":2") && !after.contains("\"seq\":1,"),
        "{after}"
    );
    let bad = get(addr, "/flows?verdict=maybe");
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains("verdict"),
        "{bad}"
    );
    // kube-proxy's healthz address answers health only.
    let health = server
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)), Routes::Health)
        .unwrap();
    assert!(get(health, "/flows").starts_with("HTTP/1.1 404"));
    assert!(get(health, "/metrics").starts_with("HTTP/1.1 404"));
    assert!(!get(health, "/livez").starts_with("HTTP/1.1 404"));
}
