//! nftables rulesets as `nft -j list ruleset` prints them (plus `nft -a list ruleset`
//! for each rule's text), for the walk.
//!
//! Rule expressions stay `serde_json::Value`s: nft's JSON schema is large and open
//! (libnftables-json(5)), and the walk only needs the handful of expressions service
//! proxies and policy agents write (payload/meta/ct/fib matches, sets, verdict maps,
//! numgen, mark, nat statements); anything else is kept and reported as not modelled
//! instead of failing the parse.
//!
//! Tables that iptables-nft manages (the `filter`/`nat`/`mangle`/`raw`/`security`
//! tables of family ip/ip6 with iptables' built-in chain names) are left out: the same
//! rules are read, with their iptables syntax, from `iptables-save`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::Error;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NftRuleset {
    pub tables: Vec<NftTable>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NftTable {
    /// `ip`, `ip6`, `inet`, …
    pub family: String,
    pub name: String,
    pub chains: BTreeMap<String, NftChain>,
    /// Named sets and maps.
    pub sets: BTreeMap<String, NftSet>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NftChain {
    pub name: String,
    /// For a base chain: its hook (`prerouting`, …), type and priority.
    pub hook: Option<String>,
    pub kind: Option<String>,
    pub prio: i64,
    /// `accept` or `drop` (base chains).
    pub policy: Option<String>,
    pub rules: Vec<NftRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NftRule {
    pub handle: u64,
    /// The rule as `nft list` prints it (from the text listing), or a rendering of its
    /// expressions when that is missing.
    pub text: String,
    pub expr: Vec<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NftSet {
    pub is_map: bool,
    /// Filled by the packet path (`update @set`, timeouts): its contents are history.
    pub dynamic: bool,
    /// (key, data) with `{"elem": {"val": …}}` wrappers removed; data only for maps.
    pub elems: Vec<(Value, Option<Value>)>,
}

impl NftTable {
    /// `ip kube-proxy`.
    pub fn label(&self) -> String {
        format!("{} {}", self.family, self.name)
    }
}

impl NftRuleset {
    /// Parse `nft -j list ruleset` output; `text` (from `nft -a list ruleset`) supplies
    /// the rules' text by handle.
    pub fn parse(source: &str, json: &str, text: Option<&str>) -> Result<Self, Error> {
        let v: Value = serde_json::from_str(json).map_err(|e| Error::Json {
            source_name: source.into(),
            source: e,
        })?;
        let texts = text.map(rule_texts).unwrap_or_default();
        let mut tables: BTreeMap<(String, String), NftTable> = BTreeMap::new();
        let mut order: Vec<(String, String)> = Vec::new();
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        for item in &items {
            let Some((kind, o)) = item.as_object().and_then(|m| m.iter().next()) else {
                continue;
            };
            if !matches!(kind.as_str(), "table" | "chain" | "rule" | "set" | "map") {
                continue; // metainfo, flowtables, counters, …
            }
            let family = o["family"].as_str().unwrap_or_default().to_string();
            let table_name = match kind.as_str() {
                "table" => o["name"].as_str(),
                _ => o["table"].as_str(),
            }
            .unwrap_or_default()
            .to_string();
            let key = (family.clone(), table_name.clone());
            let t = tables.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                NftTable {
                    family: family.clone(),
                    name: table_name.clone(),
                    ..Default::default()
                }
            });
            match kind.as_str() {
                "chain" => {
                    let name = o["name"].as_str().unwrap_or_default().to_string();
                    let c = t.chains.entry(name.clone()).or_default();
                    c.name = name;
                    c.hook = o["hook"].as_str().map(str::to_string);
                    c.kind = o["type"].as_str().map(str::to_string);
                    c.prio = o["prio"].as_i64().unwrap_or(0);
                    c.policy = o["policy"].as_str().map(str::to_string);
                }
                "rule" => {
                    let chain = o["chain"].as_str().unwrap_or_default().to_string();
                    let handle = o["handle"].as_u64().unwrap_or(0);
                    let expr = o["expr"].as_array().cloned().unwrap_or_default();
                    let text = texts
                        .get(&(family.clone(), table_name.clone(), handle))
                        .cloned()
                        .unwrap_or_else(|| render_exprs(&expr));
                    let c = t.chains.entry(chain.clone()).or_default();
                    c.name = chain;
                    c.rules.push(NftRule { handle, text, expr });
                }
                "set" | "map" => {
                    let name = o["name"].as_str().unwrap_or_default().to_string();
                    let flags: Vec<&str> = match &o["flags"] {
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        Value::String(s) => vec![s.as_str()],
                        _ => vec![],
                    };
                    let dynamic = flags.contains(&"dynamic") || flags.contains(&"timeout");
                    let elems = o["elem"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| match (kind.as_str(), e) {
                            ("map", Value::Array(kv)) if kv.len() == 2 => {
                                (unwrap_elem(&kv[0]), Some(kv[1].clone()))
                            }
                            _ => (unwrap_elem(e), None),
                        })
                        .collect();
                    t.sets.insert(
                        name,
                        NftSet {
                            is_map: kind == "map",
                            dynamic,
                            elems,
                        },
                    );
                }
                _ => {}
            }
        }
        let tables = order
            .into_iter()
            .filter_map(|k| tables.remove(&k))
            .filter(|t| !iptables_nft_table(t))
            .collect();
        Ok(NftRuleset { tables })
    }

    /// Base chains on `hook` for packets of `family` (`ip`/`ip6`; `inet` tables see
    /// both), lowest priority first.
    pub fn base_chains<'a>(
        &'a self,
        family: &str,
        hook: &str,
    ) -> Vec<(&'a NftTable, &'a NftChain)> {
        let mut v: Vec<(&NftTable, &NftChain)> = self
            .tables
            .iter()
            .filter(|t| t.family == family || t.family == "inet")
            .flat_map(|t| {
                t.chains
                    .values()
                    .filter(move |c| c.hook.as_deref() == Some(hook))
                    .map(move |c| (t, c))
            })
            .collect();
        v.sort_by_key(|(_, c)| c.prio);
        v
    }
}

