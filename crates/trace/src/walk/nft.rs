//! The walk through nftables chains: the expressions service proxies and policy agents
//! write (kube-proxy's nftables mode in particular: concatenated verdict maps,
//! `numgen random mod N vmap`, mark arithmetic, `fib daddr type local`, nat
//! statements). An expression the walk does not model is assumed to match and the
//! branch carries a warning, as with unknown iptables matches.

use std::net::IpAddr;

use serde_json::Value;

use super::{
    Branch, Flow, Loc, MAX_DEPTH, Packet, Step, Step2, Tracer, has_ports, translate_dst,
    translate_src,
};
use crate::Error;
use crate::nft::{NftRule, NftTable};

/// A value the packet gives an nft expression.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Ip(IpAddr),
    Num(u64),
    Str(String),
    /// Flag sets (`ct state`, `ct status`): any listed flag matches.
    Flags(Vec<String>),
    Cat(Vec<Val>),
}

/// What evaluating a match expression gives.
enum Eval {
    /// The expression reads something the packet does not have (a tcp port of a udp
    /// packet): no match.
    Absent,
    Val(Val),
    /// Not modelled: assumed to match.
    Unmodelled(String),
}

fn proto_number(name: &str) -> Option<u64> {
    Some(match name {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "icmpv6" => 58,
        "sctp" => 132,
        _ => return None,
    })
}

