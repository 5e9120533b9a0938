//! `iptables-save` text parsed into tables, chains and structured rules.
//!
//! The grammar is the one `iptables-save` prints (and `iptables-restore` reads): `*table`,
//! `:CHAIN POLICY [pkts:bytes]`, `-A CHAIN <options>`, `COMMIT`. Options come in the
//! order iptables prints them: generic options (`-s`, `-d`, `-p`, `-i`, `-o`), then each
//! `-m module` with its options, then `-j TARGET` with the target's options. A `!` negates
//! the option that follows it.
//!
//! Hand-rolled because no Rust crate parses iptables rules into matches; the match subset
//! is what kube-proxy, flannel, the CNI portmap/bridge plugins and NetworkPolicy
//! enforcers write. An option this parser does not know is kept as
//! [`CondKind::Unknown`] and evaluated as "assumed to match" with a warning, so a trace
//! never silently invents certainty.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::Error;

/// A whole `iptables-save` dump (one address family).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ruleset {
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Table {
    pub chains: BTreeMap<String, Chain>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Chain {
    /// `ACCEPT`/`DROP` for built-in chains, `None` for user chains.
    pub policy: Option<String>,
    pub rules: Vec<Rule>,
}

/// One rule: its text as printed after `-A CHAIN `, the conditions, the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub text: String,
    pub conds: Vec<Cond>,
    pub target: Target,
}