/// `{"elem": {"val": X, "comment": …}}` → X.
fn unwrap_elem(v: &Value) -> Value {
    match v.get("elem").and_then(|e| e.get("val")) {
        Some(inner) => inner.clone(),
        None => v.clone(),
    }
}

/// A table iptables-nft made: its rules are read from iptables-save instead.
fn iptables_nft_table(t: &NftTable) -> bool {
    const BUILTIN: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    matches!(t.family.as_str(), "ip" | "ip6")
        && matches!(
            t.name.as_str(),
            "filter" | "nat" | "mangle" | "raw" | "security"
        )
        && t.chains.keys().any(|c| BUILTIN.contains(&c.as_str()))
}

/// Rule texts by (family, table, handle) from `nft -a list ruleset`: every line that
/// ends in `# handle N` and is not a table, chain, set or map header is a rule.
fn rule_texts(text: &str) -> BTreeMap<(String, String, u64), String> {
    let mut out = BTreeMap::new();
    let mut table: Option<(String, String)> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("table ") {
            let mut f = rest.split_whitespace();
            if let (Some(fam), Some(name)) = (f.next(), f.next()) {
                table = Some((fam.to_string(), name.to_string()));
            }
            continue;
        }
        let header = ["chain ", "set ", "map ", "flowtable ", "counter ", "quota "];
        if header.iter().any(|h| l.starts_with(h)) {
            continue;
        }
        let Some((rule, handle)) = l.rsplit_once(" # handle ") else {
            continue;
        };
        if let (Some((fam, name)), Ok(h)) = (&table, handle.trim().parse::<u64>()) {
            out.insert((fam.clone(), name.clone(), h), rule.trim().to_string());
        }
    }
    out
}

/// A compact rendering of rule expressions, for snapshots without the text listing.
pub fn render_exprs(expr: &[Value]) -> String {
    expr.iter()
        .map(|e| match e.as_object().and_then(|m| m.iter().next()) {
            Some((k, Value::Null)) => k.clone(),
            Some((k, v)) => format!("{k} {v}"),
            None => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
