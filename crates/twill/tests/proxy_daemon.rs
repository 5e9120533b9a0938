//! `twill proxy` as a daemon fed by manifests, in a network namespace: it programs the
//! file's Services, follows edits (an endpoint moves, a Service is added, an invalid
//! Service is skipped and counted while the others keep working), follows a folder
//! (new files, removed files, a file turned invalid keeps its rules), retries a restore
//! the kernel rejected, and serves health and sync metrics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const METRICS: &str = "127.0.0.1:10249";
const HEALTHZ: &str = "127.0.0.1:10256";

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

/// One GET inside the namespace; the whole response, or "" when nothing listens yet.
fn http(ns: &twill_testkit::netns::Netns, addr: &str, path: &str) -> String {
    ns.run(|| {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

fn metrics(ns: &twill_testkit::netns::Netns) -> String {
    http(ns, METRICS, "/metrics")
}

/// Start `twill proxy` in `ns` on `files`, logging to `dir/proxy.log`.
fn start_proxy(
    ns: &twill_testkit::netns::Netns,
    dir: PathBuf,
    files: &[&PathBuf],
    sync_period: &str,
) -> Daemon {
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_twill"));
    cmd.args(["--log", "info", "proxy"]);
    for f in files {
        cmd.args(["-f", &f.display().to_string()]);
    }
    let child = cmd
        .args([
            "--hostname-override",
            "n0",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .args(["--min-sync-period", "100ms", "--sync-period", sync_period])
        .args(["--metrics-bind-address", METRICS])
        .args(["--healthz-bind-address", HEALTHZ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon { child, dir }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twill-proxy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
    let daemon = start_proxy(&ns, dir, &[&file], "1h");
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

#[test]
fn a_restore_the_kernel_rejects_is_retried_and_shows_in_healthz_readyz_and_metrics() {
    let test = "a_restore_the_kernel_rejects_is_retried_and_shows_in_healthz_readyz_and_metrics";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "iptables-restore")
    {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("pxr");
    // A stale service chain that a full sync deletes, held by a rule of a chain the proxy
    // does not own: the kernel refuses to delete a chain in use, so every restore fails
    // as a whole until the rule goes.
    const HELD: &str = "KUBE-SEP-TWILLTESTHELD00";
    for args in [
        &["-t", "nat", "-N", HELD][..],
        &["-t", "nat", "-N", "TWILL-TEST-HOLD"],
        &["-t", "nat", "-A", "TWILL-TEST-HOLD", "-j", HELD],
    ] {
        assert!(ns.exec("iptables", args).status.success(), "{args:?}");
    }
    let dir = scratch("retry");
    let file = dir.join("cluster.yaml");
    write_atomically(
        &file,
        &[service("web", "10.96.0.10", 80), slice("web", "10.244.1.5")].concat(),
    );
    // Health timeout: 2 × the sync period = 4 s.
    let daemon = start_proxy(&ns, dir, &[&file], "2s");
    let log = || std::fs::read_to_string(daemon.dir.join("proxy.log")).unwrap_or_default();
    let last = || format!("{}\n{}\n{}", nat_rules(&ns), metrics(&ns), log());
    wait_for(
        "restore failures counted",
        || {
            metric_value(
                &metrics(&ns),
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            )
            .is_some_and(|n| n >= 2.0)
        },
        last,
    );
    wait_for(
        "/healthz 503 once the change waited 2 sync periods",
        || http(&ns, HEALTHZ, "/healthz").starts_with("HTTP/1.1 503"),
        last,
    );
    let readyz = http(&ns, HEALTHZ, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(readyz.contains("iptables-restore"), "{readyz}");
    assert!(
        !nat_rules(&ns).contains("10.244.1.5"),
        "nothing half-applied"
    );

    assert!(
        ns.exec("iptables", &["-t", "nat", "-F", "TWILL-TEST-HOLD"])
            .status
            .success()
    );
    let released = Instant::now();
    wait_for(
        "the retry after the rule went",
        || nat_rules(&ns).contains("--to-destination 10.244.1.5:8080"),
        last,
    );
    eprintln!(
        "programmed {:?} after the kernel accepted",
        released.elapsed()
    );
    wait_for(
        "/healthz 200",
        || http(&ns, HEALTHZ, "/healthz").starts_with("HTTP/1.1 200"),
        last,
    );
    assert!(
        !nat_rules(&ns).contains(HELD),
        "the stale chain was deleted"
    );
    drop(daemon);
}

#[test]
fn a_followed_folder_applies_a_new_file_and_keeps_the_rules_when_a_file_turns_invalid() {
    let test = "a_followed_folder_applies_a_new_file_and_keeps_the_rules_when_a_file_turns_invalid";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "iptables-restore")
    {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("pxf");
    let dir = scratch("folder");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(manifests.join("shop")).unwrap();
    write_atomically(
        &manifests.join("web.yaml"),
        &[service("web", "10.96.0.10", 80), slice("web", "10.244.1.5")].concat(),
    );
    let daemon = start_proxy(&ns, dir, &[&manifests], "1h");
    let log = || std::fs::read_to_string(daemon.dir.join("proxy.log")).unwrap_or_default();
    let last = || format!("{}\n{}", nat_rules(&ns), log());
    wait_for(
        "web",
        || nat_rules(&ns).contains("--to-destination 10.244.1.5:8080"),
        last,
    );
    // A new file in a subfolder: inotify, not a poll of the files named at start.
    std::fs::write(
        manifests.join("shop/api.yaml"),
        [
            service("api", "10.96.0.11", 8443),
            slice("api", "10.244.2.7"),
        ]
        .concat(),
    )
    .unwrap();
    wait_for(
        "api from the new file",
        || nat_rules(&ns).contains("--to-destination 10.244.2.7:8080"),
        last,
    );
    // web.yaml turns into garbage (a half-written save): the last good rules stay.
    std::fs::write(
        manifests.join("web.yaml"),
        "kind: Service\nmetadata: [oops\n",
    )
    .unwrap();
    wait_for(
        "the problem logged with its file",
        || log().contains("web.yaml"),
        last,
    );
    let rules = nat_rules(&ns);
    assert!(
        rules.contains("--to-destination 10.244.1.5:8080"),
        "{rules}"
    );
    assert!(
        rules.contains("--to-destination 10.244.2.7:8080"),
        "{rules}"
    );
    let readyz = http(&ns, HEALTHZ, "/readyz");
    assert!(readyz.contains("web.yaml"), "shown in readiness: {readyz}");
    // Removing a file from the folder removes its Services.
    std::fs::remove_file(manifests.join("shop/api.yaml")).unwrap();
    wait_for(
        "api gone with its file",
        || !nat_rules(&ns).contains("10.244.2.7"),
        last,
    );
    assert!(nat_rules(&ns).contains("--to-destination 10.244.1.5:8080"));
    drop(daemon);
}

/// `twill proxy --cleanup` takes out of the namespace everything Twill or kube-proxy
/// wrote, in both iptables backends, the nftables mode's table and the ipsets, and
/// leaves other chains alone; a second run finds nothing.
#[test]
fn cleanup_removes_every_chain_table_and_set_of_twill_and_kube_proxy_and_nothing_else() {
    let test = "cleanup_removes_every_chain_table_and_set_of_twill_and_kube_proxy";
    if !twill_testkit::require_root(test)
        || !twill_testkit::require_tool(test, "iptables-legacy-save")
        || !twill_testkit::require_tool(test, "iptables-nft-save")
        || !twill_testkit::require_tool(test, "ipset")
        || !twill_testkit::require_tool(test, "nft")
    {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("clean");
    let dir = scratch("cleanup");
    let file = dir.join("state.yaml");
    std::fs::write(
        &file,
        [service("web", "10.96.0.10", 80), slice("web", "10.244.1.5")].concat(),
    )
    .unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec:\n  nodeName: n0\n  containers: [{name: c, image: i}]\nstatus: {podIP: 10.244.1.5}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    )
    .unwrap();
    let twill = |args: &[&str]| {
        let out = ns
            .command(env!("CARGO_BIN_EXE_twill"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let f = file.display().to_string();
    for mode in ["iptables", "nftables"] {
        let (ok, said) = twill(&[
            "proxy",
            "--mode",
            mode,
            "--once",
            "-f",
            &f,
            "--hostname-override",
            "n0",
            "--cluster-cidr",
            "10.244.0.0/16",
        ]);
        assert!(ok, "proxy --mode {mode} --once: {said}");
    }
    let p = policy.display().to_string();
    let (ok, said) = twill(&["netpol", "--node", "n0", "-f", &p, "--once"]);
    assert!(ok, "netpol --once: {said}");
    // Other writers: the legacy backend, an ipvs-mode set, flannel's chain, and a chain
    // of somebody else's that must survive.
    let sh = |script: &str| {
        let out = ns.exec("sh", &["-c", script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(
        "iptables-legacy -t nat -N KUBE-LEGACY && iptables-legacy -t nat -A PREROUTING -j KUBE-LEGACY",
    );
    sh("iptables -t nat -N FLANNEL-POSTRTG && iptables -t nat -A POSTROUTING -j FLANNEL-POSTRTG");
    sh(
        "iptables -t filter -N MINE && iptables -t filter -A INPUT -j MINE && iptables -A MINE -j ACCEPT",
    );
    sh("ipset create KUBE-CLUSTER-IP hash:ip,port");
    let everything = || {
        let dump = |c: &str| String::from_utf8_lossy(&ns.exec(c, &[]).stdout).into_owned();
        format!(
            "{}{}{}{}",
            dump("iptables-legacy-save"),
            dump("iptables-nft-save"),
            String::from_utf8_lossy(&ns.exec("nft", &["list", "ruleset"]).stdout),
            String::from_utf8_lossy(&ns.exec("ipset", &["list", "-n"]).stdout)
        )
    };
    let before = everything();
    for want in [
        "KUBE-SERVICES",
        "KUBE-LEGACY",
        "TWILL-",
        "FLANNEL-POSTRTG",
        "table ip kube-proxy",
        "KUBE-CLUSTER-IP",
    ] {
        assert!(before.contains(want), "{want} not set up:\n{before}");
    }
    let (ok, said) = twill(&["proxy", "--cleanup"]);
    assert!(ok, "cleanup: {said}");
    assert!(said.contains("removed"), "{said}");
    let after = everything();
    for gone in ["KUBE-", "TWILL-", "FLANNEL-", "kube-proxy"] {
        assert!(!after.contains(gone), "{gone} left after cleanup:\n{after}");
    }
    assert!(
        after.contains(":MINE") && after.contains("-A INPUT -j MINE"),
        "{after}"
    );
    let (ok, said) = twill(&["proxy", "--cleanup"]);
    assert!(ok, "second cleanup: {said}");
    assert!(
        said.contains("nothing of Twill's or kube-proxy's to remove"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// iptables-save without its dated comments and packet counters: what the rules are.
fn rules_only(ns: &twill_testkit::netns::Netns) -> String {
    nat_rules(ns)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.split_once(" [") {
            Some((chain, _)) if l.starts_with(':') => chain.to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The standing fault suite for a manifest source: the file named with `-f` is replaced
/// by binary bytes, cut off inside a document, emptied (as a non-atomic save leaves it
/// for a moment), turned into broken YAML and deleted. After each, the problem is logged
/// with the file and shown in /readyz, and the rules are exactly what they were; only a
/// valid empty file (`---`) takes the Services away.
#[test]
fn source_faults_leave_the_rules_exactly_as_they_were_until_a_valid_empty_file() {
    let test = "source_faults_leave_the_rules_exactly_as_they_were_until_a_valid_empty_file";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "iptables-restore")
    {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("pxfault");
    let dir = scratch("faults");
    let file = dir.join("cluster.yaml");
    let good = [
        service("web", "10.96.0.10", 80),
        slice("web", "10.244.1.5"),
        service("api", "10.96.0.11", 8443),
        slice("api", "10.244.2.7"),
    ]
    .concat();
    write_atomically(&file, &good);
    let daemon = start_proxy(&ns, dir, &[&file], "1h");
    let log = || std::fs::read_to_string(daemon.dir.join("proxy.log")).unwrap_or_default();
    let last = || format!("{}\n{}", nat_rules(&ns), log());
    wait_for(
        "both Services",
        || {
            let r = nat_rules(&ns);
            r.contains("10.244.1.5:8080") && r.contains("10.244.2.7:8080")
        },
        last,
    );
    let before = rules_only(&ns);
    let cut = good.find("port: 8443").unwrap() + 5;
    let binary: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 256) as u8).collect();
    type Fault<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let faults: [Fault; 5] = [
        (
            "binary bytes",
            Box::new(|| {
                let tmp = file.with_extension("tmp");
                std::fs::write(&tmp, &binary).unwrap();
                std::fs::rename(&tmp, &file).unwrap();
            }),
        ),
        (
            "cut off inside a document",
            Box::new(|| write_atomically(&file, &good[..cut])),
        ),
        ("emptied", Box::new(|| std::fs::write(&file, "").unwrap())),
        (
            "broken YAML",
            Box::new(|| write_atomically(&file, "kind: Service\nmetadata: [oops\n")),
        ),
        ("deleted", Box::new(|| std::fs::remove_file(&file).unwrap())),
    ];
    for (what, fault) in &faults {
        let mentions = || log().matches("cluster.yaml").count();
        let seen = mentions();
        fault();
        wait_for(
            &format!("{what}: logged with the file"),
            || mentions() > seen,
            last,
        );
        // Longer than --min-sync-period: a sync that wanted to run has run.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(rules_only(&ns), before, "{what}: the rules changed");
        let readyz = http(&ns, HEALTHZ, "/readyz");
        assert!(
            readyz.contains("cluster.yaml"),
            "{what}: /readyz says {readyz}"
        );
        // Back to good, for the next fault.
        write_atomically(&file, &good);
        wait_for(
            &format!("{what}: the good file is clean again"),
            || !http(&ns, HEALTHZ, "/readyz").contains("cluster.yaml"),
            last,
        );
        assert_eq!(rules_only(&ns), before, "{what}: the good file again");
    }
    write_atomically(&file, "---\n# no objects: an empty cluster\n");
    wait_for(
        "a valid empty file empties the Services",
        || !nat_rules(&ns).contains("10.244."),
        last,
    );
    drop(daemon);
}

/// `twill proxy --config` reads kube-proxy's KubeProxyConfiguration: the masquerade
/// bit, the local-traffic detector and the conntrack timeouts it names are what the
/// namespace gets, a field Twill does not do is named in one warning, flags win over
/// the file, and an invalid value stops it naming the field.
#[test]
fn a_kube_proxy_configuration_file_sets_the_mark_the_detector_and_conntrack() {
    let test = "a_kube_proxy_configuration_file_sets_the_mark_the_detector_and_conntrack";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "iptables-restore")
    {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("pxcfg");
    let dir = scratch("config");
    let file = dir.join("cluster.yaml");
    write_atomically(
        &file,
        &[service("web", "10.96.0.10", 80), slice("web", "10.244.1.5")].concat(),
    );
    let config = dir.join("kube-proxy.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: n0
detectLocalMode: InterfaceNamePrefix
detectLocal: {interfaceNamePrefix: veth}
oomScoreAdj: -999
iptables: {masqueradeBit: 13}
conntrack:
  tcpEstablishedTimeout: 2h
  tcpCloseWaitTimeout: 10m
  udpStreamTimeout: 150s
",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = ns
            .command(env!("CARGO_BIN_EXE_twill"))
            .args(["--log", "info", "proxy", "--once", "-f"])
            .arg(&file)
            .arg("--config")
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, log) = run(&[]);
    assert!(ok, "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("KubeProxyConfiguration:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("oomScoreAdj"), "{log}");
    let rules = nat_rules(&ns);
    assert!(
        rules.contains("--set-xmark 0x2000/0x2000"),
        "bit 13:\n{rules}"
    );
    assert!(
        !rules.contains("0x4000"),
        "not the default bit 14:\n{rules}"
    );
    assert!(
        rules.contains("! -i veth+"),
        "the interface-prefix detector:\n{rules}"
    );
    let sysctl = |name: &str| {
        ns.run(|| std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}")))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_established"), "7200");
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_close_wait"), "600");
    assert_eq!(sysctl("nf_conntrack_udp_timeout_stream"), "150");
    assert!(
        log.contains("nf_conntrack_max") && log.contains("not the host's network namespace"),
        "the host-wide limit is left alone here, and said so:\n{log}"
    );
    // A flag wins over the file.
    let (ok, log) = run(&["--iptables-masquerade-bit", "12"]);
    assert!(ok, "{log}");
    assert!(nat_rules(&ns).contains("--set-xmark 0x1000/0x1000"));
    // An invalid value stops it, naming the file and the field.
    std::fs::write(
        &config,
        "kind: KubeProxyConfiguration\nconntrack: {tcpEstablishedTimeout: forever}\n",
    )
    .unwrap();
    let (ok, log) = run(&[]);
    assert!(!ok);
    assert!(
        log.contains("kube-proxy.yaml: conntrack.tcpEstablishedTimeout: duration \"forever\""),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// nftables mode drops traffic to the addresses of the cluster's ServiceCIDRs that no
/// Service holds (upstream's `cluster-ips-check`): from a ServiceCIDR object in the
/// manifests, or from `--service-cidr` when the source has none.
#[test]
fn nftables_mode_drops_unallocated_cluster_ips_of_the_service_cidrs() {
    let test = "nftables_mode_drops_unallocated_cluster_ips_of_the_service_cidrs";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "nft") {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("pxcidr");
    let dir = scratch("cidr");
    let file = dir.join("cluster.yaml");
    let svc = [service("web", "10.96.0.10", 80), slice("web", "10.244.1.5")].concat();
    let cidr_object = "---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\n\
                       metadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/12]}\n";
    let run = |text: &str, extra: &[&str]| {
        std::fs::write(&file, text).unwrap();
        let out = ns
            .command(env!("CARGO_BIN_EXE_twill"))
            .args([
                "proxy",
                "--once",
                "--mode",
                "nftables",
                "--hostname-override",
                "n0",
                "-f",
            ])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(
            &ns.exec(
                "nft",
                &["list", "chain", "ip", "kube-proxy", "cluster-ips-check"],
            )
            .stdout,
        )
        .into_owned()
    };
    let drop_rule = "ip daddr 10.96.0.0/12 drop comment \"Drop traffic to unallocated ClusterIPs\"";
    let from_object = run(&format!("{svc}{cidr_object}"), &[]);
    assert!(from_object.contains(drop_rule), "{from_object}");
    let from_flag = run(&svc, &["--service-cidr", "10.96.0.0/12"]);
    assert!(from_flag.contains(drop_rule), "{from_flag}");
    let none = run(&svc, &[]);
    assert!(
        !none.contains("drop"),
        "no ServiceCIDR, no flag: no drop rule\n{none}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// New connections per Service port and per endpoint, from conntrack's events: five
/// connections to a cluster IP count five for the Service and five for the endpoint
/// that answered them.
#[test]
fn connections_are_counted_per_service_and_endpoint() {
    let test = "connections_are_counted_per_service_and_endpoint";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "iptables-restore")
    {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("pxconn");
    // The endpoint lives in the same namespace, on one end of a veth pair.
    twill_testkit::netns::veth_pair(&ns, "epa", &ns, "epb");
    for args in [
        &["addr", "add", "10.244.1.5/24", "dev", "epb"][..],
        &["link", "set", "epa", "up"],
        &["link", "set", "epb", "up"],
        // A route for the cluster IPs, as a node's default route would give.
        &["route", "add", "10.96.0.0/12", "dev", "epa"],
    ] {
        assert!(ns.exec("ip", args).status.success(), "{args:?}");
    }
    let dir = scratch("conn");
    let file = dir.join("cluster.yaml");
    write_atomically(
        &file,
        &[service("web", "10.96.0.10", 80), slice("web", "10.244.1.5")].concat(),
    );
    let daemon = start_proxy(&ns, dir, &[&file], "1h");
    let log = || std::fs::read_to_string(daemon.dir.join("proxy.log")).unwrap_or_default();
    wait_for(
        "web's endpoint",
        || nat_rules(&ns).contains("--to-destination 10.244.1.5:8080"),
        || format!("{}\n{}", nat_rules(&ns), log()),
    );
    let served = ns.run(|| {
        let l = TcpListener::bind("10.244.1.5:8080").unwrap();
        l.set_nonblocking(true).unwrap();
        // Accepts until five came or ten seconds passed (never hangs the test).
        let server = std::thread::spawn(move || {
            let (mut n, start) = (0, Instant::now());
            while n < 5 && start.elapsed() < Duration::from_secs(10) {
                match l.accept() {
                    Ok(_) => n += 1,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let mut ok = 0;
        for _ in 0..5 {
            if TcpStream::connect_timeout(&"10.96.0.10:80".parse().unwrap(), Duration::from_secs(2))
                .is_ok()
            {
                ok += 1;
            }
        }
        let _ = server.join();
        ok
    });
    assert_eq!(served, 5, "the cluster IP answers");
    let counted = |name: &str| {
        metrics(&ns)
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    wait_for(
        "five connections counted",
        || {
            counted("twill_proxy_service_connections_total{service_port=\"shop/web:http\"}")
                == Some(5.0)
        },
        || metrics(&ns),
    );
    assert_eq!(
        counted(
            "twill_proxy_endpoint_connections_total{service_port=\"shop/web:http\",endpoint=\"10.244.1.5:8080\"}"
        ),
        Some(5.0),
        "{}",
        metrics(&ns)
    );
    drop(daemon);
}
