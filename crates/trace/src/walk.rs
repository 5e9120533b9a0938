//! The walk: a packet through hooks, tables, chains and the routing decision, forking
//! where a match cannot be decided from the packet alone.

use std::cell::Cell;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::iptables::{CondKind, Rule, Ruleset, Target};
use crate::route::Route;
use crate::{Error, Snapshot};

/// A walk may fork at most this often before the tracer gives up (a kube-proxy service
/// with n endpoints forks n ways; NetworkPolicy ipsets without contents fork twice per
/// set).
pub const MAX_BRANCHES: usize = 4096;
/// Jump nesting limit: real rulesets nest under ten deep; deeper means a loop.
const MAX_DEPTH: usize = 32;

/// The packet to trace: the first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp`, `sctp`, `icmp`.
    pub proto: String,
    pub sport: u16,
    pub dport: u16,
    /// The interface it arrives on; `None`: a local source is locally generated, any
    /// other arrives on the device of the route back to the source.
    pub iif: Option<String>,
    /// A packet of an existing connection (a reply): conntrack state ESTABLISHED, the
    /// nat table is not consulted.
    pub established: bool,
    /// The translations this node made for the connection; a reply is un-NATed with them
    /// (destination at PREROUTING/OUTPUT, source at POSTROUTING/INPUT).
    pub conntrack: Vec<Translation>,
}

impl Probe {
    pub fn new(src: IpAddr, dst: IpAddr, proto: &str, dport: u16) -> Self {
        Probe {
            src,
            dst,
            proto: proto.to_lowercase(),
            sport: 40000,
            dport,
            iif: None,
            established: false,
            conntrack: vec![],
        }
    }
}

/// The packet as the rules see it at one point of the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: String,
    pub sport: u16,
    pub dport: u16,
    pub mark: u32,
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// conntrack's virtual states after translation (`--ctstate DNAT`/`SNAT`).
    pub dnat: bool,
    /// ESTABLISHED rather than NEW.
    pub established: bool,
    pub snat: bool,
}

/// Where a rule sits: `table chain #rule` (`rule` is 1-based, as `iptables -L
/// --line-numbers` counts; `None` for a chain policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loc {
    pub table: String,
    pub chain: String,
    pub rule: Option<usize>,
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rule {
            Some(n) => write!(f, "{} {} #{}", self.table, self.chain, n),
            None => write!(f, "{} {} policy", self.table, self.chain),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Entering a netfilter hook.
    Hook {
        hook: String,
    },
    /// A rule that matched.
    Rule {
        at: Loc,
        text: String,
    },
    /// A built-in chain's policy applied.
    Policy {
        at: Loc,
        policy: String,
    },
    /// The routing decision.
    Route {
        route: Route,
        decision: String,
    },
    Translate {
        translation: Translation,
    },
    Note {
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Translation {
    /// `DNAT`, `SNAT`, `MASQUERADE`, `REDIRECT`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub at: Loc,
}

/// How a branch ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fate", rename_all = "kebab-case")]
pub enum Fate {
    /// Delivered to a local socket.
    Delivered {
        to: String,
    },
    /// Routed on and sent out of `dev` (forwarded, or locally generated).
    Sent {
        dev: Option<String>,
        next_hop: IpAddr,
        forwarded: bool,
    },
    Dropped {
        at: Option<Loc>,
        reason: String,
    },
    Rejected {
        at: Loc,
        with: Option<String>,
    },
}

/// One way the packet can go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Branch {
    /// The chance a new connection takes this branch (product of `--probability`
    /// forks), given its conditions.
    pub probability: f64,
    /// What this branch assumed (history-dependent matches, sets without contents).
    pub conditions: Vec<String>,
    pub steps: Vec<Step>,
    pub packet: Packet,
    pub fate: Option<Fate>,
    /// The first rule (not policy) that ACCEPTed the packet, if any.
    pub accepted_by: Option<Loc>,
    /// For a packet sent out: its next hop at the link layer (neighbour, bridge port,
    /// vxlan VTEP).
    pub link: Option<crate::route::LinkHop>,
    pub warnings: Vec<String>,
    /// The branch in the cluster's terms, when the cluster's objects are known
    /// ([`crate::kubernetes::annotate`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kubernetes::InKubernetesTerms>,
}

impl Branch {
    pub fn translations(&self) -> impl Iterator<Item = &Translation> {
        self.steps.iter().filter_map(|s| match s {
            Step::Translate { translation } => Some(translation),
            _ => None,
        })
    }

    /// The source was rewritten (SNAT or MASQUERADE).
    pub fn masqueraded(&self) -> bool {
        self.translations()
            .any(|t| t.kind == "MASQUERADE" || t.kind == "SNAT")
    }

    /// The destination was rewritten (DNAT or REDIRECT): the endpoint `ip:port`.
    pub fn endpoint(&self) -> Option<String> {
        self.translations()
            .any(|t| t.kind == "DNAT" || t.kind == "REDIRECT")
            .then(|| sockaddr(self.packet.dst, self.packet.dport))
    }

    pub fn route(&self) -> Option<&Route> {
        self.steps.iter().rev().find_map(|s| match s {
            Step::Route { route, .. } => Some(route),
            _ => None,
        })
    }

    fn note(&mut self, text: impl Into<String>) {
        self.steps.push(Step::Note { text: text.into() });
    }
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    pub probe: Probe,
    /// `locally generated` or `arriving on DEV`.
    pub origin: String,
    pub branches: Vec<Branch>,
}

pub fn sockaddr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// What a chain walk ends in.
#[derive(Debug, Clone)]
enum Flow {
    /// Fell off the end or RETURNed.
    Return,
    Accept,
    Drop(Loc),
    Reject(Loc, Option<String>),
}

/// Trace `probe` through `snap`.
pub fn trace(snap: &Snapshot, probe: &Probe) -> Result<Trace, Error> {
    let key = crate::conntrack::Tuple {
        src: probe.src,
        dst: probe.dst,
        sport: probe.sport,
        dport: probe.dport,
    };
    let existing = if probe.established {
        None
    } else {
        snap.conntrack
            .iter()
            .find(|e| e.proto == probe.proto.to_lowercase() && e.original == key)
    };
    let t = Tracer {
        existing,
        snap,
        v4: probe.dst.is_ipv4(),
        rules: snap.rules_for(probe.dst),
        forks: Cell::new(1),
        conntrack: &probe.conntrack,
    };
    t.run(probe)
}

struct Tracer<'a> {
    /// The conntrack entry the probe belongs to, if any.
    existing: Option<&'a crate::conntrack::CtEntry>,
    snap: &'a Snapshot,
    v4: bool,
    rules: &'a Ruleset,
    forks: Cell<usize>,
    conntrack: &'a [Translation],
}

