//! Masquerade and forward rules with flannel's chain layout
//! (`pkg/trafficmngr/iptables/iptables.go`): nat `FLANNEL-POSTRTG` jumped from POSTROUTING,
//! filter `FLANNEL-FWD` jumped from FORWARD. Pod-to-pod traffic is never masqueraded;
//! pod traffic leaving the cluster network is; traffic already marked by kube-proxy
//! (0x4000) returns early so it is masqueraded once, by kube-proxy.
//!
//! The chains' bodies are rendered for one `iptables-restore --noflush` (declaring a chain
//! flushes it, so re-applying never duplicates); the jumps from built-in chains are
//! returned separately, because a built-in chain cannot be flushed and the applier must
//! add each jump only when it is missing.

use ipnet::Ipv4Net;

pub const POSTRTG_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
const MASQ_COMMENT: &str = "-m comment --comment \"flanneld masq\"";
const FWD_COMMENT: &str = "-m comment --comment \"flanneld forward\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqOptions {
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `--ip-masq-random-fully-disable`... inverted: whether to ask for `--random-fully`.
    pub random_fully: bool,
    /// `--iptables-forward-rules` (default true).
    pub forward_rules: bool,
}

/// The chains and rules of one table, in iptables-save form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableRules {
    pub chains: Vec<String>,
    /// Jumps from built-in chains (`-A POSTROUTING ... -j FLANNEL-POSTRTG`).
    pub jumps: Vec<String>,
    /// Rules of the chains above, in order.
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MasqRules {
    pub nat: TableRules,
    pub filter: TableRules,
}

/// Render the rules for a node holding `subnet` in `network`.
pub fn render_masquerade(network: Ipv4Net, subnet: Ipv4Net, opts: MasqOptions) -> MasqRules {
    let mut out = MasqRules::default();
    if opts.ip_masq {
        let masq = if opts.random_fully {
            "MASQUERADE --random-fully"
        } else {
            "MASQUERADE"
        };
        let c = POSTRTG_CHAIN;
        out.nat.chains.push(c.into());
        out.nat
            .jumps
            .push(format!("-A POSTROUTING {MASQ_COMMENT} -j {c}"));
        out.nat.rules = vec![
            format!("-A {c} -m mark --mark 0x4000/0x4000 {MASQ_COMMENT} -j RETURN"),
            format!("-A {c} -s {subnet} -d {network} {MASQ_COMMENT} -j RETURN"),
            format!("-A {c} -s {network} -d {subnet} {MASQ_COMMENT} -j RETURN"),
            format!("-A {c} ! -s {network} -d {subnet} {MASQ_COMMENT} -j RETURN"),
            format!("-A {c} -s {network} ! -d 224.0.0.0/4 {MASQ_COMMENT} -j {masq}"),
            format!("-A {c} ! -s {network} -d {network} {MASQ_COMMENT} -j {masq}"),
        ];
    }
    if opts.forward_rules {
        let c = FWD_CHAIN;
        out.filter.chains.push(c.into());
        out.filter
            .jumps
            .push(format!("-A FORWARD {FWD_COMMENT} -j {c}"));
        out.filter.rules = vec![
            format!("-A {c} -s {network} {FWD_COMMENT} -j ACCEPT"),
            format!("-A {c} -d {network} {FWD_COMMENT} -j ACCEPT"),
        ];
    }
    out
}

/// `iptables-restore --noflush` input for the chains' bodies (jumps excluded).
pub fn render_restore(rules: &MasqRules) -> String {
    let mut out = String::new();
    for (table, t) in [("nat", &rules.nat), ("filter", &rules.filter)] {
        if t.chains.is_empty() {
            continue;
        }
        out += &format!("*{table}\n");
        for c in &t.chains {
            out += &format!(":{c} - [0:0]\n");
        }
        for r in &t.rules {
            out += r;
            out.push('\n');
        }
        out += "COMMIT\n";
    }
    out
}

#[cfg(test)]
mod tests;
