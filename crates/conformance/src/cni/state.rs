//! Observing a namespace (links, addresses, routes, sysctls, iptables) and comparing it
//! with a case's `hostState` / `containerState` (README "expected.hostState").
//! Observation uses `ip -j` and `iptables-save`: this is test tooling, and comparing
//! against iproute2's view is what a person checking the plugin would do.

use std::collections::BTreeMap;

use serde_json::Value;

use super::matching::str_matches;
use super::sandbox::Netns;

#[derive(Debug, Clone, Default)]
pub struct Link {
    pub name: String,
    pub kind: String,
    pub up: bool,
    pub mtu: u64,
    pub mac: String,
    pub promisc: bool,
    pub master: Option<String>,
    pub hairpin: Option<bool>,
    /// IPv4 and global IPv6 addresses, `addr/prefix`.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ObservedRoute {
    pub dst: String,
    pub gw: Option<String>,
    pub dev: Option<String>,
    pub scope: String,
}

fn ip_json(ns: &Netns, args: &str) -> Result<Vec<Value>, String> {
    let out = ns
        .shell(&format!("ip -j {args}"))
        .map_err(|e| e.to_string())?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str::<Vec<Value>>(&out).map_err(|e| format!("ip -j {args}: {e}"))
}

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub fn links(ns: &Netns) -> Result<Vec<Link>, String> {
    let details = ip_json(ns, "-d link show")?;
    let addrs = ip_json(ns, "addr show")?;
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in &addrs {
        let list = by_name.entry(s(a, "ifname")).or_default();
        for ai in a
            .get("addr_info")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if s(ai, "family") == "inet6" && s(ai, "scope") == "link" {
                continue;
            }
            list.push(format!(
                "{}/{}",
                s(ai, "local"),
                ai.get("prefixlen").and_then(Value::as_u64).unwrap_or(0)
            ));
        }
    }
    Ok(details
        .iter()
        .map(|l| {
            let flags: Vec<String> = l
                .get("flags")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let info = l.get("linkinfo");
            let hairpin = info
                .and_then(|i| i.get("info_slave_data"))
                .and_then(|d| d.get("hairpin"))
                .and_then(Value::as_bool);
            let name = s(l, "ifname");
            Link {
                kind: info.map(|i| s(i, "info_kind")).unwrap_or_default(),
                up: flags.iter().any(|f| f == "UP"),
                promisc: flags.iter().any(|f| f == "PROMISC")
                    || l.get("promiscuity").and_then(Value::as_u64).unwrap_or(0) > 0,
                mtu: l.get("mtu").and_then(Value::as_u64).unwrap_or(0),
                mac: s(l, "address"),
                master: l.get("master").and_then(Value::as_str).map(String::from),
                hairpin,
                addresses: by_name.get(&name).cloned().unwrap_or_default(),
                name,
            }
        })
        .collect())
}

pub fn routes(ns: &Netns) -> Result<Vec<ObservedRoute>, String> {
    let mut out = Vec::new();
    for (fam, default) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        for r in ip_json(ns, &format!("{fam} route show table main"))? {
            let mut dst = s(&r, "dst");
            if dst == "default" {
                dst = default.to_string();
            } else if !dst.contains('/') {
                dst = format!("{dst}/{}", if fam == "-4" { 32 } else { 128 });
            }
            out.push(ObservedRoute {
                dst,
                gw: r.get("gateway").and_then(Value::as_str).map(String::from),
                dev: r.get("dev").and_then(Value::as_str).map(String::from),
                scope: r
                    .get("scope")
                    .and_then(Value::as_str)
                    .unwrap_or("global")
                    .to_string(),
            });
        }
    }
    Ok(out)
}

fn link_matches(exp: &Value, l: &Link) -> Result<(), String> {
    let Some(obj) = exp.as_object() else {
        return Err("link expectation is not an object".into());
    };
    for (k, v) in obj {
        let ok = match k.as_str() {
            "name" => v.as_str().is_some_and(|n| str_matches(n, &l.name)),
            "kind" => v.as_str().is_some_and(|n| str_matches(n, &l.kind)),
            "up" => v.as_bool() == Some(l.up),
            "mtu" => v.as_u64() == Some(l.mtu),
            "mac" => v
                .as_str()
                .is_some_and(|m| str_matches(&m.to_lowercase(), &l.mac)),
            "promisc" => v.as_bool() == Some(l.promisc),
            "master" => v
                .as_str()
                .is_some_and(|m| l.master.as_deref().is_some_and(|x| str_matches(m, x))),
            "hairpin" => v.as_bool() == Some(l.hairpin.unwrap_or(false)),
            "addresses" => {
                let mut want: Vec<String> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect();
                let mut have = l.addresses.clone();
                want.sort();
                have.sort();
                want == have
            }
            _ => true,
        };
        if !ok {
            let have = match k.as_str() {
                "kind" => l.kind.clone(),
                "up" => l.up.to_string(),
                "mtu" => l.mtu.to_string(),
                "mac" => l.mac.clone(),
                "promisc" => l.promisc.to_string(),
                "master" => format!("{:?}", l.master),
                "hairpin" => format!("{:?}", l.hairpin),
                "addresses" => format!("{:?}", l.addresses),
                _ => String::new(),
            };
            return Err(format!("{k}: expected {v}, got {have}"));
        }
    }
    Ok(())
}