const OUTPUT_TABLES: &[&str] = &["raw", "mangle", "nat", "filter"];
const PREROUTING_TABLES: &[&str] = &["raw", "mangle", "nat"];
const INPUT_TABLES: &[&str] = &["mangle", "filter", "nat"];
const FORWARD_TABLES: &[&str] = &["mangle", "filter"];
const POSTROUTING_TABLES: &[&str] = &["mangle", "nat"];

impl Tracer<'_> {
    fn run(&self, probe: &Probe) -> Result<Trace, Error> {
        let routing = &self.snap.routing;
        let local_origin = probe.iif.is_none() && routing.is_local(probe.src);
        let mut b = Branch {
            probability: 1.0,
            conditions: vec![],
            steps: vec![],
            packet: Packet {
                src: probe.src,
                dst: probe.dst,
                proto: probe.proto.to_lowercase(),
                sport: probe.sport,
                dport: probe.dport,
                mark: 0,
                iif: None,
                oif: None,
                dnat: false,
                snat: false,
                established: probe.established || self.existing.is_some(),
            },
            fate: None,
            accepted_by: None,
            link: None,
            warnings: vec![],
            kubernetes: None,
        };
        if let Some(e) = self.existing {
            b.note(format!(
                "conntrack: part of the existing connection {}; the nat rules are not consulted, the connection's translations apply",
                e.describe()
            ));
            b.conditions.push(format!(
                "the conntrack entry {} is still there",
                e.describe()
            ));
        }
        let origin;
        let mut done = Vec::new();
        if local_origin {
            origin = "locally generated".to_string();
            let Some(r) = routing.lookup(probe.dst) else {
                b.fate = Some(Fate::Dropped {
                    at: None,
                    reason: format!("no route to {}", probe.dst),
                });
                return Ok(Trace {
                    probe: probe.clone(),
                    origin,
                    branches: vec![b],
                });
            };
            b.packet.oif = r.dev.clone();
            let bs = self.hook("OUTPUT", OUTPUT_TABLES, vec![b])?;
            for mut b in bs {
                if b.fate.is_some() {
                    done.push(b);
                    continue;
                }
                let Some(route) = self.route(&mut b) else {
                    done.push(b);
                    continue;
                };
                let local = route.kind == "local";
                let mut after = self.hook("POSTROUTING", POSTROUTING_TABLES, vec![b])?;
                if local {
                    for b in &mut after {
                        b.packet.iif = Some("lo".into());
                    }
                    after = self.hook("INPUT", INPUT_TABLES, after)?;
                }
                for mut b in after {
                    if b.fate.is_none() {
                        b.fate = Some(self.exit(&b, &route, local, false));
                        b.link = self.link(&b);
                    }
                    done.push(b);
                }
            }
        } else {
            let iif = match &probe.iif {
                Some(i) => i.clone(),
                None => match routing.lookup(probe.src).and_then(|r| r.dev.clone()) {
                    Some(d) => {
                        b.note(format!(
                            "arrives on {d} (the device of the route back to {})",
                            probe.src
                        ));
                        d
                    }
                    None => {
                        b.warnings.push(format!(
                            "no route back to {}; incoming interface unknown",
                            probe.src
                        ));
                        String::new()
                    }
                },
            };
            origin = format!("arriving on {}", if iif.is_empty() { "?" } else { &iif });
            b.packet.iif = (!iif.is_empty()).then_some(iif);
            let bs = self.hook("PREROUTING", PREROUTING_TABLES, vec![b])?;
            for mut b in bs {
                if b.fate.is_some() {
                    done.push(b);
                    continue;
                }
                let Some(route) = self.route(&mut b) else {
                    done.push(b);
                    continue;
                };
                let after = if route.kind == "local" {
                    self.hook("INPUT", INPUT_TABLES, vec![b])?
                } else {
                    let v4 = b.packet.dst.is_ipv4();
                    let fwd = if v4 {
                        self.snap.ip_forward
                    } else {
                        self.snap.ipv6_forwarding
                    };
                    if fwd == Some(false) {
                        let key = if v4 {
                            "net.ipv4.ip_forward"
                        } else {
                            "net.ipv6.conf.all.forwarding"
                        };
                        b.fate = Some(Fate::Dropped {
                            at: None,
                            reason: format!("forwarding is off ({key}=0)"),
                        });
                        done.push(b);
                        continue;
                    }
                    if fwd.is_none() {
                        b.note("forwarding assumed on (sysctl not in the snapshot)");
                    }
                    if b.packet.iif.as_deref() == route.dev.as_deref()
                        && route.gateway.is_none()
                        && let Some(dev) = route.dev.as_deref()
                        && routing.interface(dev).and_then(|i| i.kind.as_deref()) == Some("bridge")
                    {
                        b.note(format!(
                            "in and out of bridge {dev}: the bridge switches this frame; iptables sees it only with br_netfilter (bridge-nf-call-iptables=1)"
                        ));
                    }
                    let bs = self.hook("FORWARD", FORWARD_TABLES, vec![b])?;
                    self.hook("POSTROUTING", POSTROUTING_TABLES, bs)?
                };
                for mut b in after {
                    if b.fate.is_none() {
                        let local = route.kind == "local";
                        b.fate = Some(self.exit(&b, &route, local, !local));
                        b.link = self.link(&b);
                    }
                    done.push(b);
                }
            }
        }
        Ok(Trace {
            probe: probe.clone(),
            origin,
            branches: done,
        })
    }

    /// The routing decision for the packet as it is now; `None` when it is dropped here.
    fn route(&self, b: &mut Branch) -> Option<Route> {
        let dst = b.packet.dst;
        match self.snap.routing.lookup(dst) {
            None => {
                b.fate = Some(Fate::Dropped {
                    at: None,
                    reason: format!("no route to {dst}"),
                });
                None
            }
            Some(r) if matches!(r.kind.as_str(), "blackhole" | "unreachable" | "prohibit") => {
                b.steps.push(Step::Route {
                    route: r.clone(),
                    decision: r.kind.clone(),
                });
                b.fate = Some(Fate::Dropped {
                    at: None,
                    reason: format!("route to {dst} is {} ({r})", r.kind),
                });
                None
            }
            Some(r) => {
                let decision = if r.kind == "local" {
                    "local delivery".to_string()
                } else {
                    let hop = r.gateway.unwrap_or(dst);
                    let dev = r.dev.as_deref().unwrap_or("?");
                    let kind = self
                        .snap
                        .routing
                        .interface(dev)
                        .and_then(|i| i.kind.clone())
                        .map(|k| format!(" ({k})"))
                        .unwrap_or_default();
                    format!("out {dev}{kind} to {hop}")
                };
                b.packet.oif = if r.kind == "local" {
                    Some("lo".into())
                } else {
                    r.dev.clone()
                };
                b.steps.push(Step::Route {
                    route: r.clone(),
                    decision,
                });
                Some(r.clone())
            }
        }
    }

    fn link(&self, b: &Branch) -> Option<crate::route::LinkHop> {
        match &b.fate {
            Some(Fate::Sent {
                dev: Some(dev),
                next_hop,
                ..
            }) => Some(self.snap.routing.link_hop(dev, *next_hop)),
            _ => None,
        }
    }

    fn exit(&self, b: &Branch, route: &Route, local: bool, forwarded: bool) -> Fate {
        if local {
            Fate::Delivered {
                to: sockaddr(b.packet.dst, b.packet.dport),
            }
        } else {
            Fate::Sent {
                dev: route.dev.clone(),
                next_hop: route.gateway.unwrap_or(b.packet.dst),
                forwarded,
            }
        }
    }

    /// Run the built-in chain `hook` of each table in order over live branches.
    fn hook(
        &self,
        hook: &str,
        tables: &[&str],
        branches: Vec<Branch>,
    ) -> Result<Vec<Branch>, Error> {
        let mut live: Vec<Branch> = Vec::new();
        let mut out = Vec::new();
        for mut b in branches {
            if b.fate.is_some() {
                out.push(b);
            } else {
                b.steps.push(Step::Hook { hook: hook.into() });
                live.push(b);
            }
        }
        if matches!(hook, "PREROUTING" | "OUTPUT") {
            for b in &mut live {
                self.unnat(b, false);
                self.existing_nat(b, false);
            }
        }
        for stage in self.stages(hook, tables) {
            let (is_nat, label, chain_name) = match &stage {
                Stage::Iptables(table) => (*table == "nat", table.to_string(), hook.to_string()),
                Stage::Nft(t, c) => (c.kind.as_deref() == Some("nat"), t.label(), c.name.clone()),
            };
            // Packets of an existing connection skip nat; conntrack translates them.
            if is_nat && live.iter().all(|b| b.packet.established) {
                continue;
            }
            let mut next = Vec::new();
            for b in live {
                let walked = match &stage {
                    Stage::Iptables(table) => self.chain(table, hook, b, 0)?,
                    Stage::Nft(t, c) => self.nft_chain(t, &c.name, b, 0)?,
                };
                for (mut b, flow) in walked {
                    match flow {
                        Flow::Accept => next.push(b),
                        Flow::Return => {
                            let policy = match &stage {
                                Stage::Iptables(table) => {
                                    self.rules.chain(table, hook).and_then(|c| c.policy.clone())
                                }
                                Stage::Nft(_, c) => c.policy.clone(),
                            }
                            .unwrap_or_else(|| "ACCEPT".into());
                            if policy.eq_ignore_ascii_case("DROP") {
                                let at = Loc {
                                    table: label.clone(),
                                    chain: chain_name.clone(),
                                    rule: None,
                                };
                                b.steps.push(Step::Policy {
                                    at: at.clone(),
                                    policy: policy.clone(),
                                });
                                b.fate = Some(Fate::Dropped {
                                    reason: format!(
                                        "{label} {chain_name} policy {policy} and no rule accepted it"
                                    ),
                                    at: Some(at),
                                });
                                out.push(b);
                            } else {
                                next.push(b);
                            }
                        }
                        Flow::Drop(at) => {
                            b.fate = Some(Fate::Dropped {
                                reason: format!("DROP rule {at}"),
                                at: Some(at),
                            });
                            out.push(b);
                        }
                        Flow::Reject(at, with) => {
                            b.fate = Some(Fate::Rejected { at, with });
                            out.push(b);
                        }
                    }
                }
            }
            live = next;
        }
        if matches!(hook, "POSTROUTING" | "INPUT") {
            for b in &mut live {
                self.unnat(b, true);
                self.existing_nat(b, true);
            }
        }
        out.extend(live);
        Ok(out)
    }

    /// The tables a hook runs, in priority order: iptables' (at their fixed
    /// priorities) and the nftables base chains on the hook. On equal priority the
    /// kernel keeps registration order, which a snapshot cannot show; iptables goes
    /// first here.
    fn stages<'s>(&'s self, hook: &str, tables: &[&'s str]) -> Vec<Stage<'s>> {
        let mut v: Vec<(i64, Stage<'s>)> = tables
            .iter()
            .filter(|t| self.rules.has_chain(t, hook))
            .map(|t| (iptables_priority(t, hook), Stage::Iptables(t)))
            .collect();
        let family = if self.v4 { "ip" } else { "ip6" };
        for (t, c) in self
            .snap
            .nft
            .base_chains(family, &hook.to_ascii_lowercase())
        {
            v.push((c.prio, Stage::Nft(t, c)));
        }
        v.sort_by_key(|(p, _)| *p);
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// A packet of an existing connection gets that connection's translations: the
    /// destination at PREROUTING/OUTPUT, the source at POSTROUTING/INPUT.
    fn existing_nat(&self, b: &mut Branch, source: bool) {
        let Some(e) = self.existing else { return };
        let at = Loc {
            table: "conntrack".into(),
            chain: "existing connection".into(),
            rule: None,
        };
        if source {
            if let Some((ip, port)) = e.snat_to()
                && (b.packet.src, b.packet.sport) == (e.original.src, e.original.sport)
            {
                translate_src(b, Some(ip), Some(port), at);
            }
        } else if let Some((ip, port)) = e.dnat_to()
            && (b.packet.dst, b.packet.dport) == (e.original.dst, e.original.dport)
        {
            translate_dst(b, Some(ip), Some(port), at);
        }
    }

    /// Undo this node's translations on a reply: the destination a SNAT/MASQUERADE
    /// wrote (`source == false`), or the source a DNAT/REDIRECT wrote.
    fn unnat(&self, b: &mut Branch, source: bool) {
        if !b.packet.established {
            return;
        }
        let (ip, port) = if source {
            (b.packet.src, b.packet.sport)
        } else {
            (b.packet.dst, b.packet.dport)
        };
        let here = sockaddr(ip, port);
        let kinds: &[&str] = if source {
            &["DNAT", "REDIRECT"]
        } else {
            &["SNAT", "MASQUERADE"]
        };
        let Some(t) = self
            .conntrack
            .iter()
            .find(|t| kinds.contains(&t.kind.as_str()) && t.to == here)
        else {
            return;
        };
        let Some((oip, oport)) = parse_sockaddr(&t.from) else {
            return;
        };
        if source {
            b.packet.src = oip;
            b.packet.sport = oport;
        } else {
            b.packet.dst = oip;
            b.packet.dport = oport;
        }
        let kind = if source { "un-DNAT" } else { "un-SNAT" };
        b.steps.push(Step::Translate {
            translation: Translation {
                kind: kind.into(),
                from: here,
                to: t.from.clone(),
                at: Loc {
                    table: "conntrack".into(),
                    chain: t.at.chain.clone(),
                    rule: t.at.rule,
                },
            },
        });
    }

    fn fork_count(&self, extra: usize) -> Result<(), Error> {
        let n = self.forks.get() + extra;
        if n > MAX_BRANCHES {
            return Err(Error::TooManyBranches {
                limit: MAX_BRANCHES,
            });
        }
        self.forks.set(n);
        Ok(())
    }

    /// Walk `chain` from its first rule.
    fn chain(
        &self,
        table: &str,
        chain: &str,
        b: Branch,
        depth: usize,
    ) -> Result<Vec<(Branch, Flow)>, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                table: table.into(),
                chain: chain.into(),
                limit: MAX_DEPTH,
            });
        }
        self.chain_from(table, chain, 0, b, depth)
    }

    /// Walk `chain` from rule `start`. A worklist, not recursion, carries the branches
    /// a fork leaves behind, so a service with hundreds of endpoints does not nest the
    /// stack hundreds deep; only jumps recurse.
    fn chain_from(
        &self,
        table: &str,
        chain: &str,
        start: usize,
        b: Branch,
        depth: usize,
    ) -> Result<Vec<(Branch, Flow)>, Error> {
        let rules: &[Rule] = self
            .rules
            .chain(table, chain)
            .map(|c| c.rules.as_slice())
            .unwrap_or(&[]);
        let mut work = vec![(b, start)];
        let mut out = Vec::new();
        while let Some((b, idx)) = work.pop() {
            let Some(rule) = rules.get(idx) else {
                out.push((b, Flow::Return));
                continue;
            };
            let at = Loc {
                table: table.into(),
                chain: chain.into(),
                rule: Some(idx + 1),
            };
            let mut pending = Vec::new();
            for (ob, matched) in self.eval(rule, b)? {
                if !matched {
                    pending.push((ob, idx + 1));
                    continue;
                }
                for (rb, step) in self.apply(table, rule, at.clone(), ob, depth)? {
                    match step {
                        Step2::Next => pending.push((rb, idx + 1)),
                        Step2::End(f) => out.push((rb, f)),
                    }
                }
            }
            // Reversed so the first outcome is worked on first.
            work.extend(pending.into_iter().rev());
        }
        Ok(out)
    }

    /// The matched rule's target.
    fn apply(
        &self,
        table: &str,
        rule: &Rule,
        at: Loc,
        mut b: Branch,
        depth: usize,
    ) -> Result<Vec<(Branch, Step2)>, Error> {
        b.steps.push(Step::Rule {
            at: at.clone(),
            text: rule.text.clone(),
        });
        let one = |b: Branch, s: Step2| Ok(vec![(b, s)]);
        match &rule.target {
            Target::None | Target::Log => one(b, Step2::Next),
            Target::Accept => {
                if b.accepted_by.is_none() {
                    b.accepted_by = Some(at);
                }
                one(b, Step2::End(Flow::Accept))
            }
            Target::Drop => one(b, Step2::End(Flow::Drop(at))),
            Target::Reject { with } => one(b, Step2::End(Flow::Reject(at, with.clone()))),
            Target::Return => one(b, Step2::End(Flow::Return)),
            Target::Mark { op } => {
                b.packet.mark = op.apply(b.packet.mark);
                one(b, Step2::Next)
            }
            Target::Dnat { to } => {
                match parse_nat_to(to) {
                    Some((ip, port)) => {
                        if to.contains('-') {
                            b.warnings.push(format!(
                                "DNAT range `{to}`: the first address/port stands for the range"
                            ));
                        }
                        translate_dst(&mut b, ip, port, at);
                    }
                    None => {
                        b.warnings
                            .push(format!("DNAT target `{to}` not understood"));
                        translate_dst(&mut b, None, None, at);
                    }
                }
                one(b, Step2::End(Flow::Accept))
            }
            Target::Redirect { to_ports } => {
                let from = sockaddr(b.packet.dst, b.packet.dport);
                let local = match b.packet.iif.as_deref() {
                    None | Some("lo") => Some(if b.packet.dst.is_ipv4() {
                        IpAddr::from([127, 0, 0, 1])
                    } else {
                        IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                    }),
                    Some(dev) => self.snap.routing.interface(dev).and_then(|i| {
                        i.addrs
                            .iter()
                            .find(|a| a.addr().is_ipv4() == b.packet.dst.is_ipv4())
                            .map(IpNet::addr)
                    }),
                };
                if let Some(ip) = local {
                    b.packet.dst = ip;
                }
                if let Some(p) = to_ports
                    .as_deref()
                    .and_then(|p| p.split('-').next())
                    .and_then(|p| p.parse().ok())
                {
                    b.packet.dport = p;
                }
                b.packet.dnat = true;
                let to_s = sockaddr(b.packet.dst, b.packet.dport);
                b.steps.push(Step::Translate {
                    translation: Translation {
                        kind: "REDIRECT".into(),
                        from,
                        to: to_s,
                        at,
                    },
                });
                one(b, Step2::End(Flow::Accept))
            }
            Target::Snat { to } => {
                let (ip, port) = parse_nat_to(to).unwrap_or((None, None));
                translate_src(&mut b, ip, port, at);
                one(b, Step2::End(Flow::Accept))
            }
            Target::Masquerade { to_ports } => {
                let port = to_ports
                    .as_deref()
                    .and_then(|p| p.split('-').next())
                    .and_then(|p| p.parse().ok());
                self.masquerade(&mut b, port, at);
                one(b, Step2::End(Flow::Accept))
            }
            Target::Goto { chain } => {
                if !self.rules.has_chain(table, chain) {
                    b.warnings
                        .push(format!("goto {chain}: no such chain in {table}"));
                    return one(b, Step2::Next);
                }
                // A goto'd chain returning ends the calling chain too.
                Ok(self
                    .chain(table, chain, b, depth + 1)?
                    .into_iter()
                    .map(|(b, f)| (b, Step2::End(f)))
                    .collect())
            }
            Target::Jump { chain, .. } => {
                if !self.rules.has_chain(table, chain) {
                    // An extension target this tracer does not model (CT, CONNMARK,
                    // TCPMSS, CHECKSUM…): all of these continue the chain.
                    b.warnings
                        .push(format!("target {chain} not modelled; assumed to continue"));
                    return one(b, Step2::Next);
                }
                Ok(self
                    .chain(table, chain, b, depth + 1)?
                    .into_iter()
                    .map(|(b, f)| match f {
                        Flow::Return => (b, Step2::Next),
                        f => (b, Step2::End(f)),
                    })
                    .collect())
            }
        }
    }

    /// MASQUERADE: the source becomes the outgoing route's address.
    fn masquerade(&self, b: &mut Branch, port: Option<u16>, at: Loc) {
        let from = sockaddr(b.packet.src, b.packet.sport);
        let src = b
            .route()
            .cloned()
            .and_then(|r| self.snap.routing.source_for(&r, b.packet.dst));
        match src {
            Some(s) => b.packet.src = s,
            None => b
                .warnings
                .push("MASQUERADE: the outgoing device's address is unknown".into()),
        }
        if let Some(p) = port {
            b.packet.sport = p;
        }
        b.packet.snat = true;
        let to = match src {
            Some(_) => sockaddr(b.packet.src, b.packet.sport),
            None => format!(
                "address of {}",
                b.packet.oif.as_deref().unwrap_or("the outgoing device")
            ),
        };
        b.steps.push(Step::Translate {
            translation: Translation {
                kind: "MASQUERADE".into(),
                from,
                to,
                at,
            },
        });
    }

    /// Evaluate a rule's conditions: one outcome, or several when a condition forks.
    fn eval(&self, rule: &Rule, b: Branch) -> Result<Vec<(Branch, bool)>, Error> {
        let mut states = vec![(b, true)];
        for cond in &rule.conds {
            let mut next = Vec::with_capacity(states.len());
            for (mut b, ok) in states {
                if !ok {
                    next.push((b, false));
                    continue;
                }
                match self.cond(&cond.kind, &b.packet) {
                    Outcome::Certain(v) => next.push((b, v != cond.neg)),
                    Outcome::Assumed(v, why) => {
                        b.warnings.push(why);
                        next.push((b, v != cond.neg));
                    }
                    Outcome::Fork(alts) => {
                        self.fork_count(alts.len() - 1)?;
                        for (v, p, condition) in alts {
                            let mut nb = b.clone();
                            nb.probability *= p;
                            if let Some(c) = condition {
                                nb.conditions.push(c);
                            }
                            next.push((nb, v != cond.neg));
                        }
                    }
                }
            }
            states = next;
        }
        // Forked outcomes whose probability is zero cannot happen.
        states.retain(|(b, _)| b.probability > 0.0);
        Ok(states)
    }

    fn cond(&self, kind: &CondKind, p: &Packet) -> Outcome {
        use Outcome::Certain;
        let routing = &self.snap.routing;
        match kind {
            CondKind::Source { net } => Certain(net.contains(&p.src)),
            CondKind::Destination { net } => Certain(net.contains(&p.dst)),
            CondKind::Protocol { proto } => Certain(proto_matches(proto, &p.proto)),
            CondKind::InInterface { name } => {
                Certain(p.iif.as_deref().is_some_and(|i| iface_matches(name, i)))
            }
            CondKind::OutInterface { name } => {
                Certain(p.oif.as_deref().is_some_and(|i| iface_matches(name, i)))
            }
            CondKind::Fragment => Certain(false),
            CondKind::DestPorts { ports } => {
                Certain(has_ports(&p.proto) && in_ranges(ports, p.dport))
            }
            CondKind::SourcePorts { ports } => {
                Certain(has_ports(&p.proto) && in_ranges(ports, p.sport))
            }
            CondKind::AnyPorts { ports } => Certain(
                has_ports(&p.proto) && (in_ranges(ports, p.sport) || in_ranges(ports, p.dport)),
            ),
            CondKind::SrcType { types } => {
                Certain(types.iter().any(|t| t == routing.addr_type(p.src)))
            }
            CondKind::DstType { types } => {
                Certain(types.iter().any(|t| t == routing.addr_type(p.dst)))
            }
            CondKind::Comment { .. } | CondKind::Passive { .. } => Certain(true),
            CondKind::Mark { value, mask } => Certain(p.mark & mask == *value),
            CondKind::CtState { states } => Certain(states.iter().any(|s| match s.as_str() {
                "NEW" => !p.established,
                "ESTABLISHED" => p.established,
                "DNAT" => p.dnat,
                "SNAT" => p.snat,
                _ => false,
            })),
            CondKind::Random { probability } => {
                let q = probability.clamp(0.0, 1.0);
                if q >= 1.0 {
                    Certain(true)
                } else if q <= 0.0 {
                    Certain(false)
                } else {
                    Outcome::Fork(vec![(true, q, None), (false, 1.0 - q, None)])
                }
            }
            CondKind::Nth { every, packet } => {
                let n = (*every).max(1);
                if n == 1 {
                    return Certain(true);
                }
                let q = 1.0 / f64::from(n);
                Outcome::Fork(vec![
                    (
                        true,
                        q,
                        Some(format!(
                            "statistic nth: the connection is packet {packet} of every {n}"
                        )),
                    ),
                    (false, 1.0 - q, None),
                ])
            }
            CondKind::Recent {
                name,
                mode,
                seconds,
                rsource,
            } => {
                if mode == "set" || mode == "remove" {
                    return Certain(true);
                }
                let who = if *rsource { p.src } else { p.dst };
                let within = seconds.map(|s| format!(" within {s}s")).unwrap_or_default();
                Outcome::Fork(vec![
                    (
                        true,
                        1.0,
                        Some(format!("history: recent list {name} has {who}{within}")),
                    ),
                    (
                        false,
                        1.0,
                        Some(format!("no history: recent list {name} lacks {who}")),
                    ),
                ])
            }
            CondKind::MatchSet { name, flags } => match self.snap.ipsets.get(name) {
                Some(members) => Certain(set_contains(members, flags, p)),
                None => {
                    let key = flags
                        .iter()
                        .map(|f| {
                            if f == "src" {
                                p.src.to_string()
                            } else {
                                p.dst.to_string()
                            }
                        })
                        .next()
                        .unwrap_or_default();
                    Outcome::Fork(vec![
                        (
                            true,
                            1.0,
                            Some(format!("ipset {name} ({}) holds {key}", flags.join(","))),
                        ),
                        (
                            false,
                            1.0,
                            Some(format!("ipset {name} ({}) lacks {key}", flags.join(","))),
                        ),
                    ])
                }
            },
            // Only routed packets are traced; bridged frames have no physdev here.
            CondKind::PhysdevIn { .. }
            | CondKind::PhysdevOut { .. }
            | CondKind::PhysdevIsIn
            | CondKind::PhysdevIsOut
            | CondKind::PhysdevIsBridged => Certain(false),
            CondKind::TcpFlags { mask, comp } => {
                // The first packet is a bare SYN.
                let expand = |l: &[String]| -> Vec<String> {
                    l.iter()
                        .flat_map(|f| match f.as_str() {
                            "ALL" => ["FIN", "SYN", "RST", "PSH", "ACK", "URG"]
                                .iter()
                                .map(|s| s.to_string())
                                .collect(),
                            "NONE" => vec![],
                            other => vec![other.to_string()],
                        })
                        .collect()
                };
                let comp = expand(comp);
                let ok = p.proto == "tcp"
                    && expand(mask)
                        .iter()
                        .all(|f| (f == "SYN") == comp.contains(f));
                Certain(ok)
            }
            CondKind::IcmpType { name } => Certain(
                matches!(p.proto.as_str(), "icmp" | "icmpv6" | "ipv6-icmp")
                    && matches!(name.as_str(), "any" | "8" | "echo-request" | "128"),
            ),
            CondKind::Unknown { module, option, .. } => Outcome::Assumed(
                true,
                format!("-m {module} {option}: not modelled, assumed to match"),
            ),
        }
    }
}

