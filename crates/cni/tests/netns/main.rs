//! Privileged tests: Twill's plugins against real kernels and the reference plugins in
//! `/usr/lib/cni`, each test in namespaces it creates (a "node" netns the plugins run in,
//! and pod namespaces). Needs root, containernetworking-plugins, and the twill binary
//! (see `support.rs`).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Call, Impl, TempDir, ipv4_of, plugin_dir, ready, store_files, veths};
use twill_conformance::cni::{Runner, run_dir};
use twill_testkit::netns::Netns;

fn bridge_conf(net: &str, bridge: &str, subnet: &str, data: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": bridge, "isGateway": true,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data}
    })
}

fn runner(bin: &std::path::Path, provided: &[&str]) -> Runner {
    Runner {
        plugin_exe: bin.to_path_buf(),
        reference_dir: support::REFERENCE_DIR.into(),
        provided: provided.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(60),
    }
}

#[test]
fn shared_cni_corpus_passes_through_the_runner() {
    let Some(bin) = ready("shared_cni_corpus_passes_through_the_runner") else {
        return;
    };
    let mut failures = Vec::new();
    let dir = twill_testkit::testdata::area_dir("cni");
    let (passed, failed) = run_dir(
        &runner(&bin, &["bridge", "host-local", "flannel"]),
        &dir,
        &mut |f, m| failures.push(format!("{f}: {m}")),
    )
    .unwrap();
    assert_eq!(
        failed,
        0,
        "{passed} passed, {failed} failed:\n{}",
        failures.join("\n")
    );
    assert!(passed > 0);
}

#[test]
fn runner_fails_cases_the_reference_plugins_do_not_implement() {
    let Some(bin) = ready("runner_fails_cases_the_reference_plugins_do_not_implement") else {
        return;
    };
    // With the reference bridge/host-local under test, the 1.1.0-only cases (GC, STATUS)
    // must fail: the runner really compares, it does not rubber-stamp.
    let mut failing = std::collections::BTreeSet::new();
    let dir = twill_testkit::testdata::area_dir("cni");
    let (passed, _) = run_dir(&runner(&bin, &[]), &dir, &mut |f, _| {
        failing.insert(f.to_string());
    })
    .unwrap();
    assert!(
        failing.contains("gc-releases-stale-reservations.json"),
        "{failing:?}"
    );
    assert!(failing.contains("status-ready.json"), "{failing:?}");
    assert!(
        !failing.contains("bridge-add-fresh.json"),
        "the reference itself produced bridge-add-fresh: {failing:?}"
    );
    assert!(passed > 20);
}

#[test]
fn reference_bridge_delegates_ipam_to_twill_host_local() {
    let Some(bin) = ready("reference_bridge_delegates_ipam_to_twill_host_local") else {
        return;
    };
    let (host, pod, data) = (Netns::new("rbh"), Netns::new("rbp"), TempDir::new());
    let dir = plugin_dir(&bin, Impl::Reference, Impl::Twill);
    let conf = bridge_conf("mixnet", "cni0", "10.61.0.0/24", data.path());
    let call = Call {
        host: &host,
        cni_path: dir.path(),
        container_id: "p1",
        netns: Some(&pod.path()),
        ifname: "eth0",
    };
    let out = call.run("bridge", "ADD", &conf);
    assert!(out.ok, "{}", out.raw);
    assert_eq!(out.json["ips"][0]["address"], "10.61.0.2/24");
    assert_eq!(ipv4_of(&pod, "eth0"), vec!["10.61.0.2/24"]);
    assert_eq!(
        store_files(data.path(), "mixnet"),
        vec![
            ("10.61.0.2".to_string(), "p1\r\neth0".to_string()),
            ("last_reserved_ip.0".to_string(), "10.61.0.2".to_string()),
        ]
    );
    let out = call.run("bridge", "DEL", &conf);
    assert!(out.ok, "{}", out.raw);
    assert_eq!(
        store_files(data.path(), "mixnet"),
        vec![("last_reserved_ip.0".into(), "10.61.0.2".into())]
    );
}

