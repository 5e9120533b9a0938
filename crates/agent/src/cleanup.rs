//! `--cleanup`: take out of this network namespace everything Twill or kube-proxy
//! wrote, then exit, as `kube-proxy --cleanup` does. A rollback to another proxy, CNI
//! or policy engine starts from a clean kernel.
//!
//! What goes:
//! - iptables and ip6tables chains named `KUBE-*` (every kube-proxy mode, Twill's
//!   included), `TWILL-*` (NetworkPolicy) and `FLANNEL-*` (the overlay's masquerade and
//!   forward rules), in every table, in both backends (legacy and nft), with every rule
//!   elsewhere that jumps to them;
//! - the nftables mode's `kube-proxy` tables (`ip` and `ip6`);
//! - ipsets named `KUBE-*` (ipvs mode) and `TWILL-*` (NetworkPolicy).
//!
//! Links and routes (`cni0`, `flannel.1`, `kube-ipvs0`) are left: they carry pod traffic
//! that is still running, and the CNI plugins' DEL removes what belongs to pods.

use twill_netfilter::{removal_input, run_with_input};

/// Chains and sets this cleanup owns.
pub fn owned(name: &str) -> bool {
    ["KUBE-", "TWILL-", "FLANNEL-"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// What a cleanup did, line by line, and what it could not do.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub problems: Vec<String>,
}

/// The iptables tools to clean with: both backends where both are installed, else the
/// distribution's default.
fn iptables_tools() -> Vec<(&'static str, &'static str)> {
    let pairs = [
        ("iptables-legacy-save", "iptables-legacy-restore"),
        ("iptables-nft-save", "iptables-nft-restore"),
        ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
        ("ip6tables-nft-save", "ip6tables-nft-restore"),
    ];
    let found: Vec<_> = pairs
        .into_iter()
        .filter(|(save, _)| run_with_input(save, &["--version"], b"").is_ok())
        .collect();
    if found.is_empty() {
        vec![
            ("iptables-save", "iptables-restore"),
            ("ip6tables-save", "ip6tables-restore"),
        ]
    } else {
        found
    }
}

/// Remove everything [`owned`] selects, and the `kube-proxy` nft tables.
pub fn remove_everything() -> Report {
    let mut r = Report::default();
    for (save, restore) in iptables_tools() {
        let dump = match run_with_input(save, &[], b"") {
            Ok(d) => d,
            Err(e) => {
                r.problems.push(format!("{save}: {e}"));
                continue;
            }
        };
        let Some(input) = removal_input(&dump, owned) else {
            continue;
        };
        let chains = input.lines().filter(|l| l.starts_with("-X ")).count();
        match run_with_input(restore, &["--noflush", "-w", "5"], input.as_bytes()) {
            Ok(_) => r.removed.push(format!("{restore}: {chains} chains")),
            Err(e) => r.problems.push(format!("{restore}: {e}")),
        }
    }
    match run_with_input("nft", &["list", "tables"], b"") {
        Ok(tables) => {
            for line in tables.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let ["table", family @ ("ip" | "ip6"), "kube-proxy"] = words.as_slice() {
                    match run_with_input("nft", &["delete", "table", family, "kube-proxy"], b"") {
                        Ok(_) => r.removed.push(format!("nft table {family} kube-proxy")),
                        Err(e) => r
                            .problems
                            .push(format!("nft table {family} kube-proxy: {e}")),
                    }
                }
            }
        }
        Err(e) => r.problems.push(format!("nft: {e}")),
    }
    // Sets last: a set still referenced by a rule cannot be destroyed.
    match run_with_input("ipset", &["list", "-n"], b"") {
        Ok(sets) => {
            let mine: Vec<&str> = sets.lines().map(str::trim).filter(|s| owned(s)).collect();
            let mut gone = 0;
            for set in &mine {
                match run_with_input("ipset", &["destroy", set], b"") {
                    Ok(_) => gone += 1,
                    Err(e) => r.problems.push(format!("ipset {set}: {e}")),
                }
            }
            if gone > 0 {
                r.removed.push(format!("ipset: {gone} sets"));
            }
        }
        Err(e) => r.problems.push(format!("ipset: {e}")),
    }
    r
}
