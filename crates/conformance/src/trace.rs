//! The shared proxy corpus (`testdata/proxy`) as the tracer's truth: a fixture's
//! `iptablesRestore` text is the node's ruleset, `config.localAddresses` its local
//! addresses, and every flow's `expected` verdict must equal the trace's.
//!
//! The fixture text leaves out the base chains; [`add_kube_proxy_jumps`] adds the jumps
//! kube-proxy installs into them (pkg/proxy/iptables/proxier.go `iptablesJumpChains`,
//! each inserted at the top of its chain, so the later ones in that list come first),
//! plus kubelet's `KUBE-FIREWALL` on INPUT/OUTPUT.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use twill_trace::iptables::{Ruleset, parse_ip};
use twill_trace::route::{Interface, Route, RoutingState};
use twill_trace::walk::{Branch, Fate, Probe, sockaddr, trace};
use twill_trace::{Error, Snapshot};

/// (table, chain, rule text, the KUBE chain it needs), in the order they end up.
const KUBE_JUMPS: &[(&str, &str, &str, &str)] = &[
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-FIREWALL",
    ),
    (
        "filter",
        "INPUT",
        "-m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
        "KUBE-NODEPORTS",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
    ),
    ("filter", "INPUT", "-j KUBE-FIREWALL", "KUBE-FIREWALL"),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-FIREWALL",
    ),
    (
        "filter",
        "FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "KUBE-FORWARD",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "KUBE-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-FIREWALL",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "KUBE-SERVICES",
    ),
    ("filter", "OUTPUT", "-j KUBE-FIREWALL", "KUBE-FIREWALL"),
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "KUBE-POSTROUTING",
    ),
];

/// Add kube-proxy's base-chain jumps to a ruleset holding only KUBE-* chains (a jump
/// is added only when its KUBE chain exists and the base chain does not already jump
/// there).
pub fn add_kube_proxy_jumps(rs: &mut Ruleset) -> Result<(), Error> {
    for (table, chain, text, needs) in KUBE_JUMPS {
        if !rs.has_chain(table, needs) {
            continue;
        }
        let already = rs.chain(table, chain).is_some_and(|c| {
            c.rules.iter().any(|r| matches!(&r.target, twill_trace::iptables::Target::Jump { chain, .. } if chain == needs))
        });
        if already {
            continue;
        }
        rs.append(table, chain, text)?;
        if let Some(c) = rs
            .tables
            .get_mut(*table)
            .and_then(|t| t.chains.get_mut(*chain))
            && c.policy.is_none()
        {
            c.policy = Some("ACCEPT".into());
        }
    }
    Ok(())
}

/// A node with `local` addresses on `eth0` (loopback ones on `lo`), a default route per
/// family out of `eth0` from the first non-loopback address, and forwarding on.
pub fn node_routing(local: &[IpAddr]) -> RoutingState {
    let mut routes = Vec::new();
    let mut lo = Interface {
        name: "lo".into(),
        kind: None,
        master: None,
        addrs: vec![],
    };
    let mut eth0 = Interface {
        name: "eth0".into(),
        kind: None,
        master: None,
        addrs: vec![],
    };
    for ip in local {
        let net = IpNet::from(*ip);
        routes.push(Route {
            table: "local".into(),
            kind: "local".into(),
            dst: net,
            gateway: None,
            dev: Some(if ip.is_loopback() { "lo" } else { "eth0" }.into()),
            prefsrc: Some(*ip),
            metric: 0,
        });
        if ip.is_loopback() {
            lo.addrs.push(net);
        } else {
            eth0.addrs.push(net);
        }
    }
    let v4: Option<IpAddr> = local
        .iter()
        .find(|i| i.is_ipv4() && !i.is_loopback())
        .copied();
    let v6: Option<IpAddr> = local
        .iter()
        .find(|i| i.is_ipv6() && !i.is_loopback())
        .copied();
    for (dst, gw, src) in [
        ("0.0.0.0/0", IpAddr::from([192, 0, 2, 254]), v4),
        ("::/0", "2001:db8:ffff::fe".parse().expect("valid"), v6),
    ] {
        routes.push(Route {
            table: "main".into(),
            kind: "unicast".into(),
            dst: dst.parse().expect("valid"),
            gateway: Some(gw),
            dev: Some("eth0".into()),
            prefsrc: src,
            metric: 0,
        });
    }
    RoutingState {
        routes,
        interfaces: vec![lo, eth0],
        ..RoutingState::default()
    }
}