#[test]
fn twill_bridge_delegates_ipam_to_reference_host_local() {
    let Some(bin) = ready("twill_bridge_delegates_ipam_to_reference_host_local") else {
        return;
    };
    let (host, pod, data) = (Netns::new("tbh"), Netns::new("tbp"), TempDir::new());
    let dir = plugin_dir(&bin, Impl::Twill, Impl::Reference);
    let conf = bridge_conf("mixnet", "cni0", "10.62.0.0/24", data.path());
    let call = Call {
        host: &host,
        cni_path: dir.path(),
        container_id: "p1",
        netns: Some(&pod.path()),
        ifname: "eth0",
    };
    let out = call.run("bridge", "ADD", &conf);
    assert!(out.ok, "{}", out.raw);
    assert_eq!(out.json["ips"][0]["address"], "10.62.0.2/24");
    assert_eq!(
        out.json["interfaces"][2]["sandbox"],
        pod.path().to_str().unwrap()
    );
    assert_eq!(ipv4_of(&pod, "eth0"), vec!["10.62.0.2/24"]);
    assert_eq!(ipv4_of(&host, "cni0"), vec!["10.62.0.1/24"]);
    // The result describes the real links: names and MACs.
    let mac = |ns: &Netns, dev: &str| {
        let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", dev])).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    let host_veth = out.json["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(out.json["interfaces"][0]["mac"], mac(&host, "cni0"));
    assert_eq!(out.json["interfaces"][1]["mac"], mac(&host, host_veth));
    assert_eq!(out.json["interfaces"][2]["mac"], mac(&pod, "eth0"));
    let out = call.run("bridge", "DEL", &conf);
    assert!(out.ok, "{}", out.raw);
    assert!(veths(&host).is_empty(), "{:?}", veths(&host));
    assert!(
        !store_files(data.path(), "mixnet")
            .iter()
            .any(|(n, _)| n == "10.62.0.2")
    );
}

#[test]
fn store_is_continued_across_implementations_without_reusing_live_addresses() {
    let Some(bin) =
        ready("store_is_continued_across_implementations_without_reusing_live_addresses")
    else {
        return;
    };
    let (host, data) = (Netns::new("sth"), TempDir::new());
    let twill = plugin_dir(&bin, Impl::Twill, Impl::Twill);
    let reference = plugin_dir(&bin, Impl::Reference, Impl::Reference);
    let conf = json!({"cniVersion": "1.0.0", "name": "cont",
        "ipam": {"type": "host-local", "subnet": "10.63.0.0/29", "dataDir": data.path()}});
    let add = |dir: &TempDir, id: &str| {
        let call = Call {
            host: &host,
            cni_path: dir.path(),
            container_id: id,
            netns: None,
            ifname: "eth0",
        };
        let out = call.run_env(
            "host-local",
            "ADD",
            &conf,
            &[("CNI_NETNS", "/proc/self/ns/net")],
        );
        assert!(out.ok, "{id}: {}", out.raw);
        out.json["ips"][0]["address"].as_str().unwrap().to_string()
    };
    let del = |dir: &TempDir, id: &str| {
        let call = Call {
            host: &host,
            cni_path: dir.path(),
            container_id: id,
            netns: None,
            ifname: "eth0",
        };
        assert!(call.run("host-local", "DEL", &conf).ok);
    };
    assert_eq!(add(&reference, "a"), "10.63.0.2/29");
    assert_eq!(add(&twill, "b"), "10.63.0.3/29");
    assert_eq!(add(&reference, "c"), "10.63.0.4/29");
    // Twill releases what the reference reserved, and the reference continues after
    // Twill's cursor without handing out the live .3.
    del(&twill, "a");
    assert_eq!(add(&twill, "d"), "10.63.0.5/29");
    assert_eq!(add(&reference, "e"), "10.63.0.6/29");
    assert_eq!(
        add(&twill, "f"),
        "10.63.0.2/29",
        "wraps to the address freed by the other implementation"
    );
    del(&reference, "b");
    let files = store_files(data.path(), "cont");
    let owners: Vec<&str> = files
        .iter()
        .filter(|(n, _)| n.starts_with("10."))
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(
        owners,
        vec!["f\r\neth0", "c\r\neth0", "d\r\neth0", "e\r\neth0"],
        "{files:?}"
    );
}

fn serve_once(ns: &Netns, addr: &str) -> std::thread::JoinHandle<bool> {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = ns.run(move || TcpListener::bind(addr).unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let _ = s.write_all(b"pong");
                    return true;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        false
    })
}

