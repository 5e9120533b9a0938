//! `twill proxy` as a daemon fed by a manifest file, in a network namespace: it
//! programs the file's Services, follows edits of the file (an endpoint moves, a
//! Service is added, an invalid Service is skipped and counted while the others keep
//! working), and serves the sync metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const METRICS: &str = "127.0.0.1:10249";

fn service(name: &str, ip: &str, port: u32) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: {port}, targetPort: 8080}}\n"
    )
}

fn slice(service: &str, endpoint: &str) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: {service}-a\n  namespace: shop\n  labels: {{kubernetes.io/service-name: {service}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints:\n- addresses: [{endpoint}]\n  conditions: {{ready: true}}\n"
    )
}

/// Kills the daemon and removes the scratch folder, even when an assertion fails.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replace the file in one step, as an editor or a controller writing state would.
fn write_atomically(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn nat_rules(ns: &twill_testkit::netns::Netns) -> String {
    String::from_utf8_lossy(&ns.exec("iptables-save", &["-t", "nat"]).stdout).into_owned()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool, last: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; last state:\n{}", last());
}

fn metrics(ns: &twill_testkit::netns::Netns) -> String {
    ns.run(|| {
        let Ok(mut s) = TcpStream::connect(METRICS) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn proxy_daemon_follows_manifest_edits_and_skips_only_the_invalid_service() {
    let test = "proxy_daemon_follows_manifest_edits_and_skips_only_the_invalid_service";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "iptables-restore")
    {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("pxd");
    let dir = std::env::temp_dir().join(format!("twill-proxy-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.yaml");
    write_atomically(
        &file,
        &[service("web", "10.96.0.10", 80), slice("web", "10.244.1.5")].concat(),
    );
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let child = ns
        .command(env!("CARGO_BIN_EXE_twill"))
        .args(["proxy", "-f", &file.display().to_string()])
        .args([
            "--hostname-override",
            "n0",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .args(["--min-sync-period", "100ms", "--sync-period", "1h"])
        .args(["--metrics-bind-address", METRICS])
        .args(["--healthz-bind-address", "127.0.0.1:10256"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon = Daemon { child, dir };
    let log = || std::fs::read_to_string(daemon.dir.join("proxy.log")).unwrap_or_default();
    let last = || format!("{}\n{}", nat_rules(&ns), log());

    wait_for(
        "web's endpoint",
        || nat_rules(&ns).contains("--to-destination 10.244.1.5:8080"),
        last,
    );

    // The endpoint moves, a second Service arrives, and a third is invalid.
    write_atomically(
        &file,
        &[
            service("web", "10.96.0.10", 80),
            slice("web", "10.244.1.6"),
            service("api", "10.96.0.11", 8443),
            slice("api", "10.244.2.7"),
            service("broken", "10.96.0.12", 70000),
        ]
        .concat(),
    );
    wait_for(
        "the edit",
        || {
            let rules = nat_rules(&ns);
            rules.contains("--to-destination 10.244.1.6:8080")
                && rules.contains("--to-destination 10.244.2.7:8080")
        },
        last,
    );
    let rules = nat_rules(&ns);
    assert!(
        !rules.contains("10.244.1.5"),
        "the old endpoint is gone:\n{rules}"
    );
    assert!(
        rules.contains("-d 10.96.0.11/32 -p tcp -m comment --comment \"shop/api:http cluster IP\" -m tcp --dport 8443 -j KUBE-SVC-"),
        "{rules}"
    );
    assert!(
        !rules.contains("10.96.0.12"),
        "broken is not programmed:\n{rules}"
    );
    assert!(
        log().contains("shop/broken"),
        "the invalid Service is named in the log:\n{}",
        log()
    );

    let text = metrics(&ns);
    // The source rejected it (file, object, field in the log), so the proxy never saw it.
    assert_eq!(
        metric_value(&text, "twill_agent_rejected_inputs_total"),
        Some(1.0),
        "{text}"
    );
    // The first sync is full, the edit is partial.
    assert_eq!(
        metric_value(
            &text,
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"
        ),
        Some(1.0),
        "{text}"
    );
    drop(daemon);
}
