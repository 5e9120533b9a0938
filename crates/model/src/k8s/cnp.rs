//! `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy on the wire.
//!
//! k8s-openapi has no types for this CRD (sigs.k8s.io/network-policy-api), so the JSON
//! shape is written here, field for field after the upstream Go types, with the CRD's
//! validation (tier, priority 0–1000, one field per subject, peer and protocol, at most
//! 25 rules and peers, port ranges with start < end) done in [`cnp_from_k8s`].

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde::{Deserialize, Serialize};

use super::from::{SUBDOMAIN, key_of, labels_of, selector_of};
use super::names::is_dns1123_subdomain;
use super::to::{metadata, selector_to_k8s};
use super::{Errors, FieldError};
use crate::ip::parse_net_lenient;
use crate::*;

pub const CNP_API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyJson {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: meta::ObjectMeta,
    #[serde(default)]
    pub spec: CnpSpecJson,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpSpecJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<CnpSelectJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<CnpRuleJson>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<CnpRuleJson>>,
}

/// A subject or a peer: exactly one field set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpSelectJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<meta::LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPodJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<meta::LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPodJson {
    #[serde(default)]
    pub namespace_selector: meta::LabelSelector,
    #[serde(default)]
    pub pod_selector: meta::LabelSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpRuleJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<CnpSelectJson>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<CnpSelectJson>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<CnpProtocolJson>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpProtocolJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<CnpPortMatchJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<CnpPortMatchJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<CnpPortMatchJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpPortMatchJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<CnpPortJson>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpPortJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<CnpRangeJson>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CnpRangeJson {
    pub start: i64,
    pub end: i64,
}

const MAX_ITEMS: usize = 25;