fn connect(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    })
}

#[test]
fn chain_with_reference_portmap_and_tuning_gets_prev_result_and_maps_the_port() {
    let Some(bin) =
        ready("chain_with_reference_portmap_and_tuning_gets_prev_result_and_maps_the_port")
    else {
        return;
    };
    let (host, pod, data) = (Netns::new("chh"), Netns::new("chp"), TempDir::new());
    let dir = plugin_dir(&bin, Impl::Twill, Impl::Twill);
    let call = Call {
        host: &host,
        cni_path: dir.path(),
        container_id: "web1",
        netns: Some(&pod.path()),
        ifname: "eth0",
    };
    let bridge = bridge_conf("chain", "cni0", "10.64.0.0/24", data.path());
    let r0 = call.run("bridge", "ADD", &bridge);
    assert!(r0.ok, "{}", r0.raw);
    let portmap = json!({"cniVersion": "1.0.0", "name": "chain", "type": "portmap", "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": r0.json});
    let r1 = call.run("portmap", "ADD", &portmap);
    assert!(r1.ok, "{}", r1.raw);
    assert_eq!(
        r1.json, r0.json,
        "portmap passes prevResult through unchanged"
    );
    let tuning = json!({"cniVersion": "1.0.0", "name": "chain", "type": "tuning", "mac": "c2:11:22:33:44:55",
        "prevResult": r1.json});
    let r2 = call.run("tuning", "ADD", &tuning);
    assert!(r2.ok, "{}", r2.raw);
    assert_eq!(r2.json["interfaces"][2]["mac"], "c2:11:22:33:44:55");
    if twill_testkit::require_tool("bandwidth", "tc") {
        let bw = json!({"cniVersion": "1.0.0", "name": "chain", "type": "bandwidth",
            "ingressRate": 8_000_000, "ingressBurst": 1_000_000, "egressRate": 8_000_000, "egressBurst": 1_000_000,
            "prevResult": r2.json});
        let r3 = call.run("bandwidth", "ADD", &bw);
        assert!(r3.ok, "{}", r3.raw);
    }
    // The mapping works: host port 8080 on the node reaches the pod's port 80.
    let server = serve_once(&pod, "0.0.0.0:80");
    assert_eq!(connect(&host, "10.64.0.1:8080").as_deref(), Ok("pong"));
    assert!(server.join().unwrap());
    for (plugin, conf) in [
        ("tuning", &tuning),
        ("portmap", &portmap),
        ("bridge", &bridge),
    ] {
        let mut conf = conf.clone();
        conf["prevResult"] = r2.json.clone();
        let out = call.run(plugin, "DEL", &conf);
        assert!(out.ok, "{plugin} DEL: {}", out.raw);
    }
    assert!(veths(&host).is_empty());
}

#[test]
fn two_pods_on_one_bridge_reach_each_other_and_the_gateway() {
    let Some(bin) = ready("two_pods_on_one_bridge_reach_each_other_and_the_gateway") else {
        return;
    };
    let (host, a, b, data) = (
        Netns::new("tph"),
        Netns::new("tpa"),
        Netns::new("tpb"),
        TempDir::new(),
    );
    let dir = plugin_dir(&bin, Impl::Twill, Impl::Twill);
    let mut conf = bridge_conf("pods", "cni0", "10.65.0.0/24", data.path());
    conf["isDefaultGateway"] = json!(true);
    conf["hairpinMode"] = json!(true);
    for (id, ns) in [("a", &a), ("b", &b)] {
        let call = Call {
            host: &host,
            cni_path: dir.path(),
            container_id: id,
            netns: Some(&ns.path()),
            ifname: "eth0",
        };
        let out = call.run("bridge", "ADD", &conf);
        assert!(out.ok, "{}", out.raw);
    }
    assert_eq!(ipv4_of(&a, "eth0"), vec!["10.65.0.2/24"]);
    assert_eq!(ipv4_of(&b, "eth0"), vec!["10.65.0.3/24"]);
    let server = serve_once(&a, "10.65.0.2:7000");
    assert_eq!(connect(&b, "10.65.0.2:7000").as_deref(), Ok("pong"));
    assert!(server.join().unwrap());
    let gw = serve_once(&host, "10.65.0.1:7001");
    assert_eq!(connect(&a, "10.65.0.1:7001").as_deref(), Ok("pong"));
    assert!(gw.join().unwrap());
    // Hairpin: every port on the bridge reflects frames back to where they came from.
    let detail = host.ip(&["-d", "link", "show", "master", "cni0"]);
    assert_eq!(detail.matches("hairpin on").count(), 2, "{detail}");
}