fn route_matches(exp: &Value, r: &ObservedRoute) -> bool {
    let dst_ok = exp.get("dst").and_then(Value::as_str).is_none_or(|d| {
        let d = if d.contains('/') {
            d.to_string()
        } else {
            format!("{d}/{}", if d.contains(':') { 128 } else { 32 })
        };
        d == r.dst
    });
    let gw_ok = exp
        .get("gw")
        .and_then(Value::as_str)
        .is_none_or(|g| r.gw.as_deref() == Some(g));
    let dev_ok = exp
        .get("dev")
        .and_then(Value::as_str)
        .is_none_or(|d| r.dev.as_deref() == Some(d));
    let scope_ok = exp.get("scope").and_then(Value::as_str).is_none_or(|sc| {
        let sc = if sc == "universe" { "global" } else { sc };
        sc == r.scope
    });
    dst_ok && gw_ok && dev_ok && scope_ok
}

/// The host-side peer of `ifname` in `ctr` (a veth's `link_index` on the container side
/// is the host-side ifindex), by name in `host`.
pub fn host_peer(host: &Netns, ctr: &Netns, ifname: &str) -> Option<String> {
    let c = ip_json(ctr, &format!("-d link show dev {ifname}")).ok()?;
    let idx = c.first()?.get("link_index")?.as_u64()?;
    let h = ip_json(host, "link show").ok()?;
    h.iter()
        .find(|l| l.get("ifindex").and_then(Value::as_u64) == Some(idx))
        .map(|l| s(l, "ifname"))
}

/// Compare a namespace with a `hostState`/`containerState` object; one message per difference.
///
/// `related`: the host link that was the peer of the case's container interface before
/// the invocation. A pattern in `absentLinks` then means "that veth is gone" (other
/// pods' veths may remain); without it, no link may match the pattern.
pub fn compare(ns: &Netns, exp: &Value, label: &str, related: Option<&str>) -> Vec<String> {
    let mut fails = Vec::new();
    let Some(obj) = exp.as_object() else {
        return fails;
    };
    let needs_links = ["links", "interfaces", "absentLinks", "absentInterfaces"]
        .iter()
        .any(|k| obj.contains_key(*k));
    let observed = if needs_links {
        match links(ns) {
            Ok(l) => l,
            Err(e) => return vec![format!("{label}: {e}")],
        }
    } else {
        Vec::new()
    };
    for key in ["links", "interfaces"] {
        for want in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
            let name = want.get("name").and_then(Value::as_str).unwrap_or("*");
            let candidates: Vec<&Link> = observed
                .iter()
                .filter(|l| str_matches(name, &l.name))
                .collect();
            if candidates.is_empty() {
                fails.push(format!("{label}.{key}: no link {name}"));
                continue;
            }
            let errs: Vec<String> = candidates
                .iter()
                .filter_map(|l| link_matches(want, l).err())
                .collect();
            if errs.len() == candidates.len() {
                fails.push(format!("{label}.{key} {name}: {}", errs.join("; ")));
            }
        }
    }
    for key in ["absentLinks", "absentInterfaces"] {
        for n in obj
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let scoped = |l: &&Link| match related {
                Some(r) if n.starts_with("re:") => l.name == r,
                _ => true,
            };
            if let Some(l) = observed
                .iter()
                .filter(scoped)
                .find(|l| str_matches(n, &l.name))
            {
                fails.push(format!("{label}.{key}: {} still exists", l.name));
            }
        }
    }
    if obj.contains_key("routes") || obj.contains_key("absentRoutes") {
        match routes(ns) {
            Err(e) => fails.push(format!("{label}: {e}")),
            Ok(rs) => {
                for want in obj
                    .get("routes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if !rs.iter().any(|r| route_matches(want, r)) {
                        fails.push(format!(
                            "{label}.routes: missing {want} (have {})",
                            fmt_routes(&rs)
                        ));
                    }
                }
                for bad in obj
                    .get("absentRoutes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if rs.iter().any(|r| route_matches(bad, r)) {
                        fails.push(format!("{label}.absentRoutes: {bad} present"));
                    }
                }
            }
        }
    }
    for (k, v) in obj
        .get("sysctls")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let want = v
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string());
        match ns.sysctl_get(k) {
            Ok(have) if have == want => {}
            Ok(have) => fails.push(format!("{label}.sysctls.{k}: expected {want}, got {have}")),
            Err(e) => fails.push(format!("{label}.sysctls.{k}: {e}")),
        }
    }
    for (table, t) in obj
        .get("iptables")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let save = match ns.shell(&format!("iptables-save -t {table}")) {
            Ok(s) => s,
            Err(e) => {
                fails.push(format!("{label}.iptables.{table}: {e}"));
                continue;
            }
        };
        let chains: Vec<&str> = save
            .lines()
            .filter_map(|l| {
                l.strip_prefix(':')
                    .and_then(|r| r.split_whitespace().next())
            })
            .collect();
        let rules: Vec<&str> = save
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("-A "))
            .collect();
        let list = |k: &str| -> Vec<String> {
            t.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        for c in list("chains") {
            if !chains.contains(&c.as_str()) {
                fails.push(format!("{label}.iptables.{table}: chain {c} missing"));
            }
        }
        for c in list("absentChains") {
            if chains.contains(&c.as_str()) {
                fails.push(format!("{label}.iptables.{table}: chain {c} still present"));
            }
        }
        for r in list("rules") {
            if !rules.contains(&r.as_str()) {
                fails.push(format!("{label}.iptables.{table}: rule missing: {r}"));
            }
        }
        for r in list("absentRules") {
            if rules.contains(&r.as_str()) {
                fails.push(format!("{label}.iptables.{table}: rule still present: {r}"));
            }
        }
    }
    fails
}

fn fmt_routes(rs: &[ObservedRoute]) -> String {
    rs.iter()
        .map(|r| format!("{} via {:?} dev {:?} scope {}", r.dst, r.gw, r.dev, r.scope))
        .collect::<Vec<_>>()
        .join(", ")
}