fn subject_of(s: &CnpSelectJson, path: &str, e: &mut Errors) -> Option<CnpSubject> {
    let set = [
        s.namespaces.is_some(),
        s.pods.is_some(),
        s.nodes.is_some(),
        s.networks.is_some(),
        s.domain_names.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 || s.nodes.is_some() || s.networks.is_some() {
        e.add(path, "exactly one of namespaces or pods");
        return None;
    }
    if let Some(ns) = &s.namespaces {
        return Some(CnpSubject::Namespaces(selector_of(
            ns,
            &format!("{path}.namespaces"),
            e,
        )));
    }
    s.pods.as_ref().map(|p| CnpSubject::Pods {
        namespace_selector: selector_of(
            &p.namespace_selector,
            &format!("{path}.pods.namespaceSelector"),
            e,
        ),
        pod_selector: selector_of(&p.pod_selector, &format!("{path}.pods.podSelector"), e),
    })
}

fn peer_of(s: &CnpSelectJson, path: &str, egress: bool, e: &mut Errors) -> CnpPeer {
    let count = [
        s.namespaces.is_some(),
        s.pods.is_some(),
        s.nodes.is_some(),
        s.networks.is_some(),
        s.domain_names.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if count == 0 {
        // A field this version does not know: fail closed (see `CnpPeer::Unknown`).
        return CnpPeer::Unknown;
    }
    if count > 1 {
        e.add(
            path,
            "exactly one of namespaces, pods, nodes, networks or domainNames",
        );
        return CnpPeer::Unknown;
    }
    if !egress && (s.nodes.is_some() || s.networks.is_some() || s.domain_names.is_some()) {
        e.add(path, "ingress peers are namespaces or pods");
        return CnpPeer::Unknown;
    }
    if let Some(ns) = &s.namespaces {
        return CnpPeer::Namespaces(selector_of(ns, &format!("{path}.namespaces"), e));
    }
    if let Some(p) = &s.pods {
        return CnpPeer::Pods {
            namespace_selector: selector_of(
                &p.namespace_selector,
                &format!("{path}.pods.namespaceSelector"),
                e,
            ),
            pod_selector: selector_of(&p.pod_selector, &format!("{path}.pods.podSelector"), e),
        };
    }
    if let Some(n) = &s.nodes {
        return CnpPeer::Nodes(selector_of(n, &format!("{path}.nodes"), e));
    }
    if let Some(nets) = &s.networks {
        if nets.is_empty() || nets.len() > MAX_ITEMS {
            e.add(format!("{path}.networks"), "1 to 25 CIDRs");
        }
        let mut out: Vec<IpNet> = Vec::new();
        for (i, c) in nets.iter().enumerate() {
            match parse_net_lenient(c) {
                Some(n) => out.push(n),
                None => e.add(
                    format!("{path}.networks[{i}]"),
                    format!("{c:?} is not a CIDR"),
                ),
            }
        }
        return CnpPeer::Networks(out);
    }
    CnpPeer::DomainNames(s.domain_names.clone().unwrap_or_default())
}

fn port_range(p: &CnpPortMatchJson, path: &str, e: &mut Errors) -> Option<(u16, u16)> {
    let port = p.destination_port.as_ref()?;
    let ok = |n: i64| (1..=65535).contains(&n);
    match (port.number, &port.range) {
        (Some(n), None) if ok(n) => Some((n as u16, n as u16)),
        (Some(n), None) => {
            e.add(
                format!("{path}.destinationPort.number"),
                format!("{n} is not between 1 and 65535"),
            );
            None
        }
        (None, Some(r)) if ok(r.start) && ok(r.end) && r.start < r.end => {
            Some((r.start as u16, r.end as u16))
        }
        (None, Some(r)) => {
            e.add(
                format!("{path}.destinationPort.range"),
                format!(
                    "start {} and end {}: ports 1 to 65535, start below end",
                    r.start, r.end
                ),
            );
            None
        }
        _ => {
            e.add(
                format!("{path}.destinationPort"),
                "exactly one of number or range",
            );
            None
        }
    }
}

fn protocol_of(p: &CnpProtocolJson, path: &str, e: &mut Errors) -> Option<CnpProtocol> {
    let fields = [
        (p.tcp.as_ref(), Protocol::Tcp, "tcp"),
        (p.udp.as_ref(), Protocol::Udp, "udp"),
        (p.sctp.as_ref(), Protocol::Sctp, "sctp"),
    ];
    let set: Vec<_> = fields.iter().filter(|f| f.0.is_some()).collect();
    match (set.as_slice(), &p.destination_named_port) {
        ([(Some(m), proto, name)], None) => Some(CnpProtocol::Port {
            protocol: *proto,
            ports: port_range(m, &format!("{path}.{name}"), e),
        }),
        ([], Some(n)) if !n.is_empty() => Some(CnpProtocol::NamedPort(n.clone())),
        _ => {
            e.add(
                path,
                "exactly one of tcp, udp, sctp or destinationNamedPort",
            );
            None
        }
    }
}

fn rules_of(rules: &[CnpRuleJson], path: &str, egress: bool, e: &mut Errors) -> Vec<CnpRule> {
    if rules.len() > MAX_ITEMS {
        e.add(path, format!("{} rules: at most 25", rules.len()));
    }
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let rp = format!("{path}[{i}]");
        let action = match r.action.as_deref() {
            Some("Accept") => CnpAction::Accept,
            Some("Deny") => CnpAction::Deny,
            Some("Pass") => CnpAction::Pass,
            Some(other) => {
                e.add(
                    format!("{rp}.action"),
                    format!("{other:?}: must be Accept, Deny or Pass"),
                );
                continue;
            }
            None => {
                e.add(format!("{rp}.action"), "required");
                continue;
            }
        };
        if r.name.as_ref().is_some_and(|n| n.len() > 100) {
            e.add(format!("{rp}.name"), "at most 100 characters");
        }
        let (field, peers) = if egress {
            ("to", r.to.as_deref().unwrap_or_default())
        } else {
            ("from", r.from.as_deref().unwrap_or_default())
        };
        if peers.is_empty() || peers.len() > MAX_ITEMS {
            e.add(format!("{rp}.{field}"), "1 to 25 peers");
        }
        let peers: Vec<CnpPeer> = peers
            .iter()
            .enumerate()
            .map(|(j, p)| peer_of(p, &format!("{rp}.{field}[{j}]"), egress, e))
            .collect();
        let protocols: Vec<CnpProtocol> = r
            .protocols
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, p)| protocol_of(p, &format!("{rp}.protocols[{j}]"), e))
            .collect();
        if protocols
            .iter()
            .any(|p| matches!(p, CnpProtocol::NamedPort(_)))
            && peers.iter().any(|p| {
                matches!(
                    p,
                    CnpPeer::Nodes(_) | CnpPeer::Networks(_) | CnpPeer::DomainNames(_)
                )
            })
        {
            e.add(
                format!("{rp}.protocols"),
                "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
            );
        }
        out.push(CnpRule {
            name: r.name.clone().unwrap_or_default(),
            action,
            peers,
            protocols,
        });
    }
    out
}

/// Validate and convert, every problem with its field path.
pub fn cnp_from_k8s(o: &ClusterNetworkPolicyJson) -> Result<ClusterNetworkPolicy, Vec<FieldError>> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, false, is_dns1123_subdomain, SUBDOMAIN, &mut e);
    let labels = labels_of(&o.metadata.labels, "metadata.labels", &mut e);
    let s = &o.spec;
    let tier = match s.tier.as_deref() {
        Some("Admin") => CnpTier::Admin,
        Some("Baseline") => CnpTier::Baseline,
        Some(other) => {
            e.add("spec.tier", format!("{other:?}: must be Admin or Baseline"));
            CnpTier::Baseline
        }
        None => {
            e.add("spec.tier", "required (Admin or Baseline)");
            CnpTier::Baseline
        }
    };
    let priority = match s.priority {
        Some(p) if (0..=1000).contains(&p) => p as u32,
        Some(p) => {
            e.add("spec.priority", format!("{p} is not between 0 and 1000"));
            0
        }
        None => {
            e.add("spec.priority", "required (0 to 1000)");
            0
        }
    };
    let subject = match &s.subject {
        Some(sub) => subject_of(sub, "spec.subject", &mut e),
        None => {
            e.add("spec.subject", "required");
            None
        }
    };
    let ingress = rules_of(
        s.ingress.as_deref().unwrap_or_default(),
        "spec.ingress",
        false,
        &mut e,
    );
    let egress = rules_of(
        s.egress.as_deref().unwrap_or_default(),
        "spec.egress",
        true,
        &mut e,
    );
    let value = ClusterNetworkPolicy {
        name: key.name,
        labels,
        tier,
        priority,
        subject: subject.unwrap_or(CnpSubject::Namespaces(LabelSelector::default())),
        ingress,
        egress,
    };
    e.finish(value)
}