#[test]
fn failed_add_removes_its_veth_and_releases_its_address() {
    let Some(bin) = ready("failed_add_removes_its_veth_and_releases_its_address") else {
        return;
    };
    let (host, pod, data) = (Netns::new("fah"), Netns::new("fap"), TempDir::new());
    let dir = plugin_dir(&bin, Impl::Twill, Impl::Twill);
    host.ip(&["link", "add", "br-x", "type", "bridge"]);
    host.ip(&["addr", "add", "10.99.0.1/24", "dev", "br-x"]);
    let conf = bridge_conf("rb", "br-x", "10.66.0.0/24", data.path());
    let call = Call {
        host: &host,
        cni_path: dir.path(),
        container_id: "r1",
        netns: Some(&pod.path()),
        ifname: "eth0",
    };
    let out = call.run("bridge", "ADD", &conf);
    assert!(!out.ok);
    assert_eq!(out.json["code"], 999);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap()
            .contains("already has an IP address different from 10.66.0.1/24")
    );
    assert!(
        veths(&host).is_empty(),
        "the veth pair is rolled back: {:?}",
        veths(&host)
    );
    assert!(!pod.ip(&["-o", "link"]).contains("eth0"));
    assert_eq!(
        store_files(data.path(), "rb"),
        vec![("last_reserved_ip.0".into(), "10.66.0.2".into())]
    );
}

#[test]
fn plugin_killed_between_allocation_and_interface_creation_leaks_nothing_after_del_or_gc() {
    let Some(bin) = ready(
        "plugin_killed_between_allocation_and_interface_creation_leaks_nothing_after_del_or_gc",
    ) else {
        return;
    };
    let (host, pod, data) = (Netns::new("kah"), Netns::new("kap"), TempDir::new());
    let dir = plugin_dir(&bin, Impl::Twill, Impl::Twill);
    let mut conf = bridge_conf("killnet", "cni0", "10.67.0.0/24", data.path());
    conf["cniVersion"] = json!("1.1.0");
    let abort = [(twill_cni::bridge::ABORT_AFTER_IPAM_ENV, "1")];
    let k1 = Call {
        host: &host,
        cni_path: dir.path(),
        container_id: "k1",
        netns: Some(&pod.path()),
        ifname: "eth0",
    };
    let out = k1.run_env("bridge", "ADD", &conf, &abort);
    assert!(!out.ok, "the plugin was killed");
    assert_eq!(
        store_files(data.path(), "killnet")[0],
        ("10.67.0.2".into(), "k1\r\neth0".into())
    );
    assert!(veths(&host).is_empty(), "killed before the veth existed");
    // The runtime's DEL after a failed ADD releases the reservation.
    assert!(k1.run("bridge", "DEL", &conf).ok);
    assert!(
        !store_files(data.path(), "killnet")
            .iter()
            .any(|(n, _)| n == "10.67.0.2")
    );

    // Killed again, and this time the runtime forgets the attachment: GC releases it.
    let k2 = Call {
        container_id: "k2",
        ..k1
    };
    assert!(!k2.run_env("bridge", "ADD", &conf, &abort).ok);
    let keep = Call {
        container_id: "keep",
        ..k1
    };
    let out = keep.run("bridge", "ADD", &conf);
    assert!(out.ok, "{}", out.raw);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let gc_call = Call {
        container_id: "",
        netns: None,
        ifname: "",
        ..k1
    };
    let out = gc_call.run("bridge", "GC", &gc);
    assert!(out.ok, "{}", out.raw);
    let owners: Vec<String> = store_files(data.path(), "killnet")
        .into_iter()
        .filter(|(n, _)| n.starts_with("10."))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(owners, vec!["keep\r\neth0"]);
}

