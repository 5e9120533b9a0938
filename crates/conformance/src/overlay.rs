//! Evaluate one case of the shared overlay corpus (`shared/testdata/overlay`, schema in its
//! README) against this crate. Used by `twill conformance overlay DIR` and by this crate's
//! table-driven tests. Pure: the caller reads the files.
//!
//! The checks follow the schema, not the files present: every kind, every optional field
//! (`deletedKeys`, `events`, `underlayRoutes`, `absent*`, `sysctls`, `udp*`,
//! `subnetEnvMTU`, `re:` patterns) is handled wherever it may appear.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value, json};

use twill_overlay::alloc::plan_allocation;
use twill_overlay::backend::{
    LeaseEvent, NodeSpec, OwnLease, PeerTable, UnderlayRoute, plan_backend,
};
use twill_overlay::config::{NetworkConfig, RawConfig};
use twill_overlay::lease::{DEFAULT_PREFIX, LEASE_TTL_SECS, Lease, LeaseAttrs, Mac, SubnetKey};
use twill_overlay::masq::{MasqOptions, render_masquerade};
use twill_overlay::renewal::plan_renewal;
use twill_overlay::state::{KernelState, LinkSpec};
use twill_overlay::subnet_env::{
    SUBNET_ENV_MODE, SUBNET_ENV_PATH, SubnetEnv, previous_subnet, render_subnet_env,
};

/// The "now" leases are measured against (any fixed instant works: only TTLs matter).
const NOW: u64 = 1_750_000_000;

/// Check one case. `Err` holds every mismatch found, one per line.
pub fn check_case(case: &Value) -> Result<(), String> {
    let kind = str_at(case, "kind")?;
    let expected = case.get("expected").ok_or("missing expected")?;
    let outcome = match kind {
        "config" => check_config(case),
        "allocation" => check_allocation(case),
        "lease-record" => check_lease_record(case),
        "renewal" => check_renewal(case),
        "subnet-env" => check_subnet_env(case),
        "backend-state" => check_backend_state(case),
        "masquerade" => check_masquerade(case),
        other => return Err(format!("unknown kind {other:?}")),
    };
    match (outcome, expected.get("error")) {
        (Ok(Ok(())), None) => Ok(()),
        (Ok(Err(mismatches)), None) => Err(mismatches.join("; ")),
        (Err(e), None) => Err(format!("unexpected error: {e}")),
        (Ok(_), Some(_)) => Err("expected an error, got success".into()),
        (Err(e), Some(want)) => {
            let needle = str_at(want, "msgContains")?;
            if e.contains(needle) {
                Ok(())
            } else {
                Err(format!("error {e:?} does not contain {needle:?}"))
            }
        }
    }
}

/// Outer `Err`: the implementation returned an error (string). Inner: mismatches.
type Outcome = Result<Result<(), Vec<String>>, String>;

fn str_at<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field {key}"))
}

fn config_of(case: &Value) -> Result<NetworkConfig, String> {
    let net = case.get("network").ok_or("missing network")?;
    let raw: RawConfig =
        serde_json::from_value(net.clone()).map_err(|e| format!("network: {e}"))?;
    NetworkConfig::from_raw("network", &raw).map_err(|e| e.to_string())
}

struct Node {
    spec: NodeSpec,
    public_ipv6: Option<Ipv6Addr>,
    ip_masq: bool,
    subnet_env: Option<String>,
}

