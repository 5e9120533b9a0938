//! The resolver configuration kubelet gives each pod (`pkg/kubelet/network/dns/dns.go`,
//! `GetPodDNS`), as a pure function of kubelet's settings and the pod.
//!
//! - `ClusterFirst` (the API default; a hostNetwork pod falls back to `Default`) and
//!   `ClusterFirstWithHostNet`: cluster DNS servers, `<ns>.svc.<domain> svc.<domain>
//!   <domain>` then the host's search domains, `ndots:5` (host options dropped). Without
//!   cluster DNS servers kubelet records `MissingClusterDNS` and falls back to `Default`.
//! - `Default`: the host file as kubelet parsed it; with no file at all (`--resolv-conf=""`)
//!   a localhost server per node address family and search `.`.
//! - `None`: nothing but `dnsConfig`.
//!
//! `dnsConfig` is then appended (duplicates dropped, options merged by name, later wins)
//! and the limits applied: 3 nameservers, 32 search domains, none over 253 characters,
//! 2048 characters on the search line. Each cut records a `DNSConfigForming` event.

use std::net::IpAddr;

use twill_model::{DnsPolicy, Pod};

/// At most this many `nameserver` lines (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (since ExpandedDNSConfig, GA in 1.28).
pub const MAX_SEARCH_PATHS: usize = 32;
/// At most this many characters on the search line.
pub const MAX_SEARCH_LINE_CHARS: usize = 2048;
/// Longer search domains are dropped (some libcs abort on them).
pub const MAX_SEARCH_DOMAIN_CHARS: usize = 253;
pub const EVENT_DNS_CONFIG_FORMING: &str = "DNSConfigForming";
pub const EVENT_MISSING_CLUSTER_DNS: &str = "MissingClusterDNS";

/// Kubelet's DNS settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeletDns {
    pub cluster_domain: String,
    pub cluster_dns: Vec<String>,
    pub node_ips: Vec<IpAddr>,
    /// Contents of kubelet's `--resolv-conf` file; `None` when that flag is empty.
    pub host_resolv_conf: Option<String>,
}

/// What kubelet hands the runtime, plus the warning events it recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
    /// Event reasons, in the order recorded.
    pub events: Vec<String>,
}

impl PodResolvConf {
    /// The file a container runtime writes (search, nameservers, options), or `None` when
    /// there is nothing to write and the runtime decides.
    pub fn render(&self) -> Option<String> {
        if self.nameservers.is_empty() && self.searches.is_empty() && self.options.is_empty() {
            return None;
        }
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        Some(out)
    }
}

/// A resolv.conf as kubelet's `parseResolvConf` reads it: `nameserver` lines accumulate,
/// the last `search` and `options` lines win, one trailing dot is stripped from search
/// domains and `.` dropped, comments and `domain` lines are ignored.
pub fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut nameservers = Vec::new();
    let mut searches = Vec::new();
    let mut options = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            Some(&"nameserver") => nameservers.extend(fields.get(1).map(|s| s.to_string())),
            Some(&"search") => {
                searches = fields[1..]
                    .iter()
                    .filter(|s| **s != ".")
                    .map(|s| s.strip_suffix('.').unwrap_or(s).to_string())
                    .collect();
            }
            Some(&"options") => options = fields[1..].iter().map(|s| s.to_string()).collect(),
            _ => {}
        }
    }
    (nameservers, searches, options)
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