#[test]
fn cni_install_creates_plugins_that_answer_version() {
    let Some(bin) = ready("cni_install_creates_plugins_that_answer_version") else {
        return;
    };
    let dir = TempDir::new();
    let out = std::process::Command::new(&bin)
        .args(["cni", "install", "--bin-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["twill-bridge", "twill-host-local"] {
        let out = std::process::Command::new(dir.path().join(name))
            .env("CNI_COMMAND", "VERSION")
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().last().unwrap(),
            "1.1.0",
            "{name}"
        );
    }
}

#[test]
fn gc_releases_addresses_and_masquerade_chains_of_forgotten_containers() {
    let Some(bin) = ready("gc_releases_addresses_and_masquerade_chains_of_forgotten_containers")
    else {
        return;
    };
    let (host, a, b, data) = (
        Netns::new("gch"),
        Netns::new("gca"),
        Netns::new("gcb"),
        TempDir::new(),
    );
    let dir = plugin_dir(&bin, Impl::Twill, Impl::Twill);
    let mut conf = bridge_conf("gcm", "cni0", "10.68.0.0/24", data.path());
    conf["cniVersion"] = json!("1.1.0");
    conf["ipMasq"] = json!(true);
    for (id, ns) in [("keep", &a), ("lost", &b)] {
        let call = Call {
            host: &host,
            cni_path: dir.path(),
            container_id: id,
            netns: Some(&ns.path()),
            ifname: "eth0",
        };
        let out = call.run("bridge", "ADD", &conf);
        assert!(out.ok, "{}", out.raw);
    }
    let chain = |id: &str| twill_cni::ipmasq::chain_name("CNI-", "gcm", id);
    let nat =
        || String::from_utf8_lossy(&host.exec("iptables-save", &["-t", "nat"]).stdout).into_owned();
    assert!(nat().contains(&chain("lost")) && nat().contains(&chain("keep")));
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let call = Call {
        host: &host,
        cni_path: dir.path(),
        container_id: "",
        netns: None,
        ifname: "",
    };
    let out = call.run("bridge", "GC", &gc);
    assert!(out.ok, "{}", out.raw);
    let after = nat();
    assert!(!after.contains(&chain("lost")), "{after}");
    assert!(after.contains(&chain("keep")), "{after}");
    let owners: Vec<String> = store_files(data.path(), "gcm")
        .into_iter()
        .filter(|(n, _)| n.starts_with("10."))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(owners, vec!["keep\r\neth0"]);
}

#[test]
fn parallel_adds_on_a_new_bridge_all_succeed_with_distinct_addresses() {
    let Some(bin) = ready("parallel_adds_on_a_new_bridge_all_succeed_with_distinct_addresses")
    else {
        return;
    };
    let (host, data) = (Netns::new("pah"), TempDir::new());
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("pap")).collect();
    let dir = plugin_dir(&bin, Impl::Twill, Impl::Twill);
    let conf = bridge_conf("par", "cni0", "10.69.0.0/24", data.path());
    // Every ADD races to create the bridge and put the gateway on it.
    let outs: Vec<support::Out> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (host, dir, conf) = (&host, &dir, &conf);
                s.spawn(move || {
                    let id = format!("p{i}");
                    let path = pod.path();
                    let call = Call {
                        host,
                        cni_path: dir.path(),
                        container_id: &id,
                        netns: Some(&path),
                        ifname: "eth0",
                    };
                    call.run("bridge", "ADD", conf)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<String> = outs
        .iter()
        .map(|o| {
            assert!(o.ok, "{}", o.raw);
            o.json["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 8, "{addrs:?}");
    assert_eq!(ipv4_of(&host, "cni0"), vec!["10.69.0.1/24"]);
    assert_eq!(veths(&host).len(), 8);
}