/// One condition; `neg` is a preceding `!`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cond {
    pub neg: bool,
    pub kind: CondKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CondKind {
    Source {
        net: IpNet,
    },
    Destination {
        net: IpNet,
    },
    /// Protocol name or number, lower-case (`tcp`, `17`, `all`).
    Protocol {
        proto: String,
    },
    InInterface {
        name: String,
    },
    OutInterface {
        name: String,
    },
    Fragment,
    DestPorts {
        ports: Vec<(u16, u16)>,
    },
    SourcePorts {
        ports: Vec<(u16, u16)>,
    },
    /// multiport `--ports`: source or destination.
    AnyPorts {
        ports: Vec<(u16, u16)>,
    },
    SrcType {
        types: Vec<String>,
    },
    DstType {
        types: Vec<String>,
    },
    Comment {
        text: String,
    },
    Mark {
        value: u32,
        mask: u32,
    },
    CtState {
        states: Vec<String>,
    },
    /// `-m statistic --mode random --probability p`.
    Random {
        probability: f64,
    },
    /// `-m statistic --mode nth --every n --packet p`.
    Nth {
        every: u32,
        packet: u32,
    },
    /// `-m recent`: `mode` is set/rcheck/update/remove.
    Recent {
        name: String,
        mode: String,
        seconds: Option<u64>,
        rsource: bool,
    },
    /// `-m set --match-set NAME src,dst`.
    MatchSet {
        name: String,
        flags: Vec<String>,
    },
    PhysdevIn {
        name: String,
    },
    PhysdevOut {
        name: String,
    },
    PhysdevIsIn,
    PhysdevIsOut,
    PhysdevIsBridged,
    /// `--syn` or `--tcp-flags MASK COMP`, as flag lists.
    TcpFlags {
        mask: Vec<String>,
        comp: Vec<String>,
    },
    IcmpType {
        name: String,
    },
    /// Always true for the first packet of a flow (accounting, rate limits).
    Passive {
        what: String,
    },
    Unknown {
        module: String,
        option: String,
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Target {
    /// No `-j`: the rule only counts.
    None,
    Accept,
    Drop,
    Reject {
        with: Option<String>,
    },
    Return,
    /// `-j NAME` where NAME is not a built-in target (a chain, or an extension target
    /// this parser does not know, decided when walking).
    Jump {
        chain: String,
        args: Vec<String>,
    },
    Goto {
        chain: String,
    },
    Dnat {
        to: String,
    },
    Snat {
        to: String,
    },
    Masquerade {
        to_ports: Option<String>,
    },
    Redirect {
        to_ports: Option<String>,
    },
    Mark {
        op: MarkOp,
    },
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum MarkOp {
    /// `--set-xmark v/m` (what iptables-save prints for set/or/xor): `(mark & !m) ^ v`.
    SetXmark {
        value: u32,
        mask: u32,
    },
    /// `--set-mark v/m`: `(mark & !m) | v`.
    SetMark {
        value: u32,
        mask: u32,
    },
    Or {
        value: u32,
    },
    Xor {
        value: u32,
    },
    And {
        value: u32,
    },
}

impl MarkOp {
    pub fn apply(self, mark: u32) -> u32 {
        match self {
            MarkOp::SetXmark { value, mask } => (mark & !mask) ^ value,
            MarkOp::SetMark { value, mask } => (mark & !mask) | value,
            MarkOp::Or { value } => mark | value,
            MarkOp::Xor { value } => mark ^ value,
            MarkOp::And { value } => mark & value,
        }
    }
}

impl Ruleset {
    /// Parse `iptables-save` (or `iptables-restore` input) text. `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, Error> {
        let mut rs = Ruleset::default();
        let mut table: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let err = |msg: String| Error::Parse {
                source_name: source.to_string(),
                line: line_no,
                msg,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
                continue;
            }
            if let Some(t) = line.strip_prefix('*') {
                rs.tables.entry(t.to_string()).or_default();
                table = Some(t.to_string());
                continue;
            }
            let Some(tname) = table.clone() else {
                return Err(err(format!("`{line}` before any `*table` line")));
            };
            let t = rs.tables.entry(tname).or_default();
            if let Some(decl) = line.strip_prefix(':') {
                let mut f = decl.split_whitespace();
                let name = f.next().unwrap_or_default().to_string();
                let policy = f.next().filter(|p| *p != "-").map(str::to_string);
                t.chains.entry(name).or_default().policy = policy;
                continue;
            }
            let (insert, rest) = if let Some(r) = line.strip_prefix("-A ") {
                (false, r)
            } else if let Some(r) = line.strip_prefix("-I ") {
                (true, r)
            } else if line.starts_with("-N ") || line.starts_with("-F") || line.starts_with("-X") {
                // Restore-input chain management; the declarations carry the chains.
                if let Some(n) = line.strip_prefix("-N ") {
                    t.chains.entry(n.trim().to_string()).or_default();
                }
                continue;
            } else {
                return Err(err(format!("unrecognised line `{line}`")));
            };
            let (chain, mut body) = rest.split_once(' ').unwrap_or((rest, ""));
            let mut pos = None;
            if insert {
                let (first, after) = body.split_once(' ').unwrap_or((body, ""));
                if let Ok(n) = first.parse::<usize>() {
                    pos = Some(n.saturating_sub(1));
                    body = after;
                }
            }
            let rule = parse_rule(body).map_err(|m| err(format!("chain {chain}: {m}")))?;
            let c = t.chains.entry(chain.to_string()).or_default();
            match (insert, pos) {
                (false, _) => c.rules.push(rule),
                (true, p) => {
                    let p = p.unwrap_or(0).min(c.rules.len());
                    c.rules.insert(p, rule);
                }
            }
        }
        Ok(rs)
    }

    pub fn chain(&self, table: &str, chain: &str) -> Option<&Chain> {
        self.tables.get(table)?.chains.get(chain)
    }

    /// The chains of `table`, by name.
    pub fn chains<'a>(&'a self, table: &str) -> impl Iterator<Item = (&'a String, &'a Chain)> + 'a {
        self.tables
            .get(table)
            .into_iter()
            .flat_map(|t| t.chains.iter())
    }

    pub fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chain(table, chain).is_some()
    }

    /// Append a rule (used to add the base-chain jumps a dump leaves out).
    pub fn append(&mut self, table: &str, chain: &str, rule_text: &str) -> Result<(), Error> {
        let rule = parse_rule(rule_text).map_err(|msg| Error::Parse {
            source_name: format!("{table} {chain}"),
            line: 0,
            msg,
        })?;
        self.tables
            .entry(table.to_string())
            .or_default()
            .chains
            .entry(chain.to_string())
            .or_default()
            .rules
            .push(rule);
        Ok(())
    }

    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules.len())
            .sum()
    }
}

/// Split a rule the way iptables-save quotes it: double quotes group, `\"` and `\\`
/// escape.
pub fn tokenize(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_token = true;
            }
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    // iptables-save prints a bare address for /32 and /128; some inputs carry leading
    // zeros (`172.30.0.041`), which iptables reads as decimal.
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip = parse_ip(addr)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) => n,
            Err(_) => {
                // A dotted netmask (`255.255.0.0`).
                let m: IpAddr = l.parse().map_err(|_| format!("bad prefix `{s}`"))?;
                match m {
                    IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                    IpAddr::V6(m) => u128::from(m).count_ones() as u8,
                }
            }
        },
    };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|_| format!("bad prefix `{s}`"))
}

