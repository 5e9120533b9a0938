//! Address parsing that tolerates what the API server tolerates.
//!
//! Older API servers accepted IPv4 addresses with leading zeros (`172.30.0.041`), and
//! kube-proxy reads them as decimal (`172.30.0.41`), not octal. Std's parser rejects them,
//! so we normalise first. Leading and trailing blanks (seen in upstream's own fixtures for
//! `loadBalancerSourceRanges`) are trimmed.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Parse an IP address, accepting IPv4 octets with leading zeros as decimal.
pub fn parse_ip_lenient(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Parse a CIDR with the same leniency; host bits are kept as written.
pub fn parse_net_lenient(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    let (ip, len) = s.split_once('/')?;
    let ip = parse_ip_lenient(ip)?;
    let len: u8 = len.parse().ok()?;
    IpNet::new(ip, len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zero_octets_read_as_decimal() {
        assert_eq!(parse_ip_lenient("172.30.0.041"), "172.30.0.41".parse().ok());
        assert_eq!(parse_ip_lenient("010.000.000.001"), "10.0.0.1".parse().ok());
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "a.b.c.d",
            "1..2.3",
            "0001.1.1.1",
        ] {
            assert_eq!(parse_ip_lenient(bad), None, "{bad}");
        }
    }

    #[test]
    fn cidr_with_blank_and_leading_zeros() {
        assert_eq!(
            parse_net_lenient(" 203.0.113.0/25"),
            "203.0.113.0/25".parse().ok()
        );
        assert_eq!(parse_net_lenient("10.0.0.01/8"), "10.0.0.1/8".parse().ok());
        assert_eq!(parse_net_lenient("10.0.0.0/33"), None);
    }
}
