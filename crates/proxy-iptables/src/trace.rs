//! A packet's walk through a rendered ruleset, the way upstream's test tracer does it
//! (`iptablesTracer` in `pkg/proxy/iptables/proxier_test.go`):
//!
//! 1. nat `KUBE-SERVICES` (what PREROUTING and OUTPUT jump to). Rules that test history
//!    (`-m recent --rcheck`, `-m mark`, `-m conntrack`) never match. A jump with
//!    `--probability` is followed into its chain and the walk goes on, so every endpoint
//!    that could be picked is collected. `KUBE-MARK-MASQ` sets the masquerade flag.
//! 2. With the destination IP rewritten to the first DNAT target, the filter chains
//!    `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`, `KUBE-NODEPORTS`, `KUBE-PROXY-FIREWALL`.
//!
//! Unlike upstream, the mark is also tracked per branch, which gives the masquerade
//! answer per endpoint (hairpin traffic is masqueraded only when it lands on itself).
//! Matches the tracer does not model (interfaces, nfacct) are assumed to match, as
//! upstream's tracer assumes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::restore::{ParseError, Ruleset, parse};

/// One packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub source: IpAddr,
    pub dest: IpAddr,
    pub dest_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// Where the packet ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceResult {
    /// DNAT targets (`ip:port`) and verdicts (`ACCEPT`, `DROP`, `REJECT`) in walk order;
    /// empty when no rule touched the packet.
    pub outputs: Vec<String>,
    /// Upstream's answer: some path hit KUBE-MARK-MASQ.
    pub masq: bool,
    /// The mark on the path that reached each output.
    pub masq_per_output: BTreeMap<String, bool>,
    /// Rules that matched, in order (for failure messages).
    pub matched: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    raw: String,
    source: Option<(bool, IpNet)>,
    dest: Option<(bool, IpNet)>,
    src_type: Option<(bool, String)>,
    dst_type: Option<(bool, String)>,
    protocol: Option<(bool, String)>,
    dport: Option<(bool, u16)>,
    history: bool,
    probability: bool,
    jump: Option<String>,
    to_destination: Option<String>,
}

fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_rule(line: &str) -> Rule {
    let t = tokens(line);
    let mut r = Rule {
        raw: line.to_string(),
        ..Default::default()
    };
    let mut neg = false;
    let mut i = 2; // skip "-A CHAIN"
    while i < t.len() {
        let arg = t.get(i + 1).cloned().unwrap_or_default();
        let mut used = 1;
        match t[i].as_str() {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-s" | "--source" => {
                r.source = net(&arg).map(|n| (neg, n));
                used = 2;
            }
            "-d" | "--destination" => {
                r.dest = net(&arg).map(|n| (neg, n));
                used = 2;
            }
            "-p" | "--protocol" => {
                r.protocol = Some((neg, arg.to_ascii_lowercase()));
                used = 2;
            }
            "--dport" | "--destination-port" => {
                r.dport = arg.parse().ok().map(|p| (neg, p));
                used = 2;
            }
            "--src-type" => {
                r.src_type = Some((neg, arg));
                used = 2;
            }
            "--dst-type" => {
                r.dst_type = Some((neg, arg));
                used = 2;
            }
            "--rcheck" | "--update" => r.history = true,
            "--mark" | "--ctstate" | "--state" => {
                r.history = true;
                used = 2;
            }
            "--probability" => {
                r.probability = true;
                used = 2;
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                r.jump = Some(arg);
                used = 2;
            }
            "--to-destination" => {
                r.to_destination = Some(arg);
                used = 2;
            }
            "-m" | "--match" | "--comment" | "--name" | "--seconds" | "--mode"
            | "--nfacct-name" | "--or-mark" | "--xor-mark" | "--set-xmark" | "-i" | "-o"
            | "--reject-with" => used = 2,
            _ => {}
        }
        neg = false;
        i += used;
    }
    r
}

/// A ruleset ready for tracing.
#[derive(Debug, Clone)]
pub struct Tracer {
    tables: BTreeMap<String, BTreeMap<String, Vec<Rule>>>,
    local: Vec<IpAddr>,
}

