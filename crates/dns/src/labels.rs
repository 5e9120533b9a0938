//! Name ↔ address spellings used by cluster DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The DNS label of an endpoint without a hostname: its address with `.` or `:` turned
/// into `-`, and a `0` appended when that leaves a trailing `-` (an address ending in
/// `::`), as CoreDNS's `endpointHostname` does.
pub fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let mut s = v6.to_string().replace(':', "-");
            if s.ends_with('-') {
                s.push('0');
            }
            s
        }
    }
}

/// The address a pod label names: exactly three single dashes read as IPv4, anything
/// else as IPv6 with `-` meaning `:` (CoreDNS's `findPods`). `None` if it does not parse.
pub fn pod_label_ip(label: &str) -> Option<IpAddr> {
    if label.bytes().filter(|b| *b == b'-').count() == 3 && !label.contains("--") {
        strict_v4(&label.replace('-', ".")).map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

/// Dotted IPv4 without leading zeros (Go's `net.ParseIP` refuses them).
fn strict_v4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (slot, p) in o.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        *slot = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(o))
}

/// The address a full reverse name (`4.3.2.1.in-addr.arpa.` or 32 nibbles under
/// `ip6.arpa.`) spells. `labels` are lower case, leaf first, without the root.
pub fn reverse_ip(labels: &[&str]) -> Option<IpAddr> {
    match labels {
        [a, b, c, d, "in-addr", "arpa"] => strict_v4(&format!("{d}.{c}.{b}.{a}")).map(IpAddr::V4),
        [nibbles @ .., "ip6", "arpa"] if nibbles.len() == 32 => {
            let mut v: u128 = 0;
            for n in nibbles.iter().rev() {
                if n.len() != 1 {
                    return None;
                }
                v = (v << 4) | u128::from(n.chars().next()?.to_digit(16)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
        _ => None,
    }
}

/// Whether a name (lower-case labels, leaf first) lies under `in-addr.arpa` or `ip6.arpa`.
pub fn is_reverse(labels: &[&str]) -> bool {
    labels.ends_with(&["in-addr", "arpa"]) || labels.ends_with(&["ip6", "arpa"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashed_names_complete_a_trailing_dash_with_zero() {
        assert_eq!(dashed(&"172.0.0.2".parse().unwrap()), "172-0-0-2");
        assert_eq!(dashed(&"5678:abcd::1".parse().unwrap()), "5678-abcd--1");
        assert_eq!(
            dashed(&"2001:db8:3333:4444:5555:6666::".parse().unwrap()),
            "2001-db8-3333-4444-5555-6666--0"
        );
    }

    #[test]
    fn pod_labels_read_three_dashes_as_ipv4_and_the_rest_as_ipv6() {
        assert_eq!(
            pod_label_ip("10-240-0-1"),
            Some("10.240.0.1".parse().unwrap())
        );
        assert_eq!(
            pod_label_ip("1234-abcd--1"),
            Some("1234:abcd::1".parse().unwrap())
        );
        assert_eq!(pod_label_ip("1-2-3"), None);
        assert_eq!(pod_label_ip("blah"), None);
        assert_eq!(pod_label_ip("10-240-0-01"), None);
    }

    #[test]
    fn reverse_names_need_every_octet_or_nibble() {
        let v4: Vec<&str> = "100.0.0.10.in-addr.arpa".split('.').collect();
        assert_eq!(reverse_ip(&v4), Some("10.0.0.100".parse().unwrap()));
        let short: Vec<&str> = "0.10.in-addr.arpa".split('.').collect();
        assert_eq!(reverse_ip(&short), None);
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa";
        let v6: Vec<&str> = v6.split('.').collect();
        assert_eq!(reverse_ip(&v6), Some("1234:abcd::1".parse().unwrap()));
    }
}