enum Step2 {
    Next,
    End(Flow),
}

/// One table's turn at a hook.
enum Stage<'a> {
    Iptables(&'a str),
    Nft(&'a crate::nft::NftTable, &'a crate::nft::NftChain),
}

/// The netfilter priority of an iptables table's built-in chain
/// (include/uapi/linux/netfilter_ipv4.h): raw -300, mangle -150, DNAT -100, filter 0,
/// security 50, SNAT 100.
fn iptables_priority(table: &str, hook: &str) -> i64 {
    match table {
        "raw" => -300,
        "mangle" => -150,
        "nat" if matches!(hook, "PREROUTING" | "OUTPUT") => -100,
        "nat" => 100,
        "security" => 50,
        _ => 0,
    }
}

/// DNAT: rewrite the destination (either part may stay) and record the translation.
fn translate_dst(b: &mut Branch, ip: Option<IpAddr>, port: Option<u16>, at: Loc) {
    let from = sockaddr(b.packet.dst, b.packet.dport);
    if let Some(ip) = ip {
        b.packet.dst = ip;
    }
    if let Some(p) = port {
        b.packet.dport = p;
    }
    b.packet.dnat = true;
    let to = sockaddr(b.packet.dst, b.packet.dport);
    b.steps.push(Step::Translate {
        translation: Translation {
            kind: "DNAT".into(),
            from,
            to,
            at,
        },
    });
}