/// An IP address; IPv4 octets with leading zeros are read as decimal.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Ok(ip);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() == 4 {
        let mut o = [0u8; 4];
        for (i, p) in parts.iter().enumerate() {
            o[i] = p.parse().map_err(|_| format!("bad address `{s}`"))?;
        }
        return Ok(IpAddr::from(o));
    }
    Err(format!("bad address `{s}`"))
}

fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    s.split(',')
        .map(|p| {
            let (a, b) = p.split_once(':').unwrap_or((p, p));
            let lo = if a.is_empty() { Ok(0) } else { a.parse() };
            let hi = if b.is_empty() { Ok(65535) } else { b.parse() };
            match (lo, hi) {
                (Ok(lo), Ok(hi)) => Ok((lo, hi)),
                _ => Err(format!("bad port `{p}`")),
            }
        })
        .collect()
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("bad number `{s}`"))
}

fn parse_value_mask(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
        None => Ok((parse_u32(s)?, u32::MAX)),
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_uppercase()).collect()
}

/// Parse the text after `-A CHAIN `.
pub fn parse_rule(text: &str) -> Result<Rule, String> {
    let toks = tokenize(text)?;
    let mut conds = Vec::new();
    let mut target = Target::None;
    let mut module = String::new();
    let mut neg = false;
    let mut i = 0;
    // Arguments of the option at `i`: the following tokens up to the next option.
    let args_of = |i: usize| -> Vec<String> {
        toks[i + 1..]
            .iter()
            .take_while(|t| !t.starts_with('-') && *t != "!")
            .cloned()
            .collect()
    };
    while i < toks.len() {
        let tok = toks[i].as_str();
        if tok == "!" {
            neg = true;
            i += 1;
            continue;
        }
        let args = args_of(i);
        let arg = |n: usize| -> Result<&str, String> {
            args.get(n)
                .map(String::as_str)
                .ok_or_else(|| format!("`{tok}` needs an argument"))
        };
        let mut push = |kind: CondKind| {
            conds.push(Cond { neg, kind });
        };
        match tok {
            "-s" | "--source" | "--src" => {
                push(CondKind::Source {
                    net: parse_net(arg(0)?)?,
                });
            }
            "-d" | "--destination" | "--dst" => {
                push(CondKind::Destination {
                    net: parse_net(arg(0)?)?,
                });
            }
            "-p" | "--protocol" => push(CondKind::Protocol {
                proto: arg(0)?.to_lowercase(),
            }),
            "-i" | "--in-interface" => push(CondKind::InInterface {
                name: arg(0)?.into(),
            }),
            "-o" | "--out-interface" => push(CondKind::OutInterface {
                name: arg(0)?.into(),
            }),
            "-f" | "--fragment" => push(CondKind::Fragment),
            "-m" | "--match" => {
                module = arg(0)?.to_string();
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                let name = arg(0)?.to_string();
                let targs: Vec<String> = toks[i + 2..].to_vec();
                target = parse_target(tok, &name, &targs)?;
                break;
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                push(CondKind::DestPorts {
                    ports: parse_ports(arg(0)?)?,
                });
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                push(CondKind::SourcePorts {
                    ports: parse_ports(arg(0)?)?,
                });
            }
            "--ports" => push(CondKind::AnyPorts {
                ports: parse_ports(arg(0)?)?,
            }),
            "--src-type" => push(CondKind::SrcType {
                types: split_list(arg(0)?),
            }),
            "--dst-type" => push(CondKind::DstType {
                types: split_list(arg(0)?),
            }),
            "--comment" => push(CondKind::Comment {
                text: arg(0)?.into(),
            }),
            "--mark" if module != "connmark" => {
                let (value, mask) = parse_value_mask(arg(0)?)?;
                push(CondKind::Mark { value, mask });
            }
            "--ctstate" | "--state" => push(CondKind::CtState {
                states: split_list(arg(0)?),
            }),
            "--mode" if module == "statistic" => {
                let mode = arg(0)?;
                let opt = |name: &str| -> Option<String> {
                    toks.iter()
                        .position(|t| t == name)
                        .and_then(|p| toks.get(p + 1).cloned())
                };
                if mode == "random" {
                    let p = opt("--probability").ok_or("statistic random without --probability")?;
                    let probability: f64 =
                        p.parse().map_err(|_| format!("bad probability `{p}`"))?;
                    push(CondKind::Random { probability });
                } else {
                    let every = opt("--every").and_then(|s| s.parse().ok()).unwrap_or(1);
                    let packet = opt("--packet").and_then(|s| s.parse().ok()).unwrap_or(0);
                    push(CondKind::Nth { every, packet });
                }
            }
            "--probability" | "--every" | "--packet" if module == "statistic" => {}
            "--set" | "--rcheck" | "--update" | "--remove" if module == "recent" => {
                let opt = |name: &str| -> Option<String> {
                    toks.iter()
                        .position(|t| t == name)
                        .and_then(|p| toks.get(p + 1).cloned())
                };
                push(CondKind::Recent {
                    name: opt("--name").unwrap_or_else(|| "DEFAULT".into()),
                    mode: tok.trim_start_matches('-').to_string(),
                    seconds: opt("--seconds").and_then(|s| s.parse().ok()),
                    rsource: !toks.iter().any(|t| t == "--rdest"),
                });
            }
            "--name" | "--seconds" | "--hitcount" | "--reap" | "--rttl" | "--rsource"
            | "--rdest" | "--mask"
                if module == "recent" => {}
            "--match-set" | "--set" => {
                push(CondKind::MatchSet {
                    name: arg(0)?.into(),
                    flags: arg(1)?.split(',').map(str::to_string).collect(),
                });
            }
            "--physdev-in" => push(CondKind::PhysdevIn {
                name: arg(0)?.into(),
            }),
            "--physdev-out" => push(CondKind::PhysdevOut {
                name: arg(0)?.into(),
            }),
            "--physdev-is-in" => push(CondKind::PhysdevIsIn),
            "--physdev-is-out" => push(CondKind::PhysdevIsOut),
            "--physdev-is-bridged" => push(CondKind::PhysdevIsBridged),
            "--syn" => push(CondKind::TcpFlags {
                mask: split_list("FIN,SYN,RST,ACK"),
                comp: split_list("SYN"),
            }),
            "--tcp-flags" => {
                push(CondKind::TcpFlags {
                    mask: split_list(arg(0)?),
                    comp: split_list(arg(1)?),
                });
            }
            "--icmp-type" | "--icmpv6-type" => push(CondKind::IcmpType {
                name: arg(0)?.into(),
            }),
            "--nfacct-name" | "--limit" | "--limit-burst" | "--limit-iface-in"
            | "--limit-iface-out" => push(CondKind::Passive {
                what: format!("{module} {tok}"),
            }),
            other => {
                if !other.starts_with('-') {
                    return Err(format!("unexpected `{other}`"));
                }
                push(CondKind::Unknown {
                    module: module.clone(),
                    option: other.into(),
                    args: args.clone(),
                });
            }
        }
        // An option consumes the non-option tokens after it (none for a flag).
        i += 1 + args.len();
        neg = false;
    }
    Ok(Rule {
        text: text.trim().to_string(),
        conds,
        target,
    })
}