impl Tracer {
    /// Parse `restore_text`; `local_addresses` answer `--src-type/--dst-type LOCAL`.
    pub fn new(restore_text: &str, local_addresses: &[IpAddr]) -> Result<Self, ParseError> {
        Ok(Self::from_ruleset(
            &parse(restore_text, false)?,
            local_addresses,
        ))
    }

    pub fn from_ruleset(rs: &Ruleset, local_addresses: &[IpAddr]) -> Self {
        let tables = rs
            .iter()
            .map(|(t, table)| {
                let chains = table
                    .rules
                    .iter()
                    .map(|(c, rules)| (c.clone(), rules.iter().map(|r| parse_rule(r)).collect()))
                    .collect();
                (t.clone(), chains)
            })
            .collect();
        Tracer {
            tables,
            local: local_addresses.to_vec(),
        }
    }

    fn matches(&self, r: &Rule, p: &Packet) -> bool {
        let addr = |spec: &Option<(bool, IpNet)>, ip: &IpAddr| match spec {
            None => true,
            Some((neg, n)) => {
                let fam_ok = n.addr().is_ipv4() == ip.is_ipv4();
                (fam_ok && n.contains(ip)) != *neg
            }
        };
        let kind = |spec: &Option<(bool, String)>, ip: &IpAddr| match spec {
            None => true,
            Some((neg, t)) => {
                let is = if self.local.contains(ip) {
                    "LOCAL"
                } else {
                    "not-matched"
                };
                (t == is) != *neg
            }
        };
        addr(&r.source, &p.source)
            && kind(&r.src_type, &p.source)
            && r.protocol
                .as_ref()
                .is_none_or(|(neg, pr)| (pr == &p.protocol) != *neg)
            && addr(&r.dest, &p.dest)
            && kind(&r.dst_type, &p.dest)
            && r.dport
                .is_none_or(|(neg, port)| (port == p.dest_port) != neg)
            && !r.history
    }

    /// Walk `chain`; returns (terminated, mark after).
    fn run(
        &self,
        table: &str,
        chain: &str,
        p: &Packet,
        mut mark: bool,
        res: &mut TraceResult,
        depth: usize,
    ) -> (bool, bool) {
        let Some(rules) = self.tables.get(table).and_then(|t| t.get(chain)) else {
            return (false, mark);
        };
        if depth > 32 {
            return (false, mark);
        }
        for r in rules {
            let Some(jump) = &r.jump else { continue };
            if !self.matches(r, p) {
                continue;
            }
            res.matched.push(r.raw.clone());
            match jump.as_str() {
                "KUBE-MARK-MASQ" => {
                    mark = true;
                    res.masq = true;
                }
                "ACCEPT" | "REJECT" | "DROP" => {
                    res.outputs.push(jump.clone());
                    res.masq_per_output.entry(jump.clone()).or_insert(mark);
                    return (true, mark);
                }
                "DNAT" => {
                    let to = r.to_destination.clone().unwrap_or_default();
                    let e = res.masq_per_output.entry(to.clone()).or_insert(mark);
                    *e |= mark;
                    res.outputs.push(to);
                    return (true, mark);
                }
                "RETURN" => return (false, mark),
                sub => {
                    let (terminated, after) = self.run(table, sub, p, mark, res, depth + 1);
                    if r.probability {
                        // Another branch: the walk goes on from the state before the jump.
                        continue;
                    }
                    mark = after;
                    if terminated {
                        return (true, mark);
                    }
                }
            }
        }
        (false, mark)
    }

    /// Trace one packet.
    pub fn trace(&self, packet: &Packet) -> TraceResult {
        let mut res = TraceResult::default();
        let mut p = packet.clone();
        self.run("nat", "KUBE-SERVICES", &p, false, &mut res, 0);
        if let Some(first) = res.outputs.first()
            && let Ok(sa) = first.parse::<SocketAddr>()
        {
            p.dest = sa.ip();
        }
        for chain in [
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
        ] {
            self.run("filter", chain, &p, false, &mut res, 0);
        }
        res
    }
}