/// SNAT to a fixed address: rewrite the source and record the translation.
fn translate_src(b: &mut Branch, ip: Option<IpAddr>, port: Option<u16>, at: Loc) {
    let from = sockaddr(b.packet.src, b.packet.sport);
    if let Some(ip) = ip {
        b.packet.src = ip;
    }
    if let Some(p) = port {
        b.packet.sport = p;
    }
    b.packet.snat = true;
    let to = sockaddr(b.packet.src, b.packet.sport);
    b.steps.push(Step::Translate {
        translation: Translation {
            kind: "SNAT".into(),
            from,
            to,
            at,
        },
    });
}

enum Outcome {
    Certain(bool),
    Assumed(bool, String),
    /// (matches, probability factor, the condition this branch assumes).
    Fork(Vec<(bool, f64, Option<String>)>),
}

fn proto_matches(rule: &str, pkt: &str) -> bool {
    let num = |s: &str| -> Option<u8> {
        Some(match s {
            "all" | "0" => 0,
            "icmp" | "1" => 1,
            "tcp" | "6" => 6,
            "udp" | "17" => 17,
            "icmpv6" | "ipv6-icmp" | "58" => 58,
            "sctp" | "132" => 132,
            other => other.parse().ok()?,
        })
    };
    match (num(rule), num(pkt)) {
        (Some(0), _) => true,
        (Some(a), Some(b)) => a == b,
        _ => rule == pkt,
    }
}