fn select_to(p: &CnpPeer) -> CnpSelectJson {
    let pods = |ns: &LabelSelector, pod: &LabelSelector| NamespacedPodJson {
        namespace_selector: selector_to_k8s(ns),
        pod_selector: selector_to_k8s(pod),
    };
    match p {
        CnpPeer::Namespaces(s) => CnpSelectJson {
            namespaces: Some(selector_to_k8s(s)),
            ..Default::default()
        },
        CnpPeer::Pods {
            namespace_selector,
            pod_selector,
        } => CnpSelectJson {
            pods: Some(pods(namespace_selector, pod_selector)),
            ..Default::default()
        },
        CnpPeer::Nodes(s) => CnpSelectJson {
            nodes: Some(selector_to_k8s(s)),
            ..Default::default()
        },
        CnpPeer::Networks(n) => CnpSelectJson {
            networks: Some(n.iter().map(ToString::to_string).collect()),
            ..Default::default()
        },
        CnpPeer::DomainNames(d) => CnpSelectJson {
            domain_names: Some(d.clone()),
            ..Default::default()
        },
        // Written as it was read: no field this version knows.
        CnpPeer::Unknown => CnpSelectJson::default(),
    }
}

fn rules_to(rules: &[CnpRule], egress: bool) -> Option<Vec<CnpRuleJson>> {
    (!rules.is_empty()).then(|| {
        rules
            .iter()
            .map(|r| {
                let peers: Vec<CnpSelectJson> = r.peers.iter().map(select_to).collect();
                CnpRuleJson {
                    name: (!r.name.is_empty()).then(|| r.name.clone()),
                    action: Some(r.action.as_str().into()),
                    from: (!egress).then(|| peers.clone()),
                    to: egress.then_some(peers),
                    protocols: (!r.protocols.is_empty()).then(|| {
                        r.protocols
                            .iter()
                            .map(|p| match p {
                                CnpProtocol::NamedPort(n) => CnpProtocolJson {
                                    destination_named_port: Some(n.clone()),
                                    ..Default::default()
                                },
                                CnpProtocol::Port { protocol, ports } => {
                                    let m = CnpPortMatchJson {
                                        destination_port: ports.map(|(a, b)| {
                                            if a == b {
                                                CnpPortJson {
                                                    number: Some(a.into()),
                                                    range: None,
                                                }
                                            } else {
                                                CnpPortJson {
                                                    number: None,
                                                    range: Some(CnpRangeJson {
                                                        start: a.into(),
                                                        end: b.into(),
                                                    }),
                                                }
                                            }
                                        }),
                                    };
                                    match protocol {
                                        Protocol::Tcp => CnpProtocolJson {
                                            tcp: Some(m),
                                            ..Default::default()
                                        },
                                        Protocol::Udp => CnpProtocolJson {
                                            udp: Some(m),
                                            ..Default::default()
                                        },
                                        Protocol::Sctp => CnpProtocolJson {
                                            sctp: Some(m),
                                            ..Default::default()
                                        },
                                    }
                                }
                            })
                            .collect()
                    }),
                }
            })
            .collect()
    })
}

/// The object as the API holds it (what `cnp_from_k8s` reads back to the same policy).
pub fn cnp_to_k8s(p: &ClusterNetworkPolicy) -> ClusterNetworkPolicyJson {
    let subject = match &p.subject {
        CnpSubject::Namespaces(s) => CnpPeer::Namespaces(s.clone()),
        CnpSubject::Pods {
            namespace_selector,
            pod_selector,
        } => CnpPeer::Pods {
            namespace_selector: namespace_selector.clone(),
            pod_selector: pod_selector.clone(),
        },
    };
    ClusterNetworkPolicyJson {
        api_version: CNP_API_VERSION.into(),
        kind: "ClusterNetworkPolicy".into(),
        metadata: metadata(
            &ObjectKey::cluster(p.name.clone()),
            &p.labels,
            &Labels::new(),
        ),
        spec: CnpSpecJson {
            tier: Some(p.tier.as_str().into()),
            priority: Some(p.priority.into()),
            subject: Some(select_to(&subject)),
            ingress: rules_to(&p.ingress, false),
            egress: rules_to(&p.egress, true),
        },
    }
}
