//! glibc against the server: `getent hosts` inside a test network namespace, with the
//! server on 127.0.0.1:53 there (glibc cannot use another port) and a resolv.conf with
//! the cluster search path and `ndots:5`, which `ip netns exec` bind-mounts from
//! `/etc/netns/<namespace>/resolv.conf`.

#[path = "../support/mod.rs"]
mod support;

use std::path::PathBuf;

use support::TestServer;
use twill_testkit::netns::Netns;

/// Removes `/etc/netns/<name>` however the test ends.
struct NetnsEtc(PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn getent(ns: &Netns, name: &str) -> (bool, String) {
    let out = ns.exec("getent", &["hosts", name]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn glibc_resolves_services_through_the_search_path_with_ndots_5() {
    let test = "glibc_resolves_services_through_the_search_path_with_ndots_5";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "getent") {
        return;
    }
    let ns = Netns::new("dns");
    let etc = NetnsEtc(PathBuf::from("/etc/netns").join(ns.name()));
    std::fs::create_dir_all(&etc.0).unwrap();
    std::fs::write(
        etc.0.join("resolv.conf"),
        "search testns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:2\n",
    )
    .unwrap();
    let server =
        ns.run(|| TestServer::corpus_at("clusterip-a-aaaa.json", "127.0.0.1:53".parse().unwrap()));

    let diag = || {
        let conf = ns.exec("cat", &["/etc/resolv.conf"]);
        let dig = ns.exec(
            "dig",
            &["+time=1", "+tries=1", "svc1.testns.svc.cluster.local"],
        );
        format!(
            "resolv.conf:\n{}\ndig:\n{}{}",
            String::from_utf8_lossy(&conf.stdout),
            String::from_utf8_lossy(&dig.stdout),
            String::from_utf8_lossy(&dig.stderr)
        )
    };
    // A bare service name: first search domain.
    let (ok, out) = getent(&ns, "svc1");
    assert!(
        ok && out.contains("10.0.0.1"),
        "getent svc1: {out}\n{}",
        diag()
    );
    // <service>.<namespace>: found under the second search domain.
    let (ok, out) = getent(&ns, "svc-dual-stack.testns");
    // `getent hosts` asks AAAA first; a dual-stack service has both.
    assert!(
        ok && (out.contains("10::3") || out.contains("10.0.0.3")),
        "getent svc-dual-stack.testns: {out}"
    );
    assert!(
        out.contains("svc-dual-stack.testns.svc.cluster.local"),
        "canonical name: {out}"
    );
    // Fully qualified.
    let (ok, out) = getent(&ns, "svc1.testns.svc.cluster.local.");
    assert!(ok && out.contains("10.0.0.1"), "getent fqdn: {out}");
    // A missing service fails cleanly.
    let (ok, out) = getent(&ns, "svc0");
    assert!(!ok, "svc0 must not resolve: {out}");
    drop(server);
}

#[test]
fn interface_addresses_list_every_address_but_loopback() {
    if !twill_testkit::require_root("interface_addresses_list_every_address_but_loopback") {
        return;
    }
    let ns = Netns::new("ifa");
    assert!(
        ns.run(twill_dns_server::interface_addresses).is_empty(),
        "only lo is up"
    );
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["addr", "add", "192.0.2.7/24", "dev", "v0"]);
    let found = ns.run(twill_dns_server::interface_addresses);
    assert!(found.contains(&"192.0.2.7".parse().unwrap()), "{found:?}");
    assert!(found.iter().all(|ip| !ip.is_loopback()), "{found:?}");
}