/// What kube-proxy's flow expectation calls a branch's outcome.
pub fn kube_verdict(b: &Branch) -> String {
    if let Some(e) = b.endpoint() {
        return e;
    }
    match &b.fate {
        Some(Fate::Rejected { .. }) => "REJECT".into(),
        Some(Fate::Dropped { at: Some(at), .. }) if at.rule.is_some() => "DROP".into(),
        Some(Fate::Dropped { reason, .. }) => format!("dropped by the kernel ({reason})"),
        _ if b.accepted_by.is_some() => "ACCEPT".into(),
        _ => "NONE".into(),
    }
}

fn canonical_endpoint(s: &str) -> String {
    let parsed = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:")
            .and_then(|(ip, port)| Some((ip.parse::<IpAddr>().ok()?, port.parse::<u16>().ok()?)))
    } else {
        s.rsplit_once(':')
            .and_then(|(ip, port)| Some((parse_ip(ip).ok()?, port.parse::<u16>().ok()?)))
    };
    parsed
        .map(|(ip, port)| sockaddr(ip, port))
        .unwrap_or_else(|| s.to_string())
}

/// The snapshot a fixture describes, or `None` when it carries no `iptablesRestore`.
pub fn fixture_snapshot(fixture: &Value) -> Result<Option<Snapshot>, String> {
    let Some(lines) = fixture["iptablesRestore"].as_array() else {
        return Ok(None);
    };
    let text: String = lines
        .iter()
        .filter_map(Value::as_str)
        .map(|l| format!("{l}\n"))
        .collect();
    let mut rules = Ruleset::parse("iptablesRestore", &text).map_err(|e| e.to_string())?;
    add_kube_proxy_jumps(&mut rules).map_err(|e| e.to_string())?;
    let local: Vec<IpAddr> = fixture["config"]["localAddresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(|s| parse_ip(s).ok())
                .collect()
        })
        .unwrap_or_default();
    let v6 = fixture["config"]["ipFamily"].as_str() == Some("IPv6");
    let mut snap = Snapshot {
        routing: node_routing(&local),
        ip_forward: Some(true),
        ipv6_forwarding: Some(true),
        ..Snapshot::default()
    };
    if v6 {
        snap.ipv6 = rules;
    } else {
        snap.ipv4 = rules;
    }
    Ok(Some(snap))
}

/// Check one flow against the trace; `Err` says what differed.
pub fn check_flow(snap: &Snapshot, flow: &Value) -> Result<(), String> {
    let src = parse_ip(flow["sourceIP"].as_str().ok_or("flow without sourceIP")?)?;
    let dst = parse_ip(flow["destIP"].as_str().ok_or("flow without destIP")?)?;
    let port = flow["destPort"].as_u64().ok_or("flow without destPort")? as u16;
    let proto = flow["protocol"].as_str().ok_or("flow without protocol")?;
    let t = trace(snap, &Probe::new(src, dst, proto, port)).map_err(|e| e.to_string())?;
    let got: BTreeSet<String> = t.branches.iter().map(kube_verdict).collect();
    let exp = &flow["expected"];
    let want: BTreeSet<String> = match &exp["outputs"] {
        Value::String(s) => [s.clone()].into(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(canonical_endpoint)
            .collect(),
        other => return Err(format!("expected.outputs is {other}")),
    };
    let mut problems = Vec::new();
    if got != want {
        problems.push(format!("outputs {got:?}, want {want:?}"));
    }
    let masq_any = t.branches.iter().any(Branch::masqueraded);
    if let Some(m) = exp["masq"].as_bool()
        && m != masq_any
    {
        problems.push(format!("masq {masq_any}, want {m}"));
    }
    if let Some(per) = exp["masqPerOutput"].as_object() {
        let mut by_out: BTreeMap<String, bool> = BTreeMap::new();
        for b in &t.branches {
            *by_out.entry(kube_verdict(b)).or_default() |= b.masqueraded();
        }
        for (out, want) in per {
            let got = by_out.get(&canonical_endpoint(out)).copied();
            if got != want.as_bool() {
                problems.push(format!("masq for {out}: {got:?}, want {want}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Run every flow of every fixture (with `iptablesRestore`) of one corpus file:
/// (passed, one line per failure, fixtures skipped for lack of rules).
pub fn run_file(label: &str, file: &Value) -> (usize, Vec<String>, usize) {
    let (mut passed, mut failures, mut skipped) = (0, Vec::new(), 0);
    for fx in file["fixtures"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let name = fx["name"].as_str().unwrap_or("?");
        let snap = match fixture_snapshot(fx) {
            Ok(Some(s)) => s,
            Ok(None) => {
                skipped += 1;
                continue;
            }
            Err(e) => {
                failures.push(format!("{label}: {name}: {e}"));
                continue;
            }
        };
        for flow in fx["flows"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let fname = flow["name"].as_str().unwrap_or("?");
            match check_flow(&snap, flow) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("{label}: {name}: flow `{fname}`: {e}")),
            }
        }
    }
    (passed, failures, skipped)
}