impl Tracer<'_> {
    /// Walk nft chain `chain` of `t` from its first rule.
    pub(super) fn nft_chain(
        &self,
        t: &NftTable,
        chain: &str,
        b: Branch,
        depth: usize,
    ) -> Result<Vec<(Branch, Flow)>, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                table: t.label(),
                chain: chain.into(),
                limit: MAX_DEPTH,
            });
        }
        let rules: &[NftRule] = t
            .chains
            .get(chain)
            .map(|c| c.rules.as_slice())
            .unwrap_or(&[]);
        // A worklist, as for iptables chains: forks do not nest the stack.
        let mut work = vec![(b, 0usize)];
        let mut out = Vec::new();
        while let Some((b, idx)) = work.pop() {
            let Some(rule) = rules.get(idx) else {
                out.push((b, Flow::Return));
                continue;
            };
            let at = Loc {
                table: t.label(),
                chain: chain.into(),
                rule: Some(idx + 1),
            };
            let mut pending = Vec::new();
            for (rb, step) in self.nft_rule(t, rule, &at, b, depth)? {
                match step {
                    Step2::Next => pending.push((rb, idx + 1)),
                    Step2::End(f) => out.push((rb, f)),
                }
            }
            work.extend(pending.into_iter().rev());
        }
        Ok(out)
    }

    /// One rule: its expressions left to right over every live branch.
    fn nft_rule(
        &self,
        t: &NftTable,
        rule: &NftRule,
        at: &Loc,
        b: Branch,
        depth: usize,
    ) -> Result<Vec<(Branch, Step2)>, Error> {
        // (branch, whether the rule's step has been recorded on it)
        let mut live = vec![(b, false)];
        let mut done = Vec::new();
        let announce = |b: &mut Branch, shown: &mut bool| {
            if !*shown {
                b.steps.push(Step::Rule {
                    at: at.clone(),
                    text: rule.text.clone(),
                });
                *shown = true;
            }
        };
        for e in &rule.expr {
            let Some((kind, body)) = e.as_object().and_then(|m| m.iter().next()) else {
                continue;
            };
            let mut next = Vec::new();
            for (mut b, mut shown) in live {
                match kind.as_str() {
                    "match" => match self.nft_match(t, body, &mut b) {
                        Some(true) => next.push((b, shown)),
                        Some(false) => done.push((b, Step2::Next)),
                        None => {
                            b.warnings.push(format!(
                                "{at}: match `{}` not modelled; assumed to match",
                                body
                            ));
                            next.push((b, shown));
                        }
                    },
                    "vmap" => {
                        for (mut vb, verdict) in self.nft_vmap(t, body, b)? {
                            match verdict {
                                None => done.push((vb, Step2::Next)),
                                Some(v) => {
                                    let mut s = shown;
                                    announce(&mut vb, &mut s);
                                    done.extend(self.nft_verdict(t, &v, at, vb, depth)?);
                                }
                            }
                        }
                    }
                    "accept" | "drop" | "return" | "continue" | "jump" | "goto" | "reject" => {
                        announce(&mut b, &mut shown);
                        done.extend(self.nft_verdict(t, e, at, b, depth)?);
                    }
                    "mangle" => {
                        announce(&mut b, &mut shown);
                        match mark_update(body, b.packet.mark) {
                            Some(m) => b.packet.mark = m,
                            None => b
                                .warnings
                                .push(format!("{at}: `{body}` not modelled; packet unchanged")),
                        }
                        next.push((b, shown));
                    }
                    "dnat" => {
                        announce(&mut b, &mut shown);
                        let (ip, port) = nat_target(body);
                        if ip.is_none() && port.is_none() {
                            b.warnings
                                .push(format!("{at}: dnat target `{body}` not understood"));
                        }
                        translate_dst(&mut b, ip, port, at.clone());
                        done.push((b, Step2::End(Flow::Accept)));
                    }
                    "snat" => {
                        announce(&mut b, &mut shown);
                        let (ip, port) = nat_target(body);
                        translate_src(&mut b, ip, port, at.clone());
                        done.push((b, Step2::End(Flow::Accept)));
                    }
                    "masquerade" => {
                        announce(&mut b, &mut shown);
                        let port = body.get("port").and_then(Value::as_u64).map(|p| p as u16);
                        self.masquerade(&mut b, port, at.clone());
                        done.push((b, Step2::End(Flow::Accept)));
                    }
                    // Bookkeeping that does not change the packet's path.
                    "counter" | "log" | "limit" | "set" | "notrack" | "comment" | "quota" => {
                        announce(&mut b, &mut shown);
                        next.push((b, shown));
                    }
                    other => {
                        announce(&mut b, &mut shown);
                        b.warnings.push(format!(
                            "{at}: statement `{other}` not modelled; assumed to continue"
                        ));
                        next.push((b, shown));
                    }
                }
            }
            live = next;
        }
        // A rule whose statements all ran without a verdict continues the chain.
        for (mut b, mut shown) in live {
            announce(&mut b, &mut shown);
            done.push((b, Step2::Next));
        }
        done.retain(|(b, _)| b.probability > 0.0);
        Ok(done)
    }

    /// A verdict (`{"accept": null}`, `{"jump": {"target": …}}`, …).
    fn nft_verdict(
        &self,
        t: &NftTable,
        v: &Value,
        at: &Loc,
        mut b: Branch,
        depth: usize,
    ) -> Result<Vec<(Branch, Step2)>, Error> {
        let Some((kind, body)) = v.as_object().and_then(|m| m.iter().next()) else {
            return Ok(vec![(b, Step2::Next)]);
        };
        let one = |b: Branch, s: Step2| Ok(vec![(b, s)]);
        match kind.as_str() {
            "accept" => {
                if b.accepted_by.is_none() {
                    b.accepted_by = Some(at.clone());
                }
                one(b, Step2::End(Flow::Accept))
            }
            "drop" => one(b, Step2::End(Flow::Drop(at.clone()))),
            "reject" => {
                let with = body
                    .get("expr")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| body.get("type").and_then(Value::as_str).map(str::to_string));
                one(b, Step2::End(Flow::Reject(at.clone(), with)))
            }
            "return" => one(b, Step2::End(Flow::Return)),
            "continue" => one(b, Step2::Next),
            "jump" | "goto" => {
                let target = body["target"].as_str().unwrap_or_default();
                if !t.chains.contains_key(target) {
                    b.warnings
                        .push(format!("{kind} {target}: no such chain in {}", t.label()));
                    return one(b, Step2::Next);
                }
                let walked = self.nft_chain(t, target, b, depth + 1)?;
                Ok(walked
                    .into_iter()
                    .map(|(b, f)| match (kind.as_str(), f) {
                        // A jump's chain returning continues after the jump; a goto's
                        // returns from the calling chain too.
                        ("jump", Flow::Return) => (b, Step2::Next),
                        (_, f) => (b, Step2::End(f)),
                    })
                    .collect())
            }
            _ => {
                b.warnings.push(format!(
                    "{at}: verdict `{v}` not modelled; assumed to continue"
                ));
                one(b, Step2::Next)
            }
        }
    }

    /// A verdict map lookup: the verdict per resulting branch (`None`: no element
    /// matched, the rule goes no further). `numgen random` forks over the elements.
    fn nft_vmap(
        &self,
        t: &NftTable,
        body: &Value,
        b: Branch,
    ) -> Result<Vec<(Branch, Option<Value>)>, Error> {
        let key = &body["key"];
        let elems: Vec<(Value, Option<Value>)> = match &body["data"] {
            Value::String(s) if s.starts_with('@') => match t.sets.get(&s[1..]) {
                Some(set) => set.elems.clone(),
                None => {
                    let mut b = b;
                    b.warnings
                        .push(format!("map {s} missing from the snapshot"));
                    return Ok(vec![(b, None)]);
                }
            },
            Value::Object(o) => o
                .get("set")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|kv| match kv {
                    Value::Array(kv) if kv.len() == 2 => Some((kv[0].clone(), Some(kv[1].clone()))),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        if let Some(ng) = key.get("numgen") {
            let modulus = ng["mod"].as_u64().unwrap_or(1).max(1);
            let offset = ng["offset"].as_u64().unwrap_or(0);
            if ng["mode"].as_str() != Some("random") {
                let mut b = b;
                b.conditions
                    .push(format!("numgen {} taken as random", ng["mode"]));
                return self.numgen_fork(b, &elems, modulus, offset);
            }
            return self.numgen_fork(b, &elems, modulus, offset);
        }
        let v = match self.nft_value(key, &b.packet) {
            Eval::Val(v) => v,
            Eval::Absent => return Ok(vec![(b, None)]),
            Eval::Unmodelled(what) => {
                let mut b = b;
                b.warnings.push(format!(
                    "vmap key `{what}` not modelled; no element assumed"
                ));
                return Ok(vec![(b, None)]);
            }
        };
        let verdict = elems
            .iter()
            .find(|(k, _)| value_matches(&v, k))
            .and_then(|(_, d)| d.clone());
        Ok(vec![(b, verdict)])
    }

    /// `numgen random mod N [offset O] vmap {…}`: each element's share of the N
    /// values is the chance a new connection takes it.
    fn numgen_fork(
        &self,
        b: Branch,
        elems: &[(Value, Option<Value>)],
        modulus: u64,
        offset: u64,
    ) -> Result<Vec<(Branch, Option<Value>)>, Error> {
        let mut out = Vec::new();
        let mut covered = 0u64;
        for (k, d) in elems {
            let (lo, hi) = match k {
                Value::Number(n) => (n.as_u64().unwrap_or(0), n.as_u64().unwrap_or(0)),
                Value::Object(o) => match o.get("range").and_then(Value::as_array) {
                    Some(r) if r.len() == 2 => {
                        (r[0].as_u64().unwrap_or(0), r[1].as_u64().unwrap_or(0))
                    }
                    _ => continue,
                },
                _ => continue,
            };
            let lo = lo.max(offset);
            let hi = hi.min(offset + modulus - 1);
            if hi < lo {
                continue;
            }
            let share = (hi - lo + 1) as f64 / modulus as f64;
            covered += hi - lo + 1;
            let mut nb = b.clone();
            nb.probability *= share;
            out.push((nb, d.clone()));
        }
        if covered < modulus {
            let mut nb = b.clone();
            nb.probability *= (modulus - covered) as f64 / modulus as f64;
            out.push((nb, None));
        }
        if out.len() > 1 {
            self.fork_count(out.len() - 1)?;
        }
        Ok(out)
    }

    /// `{"op", "left", "right"}`: `Some(matched)`, or `None` when not modelled.
    fn nft_match(&self, t: &NftTable, m: &Value, b: &mut Branch) -> Option<bool> {
        let op = m["op"].as_str().unwrap_or("==");
        let left = match self.nft_value(&m["left"], &b.packet) {
            Eval::Absent => return Some(false),
            Eval::Unmodelled(_) => return None,
            Eval::Val(v) => v,
        };
        let right = &m["right"];
        let hit = match right {
            Value::String(s) if s.starts_with('@') => {
                let set = t.sets.get(&s[1..])?;
                let hit = set.elems.iter().any(|(k, _)| value_matches(&left, k));
                if set.dynamic {
                    b.conditions.push(format!(
                        "{s} (filled by earlier packets) {} this packet's key now",
                        if hit { "holds" } else { "does not hold" }
                    ));
                }
                hit
            }
            _ => value_matches(&left, right),
        };
        match op {
            "==" | "in" => Some(hit),
            "!=" => Some(!hit),
            _ => None,
        }
    }

    /// The packet's value for a left-hand expression.
    fn nft_value(&self, e: &Value, p: &Packet) -> Eval {
        let Some((kind, body)) = e.as_object().and_then(|m| m.iter().next()) else {
            return Eval::Unmodelled(e.to_string());
        };
        let v = match kind.as_str() {
            "payload" => {
                let proto = body["protocol"].as_str().unwrap_or_default();
                let field = body["field"].as_str().unwrap_or_default();
                match (proto, field) {
                    ("ip", _) if !p.dst.is_ipv4() => return Eval::Absent,
                    ("ip6", _) if p.dst.is_ipv4() => return Eval::Absent,
                    ("ip" | "ip6", "saddr") => Val::Ip(p.src),
                    ("ip" | "ip6", "daddr") => Val::Ip(p.dst),
                    ("th" | "tcp" | "udp" | "sctp", "sport" | "dport") => {
                        if !has_ports(&p.proto) || (proto != "th" && proto != p.proto) {
                            return Eval::Absent;
                        }
                        Val::Num(u64::from(if field == "sport" { p.sport } else { p.dport }))
                    }
                    _ => return Eval::Unmodelled(e.to_string()),
                }
            }
            "meta" => match body["key"].as_str().unwrap_or_default() {
                "l4proto" => Val::Str(p.proto.clone()),
                "nfproto" => Val::Str(if p.dst.is_ipv4() { "ipv4" } else { "ipv6" }.into()),
                "iifname" | "iif" => Val::Str(p.iif.clone().unwrap_or_default()),
                "oifname" | "oif" => Val::Str(p.oif.clone().unwrap_or_default()),
                "mark" => Val::Num(u64::from(p.mark)),
                _ => return Eval::Unmodelled(e.to_string()),
            },
            "ct" => match body["key"].as_str().unwrap_or_default() {
                "state" => Val::Flags(vec![
                    if p.established { "established" } else { "new" }.into(),
                ]),
                "status" => {
                    let mut f = Vec::new();
                    if p.dnat {
                        f.push("dnat".into());
                    }
                    if p.snat {
                        f.push("snat".into());
                    }
                    Val::Flags(f)
                }
                _ => return Eval::Unmodelled(e.to_string()),
            },
            "fib" => {
                let flags: Vec<&str> = body["flags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if body["result"].as_str() != Some("type") {
                    return Eval::Unmodelled(e.to_string());
                }
                let ip = if flags.contains(&"saddr") {
                    p.src
                } else {
                    p.dst
                };
                Val::Str(self.snap.routing.addr_type(ip).to_ascii_lowercase())
            }
            "&" | "|" | "^" => {
                let Some([a, m]) = body.as_array().map(Vec::as_slice) else {
                    return Eval::Unmodelled(e.to_string());
                };
                let Eval::Val(Val::Num(a)) = self.nft_value(a, p) else {
                    return Eval::Unmodelled(e.to_string());
                };
                let Some(m) = number(m) else {
                    return Eval::Unmodelled(e.to_string());
                };
                Val::Num(match kind.as_str() {
                    "&" => a & m,
                    "|" => a | m,
                    _ => a ^ m,
                })
            }
            "concat" => {
                let mut parts = Vec::new();
                for x in body.as_array().into_iter().flatten() {
                    match self.nft_value(x, p) {
                        Eval::Val(v) => parts.push(v),
                        other => return other,
                    }
                }
                Val::Cat(parts)
            }
            _ => return Eval::Unmodelled(e.to_string()),
        };
        Eval::Val(v)
    }
}

/// A number as nft prints it: a JSON number or a hex/decimal string.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// Does the packet's value fall under `right` (a literal, prefix, range, anonymous set,
/// flag list or concatenation)?
fn value_matches(left: &Val, right: &Value) -> bool {
    match right {
        Value::Array(items) => items.iter().any(|r| value_matches(left, r)),
        Value::Object(o) => {
            if let Some(items) = o.get("set").and_then(Value::as_array) {
                return items.iter().any(|r| value_matches(left, r));
            }
            if let Some(inner) = o.get("elem").and_then(|e| e.get("val")) {
                return value_matches(left, inner);
            }
            if let Some(p) = o.get("prefix") {
                let (Val::Ip(ip), Some(addr), Some(len)) = (
                    left,
                    p["addr"].as_str().and_then(|a| a.parse::<IpAddr>().ok()),
                    p["len"].as_u64(),
                ) else {
                    return false;
                };
                return ipnet::IpNet::new(addr, len as u8).is_ok_and(|n| n.trunc().contains(ip));
            }
            if let Some(Value::Array(r)) = o.get("range")
                && r.len() == 2
            {
                return match left {
                    Val::Num(n) => {
                        number(&r[0]).is_some_and(|a| a <= *n)
                            && number(&r[1]).is_some_and(|b| *n <= b)
                    }
                    Val::Ip(ip) => {
                        let a = r[0].as_str().and_then(|s| s.parse::<IpAddr>().ok());
                        let b = r[1].as_str().and_then(|s| s.parse::<IpAddr>().ok());
                        a.is_some_and(|a| a <= *ip) && b.is_some_and(|b| *ip <= b)
                    }
                    _ => false,
                };
            }
            if let (Val::Cat(parts), Some(Value::Array(rs))) = (left, o.get("concat")) {
                return parts.len() == rs.len()
                    && parts.iter().zip(rs).all(|(l, r)| value_matches(l, r));
            }
            false
        }
        Value::String(s) => match left {
            Val::Ip(ip) => s.parse::<IpAddr>().is_ok_and(|a| a == *ip),
            Val::Num(n) => number(right) == Some(*n),
            Val::Str(v) => v == s || proto_number(v).is_some_and(|a| s.parse() == Ok(a)),
            Val::Flags(f) => f.iter().any(|x| x == s),
            Val::Cat(_) => false,
        },
        Value::Number(_) => match left {
            Val::Num(n) => number(right) == Some(*n),
            Val::Str(v) => proto_number(v) == number(right),
            _ => false,
        },
        _ => false,
    }
}

/// `meta mark set meta mark | 0x4000` and friends; `None` when not a mark update.
fn mark_update(body: &Value, mark: u32) -> Option<u32> {
    if body["key"]["meta"]["key"] != "mark" {
        return None;
    }
    let v = &body["value"];
    if let Some(n) = number(v) {
        return Some(n as u32);
    }
    let (op, args) = v.as_object().and_then(|m| m.iter().next())?;
    let args = args.as_array()?;
    let [a, m] = args.as_slice() else { return None };
    if a["meta"]["key"] != "mark" {
        return None;
    }
    let m = number(m)? as u32;
    Some(match op.as_str() {
        "|" => mark | m,
        "&" => mark & m,
        "^" => mark ^ m,
        _ => return None,
    })
}

/// `{"addr": "10.0.0.1", "port": 80}` of a dnat/snat statement.
fn nat_target(body: &Value) -> (Option<IpAddr>, Option<u16>) {
    let ip = body["addr"].as_str().and_then(|a| a.parse().ok());
    let port = number(&body["port"]).map(|p| p as u16);
    (ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_keys_prefixes_ranges_and_flags_match_like_nft() {
        let key = Val::Cat(vec![
            Val::Ip("172.30.0.41".parse().unwrap()),
            Val::Str("tcp".into()),
            Val::Num(80),
        ]);
        let elem: Value = serde_json::json!({"concat": ["172.30.0.41", "tcp", 80]});
        assert!(value_matches(&key, &elem));
        let other: Value = serde_json::json!({"concat": ["172.30.0.41", "udp", 80]});
        assert!(!value_matches(&key, &other));
        let ip = Val::Ip("10.1.2.3".parse().unwrap());
        assert!(value_matches(
            &ip,
            &serde_json::json!({"prefix": {"addr": "10.0.0.0", "len": 8}})
        ));
        assert!(!value_matches(
            &ip,
            &serde_json::json!({"prefix": {"addr": "10.0.0.0", "len": 16}})
        ));
        let port = Val::Num(30050);
        assert!(value_matches(
            &port,
            &serde_json::json!({"set": [{"range": [30000, 30100]}, 31000]})
        ));
        assert!(!value_matches(
            &Val::Num(30200),
            &serde_json::json!({"set": [{"range": [30000, 30100]}, 31000]})
        ));
        let state = Val::Flags(vec!["new".into()]);
        assert!(value_matches(
            &state,
            &serde_json::json!(["established", "new"])
        ));
        assert!(!value_matches(
            &state,
            &serde_json::json!(["established", "related"])
        ));
        assert!(value_matches(
            &Val::Str("tcp".into()),
            &serde_json::json!(6)
        ));
    }

    #[test]
    fn mark_arithmetic_follows_the_statement() {
        let or = serde_json::json!({"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 16384]}});
        let xor = serde_json::json!({"key": {"meta": {"key": "mark"}}, "value": {"^": [{"meta": {"key": "mark"}}, "0x4000"]}});
        assert_eq!(mark_update(&or, 1), Some(0x4001));
        assert_eq!(mark_update(&xor, 0x4001), Some(1));
        let ct = serde_json::json!({"key": {"ct": {"key": "mark"}}, "value": 1});
        assert_eq!(mark_update(&ct, 0), None);
    }
}
