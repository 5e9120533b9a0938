//! The bridge plugin's `ipMasq`: one nat chain per (network, container), like the
//! reference `pkg/ip/ipmasq_iptables_linux.go`:
//!
//! ```text
//! -A POSTROUTING -s <ip>/32 -m comment --comment "name: \"<net>\" id: \"<cid>\"" -j CNI-<hash>
//! -A CNI-<hash> -d <subnet> -m comment ... -j ACCEPT
//! -A CNI-<hash> ! -d 224.0.0.0/4 -m comment ... -j MASQUERADE      (ff00::/8 for IPv6)
//! ```
//!
//! The chain name is `("CNI-" + hex(sha512(network + containerID)))[:28]` (the
//! reference `utils.FormatChainName`; 28 is iptables' chain-name limit minus margin).
//! Plans are computed from `iptables-save -t nat` output so that setup only appends
//! what is missing (a second interface of the same container shares the chain) and
//! teardown deletes exactly what exists; both are applied with one `iptables-restore`.

use ipnet::IpNet;
use sha2::{Digest, Sha512};

/// `(prefix + hex(sha512(name + id)))[:28]`.
pub fn chain_name(prefix: &str, network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut s = format!("{prefix}{hex}");
    s.truncate(28);
    s
}

/// The comment every rule carries, in iptables-save quoting.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("\"name: \\\"{network}\\\" id: \\\"{container_id}\\\"\"")
}

/// The rules (iptables-save form) for one address of the container.
pub fn render_rules(chain: &str, comment: &str, address: IpNet) -> Vec<String> {
    let (host, multicast) = match address {
        IpNet::V4(a) => (format!("{}/32", a.addr()), "224.0.0.0/4"),
        IpNet::V6(a) => (format!("{}/128", a.addr()), "ff00::/8"),
    };
    vec![
        format!("-A POSTROUTING -s {host} -m comment --comment {comment} -j {chain}"),
        format!(
            "-A {chain} -d {} -m comment --comment {comment} -j ACCEPT",
            address.trunc()
        ),
        format!("-A {chain} ! -d {multicast} -m comment --comment {comment} -j MASQUERADE"),
    ]
}

fn chain_declared(save: &str, chain: &str) -> bool {
    save.lines().any(|l| {
        l.strip_prefix(':')
            .and_then(|r| r.split_whitespace().next())
            == Some(chain)
    })
}

/// `iptables-restore --noflush` input adding what `save` lacks; `None` = nothing to do.
pub fn plan_setup(save: &str, chain: &str, rules: &[String]) -> Option<String> {
    let present: Vec<&str> = save.lines().map(str::trim).collect();
    let missing: Vec<&String> = rules
        .iter()
        .filter(|r| !present.contains(&r.as_str()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    if !chain_declared(save, chain) {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    // Chain rules first so the jump never points at an empty chain.
    for r in missing.iter().filter(|r| !r.starts_with("-A POSTROUTING")) {
        out.push_str(r);
        out.push('\n');
    }
    for r in missing.iter().filter(|r| r.starts_with("-A POSTROUTING")) {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// `iptables-restore --noflush` input removing the jumps to `chain` and the chain itself.
pub fn plan_teardown(save: &str, chain: &str) -> Option<String> {
    let jump = format!(" -j {chain}");
    let jumps: Vec<String> = save
        .lines()
        .filter(|l| {
            l.starts_with("-A ") && l.ends_with(&jump) && !l.starts_with(&format!("-A {chain} "))
        })
        .map(|l| format!("-D {}", &l[3..]))
        .collect();
    let declared = chain_declared(save, chain);
    if jumps.is_empty() && !declared {
        return None;
    }
    let mut out = String::from("*nat\n");
    if declared {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for j in jumps {
        out.push_str(&j);
        out.push('\n');
    }
    if declared {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Container ids with masquerade rules for `network` in `save` that are not in `valid`
/// (for GC: the chain of an attachment the runtime no longer knows).
pub fn stale_container_ids(save: &str, network: &str, valid: &[&str]) -> Vec<String> {
    let prefix = format!("--comment \"name: \\\"{network}\\\" id: \\\"");
    let mut ids: Vec<String> = save
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            Some(rest[..rest.find("\\\"")?].to_string())
        })
        .filter(|id| !valid.contains(&id.as_str()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests;