fn has_ports(proto: &str) -> bool {
    matches!(proto, "tcp" | "udp" | "sctp" | "udplite" | "dccp")
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
}

fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// `ip:port` or `[v6]:port`, as [`sockaddr`] prints them.
pub fn parse_sockaddr(s: &str) -> Option<(IpAddr, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:")?;
        return Some((ip.parse().ok()?, port.parse().ok()?));
    }
    let (ip, port) = s.rsplit_once(':')?;
    Some((ip.parse().ok()?, port.parse().ok()?))
}

/// `ip[-ip][:port[-port]]`, `[v6]:port`, `:port`.
fn parse_nat_to(s: &str) -> Option<(Option<IpAddr>, Option<u16>)> {
    let first_port = |p: &str| p.split('-').next().and_then(|x| x.parse::<u16>().ok());
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip = ip.split('-').next()?.parse().ok()?;
        let port = after.strip_prefix(':').and_then(first_port);
        return Some((Some(ip), port));
    }
    if s.matches(':').count() > 1 {
        // A bare IPv6 address (range).
        return Some((Some(s.split('-').next()?.parse().ok()?), None));
    }
    let (ip, port) = match s.split_once(':') {
        Some((i, p)) => (i, first_port(p)),
        None => (s, None),
    };
    let ip = if ip.is_empty() {
        None
    } else {
        Some(crate::iptables::parse_ip(ip.split('-').next()?).ok()?)
    };
    Some((ip, port))
}

