//! A packet's walk through rendered rules, without a kernel.
//!
//! It understands exactly the rule and set syntax [`crate::render`] emits (it is not an
//! iptables implementation), so tests can check that the rendered chains give the same
//! verdicts as [`crate::eval`] for every pair, the way kube-proxy's
//! `nftables/helpers_test.go` traces packets through generated rules. A line it cannot
//! read is an error, so a renderer change cannot slip past it unread.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_model::Protocol;

use crate::render::{NodeRules, ROOT_CHAIN};

#[derive(Debug, Clone, PartialEq, Eq)]
enum SetDef {
    Ip(Vec<IpAddr>),
    /// (net, nomatch)
    Net(Vec<(IpNet, bool)>),
    IpPort(Vec<(IpAddr, Protocol, u16)>),
}

#[derive(Debug, Clone, Default)]
struct Rule {
    src: Option<IpNet>,
    dst: Option<IpNet>,
    /// (set, flags); several `-m set` matches in one rule are ANDed.
    sets: Vec<(String, String)>,
    proto: Option<Protocol>,
    dport: Option<(u16, u16)>,
    /// (value, mask, negated): `(mark & mask) == value`, or its negation.
    mark_match: Option<(u32, u32, bool)>,
    established: bool,
    target: String,
    /// (value, mask)
    xmark: Option<(u32, u32)>,
    /// An NFLOG rule's prefix (the flow log); `-m limit` is taken as always within rate.
    nflog_prefix: Option<String>,
}

/// A parsed rendering.
#[derive(Debug, Clone)]
pub struct Tracer {
    chains: BTreeMap<String, Vec<Rule>>,
    sets: BTreeMap<String, SetDef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fallthrough,
    Return,
    Accept,
    Deny,
}

fn parse_mark(s: &str) -> Result<(u32, u32), String> {
    let (v, m) = s.split_once('/').ok_or_else(|| format!("bad mark {s}"))?;
    let hex = |x: &str| {
        u32::from_str_radix(x.trim_start_matches("0x"), 16)
            .map_err(|e| format!("bad mark {s}: {e}"))
    };
    Ok((hex(v)?, hex(m)?))
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("bad address {s}"))
}

fn parse_rule(words: &[&str]) -> Result<Rule, String> {
    let mut r = Rule::default();
    let mut i = 0;
    // `!` negates the option after it (only `--mark` is ever negated here).
    let mut negate = false;
    let next = |i: &mut usize| -> Result<&str, String> {
        *i += 1;
        words
            .get(*i)
            .copied()
            .ok_or_else(|| format!("truncated rule {}", words.join(" ")))
    };
    while i < words.len() {
        match words[i] {
            "-s" => r.src = Some(parse_net(next(&mut i)?)?),
            "-d" => r.dst = Some(parse_net(next(&mut i)?)?),
            "-p" => {
                let p = next(&mut i)?;
                r.proto = Some(
                    Protocol::parse(&p.to_uppercase())
                        .ok_or_else(|| format!("bad protocol {p}"))?,
                );
            }
            "-m" => {
                next(&mut i)?;
            }
            "--match-set" => {
                let name = next(&mut i)?.to_string();
                let flags = next(&mut i)?.to_string();
                r.sets.push((name, flags));
            }
            "--dport" => {
                let d = next(&mut i)?;
                let (a, b) = d.split_once(':').unwrap_or((d, d));
                let a: u16 = a.parse().map_err(|_| format!("bad port {d}"))?;
                let b: u16 = b.parse().map_err(|_| format!("bad port {d}"))?;
                r.dport = Some((a, b));
            }
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "--mark" => {
                let (v, m) = parse_mark(next(&mut i)?)?;
                r.mark_match = Some((v, m, negate));
            }
            "--ctstate" => {
                next(&mut i)?;
                r.established = true;
            }
            "-j" => r.target = next(&mut i)?.to_string(),
            "--set-xmark" => r.xmark = Some(parse_mark(next(&mut i)?)?),
            "--reject-with" | "--limit" | "--limit-burst" | "--nflog-group" | "--nflog-size" => {
                next(&mut i)?;
            }
            "--nflog-prefix" => r.nflog_prefix = Some(next(&mut i)?.to_string()),
            w => return Err(format!("unknown word {w:?} in {}", words.join(" "))),
        }
        negate = false;
        i += 1;
    }
    Ok(r)
}

/// Words of an `iptables-restore` line; a double-quoted word (an NFLOG prefix) may hold
/// spaces.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            words.push(q[..end].to_string());
            rest = q.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    words
}