fn node_of(case: &Value) -> Result<Node, String> {
    let n = case.get("node").ok_or("missing node")?;
    let public_ip: Ipv4Addr = str_at(n, "publicIP")?
        .parse()
        .map_err(|e| format!("node.publicIP: {e}"))?;
    let ext = n.get("extIface").ok_or("missing node.extIface")?;
    let address: Ipv4Net = match ext.get("address").and_then(Value::as_str) {
        Some(a) => a
            .parse()
            .map_err(|e| format!("node.extIface.address: {e}"))?,
        None => Ipv4Net::new(public_ip, 32).expect("/32"),
    };
    let mut underlay = Vec::new();
    for r in case
        .get("underlayRoutes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let dst: Ipv4Net = str_at(r, "dst")?
            .parse()
            .map_err(|e| format!("underlayRoutes.dst: {e}"))?;
        let gw = match r.get("gw").and_then(Value::as_str) {
            Some(g) => Some(
                g.parse::<Ipv4Addr>()
                    .map_err(|e| format!("underlayRoutes.gw: {e}"))?,
            ),
            None => None,
        };
        underlay.push(UnderlayRoute { dst, gw });
    }
    Ok(Node {
        spec: NodeSpec {
            public_ip,
            ext_iface: ext
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("eth0")
                .to_string(),
            ext_mtu: ext.get("mtu").and_then(Value::as_u64).unwrap_or(1500) as u32,
            ext_address: address,
            underlay_routes: underlay,
        },
        public_ipv6: match n.get("publicIPv6").and_then(Value::as_str) {
            Some(s) => Some(s.parse().map_err(|e| format!("node.publicIPv6: {e}"))?),
            None => None,
        },
        ip_masq: n.get("ipMasq").and_then(Value::as_bool).unwrap_or(false),
        subnet_env: n
            .get("subnetEnv")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn lease_of(v: &Value) -> Result<Lease, String> {
    let key = str_at(v, "key")?;
    let subnet = SubnetKey::parse(key).map_err(|e| e.to_string())?;
    let attrs: LeaseAttrs = serde_json::from_value(v.get("value").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("{key}: {e}"))?;
    let ttl = v
        .get("ttlSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(LEASE_TTL_SECS);
    Ok(Lease {
        subnet,
        attrs,
        expires_at: NOW + ttl,
    })
}

fn leases_of(case: &Value, field: &str) -> Result<Vec<Lease>, String> {
    case.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(lease_of)
        .collect()
}

/// A stable per-case seed (for MACs and the random subnet pick).
fn seed_of(case: &Value) -> u64 {
    case.get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// `expected` matches `actual`: equal, with `re:` strings as whole-string regexes and
/// objects compared on the expected keys only when `subset` is set.
fn matches(expected: &Value, actual: &Value, subset: bool) -> bool {
    match (expected, actual) {
        (Value::String(e), Value::String(a)) if e.starts_with("re:") => {
            regex_lite::Regex::new(&format!(
                "^(?:{})$",
                e[3..].trim_start_matches('^').trim_end_matches('$')
            ))
            .map(|r| r.is_match(a))
            .unwrap_or(false)
        }
        (Value::Object(e), Value::Object(a)) => {
            (subset || e.len() == a.len())
                && e.iter()
                    .all(|(k, ev)| a.get(k).is_some_and(|av| matches(ev, av, subset)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y, subset))
        }
        (e, a) => e == a,
    }
}

fn check_config(case: &Value) -> Outcome {
    let c = config_of(case)?;
    let actual = json!({
        "Network": c.network.to_string(),
        "SubnetLen": c.subnet_len,
        "SubnetMin": c.subnet_min.to_string(),
        "SubnetMax": c.subnet_max.to_string(),
        "BackendType": c.backend_type,
    });
    let want = case["expected"]
        .get("config")
        .cloned()
        .unwrap_or(Value::Null);
    Ok(if matches(&want, &actual, true) {
        Ok(())
    } else {
        Err(vec![format!("config {actual} != expected {want}")])
    })
}

fn own_attrs(c: &NetworkConfig, node: &Node, seed: u64) -> Result<LeaseAttrs, String> {
    let kind = c.backend_kind().map_err(|e| e.to_string())?;
    let v6 = c.ipv6.is_some().then(|| Mac::from_seed(seed ^ 6));
    Ok(LeaseAttrs::for_backend(
        kind,
        node.spec.public_ip,
        node.public_ipv6,
        c.vni(),
        Some(Mac::from_seed(seed)),
        v6,
    ))
}

fn check_allocation(case: &Value) -> Outcome {
    let c = config_of(case)?;
    let node = node_of(case)?;
    let leases = leases_of(case, "existingLeases")?;
    let previous = node.subnet_env.as_deref().and_then(previous_subnet);
    let seed = seed_of(case);
    let plan = plan_allocation(&c, node.spec.public_ip, &leases, previous, NOW, seed)
        .map_err(|e| e.to_string())?;
    let exp = &case["expected"];
    let mut bad = Vec::new();
    let got = plan.subnet.ipv4.to_string();
    if let Some(want) = exp.get("subnet").and_then(Value::as_str)
        && want != got
    {
        bad.push(format!("subnet {got} != {want}"));
    }
    if let Some(set) = exp.get("subnetOneOf").and_then(Value::as_array)
        && !set.iter().any(|s| s.as_str() == Some(&got))
    {
        bad.push(format!("subnet {got} not in subnetOneOf"));
    }
    let mut deleted: Vec<String> = plan.delete.iter().map(|k| k.key(DEFAULT_PREFIX)).collect();
    deleted.sort();
    let mut want_deleted: Vec<String> = exp
        .get("deletedKeys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    want_deleted.sort();
    if deleted != want_deleted {
        bad.push(format!("deleted {deleted:?} != {want_deleted:?}"));
    }
    if let Some(l) = exp.get("lease") {
        let key = plan.subnet.key(DEFAULT_PREFIX);
        if let Some(want) = l.get("key").and_then(Value::as_str)
            && !want.contains('<')
            && want != key
        {
            bad.push(format!("lease key {key} != {want}"));
        }
        let value = serde_json::to_value(own_attrs(&c, &node, seed)?).expect("attrs serialize");
        if let Some(want) = l.get("value")
            && !matches(want, &value, false)
        {
            bad.push(format!("lease value {value} != {want}"));
        }
        if let Some(t) = l.get("ttlSeconds").and_then(Value::as_u64)
            && t != LEASE_TTL_SECS
        {
            bad.push(format!("ttl {LEASE_TTL_SECS} != {t}"));
        }
    }
    Ok(if bad.is_empty() { Ok(()) } else { Err(bad) })
}

fn check_lease_record(case: &Value) -> Outcome {
    let c = config_of(case)?;
    let node = node_of(case)?;
    let l = case.get("lease").ok_or("missing lease")?;
    let v4: Ipv4Net = str_at(l, "subnet")?
        .parse()
        .map_err(|e| format!("lease.subnet: {e}"))?;
    let v6: Option<Ipv6Net> = match l.get("ipv6Subnet").and_then(Value::as_str) {
        Some(s) => Some(s.parse().map_err(|e| format!("lease.ipv6Subnet: {e}"))?),
        None => None,
    };
    let mac = |k: &str| -> Result<Option<Mac>, String> {
        l.get(k)
            .and_then(Value::as_str)
            .map(|s| s.parse::<Mac>().map_err(|e| e.to_string()))
            .transpose()
    };
    let kind = c.backend_kind().map_err(|e| e.to_string())?;
    let attrs = LeaseAttrs::for_backend(
        kind,
        node.spec.public_ip,
        node.public_ipv6,
        c.vni(),
        mac("vtepMAC")?,
        mac("vtepMACv6")?,
    );
    let key = SubnetKey { ipv4: v4, ipv6: v6 }.key(DEFAULT_PREFIX);
    let value = attrs.to_json();
    let exp = &case["expected"];
    let mut bad = Vec::new();
    if exp
        .get("key")
        .and_then(Value::as_str)
        .is_some_and(|k| k != key)
    {
        bad.push(format!("key {key} != {}", exp["key"]));
    }
    if exp
        .get("valueJSON")
        .and_then(Value::as_str)
        .is_some_and(|v| v != value)
    {
        bad.push(format!("value {value} != {}", exp["valueJSON"]));
    }
    // Round trip: what we write, we read back to the same attrs.
    if LeaseAttrs::from_json(&key, &value).ok().as_ref() != Some(&attrs) {
        bad.push("value does not read back to the same attrs".into());
    }
    if exp
        .get("ttlSeconds")
        .and_then(Value::as_u64)
        .is_some_and(|t| t != LEASE_TTL_SECS)
    {
        bad.push(format!("ttl {LEASE_TTL_SECS} != {}", exp["ttlSeconds"]));
    }
    Ok(if bad.is_empty() { Ok(()) } else { Err(bad) })
}

fn check_renewal(case: &Value) -> Outcome {
    let exp_at = parse_rfc3339(str_at(case, "leaseExpiration")?)?;
    let margin = case
        .get("renewMarginMinutes")
        .and_then(Value::as_i64)
        .unwrap_or(60);
    let margin = u32::try_from(margin).unwrap_or(0);
    let plan = plan_renewal(exp_at, margin).map_err(|e| e.to_string())?;
    let actual = json!({
        "renewAt": format_rfc3339(plan.renew_at),
        "newExpiration": format_rfc3339(plan.new_expiration),
        "retryAfterFailureSeconds": plan.retry_after_failure_secs,
        "onOwnLeaseRemoved": plan.on_own_lease_removed.name(),
    });
    let want = &case["expected"];
    Ok(if matches(want, &actual, true) {
        Ok(())
    } else {
        Err(vec![format!("renewal {actual} != {want}")])
    })
}

fn check_subnet_env(case: &Value) -> Outcome {
    let c = config_of(case)?;
    let node = node_of(case)?;
    let l = case.get("lease").ok_or("missing lease")?;
    let v4: Ipv4Net = str_at(l, "subnet")?
        .parse()
        .map_err(|e| format!("lease.subnet: {e}"))?;
    let v6: Option<Ipv6Net> = match l.get("ipv6Subnet").and_then(Value::as_str) {
        Some(s) => Some(s.parse().map_err(|e| format!("lease.ipv6Subnet: {e}"))?),
        None => None,
    };
    let kind = c.backend_kind().map_err(|e| e.to_string())?;
    let env = SubnetEnv::new(
        &c,
        SubnetKey { ipv4: v4, ipv6: v6 },
        c.pod_mtu(kind, node.spec.ext_mtu),
        node.ip_masq,
    );
    let actual = json!({
        "path": SUBNET_ENV_PATH,
        "content": render_subnet_env(&env),
        "mode": format!("{SUBNET_ENV_MODE:04o}"),
    });
    let want = &case["expected"];
    Ok(if matches(want, &actual, true) {
        Ok(())
    } else {
        Err(vec![format!("subnet.env {actual} != {want}")])
    })
}

fn state_json(state: &KernelState) -> Map<String, Value> {
    let mut m = Map::new();
    let links: Vec<Value> = state
        .links
        .iter()
        .map(|l| match l {
            LinkSpec::Vxlan(v) => json!({
                "name": v.name, "kind": "vxlan", "vni": v.vni, "dstport": v.port,
                "local": v.local.to_string(), "dev": v.dev, "mtu": v.mtu, "learning": v.learning,
                "gbp": v.gbp, "mac": v.mac.map(|m| m.to_string()), "up": true,
                "addresses": [v.address.to_string()],
            }),
            LinkSpec::Tun(t) => json!({
                "name": t.name, "kind": "tun", "mtu": t.mtu, "up": true,
                "addresses": [t.address.to_string()],
            }),
        })
        .collect();
    m.insert("links".into(), links.into());
    let routes: Vec<Value> = state
        .routes
        .iter()
        .map(|r| {
            json!({"dst": r.dst.to_string(), "gw": r.gw.map(|g| g.to_string()), "dev": r.dev, "onlink": r.onlink})
        })
        .collect();
    m.insert("routes".into(), routes.into());
    let neigh: Vec<Value> = state
        .neighbours
        .iter()
        .map(|n| json!({"ip": n.ip.to_string(), "mac": n.mac.to_string(), "dev": n.dev, "state": "PERMANENT"}))
        .collect();
    m.insert("neighbors".into(), neigh.into());
    let fdb: Vec<Value> = state
        .fdb
        .iter()
        .map(|f| {
            json!({"mac": f.mac.to_string(), "dst": f.dst.to_string(), "dev": f.dev, "self": true, "state": "permanent"})
        })
        .collect();
    m.insert("fdb".into(), fdb.into());
    m
}

/// The inputs and plan of a `backend-state` case (appliers' tests program it into a
/// namespace and compare the kernel with `expected`).
pub fn backend_case_plan(
    case: &Value,
) -> Result<(NetworkConfig, NodeSpec, twill_overlay::BackendPlan), String> {
    let c = config_of(case)?;
    let node = node_of(case)?;
    let own_lease = lease_of(case.get("ownLease").ok_or("missing ownLease")?)?;
    let own = OwnLease {
        subnet: own_lease.subnet,
        vtep_mac: Some(Mac::from_seed(seed_of(case))),
    };
    let mut peers = PeerTable::from_leases(
        leases_of(case, "leases")?
            .iter()
            .filter(|l| l.alive_at(NOW)),
    );
    for ev in case
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let lease = lease_of(ev.get("lease").ok_or("event without lease")?)?;
        let e = match str_at(ev, "type")? {
            "removed" | "expired" | "deleted" => LeaseEvent::Removed(lease.subnet),
            _ => LeaseEvent::Added(lease),
        };
        peers.apply(&e);
    }
    let plan = plan_backend(&c, &node.spec, &own, &peers).map_err(|e| e.to_string())?;
    Ok((c, node.spec, plan))
}

fn check_backend_state(case: &Value) -> Outcome {
    let (c, node_spec, plan) = backend_case_plan(case)?;
    let st = &plan.state;
    let actual = state_json(st);
    let exp = &case["expected"];
    let mut bad = Vec::new();
    let list = |k: &str| {
        exp.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };

    // Links: the set of names is exact, each listed field must match.
    if let Some(want) = exp.get("links").and_then(Value::as_array) {
        let have = actual["links"].as_array().expect("links array");
        if want.len() != have.len() {
            bad.push(format!("{} links, expected {}", have.len(), want.len()));
        }
        for w in want {
            if !have.iter().any(|h| matches(w, h, true)) {
                bad.push(format!(
                    "link {w} not planned (have {})",
                    Value::from(have.clone())
                ));
            }
        }
    }
    for name in list("absentLinks") {
        if st.links.iter().any(|l| Some(l.name()) == name.as_str()) {
            bad.push(format!("link {name} must be absent"));
        }
    }
    // Routes: exactly these; absent keys mean no gateway / not onlink.
    if let Some(want) = exp.get("routes").and_then(Value::as_array) {
        let norm = |r: &Value| {
            json!({"dst": r.get("dst"), "gw": r.get("gw").cloned().unwrap_or(Value::Null),
                   "dev": r.get("dev"), "onlink": r.get("onlink").cloned().unwrap_or(Value::Bool(false))})
        };
        let mut w: Vec<String> = want.iter().map(|r| norm(r).to_string()).collect();
        let mut h: Vec<String> = actual["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .map(|r| norm(r).to_string())
            .collect();
        w.sort();
        h.sort();
        if w != h {
            bad.push(format!("routes {h:?} != expected {w:?}"));
        }
    }
    let absent = |field: &str, have_field: &str, bad: &mut Vec<String>| {
        for w in list(field) {
            if actual[have_field]
                .as_array()
                .expect("array")
                .iter()
                .any(|h| matches(&w, h, true))
            {
                bad.push(format!("{have_field} entry {w} must be absent"));
            }
        }
    };
    absent("absentRoutes", "routes", &mut bad);
    absent("absentNeighbors", "neighbors", &mut bad);
    absent("absentFdb", "fdb", &mut bad);
    for (field, have_field) in [("neighbors", "neighbors"), ("fdb", "fdb")] {
        for w in list(field) {
            if !actual[have_field]
                .as_array()
                .expect("array")
                .iter()
                .any(|h| matches(&w, h, true))
            {
                bad.push(format!("{have_field} entry {w} missing"));
            }
        }
    }
    if let Some(want) = exp.get("sysctls").and_then(Value::as_object) {
        for (k, v) in want {
            let have = st.sysctls.get(k).map(String::as_str);
            if have != v.as_str() {
                bad.push(format!("sysctl {k} = {have:?}, expected {v}"));
            }
        }
    }
    if let Some(w) = exp.get("udpListen") {
        let have = st
            .udp
            .as_ref()
            .map(|u| json!({"address": u.listen.to_string(), "port": u.port}));
        if !have.as_ref().is_some_and(|h| matches(w, h, true)) {
            bad.push(format!("udpListen {have:?} != {w}"));
        }
    }
    if let Some(want) = exp.get("udpPeers").and_then(Value::as_array) {
        let mut h: Vec<String> = st
            .udp
            .iter()
            .flat_map(|u| &u.peers)
            .map(|p| json!({"subnet": p.subnet.to_string(), "publicIP": p.public_ip.to_string(), "port": p.port}).to_string())
            .collect();
        let mut w: Vec<String> = want
            .iter()
            .map(|p| json!({"subnet": p.get("subnet"), "publicIP": p.get("publicIP"), "port": p.get("port")}).to_string())
            .collect();
        h.sort();
        w.sort();
        if h != w {
            bad.push(format!("udpPeers {h:?} != {w:?}"));
        }
    }
    if let Some(mtu) = exp.get("subnetEnvMTU").and_then(Value::as_u64) {
        let kind = c.backend_kind().map_err(|e| e.to_string())?;
        let have = c.pod_mtu(kind, node_spec.ext_mtu);
        if u64::from(have) != mtu {
            bad.push(format!("subnet.env MTU {have} != {mtu}"));
        }
    }
    Ok(if bad.is_empty() { Ok(()) } else { Err(bad) })
}

fn check_masquerade(case: &Value) -> Outcome {
    let c = config_of(case)?;
    let node = node_of(case)?;
    let own = lease_of(case.get("ownLease").ok_or("missing ownLease")?)?;
    let o = case.get("options").cloned().unwrap_or(Value::Null);
    let flag = |k: &str, d: bool| o.get(k).and_then(Value::as_bool).unwrap_or(d);
    let opts = MasqOptions {
        ip_masq: node.ip_masq,
        random_fully: flag("iptablesSupportsRandomFully", true)
            && !flag("ipMasqRandomFullyDisable", false),
        forward_rules: flag("iptablesForwardRules", true),
    };
    let r = render_masquerade(c.network, own.subnet.ipv4, opts);
    let mut bad = Vec::new();
    let tables = case["expected"]
        .get("iptables")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, want) in &tables {
        let t = match name.as_str() {
            "nat" => &r.nat,
            "filter" => &r.filter,
            other => {
                if want
                    .get("rules")
                    .and_then(Value::as_array)
                    .is_some_and(|r| !r.is_empty())
                    || want
                        .get("chains")
                        .and_then(Value::as_array)
                        .is_some_and(|c| !c.is_empty())
                {
                    bad.push(format!("table {other}: no rules are rendered there"));
                }
                continue;
            }
        };
        for ch in want
            .get("chains")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !t.chains.iter().any(|c| Some(c.as_str()) == ch.as_str()) {
                bad.push(format!("{name}: chain {ch} missing"));
            }
        }
        for ch in want
            .get("absentChains")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if t.chains.iter().any(|c| Some(c.as_str()) == ch.as_str()) {
                bad.push(format!("{name}: chain {ch} must be absent"));
            }
        }
        if let Some(rules) = want.get("rules").and_then(Value::as_array) {
            let have: Vec<&str> = t.jumps.iter().chain(&t.rules).map(String::as_str).collect();
            let want: Vec<&str> = rules.iter().filter_map(Value::as_str).collect();
            if have != want {
                bad.push(format!("{name}: rules {have:?} != expected {want:?}"));
            }
        }
    }
    Ok(if bad.is_empty() { Ok(()) } else { Err(bad) })
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, the corpus's form) to unix seconds. Hand-rolled: one
/// fixed format does not warrant a date-time dependency in a pure core.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || format!("timestamp {s:?}: expected YYYY-MM-DDTHH:MM:SSZ");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().map_err(|_| bad());
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    u64::try_from(secs).map_err(|_| bad())
}

/// Unix seconds to `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's civil-calendar algorithms (public domain), proleptic Gregorian.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests;