fn parse_target(opt: &str, name: &str, args: &[String]) -> Result<Target, String> {
    let val = |key: &str| -> Option<String> {
        args.iter()
            .position(|t| t == key)
            .and_then(|p| args.get(p + 1).cloned())
    };
    if opt == "-g" || opt == "--goto" {
        return Ok(Target::Goto { chain: name.into() });
    }
    Ok(match name {
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "REJECT" => Target::Reject {
            with: val("--reject-with"),
        },
        "RETURN" => Target::Return,
        "DNAT" => Target::Dnat {
            to: val("--to-destination").ok_or("DNAT without --to-destination")?,
        },
        "SNAT" => Target::Snat {
            to: val("--to-source").ok_or("SNAT without --to-source")?,
        },
        "MASQUERADE" => Target::Masquerade {
            to_ports: val("--to-ports"),
        },
        "REDIRECT" => Target::Redirect {
            to_ports: val("--to-ports"),
        },
        "LOG" | "NFLOG" | "TRACE" => Target::Log,
        "MARK" => {
            let op = if let Some(v) = val("--set-xmark") {
                let (value, mask) = parse_value_mask(&v)?;
                MarkOp::SetXmark { value, mask }
            } else if let Some(v) = val("--set-mark") {
                let (value, mask) = parse_value_mask(&v)?;
                MarkOp::SetMark { value, mask }
            } else if let Some(v) = val("--or-mark") {
                MarkOp::Or {
                    value: parse_u32(&v)?,
                }
            } else if let Some(v) = val("--xor-mark") {
                MarkOp::Xor {
                    value: parse_u32(&v)?,
                }
            } else if let Some(v) = val("--and-mark") {
                MarkOp::And {
                    value: parse_u32(&v)?,
                }
            } else {
                return Err("MARK without an operation".into());
            };
            Target::Mark { op }
        }
        other => Target::Jump {
            chain: other.into(),
            args: args.to_vec(),
        },
    })
}

#[cfg(test)]
mod tests;