/// Kubelet's `GetPodDNS` for `pod`.
pub fn pod_resolv_conf(kubelet: &KubeletDns, pod: &Pod) -> PodResolvConf {
    let (host_ns, host_search, host_opts) = kubelet
        .host_resolv_conf
        .as_deref()
        .map(parse_resolv_conf)
        .unwrap_or_default();
    let mut out = PodResolvConf::default();
    enum Kind {
        None,
        Cluster,
        Host,
    }
    let kind = match pod.spec.dns_policy {
        DnsPolicy::None => Kind::None,
        DnsPolicy::ClusterFirstWithHostNet => Kind::Cluster,
        DnsPolicy::ClusterFirst if !pod.spec.host_network => Kind::Cluster,
        DnsPolicy::ClusterFirst | DnsPolicy::Default => Kind::Host,
    };
    let host = |out: &mut PodResolvConf| {
        if kubelet.host_resolv_conf.is_none() {
            out.nameservers = kubelet
                .node_ips
                .iter()
                .map(|ip| if ip.is_ipv6() { "::1" } else { "127.0.0.1" }.to_string())
                .collect();
            if out.nameservers.is_empty() {
                out.nameservers.push("127.0.0.1".into());
            }
            out.searches = vec![".".into()];
        } else {
            out.nameservers = host_ns.clone();
            out.searches = host_search.clone();
            out.options = host_opts.clone();
        }
    };
    match kind {
        Kind::None => {}
        Kind::Cluster if !kubelet.cluster_dns.is_empty() => {
            out.nameservers = kubelet.cluster_dns.clone();
            let d = &kubelet.cluster_domain;
            if d.is_empty() {
                out.searches = host_search.clone();
            } else {
                let ns = &pod.key.namespace;
                out.searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
                push_unique(&mut out.searches, host_search.clone());
            }
            out.options = vec!["ndots:5".into()];
        }
        Kind::Cluster => {
            out.events.push(EVENT_MISSING_CLUSTER_DNS.into());
            host(&mut out);
        }
        Kind::Host => host(&mut out),
    }
    if let Some(cfg) = &pod.spec.dns_config {
        let mut ns = Vec::new();
        push_unique(
            &mut ns,
            out.nameservers
                .drain(..)
                .chain(cfg.nameservers.iter().cloned()),
        );
        out.nameservers = ns;
        let mut search = Vec::new();
        push_unique(
            &mut search,
            out.searches.drain(..).chain(cfg.searches.iter().cloned()),
        );
        out.searches = search;
        // Kubelet merges through a map (order undefined); first-seen order keeps ours stable.
        let mut merged: Vec<(String, String)> = Vec::new();
        let mut set = |name: &str, value: &str| match merged.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => merged.push((name.to_string(), value.to_string())),
        };
        for o in &out.options {
            match o.split_once(':') {
                Some((n, v)) => set(n, v),
                None => set(o, ""),
            }
        }
        for (n, v) in &cfg.options {
            set(n, v.as_deref().unwrap_or(""));
        }
        out.options = merged
            .into_iter()
            .map(|(n, v)| if v.is_empty() { n } else { format!("{n}:{v}") })
            .collect();
    }
    fit_limits(&mut out);
    out
}

/// `formDNSConfigFitsLimits`: nameservers, then search domains (count, then length per
/// domain, then line length, in kubelet's order).
fn fit_limits(out: &mut PodResolvConf) {
    if out.nameservers.len() > MAX_NAMESERVERS {
        out.nameservers.truncate(MAX_NAMESERVERS);
        out.events.push(EVENT_DNS_CONFIG_FORMING.into());
    }
    let mut exceeded = false;
    if out.searches.len() > MAX_SEARCH_PATHS {
        out.searches.truncate(MAX_SEARCH_PATHS);
        exceeded = true;
    }
    let before = out.searches.len();
    out.searches.retain(|s| s.len() <= MAX_SEARCH_DOMAIN_CHARS);
    exceeded |= out.searches.len() != before;
    let mut line = out.searches.join(" ").len();
    if line > MAX_SEARCH_LINE_CHARS {
        while line > MAX_SEARCH_LINE_CHARS {
            let Some(last) = out.searches.pop() else {
                break;
            };
            line = line.saturating_sub(last.len() + 1);
        }
        exceeded = true;
    }
    if exceeded {
        out.events.push(EVENT_DNS_CONFIG_FORMING.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_search_and_options_lines_win_and_nameservers_accumulate() {
        let (ns, search, opts) = parse_resolv_conf(
            "# c\nnameserver 1.1.1.1\nsearch a b.\nnameserver 2.2.2.2\nsearch c. .\noptions x\noptions y:1\n",
        );
        assert_eq!(ns, ["1.1.1.1", "2.2.2.2"]);
        assert_eq!(search, ["c"]);
        assert_eq!(opts, ["y:1"]);
    }

    #[test]
    fn search_line_over_2048_characters_loses_trailing_domains() {
        let long = "a".repeat(200);
        let host: String = (0..12).map(|i| format!("{long}{i} ")).collect();
        let k = KubeletDns {
            cluster_domain: "cluster.local".into(),
            cluster_dns: vec!["10.0.0.10".into()],
            node_ips: vec![],
            host_resolv_conf: Some(format!("nameserver 1.1.1.1\nsearch {host}\n")),
        };
        let pod = Pod::default();
        let r = pod_resolv_conf(&k, &pod);
        assert!(r.searches.join(" ").len() <= MAX_SEARCH_LINE_CHARS);
        assert!(r.searches.len() < 15);
        assert_eq!(r.events, [EVENT_DNS_CONFIG_FORMING]);
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_to_the_host_file() {
        let k = KubeletDns {
            cluster_domain: "cluster.local".into(),
            cluster_dns: vec![],
            node_ips: vec![],
            host_resolv_conf: Some("nameserver 9.9.9.9\n".into()),
        };
        let r = pod_resolv_conf(&k, &Pod::default());
        assert_eq!(r.nameservers, ["9.9.9.9"]);
        assert_eq!(r.events, [EVENT_MISSING_CLUSTER_DNS]);
    }
}
