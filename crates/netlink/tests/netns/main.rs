//! The applier on a real kernel, driven by the shared `backend-state` cases: program the
//! planned state into a fresh namespace, then read the kernel back with iproute2's JSON
//! output and compare with the case's `expected` (links, routes, neighbours, FDB, and the
//! `absent*` lists). Applying a second time must change nothing. Cases with `events` are
//! first applied without them, so removals are exercised against real entries.

use std::collections::BTreeSet;

use serde_json::Value;
use twill_conformance::overlay::backend_case_plan;
use twill_netlink::{Scope, reconcile};
use twill_overlay::state::KernelState;
use twill_testkit::netns::{Netns, veth_pair};

fn ip_json(ns: &Netns, prog: &str, args: &[&str]) -> Vec<Value> {
    let out = ns.exec(prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return vec![];
    }
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Run `f` with an rtnetlink handle inside `ns`.
fn with_handle<R: Send, F>(ns: &Netns, f: impl FnOnce(rtnetlink::Handle) -> F + Send) -> R
where
    F: std::future::Future<Output = R>,
{
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            f(handle).await
        })
    })
}

fn apply(ns: &Netns, state: &KernelState, scope: &Scope) -> Result<usize, String> {
    with_handle(ns, |handle| async move {
        reconcile(&handle, state, scope)
            .await
            .map(|p| p.len())
            .map_err(|e| e.to_string())
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Check the kernel of `ns` against one case's `expected`; returns mismatches.
fn check_kernel(
    ns: &Netns,
    case: &Value,
    network: ipnet::Ipv4Net,
    own: ipnet::Ipv4Net,
) -> Vec<String> {
    let exp = &case["expected"];
    let mut bad = Vec::new();
    let list = |k: &str| {
        exp.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };

    let links = ip_json(ns, "ip", &["-j", "-d", "addr", "show"]);
    let link = |name: &str| links.iter().find(|l| s(&l["ifname"]) == name).cloned();
    for want in list("links") {
        let name = s(&want["name"]);
        let Some(have) = link(name) else {
            bad.push(format!("link {name} missing"));
            continue;
        };
        let info = &have["linkinfo"]["info_data"];
        let flags: Vec<&str> = have["flags"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        let addrs: Vec<String> = have["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| s(&a["family"]) == "inet")
            .map(|a| format!("{}/{}", s(&a["local"]), a["prefixlen"]))
            .collect();
        for (k, v) in want.as_object().unwrap() {
            let ok = match k.as_str() {
                "name" => true,
                "kind" => s(&have["linkinfo"]["info_kind"]) == s(v),
                "vni" => info["id"] == *v,
                "dstport" => info["port"] == *v,
                "local" => info["local"] == *v,
                "dev" => info["link"] == *v,
                "learning" => info["learning"] == *v,
                "gbp" => info.get("gbp").is_some() == v.as_bool().unwrap_or(false),
                "mtu" => have["mtu"] == *v,
                "up" => flags.contains(&"UP") == v.as_bool().unwrap_or(false),
                "addresses" => {
                    let want: Vec<&str> = v.as_array().unwrap().iter().map(s).collect();
                    addrs.iter().map(String::as_str).collect::<Vec<_>>() == want
                }
                "mac" => {
                    let re = s(v).strip_prefix("re:").map(|_| true).unwrap_or(false);
                    re || have["address"] == *v
                }
                _ => true,
            };
            if !ok {
                bad.push(format!("link {name}: {k} expected {v}, kernel has {have}"));
            }
        }
    }
    for name in list("absentLinks") {
        if link(s(&name)).is_some() {
            bad.push(format!("link {name} must be absent"));
        }
    }

    // Routes inside the network, minus the node's own subnet, must be exactly `routes`.
    let routes = ip_json(ns, "ip", &["-j", "route", "show"]);
    let norm = |dst: &str, gw: Option<&str>, dev: &str, onlink: bool| {
        format!("{dst} via {gw:?} dev {dev} onlink={onlink}")
    };
    let have: BTreeSet<String> = routes
        .iter()
        .filter_map(|r| {
            let dst: ipnet::Ipv4Net = s(&r["dst"]).parse().ok()?;
            (network.contains(&dst) && !own.contains(&dst)).then(|| {
                let onlink = r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| s(x) == "onlink"));
                norm(
                    &dst.to_string(),
                    r.get("gateway").map(s),
                    s(&r["dev"]),
                    onlink,
                )
            })
        })
        .collect();
    if let Some(want) = exp.get("routes").and_then(Value::as_array) {
        let want: BTreeSet<String> = want
            .iter()
            .map(|r| {
                norm(
                    s(&r["dst"]),
                    r.get("gw").map(s),
                    s(&r["dev"]),
                    r["onlink"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        if want != have {
            bad.push(format!("routes: kernel {have:?} != expected {want:?}"));
        }
    }
    for r in list("absentRoutes") {
        if have
            .iter()
            .any(|h| h.starts_with(&format!("{} ", s(&r["dst"]))))
        {
            bad.push(format!("route {} must be absent", r["dst"]));
        }
    }

    let neigh = ip_json(ns, "ip", &["-j", "neigh", "show"]);
    let has_neigh = |w: &Value| {
        neigh.iter().any(|n| {
            s(&n["dst"]) == s(&w["ip"])
                && s(&n["dev"]) == s(&w["dev"])
                && w.get("mac").is_none_or(|m| n["lladdr"] == *m)
                && w.get("state").is_none_or(|st| {
                    n["state"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == st))
                })
        })
    };
    for w in list("neighbors") {
        if !has_neigh(&w) {
            bad.push(format!("neighbour {w} missing; kernel {neigh:?}"));
        }
    }
    for w in list("absentNeighbors") {
        if has_neigh(&w) {
            bad.push(format!("neighbour {w} must be absent"));
        }
    }
    let fdb = ip_json(ns, "bridge", &["-j", "fdb", "show"]);
    let has_fdb = |w: &Value| {
        fdb.iter().any(|f| {
            f["mac"] == w["mac"]
                && s(&f["ifname"]) == s(&w["dev"])
                && w.get("dst").is_none_or(|d| f["dst"] == *d)
                && w.get("state")
                    .is_none_or(|st| f.get("state").unwrap_or(&Value::Null) == st)
                && (!w["self"].as_bool().unwrap_or(false)
                    || f["flags"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| s(x) == "self")))
        })
    };
    for w in list("fdb") {
        if !has_fdb(&w) {
            bad.push(format!("fdb {w} missing; kernel {fdb:?}"));
        }
    }
    for w in list("absentFdb") {
        if has_fdb(&w) {
            bad.push(format!("fdb {w} must be absent"));
        }
    }
    bad
}

fn program_case(case: &Value) -> Result<(), String> {
    let (config, node, plan) = backend_case_plan(case)?;
    let own: ipnet::Ipv4Net = {
        let key = s(&case["ownLease"]["key"]);
        twill_overlay::SubnetKey::parse(key)
            .map_err(|e| e.to_string())?
            .ipv4
    };
    let ns = Netns::new("kc");
    let wire = Netns::new("kw");
    veth_pair(&ns, &node.ext_iface, &wire, "w0");
    ns.ip(&[
        "link",
        "set",
        &node.ext_iface,
        "mtu",
        &node.ext_mtu.to_string(),
    ]);
    ns.ip(&[
        "addr",
        "add",
        &node.ext_address.to_string(),
        "dev",
        &node.ext_iface,
    ]);
    for r in &node.underlay_routes {
        if let Some(gw) = r.gw {
            ns.ip(&[
                "route",
                "add",
                &r.dst.to_string(),
                "via",
                &gw.to_string(),
                "dev",
                &node.ext_iface,
            ]);
        }
    }
    let devices: BTreeSet<String> = [
        node.ext_iface.clone(),
        format!("flannel.{}", config.vni()),
        "flannel0".to_string(),
    ]
    .into();
    let scope = Scope {
        network: config.network,
        keep: vec![own],
        devices,
    };

    if case.get("events").is_some() {
        let mut before = case.clone();
        before.as_object_mut().unwrap().remove("events");
        let (_, _, first) = backend_case_plan(&before)?;
        apply(&ns, &first.state, &scope)?;
    }
    let changes = apply(&ns, &plan.state, &scope)?;
    if changes == 0 && case.get("events").is_none() && !plan.state.links.is_empty() {
        return Err("first apply changed nothing".into());
    }
    let again = apply(&ns, &plan.state, &scope)?;
    if again != 0 {
        return Err(format!(
            "second apply made {again} changes (not idempotent)"
        ));
    }
    let bad = check_kernel(&ns, case, config.network, own);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n  "))
    }
}

#[test]
fn kernel_holds_what_each_shared_backend_case_expects() {
    let name = "kernel_holds_what_each_shared_backend_case_expects";
    if !twill_testkit::require_root(name) || !twill_testkit::require_tool(name, "bridge") {
        return;
    }
    let mut ran = 0;
    let mut failures = Vec::new();
    for (path, case) in twill_testkit::testdata::json_cases("overlay") {
        if case["kind"] != "backend-state" || case["expected"].get("error").is_some() {
            continue;
        }
        // The udp backend's TUN device belongs to its relay, not to this applier.
        if case["expected"]["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["kind"] == "tun"))
        {
            continue;
        }
        ran += 1;
        if let Err(e) = program_case(&case) {
            failures.push(format!("{}:\n  {e}", path.display()));
        }
    }
    assert!(ran >= 1, "no backend-state cases to program");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases differ in the kernel:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn kernel_check_catches_a_wrong_expectation() {
    let name = "kernel_check_catches_a_wrong_expectation";
    if !twill_testkit::require_root(name) || !twill_testkit::require_tool(name, "bridge") {
        return;
    }
    let (_, case) = twill_testkit::testdata::json_cases("overlay")
        .into_iter()
        .find(|(_, c)| {
            c["kind"] == "backend-state"
                && c["network"]["Backend"]["Type"] == "vxlan"
                && c.get("events").is_none()
        })
        .expect("a vxlan backend-state case");
    let mut wrong_route = case.clone();
    wrong_route["expected"]["routes"][0]["gw"] = Value::from("10.244.99.0");
    assert!(program_case(&wrong_route).is_err());
    let mut wrong_mtu = case.clone();
    wrong_mtu["expected"]["links"][0]["mtu"] = Value::from(1400);
    assert!(program_case(&wrong_mtu).is_err());
}

#[test]
fn reconcile_leaves_routes_and_neighbours_it_does_not_own() {
    let name = "reconcile_leaves_routes_and_neighbours_it_does_not_own";
    if !twill_testkit::require_root(name) {
        return;
    }
    let ns = Netns::new("ko");
    let wire = Netns::new("kx");
    veth_pair(&ns, "eth0", &wire, "w0");
    ns.ip(&["addr", "add", "192.168.50.11/24", "dev", "eth0"]);
    // Foreign state: outside the network, the node's own subnet, a stray in-network route on
    // a device the overlay does not use, and a permanent neighbour on eth0.
    ns.ip(&["route", "add", "10.99.0.0/16", "via", "192.168.50.1"]);
    ns.ip(&["route", "add", "10.244.1.0/24", "via", "192.168.50.1"]);
    ns.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    ns.ip(&["link", "set", "other0", "up"]);
    ns.ip(&["route", "add", "10.244.77.0/24", "dev", "other0"]);
    ns.ip(&[
        "neigh",
        "add",
        "192.168.50.99",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    // An owned stale route that must go.
    ns.ip(&[
        "route",
        "add",
        "10.244.5.0/24",
        "via",
        "192.168.50.15",
        "dev",
        "eth0",
    ]);

    let mut state = KernelState::default();
    state.routes.insert(twill_overlay::state::Route {
        dst: "10.244.2.0/24".parse().unwrap(),
        gw: Some("192.168.50.12".parse().unwrap()),
        dev: "eth0".into(),
        onlink: false,
    });
    let scope = Scope {
        network: "10.244.0.0/16".parse().unwrap(),
        keep: vec!["10.244.1.0/24".parse().unwrap()],
        devices: [
            "eth0".to_string(),
            "flannel.1".to_string(),
            "flannel0".to_string(),
        ]
        .into(),
    };
    apply(&ns, &state, &scope).unwrap();
    let routes = ns.ip(&["route", "show"]);
    for keep in [
        "10.99.0.0/16 via 192.168.50.1",
        "10.244.1.0/24 via 192.168.50.1",
        "10.244.77.0/24 dev other0",
    ] {
        assert!(routes.contains(keep), "{keep} was touched:\n{routes}");
    }
    assert!(
        routes.contains("10.244.2.0/24 via 192.168.50.12 dev eth0"),
        "{routes}"
    );
    assert!(
        !routes.contains("10.244.5.0/24"),
        "stale owned route kept:\n{routes}"
    );
    assert!(
        ns.ip(&["neigh", "show", "dev", "eth0"])
            .contains("192.168.50.99")
    );
}

/// flanneld's interface choice on a real namespace with two uplinks: `--iface` by name
/// or address (the first present wins), `--iface-regex` over addresses then names,
/// `--iface-can-reach` by route, and the default route's interface otherwise.
#[test]
fn the_external_interface_is_chosen_as_flanneld_chooses_it() {
    if !twill_testkit::require_root("the_external_interface_is_chosen_as_flanneld_chooses_it") {
        return;
    }
    let ns = Netns::new("ifc");
    let peer = Netns::new("ifcp");
    veth_pair(&ns, "up0", &peer, "p0");
    veth_pair(&ns, "back1", &peer, "p1");
    for (dev, addr) in [("up0", "192.168.77.2/24"), ("back1", "10.77.0.2/24")] {
        assert!(
            ns.exec("ip", &["addr", "add", addr, "dev", dev])
                .status
                .success()
        );
        assert!(ns.exec("ip", &["link", "set", dev, "up"]).status.success());
    }
    assert!(
        ns.exec(
            "ip",
            &[
                "route",
                "add",
                "default",
                "via",
                "192.168.77.1",
                "dev",
                "up0",
                "onlink"
            ]
        )
        .status
        .success()
    );
    assert!(
        ns.exec(
            "ip",
            &[
                "route",
                "add",
                "172.20.0.0/16",
                "via",
                "10.77.0.1",
                "dev",
                "back1",
                "onlink"
            ]
        )
        .status
        .success()
    );
    let pick = |choice: twill_netlink::IfaceChoice| -> Result<String, String> {
        with_handle(&ns, |handle| async move {
            twill_netlink::describe_underlay(&handle, &choice)
                .await
                .map(|u| format!("{} {}", u.name, u.address))
                .map_err(|e| e.to_string())
        })
    };
    let c = |ifaces: &[&str], regexes: &[&str], reach: Option<&str>| twill_netlink::IfaceChoice {
        ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
        regexes: regexes.iter().map(|s| s.to_string()).collect(),
        can_reach: reach.map(|r| r.parse().unwrap()),
    };
    assert_eq!(
        pick(c(&[], &[], None)).unwrap(),
        "up0 192.168.77.2/24",
        "default route"
    );
    assert_eq!(
        pick(c(&["back1"], &[], None)).unwrap(),
        "back1 10.77.0.2/24"
    );
    assert_eq!(
        pick(c(&["10.77.0.2"], &[], None)).unwrap(),
        "back1 10.77.0.2/24",
        "by address"
    );
    assert_eq!(
        pick(c(&["missing0", "back1"], &[], None)).unwrap(),
        "back1 10.77.0.2/24",
        "the first present"
    );
    assert_eq!(
        pick(c(&[], &[r"^10\.77\."], None)).unwrap(),
        "back1 10.77.0.2/24"
    );
    assert_eq!(pick(c(&[], &["^up"], None)).unwrap(), "up0 192.168.77.2/24");
    assert_eq!(
        pick(c(&[], &[], Some("172.20.5.5"))).unwrap(),
        "back1 10.77.0.2/24"
    );
    assert_eq!(
        pick(c(&[], &[], Some("8.8.8.8"))).unwrap(),
        "up0 192.168.77.2/24"
    );
    let e = pick(c(&["nope0"], &[], None)).unwrap_err();
    assert!(
        e.contains("failed to find any valid interface to use: nope0"),
        "{e}"
    );
    let e = pick(c(&[], &["("], None)).unwrap_err();
    assert!(e.contains("--iface-regex"), "{e}");
}
