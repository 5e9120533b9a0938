//! conntrack entries (`conntrack -L`): a packet that belongs to an existing connection
//! skips the nat rules and is translated the way that connection was, which is how a
//! stale UDP entry keeps sending a client to an endpoint that is gone.

use std::net::IpAddr;

use serde::Serialize;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtEntry {
    /// `tcp`, `udp`, `sctp`.
    pub proto: String,
    /// The TCP state (`ESTABLISHED`, `TIME_WAIT`, …); `None` for UDP.
    pub state: Option<String>,
    /// As the first packet came in, and as its replies go out (after translation).
    pub original: Tuple,
    pub reply: Tuple,
}

impl CtEntry {
    /// The destination the connection's packets are sent to (`reply` source): differs
    /// from the original destination when the connection was DNATed.
    pub fn dnat_to(&self) -> Option<(IpAddr, u16)> {
        let to = (self.reply.src, self.reply.sport);
        (to != (self.original.dst, self.original.dport)).then_some(to)
    }

    /// The source the connection's packets leave with (`reply` destination): differs
    /// from the original source when it was SNATed or masqueraded.
    pub fn snat_to(&self) -> Option<(IpAddr, u16)> {
        let to = (self.reply.dst, self.reply.dport);
        (to != (self.original.src, self.original.sport)).then_some(to)
    }

    /// `udp 10.1.0.2:5353 -> 10.96.0.10:53 (reply from 10.244.1.7:53)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} -> {} (replies from {} to {}){}",
            self.proto,
            crate::walk::sockaddr(self.original.src, self.original.sport),
            crate::walk::sockaddr(self.original.dst, self.original.dport),
            crate::walk::sockaddr(self.reply.src, self.reply.sport),
            crate::walk::sockaddr(self.reply.dst, self.reply.dport),
            self.state
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default()
        )
    }
}

/// Entries with ports from `conntrack -L` output (both families may be concatenated);
/// other lines (ICMP, the tool's summary) are skipped.
pub fn parse(text: &str) -> Vec<CtEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<CtEntry> {
    let t: Vec<&str> = line.split_whitespace().collect();
    let proto = t.first()?.to_string();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp" | "udplite" | "dccp") {
        return None;
    }
    let vals = |k: &str| -> Vec<&str> { t.iter().filter_map(|x| x.strip_prefix(k)).collect() };
    let (src, dst, sport, dport) = (vals("src="), vals("dst="), vals("sport="), vals("dport="));
    let tuple = |i: usize| -> Option<Tuple> {
        Some(Tuple {
            src: src.get(i)?.parse().ok()?,
            dst: dst.get(i)?.parse().ok()?,
            sport: sport.get(i)?.parse().ok()?,
            dport: dport.get(i)?.parse().ok()?,
        })
    };
    // `tcp 6 TIMEOUT STATE src=…`: the state is the word before the first `src=`.
    let state = t
        .iter()
        .position(|x| x.starts_with("src="))
        .and_then(|i| i.checked_sub(1).map(|j| t[j]))
        .filter(|s| s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_string);
    Some(CtEntry {
        proto,
        state,
        original: tuple(0)?,
        reply: tuple(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_give_both_tuples_state_and_translations() {
        let text = "tcp      6 60 ESTABLISHED src=10.1.0.2 dst=10.96.0.10 sport=40000 dport=80 [UNREPLIED] src=10.244.1.8 dst=10.1.0.9 sport=8080 dport=40000 [ASSURED] mark=0 use=1\n\
udp      17 59 src=10.1.0.2 dst=10.96.0.10 sport=5353 dport=53 [UNREPLIED] src=10.244.1.7 dst=10.1.0.2 sport=53 dport=5353 mark=0 use=1\n\
icmp     1 29 src=10.1.0.2 dst=10.1.0.1 type=8 code=0 id=7 src=10.1.0.1 dst=10.1.0.2 type=0 code=0 id=7 mark=0 use=1\n\
conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n";
        let e = parse(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].state.as_deref(), Some("ESTABLISHED"));
        assert_eq!(e[0].dnat_to(), Some(("10.244.1.8".parse().unwrap(), 8080)));
        assert_eq!(e[0].snat_to(), Some(("10.1.0.9".parse().unwrap(), 40000)));
        assert_eq!(e[1].state, None);
        assert_eq!(e[1].dnat_to(), Some(("10.244.1.7".parse().unwrap(), 53)));
        assert_eq!(e[1].snat_to(), None);
    }
}