impl Tracer {
    pub fn new(rules: &NodeRules) -> Result<Self, String> {
        let mut chains: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
        for line in rules.iptables.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                chains
                    .entry(decl.split(' ').next().unwrap_or_default().to_string())
                    .or_default();
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let words = split_words(rest);
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                let (chain, rest) = words.split_first().ok_or("empty rule")?;
                let rule = parse_rule(rest)?;
                chains.entry(chain.to_string()).or_default().push(rule);
            } else if let Some(name) = line.strip_prefix("-X ") {
                chains.remove(name);
            } else if !(line == "*filter" || line == "COMMIT") {
                return Err(format!("unknown line {line:?}"));
            }
        }
        // Sets as they stand after the script: `swap` moves the temp's entries in.
        let mut staged: BTreeMap<String, SetDef> = BTreeMap::new();
        let mut sets: BTreeMap<String, SetDef> = BTreeMap::new();
        for line in rules.ipset.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["create", name, kind, ..] => {
                    let def = match *kind {
                        "hash:ip" => SetDef::Ip(vec![]),
                        "hash:net" => SetDef::Net(vec![]),
                        "hash:ip,port" => SetDef::IpPort(vec![]),
                        k => return Err(format!("unknown set type {k}")),
                    };
                    staged.entry(name.to_string()).or_insert(def);
                }
                ["flush", name] => {
                    if let Some(d) = staged.get_mut(*name) {
                        *d = match d {
                            SetDef::Ip(_) => SetDef::Ip(vec![]),
                            SetDef::Net(_) => SetDef::Net(vec![]),
                            SetDef::IpPort(_) => SetDef::IpPort(vec![]),
                        };
                    }
                }
                ["add", name, entry, rest @ ..] => {
                    let d = staged
                        .get_mut(*name)
                        .ok_or_else(|| format!("add to unknown set {name}"))?;
                    match d {
                        SetDef::Ip(v) => {
                            v.push(entry.parse().map_err(|_| format!("bad entry {entry}"))?)
                        }
                        SetDef::Net(v) => v.push((parse_net(entry)?, rest == ["nomatch"])),
                        SetDef::IpPort(v) => {
                            let (ip, pp) = entry
                                .split_once(',')
                                .ok_or_else(|| format!("bad entry {entry}"))?;
                            let (p, n) = pp
                                .split_once(':')
                                .ok_or_else(|| format!("bad entry {entry}"))?;
                            v.push((
                                ip.parse().map_err(|_| format!("bad entry {entry}"))?,
                                Protocol::parse(&p.to_uppercase())
                                    .ok_or_else(|| format!("bad entry {entry}"))?,
                                n.parse().map_err(|_| format!("bad entry {entry}"))?,
                            ));
                        }
                    }
                }
                ["swap", from, to] => {
                    let a = staged
                        .remove(*from)
                        .ok_or_else(|| format!("swap of unknown set {from}"))?;
                    let b = staged
                        .remove(*to)
                        .ok_or_else(|| format!("swap of unknown set {to}"))?;
                    staged.insert(from.to_string(), b);
                    staged.insert(to.to_string(), a);
                }
                ["destroy", name] => {
                    staged.remove(*name);
                }
                _ => return Err(format!("unknown ipset line {line:?}")),
            }
        }
        sets.extend(staged);
        Ok(Self { chains, sets })
    }

    fn set_matches(
        &self,
        name: &str,
        flags: &str,
        src: IpAddr,
        dst: IpAddr,
        proto: Protocol,
        dport: u16,
    ) -> bool {
        let Some(set) = self.sets.get(name) else {
            return false;
        };
        let ip = if flags.starts_with("src") { src } else { dst };
        match set {
            SetDef::Ip(v) => v.contains(&ip),
            SetDef::Net(v) => v
                .iter()
                .filter(|(n, _)| n.contains(&ip))
                .max_by_key(|(n, _)| n.prefix_len())
                .is_some_and(|(_, nomatch)| !nomatch),
            SetDef::IpPort(v) => v.contains(&(ip, proto, dport)),
        }
    }

    fn walk(
        &self,
        chain: &str,
        p: (IpAddr, IpAddr, Protocol, u16),
        mark: &mut u32,
        depth: usize,
        logged: &mut Vec<String>,
    ) -> Outcome {
        let (src, dst, proto, dport) = p;
        let Some(rules) = self.chains.get(chain) else {
            return Outcome::Fallthrough;
        };
        if depth > 16 {
            return Outcome::Deny;
        }
        for r in rules {
            // A new connection: conntrack state matches never hold.
            let hit = !r.established
                && r.src.is_none_or(|n| n.contains(&src))
                && r.dst.is_none_or(|n| n.contains(&dst))
                && r.proto.is_none_or(|x| x == proto)
                && r.dport.is_none_or(|(a, b)| (a..=b).contains(&dport))
                && r.mark_match
                    .is_none_or(|(v, m, neg)| (*mark & m == v) != neg)
                && r.sets
                    .iter()
                    .all(|(s, f)| self.set_matches(s, f, src, dst, proto, dport));
            if !hit {
                continue;
            }
            match r.target.as_str() {
                "MARK" => {
                    if let Some((v, m)) = r.xmark {
                        *mark = (*mark & !m) ^ v;
                    }
                }
                "NFLOG" => logged.extend(r.nflog_prefix.clone()),
                "RETURN" => return Outcome::Return,
                "ACCEPT" => return Outcome::Accept,
                "DROP" | "REJECT" => return Outcome::Deny,
                other => match self.walk(other, p, mark, depth + 1, logged) {
                    Outcome::Accept => return Outcome::Accept,
                    Outcome::Deny => return Outcome::Deny,
                    Outcome::Return | Outcome::Fallthrough => {}
                },
            }
        }
        Outcome::Fallthrough
    }

    /// Whether a new connection's first packet gets through this node's rules.
    pub fn admits(&self, src: IpAddr, dst: IpAddr, protocol: Protocol, dport: u16) -> bool {
        self.admits_logging(src, dst, protocol, dport).0
    }

    /// [`Tracer::admits`], plus the NFLOG prefixes the packet is logged with on the way.
    pub fn admits_logging(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        dport: u16,
    ) -> (bool, Vec<String>) {
        let mut mark = 0;
        let mut logged = Vec::new();
        let out = self.walk(
            ROOT_CHAIN,
            (src, dst, protocol, dport),
            &mut mark,
            0,
            &mut logged,
        );
        (out != Outcome::Deny, logged)
    }
}