/// Membership for `--match-set NAME flags` over `ipset save` members (`hash:ip`,
/// `hash:net`, `hash:ip,port`, `hash:net,port`, `hash:ip,port,ip`…).
fn set_contains(members: &[String], flags: &[String], p: &Packet) -> bool {
    members.iter().any(|m| {
        let dims: Vec<&str> = m.split(',').collect();
        dims.len() >= flags.len()
            && flags.iter().zip(&dims).all(|(flag, dim)| {
                let src = flag == "src";
                if let Some((proto, port)) = dim.split_once(':')
                    && !dim.contains('.')
                    && !dim.contains("::")
                {
                    let port_ok =
                        port.split_once('-')
                            .map(|(a, b)| {
                                (a.parse().unwrap_or(0)..=b.parse().unwrap_or(0))
                                    .contains(&if src { p.sport } else { p.dport })
                            })
                            .unwrap_or_else(|| {
                                port.parse::<u16>().ok()
                                    == Some(if src { p.sport } else { p.dport })
                            });
                    return proto_matches(proto, &p.proto) && port_ok;
                }
                let ip = if src { p.src } else { p.dst };
                if let Ok(net) = dim.parse::<IpNet>() {
                    return net.contains(&ip);
                }
                if let Ok(a) = dim.parse::<IpAddr>() {
                    return a == ip;
                }
                if let Ok(port) = dim.parse::<u16>() {
                    return port == if src { p.sport } else { p.dport };
                }
                false
            })
    })
}

mod nft;
#[cfg(test)]
mod tests;
