//! Apply one node's rendered state in the calling thread's network namespace.
//!
//! Order matters: sets first (rules reference them), then one `iptables-restore
//! --noflush` for the whole filter-table state (stale chains flushed and deleted in the
//! same transaction), then the two jumps into `TWILL-NETPOL`, then sets nothing
//! references any more. A failure leaves the previous state in place: iptables-restore
//! is all-or-nothing, and set swaps are per set.

use twill_netfilter::{Family, ipset_restore, iptables_restore, iptables_save, run_with_input};
use twill_netpol::render::{ROOT_CHAIN, is_owned_name};
use twill_netpol::{Cluster, NodeRules, RenderOptions, render_node};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("node {node}: ipset restore: {source}")]
    Ipset {
        node: String,
        #[source]
        source: twill_netfilter::Error,
    },
    #[error("node {node}: iptables-restore: {source}")]
    Iptables {
        node: String,
        #[source]
        source: twill_netfilter::Error,
    },
    #[error("node {node}: inserting the jump from {chain}: {source}")]
    Jump {
        node: String,
        chain: &'static str,
        #[source]
        source: twill_netfilter::Error,
    },
}

/// Built-in chains that jump to [`ROOT_CHAIN`]: FORWARD sees routed and (through
/// br_netfilter) bridged pod traffic, INPUT sees pods talking to their own node.
pub const HOOKS: [&str; 2] = ["FORWARD", "INPUT"];

/// Chains currently in the filter table.
pub fn existing_chains() -> Vec<String> {
    iptables_save(Family::V4, Some("filter"))
        .map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split(' ').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Sets currently defined.
pub fn existing_sets() -> Vec<String> {
    run_with_input("ipset", &["list", "-n"], b"")
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Render for `node` against what the kernel has now, and apply.
pub fn sync_node(
    cluster: &Cluster,
    node: &str,
    mut opts: RenderOptions,
) -> Result<NodeRules, ApplyError> {
    opts.existing_chains = existing_chains();
    let rules = render_node(cluster, node, &opts);
    apply_node(node, &rules)?;
    Ok(rules)
}

/// What [`apply_node_after`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Sets and the filter table.
    Full,
    /// Only set contents changed (a label change moving a pod in or out of a peer set):
    /// the chains were left alone.
    SetsOnly,
}

pub fn apply_node(node: &str, rules: &NodeRules) -> Result<(), ApplyError> {
    apply_node_after(node, rules, None).map(|_| ())
}

/// Apply `rules`, given the state applied last time (if this process applied one): when
/// the filter-table text is unchanged only the sets are refilled, which is what keeps a
/// label change cheap however many rules the node has.
pub fn apply_node_after(
    node: &str,
    rules: &NodeRules,
    previous: Option<&NodeRules>,
) -> Result<Applied, ApplyError> {
    ipset_restore(&rules.ipset).map_err(|source| ApplyError::Ipset {
        node: node.into(),
        source,
    })?;
    if let Some(prev) = previous
        && prev.iptables == rules.iptables
    {
        destroy_stale_sets(node, rules, &prev.sets);
        return Ok(Applied::SetsOnly);
    }
    iptables_restore(Family::V4, &rules.iptables).map_err(|source| ApplyError::Iptables {
        node: node.into(),
        source,
    })?;
    for chain in HOOKS {
        let present =
            run_with_input("iptables", &["-w", "5", "-C", chain, "-j", ROOT_CHAIN], b"").is_ok();
        if !present {
            run_with_input(
                "iptables",
                &["-w", "5", "-I", chain, "1", "-j", ROOT_CHAIN],
                b"",
            )
            .map_err(|source| ApplyError::Jump {
                node: node.into(),
                chain,
                source,
            })?;
        }
    }
    destroy_stale_sets(node, rules, &existing_sets());
    Ok(Applied::Full)
}

fn destroy_stale_sets(node: &str, rules: &NodeRules, existing: &[String]) {
    for set in rules.stale_sets(existing) {
        // A set still referenced (by a rule another tool added) stays; the next sync retries.
        if let Err(e) = run_with_input("ipset", &["destroy", set], b"") {
            tracing::debug!(node, set, error = %e, "stale set not destroyed");
        }
    }
}

/// Remove everything this renderer owns (jumps, chains, sets).
pub fn remove_all() {
    for chain in HOOKS {
        while run_with_input("iptables", &["-w", "5", "-D", chain, "-j", ROOT_CHAIN], b"").is_ok() {
        }
    }
    let owned: Vec<String> = existing_chains()
        .into_iter()
        .filter(|c| is_owned_name(c))
        .collect();
    let mut text = String::from("*filter\n");
    for c in &owned {
        text.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in &owned {
        text.push_str(&format!("-X {c}\n"));
    }
    text.push_str("COMMIT\n");
    let _ = iptables_restore(Family::V4, &text);
    for s in existing_sets().iter().filter(|s| is_owned_name(s)) {
        let _ = run_with_input("ipset", &["destroy", s], b"");
    }
}
