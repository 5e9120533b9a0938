//! k8s-openapi → model, with validation and API defaulting.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::*;
use super::{Errors, FieldError};
use crate::ip::{parse_ip_lenient, parse_net_lenient};
use crate::*;

type Result<T> = std::result::Result<T, Vec<FieldError>>;

pub(super) fn labels_of(
    map: &Option<BTreeMap<String, String>>,
    path: &str,
    e: &mut Errors,
) -> Labels {
    let labels = map.clone().unwrap_or_default();
    for (k, v) in &labels {
        if let Err(m) = validate_label_key(k) {
            e.add(path, m);
        }
        if let Err(m) = validate_label_value(v) {
            e.add(format!("{path}[{k}]"), m);
        }
    }
    labels
}

/// Name and namespace from metadata; `namespace` defaults to `default` when namespaced.
pub(super) fn key_of(
    m: &meta::ObjectMeta,
    namespaced: bool,
    name_ok: fn(&str) -> bool,
    rule: &str,
    e: &mut Errors,
) -> ObjectKey {
    let name = m.name.clone().unwrap_or_default();
    if name.is_empty() {
        e.add("metadata.name", "required");
    } else if !name_ok(&name) {
        e.add(
            "metadata.name",
            format!("{name:?} is not a valid name: must be {rule}"),
        );
    }
    let namespace = if namespaced {
        let ns = m
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        if !is_dns1123_label(&ns) {
            e.add(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace name"),
            );
        }
        ns
    } else {
        String::new()
    };
    ObjectKey { namespace, name }
}

pub(super) const SUBDOMAIN: &str = "a DNS-1123 subdomain (lower case alphanumerics, '-' and '.')";
const LABEL: &str = "a DNS-1123 label (at most 63 lower case alphanumerics or '-')";
const LABEL1035: &str =
    "a DNS-1035 label (at most 63 lower case alphanumerics or '-', starting with a letter)";

fn protocol_of(p: &Option<String>, path: &str, e: &mut Errors) -> Protocol {
    match p.as_deref() {
        None | Some("") => Protocol::Tcp,
        Some(s) => Protocol::parse(s).unwrap_or_else(|| {
            e.add(
                path,
                format!("unsupported value {s:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
            );
            Protocol::Tcp
        }),
    }
}

fn port_of(v: i32, path: &str, e: &mut Errors) -> u16 {
    if (1..=65535).contains(&v) {
        v as u16
    } else {
        e.add(path, format!("{v} is out of range 1-65535"));
        0
    }
}

fn ip_of(s: &str, path: &str, e: &mut Errors) -> Option<IpAddr> {
    let ip = parse_ip_lenient(s);
    if ip.is_none() {
        e.add(path, format!("{s:?} is not a valid IP address"));
    }
    ip
}

fn target_port_of(v: &IntOrString, path: &str, e: &mut Errors) -> TargetPort {
    match v {
        IntOrString::Int(n) => TargetPort::Number(port_of(*n, path, e)),
        IntOrString::String(s) => {
            // The API accepts numeric strings for IntOrString fields.
            if let Ok(n) = s.parse::<i32>() {
                return TargetPort::Number(port_of(n, path, e));
            }
            if !is_iana_svc_name(s) {
                e.add(
                    path,
                    format!("{s:?} must be a port number or an IANA service name (at most 15 lower case alphanumerics or '-', with a letter)"),
                );
            }
            TargetPort::Name(s.clone())
        }
    }
}

/// `metav1.LabelSelector` with operator and values checks.
pub fn selector_from_k8s(s: &meta::LabelSelector, path: &str) -> Result<LabelSelector> {
    let mut e = Errors::default();
    let sel = selector_of(s, path, &mut e);
    e.finish(sel)
}

pub(super) fn selector_of(s: &meta::LabelSelector, path: &str, e: &mut Errors) -> LabelSelector {
    let match_labels = labels_of(&s.match_labels, &format!("{path}.matchLabels"), e);
    let mut match_expressions = Vec::new();
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        if let Err(m) = validate_label_key(&r.key) {
            e.add(format!("{p}.key"), m);
        }
        let Some(op) = SelectorOperator::parse(&r.operator) else {
            e.add(
                format!("{p}.operator"),
                format!(
                    "{:?} is not a valid selector operator (In, NotIn, Exists, DoesNotExist)",
                    r.operator
                ),
            );
            continue;
        };
        let mut values = r.values.clone().unwrap_or_default();
        match op {
            SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => e.add(
                format!("{p}.values"),
                format!("must be specified when operator is {}", op.as_str()),
            ),
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => e
                .add(
                    format!("{p}.values"),
                    format!("may not be specified when operator is {}", op.as_str()),
                ),
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            if let Err(m) = validate_label_value(v) {
                e.add(format!("{p}.values[{j}]"), m);
            }
        }
        values.sort();
        values.dedup();
        match_expressions.push(SelectorRequirement {
            key: r.key.clone(),
            operator: op,
            values,
        });
    }
    LabelSelector {
        match_labels,
        match_expressions,
    }
}

pub fn namespace_from_k8s(o: &core::Namespace) -> Result<Namespace> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, false, is_dns1123_label, LABEL, &mut e);
    let mut labels = labels_of(&o.metadata.labels, "metadata.labels", &mut e);
    // The API server sets this immutable label on every namespace (1.21+); policies
    // select namespaces by it, so the model has it even when a manifest leaves it out.
    labels.insert("kubernetes.io/metadata.name".into(), key.name.clone());
    e.finish(Namespace {
        name: key.name,
        labels,
    })
}

/// A ServiceCIDR as the API server validates it: one or two CIDRs, at most one per
/// family, each written as its network address.
pub fn service_cidr_from_k8s(o: &net::ServiceCIDR) -> Result<ServiceCidr> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, false, is_dns1123_subdomain, SUBDOMAIN, &mut e);
    let raw = o
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.clone())
        .unwrap_or_default();
    if raw.is_empty() || raw.len() > 2 {
        e.add("spec.cidrs", "one or two CIDRs (one per IP family)");
    }
    let mut cidrs: Vec<ipnet::IpNet> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let path = format!("spec.cidrs[{i}]");
        match parse_net_lenient(c) {
            None => e.add(path, format!("{c:?} is not a CIDR")),
            Some(n) if n.trunc() != n => e.add(
                path,
                format!("{c:?}: must be the network address ({})", n.trunc()),
            ),
            Some(n) => {
                if cidrs
                    .iter()
                    .any(|p| p.addr().is_ipv4() == n.addr().is_ipv4())
                {
                    e.add(path, "a second CIDR of the same IP family");
                }
                cidrs.push(n);
            }
        }
    }
    e.finish(ServiceCidr {
        name: key.name,
        cidrs,
    })
}

pub fn node_from_k8s(o: &core::Node) -> Result<Node> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, false, is_dns1123_subdomain, SUBDOMAIN, &mut e);
    let labels = labels_of(&o.metadata.labels, "metadata.labels", &mut e);
    let mut internal_ips = Vec::new();
    if let Some(st) = &o.status {
        for (i, a) in st.addresses.iter().flatten().enumerate() {
            if a.type_ == "InternalIP"
                && let Some(ip) = ip_of(
                    &a.address,
                    &format!("status.addresses[{i}].address"),
                    &mut e,
                )
            {
                internal_ips.push(ip);
            }
        }
    }
    let mut pod_cidrs = Vec::new();
    if let Some(spec) = &o.spec {
        let mut cidrs: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
        if cidrs.is_empty()
            && let Some(c) = &spec.pod_cidr
        {
            cidrs.push(c.clone());
        }
        for (i, c) in cidrs.iter().enumerate() {
            match parse_net_lenient(c) {
                Some(n) => pod_cidrs.push(n),
                None => e.add(
                    format!("spec.podCIDRs[{i}]"),
                    format!("{c:?} is not a valid CIDR"),
                ),
            }
        }
    }
    let unschedulable = o
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    e.finish(Node {
        name: key.name,
        labels,
        internal_ips,
        pod_cidrs,
        unschedulable,
    })
}

pub fn service_from_k8s(o: &core::Service) -> Result<Service> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, true, is_dns1035_label, LABEL1035, &mut e);
    let labels = labels_of(&o.metadata.labels, "metadata.labels", &mut e);
    let annotations = o.metadata.annotations.clone().unwrap_or_default();
    let empty = core::ServiceSpec::default();
    let spec = o.spec.as_ref().unwrap_or(&empty);

    let service_type = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(t) => {
            e.add("spec.type", format!("unsupported value {t:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""));
            ServiceType::ClusterIP
        }
    };

    // Cluster IPs: `clusterIPs` wins, `clusterIP` must be its first element.
    let mut headless = false;
    let mut cluster_ips = Vec::new();
    let ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(list), _) if !list.is_empty() => {
            if let Some(single) = spec.cluster_ip.as_deref().filter(|s| !s.is_empty())
                && single != list[0]
            {
                e.add(
                    "spec.clusterIPs[0]",
                    format!("must match spec.clusterIP {single:?}"),
                );
            }
            list.clone()
        }
        (_, Some(single)) if !single.is_empty() => vec![single.clone()],
        _ => Vec::new(),
    };
    for (i, s) in ips.iter().enumerate() {
        if s == "None" {
            if i == 0 {
                headless = true;
            } else {
                e.add(
                    format!("spec.clusterIPs[{i}]"),
                    "\"None\" may only be the first value",
                );
            }
        } else if let Some(ip) = ip_of(s, &format!("spec.clusterIPs[{i}]"), &mut e) {
            cluster_ips.push(ip);
        }
    }
    if cluster_ips.len() == 2 && IpFamily::of(&cluster_ips[0]) == IpFamily::of(&cluster_ips[1]) {
        e.add(
            "spec.clusterIPs[1]",
            "must be of a different IP family than spec.clusterIPs[0]",
        );
    }
    if cluster_ips.len() > 2 {
        e.add(
            "spec.clusterIPs",
            "may hold at most two addresses (one per family)",
        );
    }

    let mut ip_families = Vec::new();
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        match IpFamily::parse(f) {
            Some(f) if ip_families.contains(&f) => {
                e.add(format!("spec.ipFamilies[{i}]"), "duplicate family")
            }
            Some(f) => ip_families.push(f),
            None => e.add(
                format!("spec.ipFamilies[{i}]"),
                format!("unsupported value {f:?}: supported values: \"IPv4\", \"IPv6\""),
            ),
        }
    }
    // Families follow the allocated addresses when they are given.
    for (i, ip) in cluster_ips.iter().enumerate() {
        match ip_families.get(i) {
            Some(f) if *f != IpFamily::of(ip) => e.add(
                format!("spec.ipFamilies[{i}]"),
                format!("{} does not match spec.clusterIPs[{i}] {ip}", f.as_str()),
            ),
            Some(_) => {}
            None => ip_families.push(IpFamily::of(ip)),
        }
    }
    let ip_family_policy = match spec.ip_family_policy.as_deref() {
        None | Some("") => {
            if ip_families.len() > 1 {
                IpFamilyPolicy::RequireDualStack
            } else {
                IpFamilyPolicy::SingleStack
            }
        }
        Some("SingleStack") => IpFamilyPolicy::SingleStack,
        Some("PreferDualStack") => IpFamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => IpFamilyPolicy::RequireDualStack,
        Some(p) => {
            e.add("spec.ipFamilyPolicy", format!("unsupported value {p:?}"));
            IpFamilyPolicy::SingleStack
        }
    };
    if ip_family_policy == IpFamilyPolicy::SingleStack && ip_families.len() > 1 {
        e.add(
            "spec.ipFamilies",
            "SingleStack services may have only one IP family",
        );
    }

    // Ports.
    let raw_ports = spec.ports.clone().unwrap_or_default();
    if raw_ports.is_empty() && service_type != ServiceType::ExternalName && !headless {
        e.add("spec.ports", "required: a service needs at least one port");
    }
    let mut ports = Vec::new();
    let mut seen_names = BTreeMap::new();
    let mut seen_ports = BTreeMap::new();
    for (i, p) in raw_ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            if raw_ports.len() > 1 {
                e.add(
                    format!("{path}.name"),
                    "required when a service has more than one port",
                );
            }
        } else if !is_dns1123_label(&name) {
            e.add(format!("{path}.name"), format!("{name:?} must be {LABEL}"));
        } else if let Some(j) = seen_names.insert(name.clone(), i) {
            e.add(
                format!("{path}.name"),
                format!("duplicate port name {name:?} (also spec.ports[{j}])"),
            );
        }
        let protocol = protocol_of(&p.protocol, &format!("{path}.protocol"), &mut e);
        let port = port_of(p.port, &format!("{path}.port"), &mut e);
        // An out-of-range port is already reported; it is no duplicate of another.
        if port != 0
            && let Some(j) = seen_ports.insert((port, protocol), i)
        {
            e.add(
                format!("{path}.port"),
                format!(
                    "duplicate {} port {port} (also spec.ports[{j}])",
                    protocol.as_str()
                ),
            );
        }
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(t) => target_port_of(t, &format!("{path}.targetPort"), &mut e),
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => {
                if !service_type.has_node_ports() {
                    e.add(
                        format!("{path}.nodePort"),
                        format!("may not be used when type is {:?}", service_type.as_str()),
                    );
                }
                Some(port_of(n, &format!("{path}.nodePort"), &mut e))
            }
        };
        ports.push(ServicePort {
            name,
            protocol,
            port,
            target_port,
            node_port,
            app_protocol: p.app_protocol.clone(),
        });
    }

    let selector = spec.selector.clone().filter(|s| !s.is_empty());
    if let Some(sel) = &selector {
        let mut se = Errors::default();
        let _ = labels_of(&Some(sel.clone()), "spec.selector", &mut se);
        e.0.extend(se.0);
    }

    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        if let Some(ip) = ip_of(s, &format!("spec.externalIPs[{i}]"), &mut e) {
            external_ips.push(ip);
        }
    }
    let load_balancer_ip = spec
        .load_balancer_ip
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| ip_of(s, "spec.loadBalancerIP", &mut e));
    let mut load_balancer_source_ranges = Vec::new();
    for (i, s) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        match parse_net_lenient(s) {
            Some(n) => load_balancer_source_ranges.push(n.trunc()),
            None => e.add(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{s:?} is not a valid CIDR"),
            ),
        }
    }
    let mut load_balancer_ingress = Vec::new();
    if let Some(st) = o.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        for (i, ing) in st.ingress.iter().flatten().enumerate() {
            if let Some(s) = ing.ip.as_deref().filter(|s| !s.is_empty())
                && let Some(ip) = ip_of(s, &format!("status.loadBalancer.ingress[{i}].ip"), &mut e)
            {
                load_balancer_ingress.push(LoadBalancerIngress {
                    ip,
                    ip_mode_proxy: ing.ip_mode.as_deref() == Some("Proxy"),
                });
            }
        }
    }

    let traffic_policy = |v: &Option<String>, path: &str, e: &mut Errors| match v.as_deref() {
        None | Some("") | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(x) => {
            e.add(
                path,
                format!("unsupported value {x:?}: supported values: \"Cluster\", \"Local\""),
            );
            TrafficPolicy::Cluster
        }
    };
    let external_traffic_policy = traffic_policy(
        &spec.external_traffic_policy,
        "spec.externalTrafficPolicy",
        &mut e,
    );
    if external_traffic_policy == TrafficPolicy::Local && !service_type.has_node_ports() {
        e.add(
            "spec.externalTrafficPolicy",
            "may only be Local when type is NodePort or LoadBalancer",
        );
    }
    let internal_traffic_policy = traffic_policy(
        &spec.internal_traffic_policy,
        "spec.internalTrafficPolicy",
        &mut e,
    );

    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => SessionAffinity::None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS as i32);
            if !(1..=86400).contains(&t) {
                e.add(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is out of range 1-86400"),
                );
            }
            SessionAffinity::ClientIp {
                timeout_seconds: t.clamp(1, 86400) as u32,
            }
        }
        Some(x) => {
            e.add(
                "spec.sessionAffinity",
                format!("unsupported value {x:?}: supported values: \"ClientIP\", \"None\""),
            );
            SessionAffinity::None
        }
    };

    let external_name = spec.external_name.clone().filter(|s| !s.is_empty());
    if service_type == ServiceType::ExternalName {
        match &external_name {
            None => e.add("spec.externalName", "required for type ExternalName"),
            Some(n)
                if !is_dns1123_subdomain(n.trim_end_matches('.').to_ascii_lowercase().as_str()) =>
            {
                e.add(
                    "spec.externalName",
                    format!("{n:?} must be a DNS-1123 subdomain"),
                )
            }
            _ => {}
        }
        if !cluster_ips.is_empty() {
            e.add("spec.clusterIP", "must be empty for type ExternalName");
        }
    }
    let health_check_node_port = spec
        .health_check_node_port
        .filter(|n| *n != 0)
        .map(|n| port_of(n, "spec.healthCheckNodePort", &mut e));

    let traffic_distribution = match spec.traffic_distribution.as_deref() {
        None => None,
        Some(v @ ("PreferClose" | "PreferSameZone" | "PreferSameNode")) => Some(v.to_string()),
        Some(v) => {
            e.add(
                "spec.trafficDistribution",
                format!("unsupported value {v:?}: PreferSameZone, PreferSameNode or PreferClose"),
            );
            None
        }
    };
    e.finish(Service {
        key,
        labels,
        annotations,
        service_type,
        selector,
        headless,
        cluster_ips,
        ip_families,
        ip_family_policy,
        ports,
        external_ips,
        load_balancer_ip,
        load_balancer_ingress,
        load_balancer_source_ranges,
        allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports.unwrap_or(true),
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        session_affinity,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        external_name,
        traffic_distribution,
    })
}

pub fn endpoint_slice_from_k8s(o: &discovery::EndpointSlice) -> Result<EndpointSlice> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, true, is_dns1123_subdomain, SUBDOMAIN, &mut e);
    let labels = labels_of(&o.metadata.labels, "metadata.labels", &mut e);
    let address_type = match o.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        t => {
            e.add(
                "addressType",
                format!("unsupported value {t:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
            );
            AddressType::IPv4
        }
    };
    let mut endpoints = Vec::new();
    for (i, ep) in o.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let mut addresses = Vec::new();
        let mut fqdn_addresses = Vec::new();
        if ep.addresses.is_empty() {
            e.add(
                format!("{path}.addresses"),
                "must contain at least one address",
            );
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let p = format!("{path}.addresses[{j}]");
            match address_type {
                AddressType::Fqdn => fqdn_addresses.push(a.clone()),
                AddressType::IPv4 | AddressType::IPv6 => {
                    if let Some(ip) = ip_of(a, &p, &mut e) {
                        let want = if address_type == AddressType::IPv4 {
                            IpFamily::V4
                        } else {
                            IpFamily::V6
                        };
                        if IpFamily::of(&ip) != want {
                            e.add(
                                &p,
                                format!("{a} is not an {} address", address_type.as_str()),
                            );
                        } else {
                            addresses.push(ip);
                        }
                    }
                }
            }
        }
        let conditions = ep
            .conditions
            .as_ref()
            .map_or_else(EndpointConditions::default, |c| EndpointConditions {
                ready: c.ready,
                serving: c.serving,
                terminating: c.terminating,
            });
        if let Some(h) = &ep.hostname
            && !is_dns1123_label(h)
        {
            e.add(format!("{path}.hostname"), format!("{h:?} must be {LABEL}"));
        }
        let target_ref = ep.target_ref.as_ref().and_then(|r| {
            let kind = match r.kind.as_deref() {
                Some("Pod") => Kind::Pod,
                _ => return None,
            };
            Some(ObjectRef {
                kind,
                key: ObjectKey::new(
                    r.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                    r.name.clone().unwrap_or_default(),
                ),
            })
        });
        let hints = ep.hints.as_ref();
        endpoints.push(Endpoint {
            addresses,
            fqdn_addresses,
            conditions,
            hostname: ep.hostname.clone(),
            node_name: ep.node_name.clone().filter(|n| !n.is_empty()),
            zone: ep.zone.clone().filter(|z| !z.is_empty()),
            target_ref,
            hints_for_zones: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
            hints_for_nodes: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
        });
    }
    let mut ports = Vec::new();
    for (i, p) in o.ports.iter().flatten().enumerate() {
        let path = format!("ports[{i}]");
        let protocol = protocol_of(&p.protocol, &format!("{path}.protocol"), &mut e);
        let port = p.port.map(|n| port_of(n, &format!("{path}.port"), &mut e));
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    let service_name = labels.get(SERVICE_NAME_LABEL).cloned();
    e.finish(EndpointSlice {
        key,
        labels,
        service_name,
        address_type,
        endpoints,
        ports,
    })
}

/// A probe with the API's defaults and validation (`validateProbe`): exactly one
/// handler, non-negative numbers, and `successThreshold` 1 for liveness and startup.
fn probe_of(p: &core::Probe, path: &str, must_succeed_once: bool, e: &mut Errors) -> Option<Probe> {
    let mut actions = Vec::new();
    if let Some(h) = &p.http_get {
        let scheme = h.scheme.as_deref().unwrap_or("HTTP");
        if scheme != "HTTP" && scheme != "HTTPS" {
            e.add(
                format!("{path}.httpGet.scheme"),
                format!("unsupported value {scheme:?}: supported values: \"HTTP\", \"HTTPS\""),
            );
        }
        actions.push(ProbeAction::HttpGet {
            path: h
                .path
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/".into()),
            port: target_port_of(&h.port, &format!("{path}.httpGet.port"), e),
            https: scheme == "HTTPS",
        });
    }
    if let Some(t) = &p.tcp_socket {
        actions.push(ProbeAction::TcpSocket {
            port: target_port_of(&t.port, &format!("{path}.tcpSocket.port"), e),
        });
    }
    if let Some(x) = &p.exec {
        let command = x.command.clone().unwrap_or_default();
        if command.is_empty() {
            e.add(format!("{path}.exec.command"), "required: a command to run");
        }
        actions.push(ProbeAction::Exec { command });
    }
    if let Some(g) = &p.grpc {
        actions.push(ProbeAction::Grpc {
            port: port_of(g.port, &format!("{path}.grpc.port"), e),
        });
    }
    if actions.len() != 1 {
        e.add(
            path.to_string(),
            if actions.is_empty() {
                "must specify a handler type (httpGet, tcpSocket, exec or grpc)"
            } else {
                "may not specify more than 1 handler type"
            },
        );
        return None;
    }
    let num = |v: Option<i32>, field: &str, default: u32, min: i32, e: &mut Errors| match v {
        None => default,
        Some(n) if n >= min => n as u32,
        Some(n) => {
            e.add(
                format!("{path}.{field}"),
                format!("{n} must be greater than or equal to {min}"),
            );
            default
        }
    };
    let success_threshold = num(p.success_threshold, "successThreshold", 1, 1, e);
    if must_succeed_once && success_threshold != 1 {
        e.add(format!("{path}.successThreshold"), "must be 1");
    }
    Some(Probe {
        action: actions.remove(0),
        initial_delay_seconds: num(p.initial_delay_seconds, "initialDelaySeconds", 0, 0, e),
        period_seconds: num(p.period_seconds, "periodSeconds", 10, 1, e),
        timeout_seconds: num(p.timeout_seconds, "timeoutSeconds", 1, 1, e),
        success_threshold,
        failure_threshold: num(p.failure_threshold, "failureThreshold", 3, 1, e),
    })
}

fn pod_spec_of(spec: &core::PodSpec, path: &str, e: &mut Errors) -> PodSpec {
    let mut containers = Vec::new();
    if spec.containers.is_empty() {
        e.add(
            format!("{path}.containers"),
            "required: a pod needs at least one container",
        );
    }
    let mut port_names = BTreeMap::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        if !is_dns1123_label(&c.name) {
            e.add(
                format!("{cp}.name"),
                format!("{:?} must be {LABEL}", c.name),
            );
        }
        let mut ports = Vec::new();
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let pp = format!("{cp}.ports[{j}]");
            let name = p.name.clone().filter(|n| !n.is_empty());
            if let Some(n) = &name {
                if !is_iana_svc_name(n) {
                    e.add(
                        format!("{pp}.name"),
                        format!("{n:?} must be an IANA service name (at most 15 lower case alphanumerics or '-', with a letter)"),
                    );
                } else if let Some(prev) = port_names.insert(n.clone(), pp.clone()) {
                    e.add(
                        format!("{pp}.name"),
                        format!("duplicate port name {n:?} (also {prev})"),
                    );
                }
            }
            ports.push(ContainerPort {
                name,
                container_port: port_of(p.container_port, &format!("{pp}.containerPort"), e),
                protocol: protocol_of(&p.protocol, &format!("{pp}.protocol"), e),
                host_port: p
                    .host_port
                    .filter(|h| *h != 0)
                    .map(|h| port_of(h, &format!("{pp}.hostPort"), e)),
                host_ip: p
                    .host_ip
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .and_then(|s| ip_of(s, &format!("{pp}.hostIP"), e)),
            });
        }
        let probe = |p: &Option<core::Probe>, field: &str, e: &mut Errors| {
            p.as_ref()
                .and_then(|p| probe_of(p, &format!("{cp}.{field}"), field != "readinessProbe", e))
        };
        let readiness_probe = probe(&c.readiness_probe, "readinessProbe", e);
        let liveness_probe = probe(&c.liveness_probe, "livenessProbe", e);
        let startup_probe = probe(&c.startup_probe, "startupProbe", e);
        containers.push(Container {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            readiness_probe,
            liveness_probe,
            startup_probe,
            ports,
            env: c
                .env
                .iter()
                .flatten()
                .filter_map(|v| v.value.clone().map(|val| (v.name.clone(), val)))
                .collect(),
        });
    }
    let dns_policy = match spec.dns_policy.as_deref() {
        None | Some("") => DnsPolicy::ClusterFirst,
        Some(s) => DnsPolicy::parse(s).unwrap_or_else(|| {
            e.add(
                format!("{path}.dnsPolicy"),
                format!("unsupported value {s:?}: supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\""),
            );
            DnsPolicy::ClusterFirst
        }),
    };
    let dns_config = spec.dns_config.as_ref().map(|c| PodDnsConfig {
        nameservers: c.nameservers.clone().unwrap_or_default(),
        searches: c.searches.clone().unwrap_or_default(),
        options: c
            .options
            .iter()
            .flatten()
            .map(|o| (o.name.clone().unwrap_or_default(), o.value.clone()))
            .collect(),
    });
    for (field, v) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(h) = v
            && !h.is_empty()
            && !is_dns1123_label(h)
        {
            e.add(format!("{path}.{field}"), format!("{h:?} must be {LABEL}"));
        }
    }
    let node_selector = labels_of(&spec.node_selector, &format!("{path}.nodeSelector"), e);
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("") => RestartPolicy::Always,
        Some(s) => RestartPolicy::parse(s).unwrap_or_else(|| {
            e.add(
                format!("{path}.restartPolicy"),
                format!("unsupported value {s:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            );
            RestartPolicy::Always
        }),
    };
    PodSpec {
        node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
        node_selector,
        host_network: spec.host_network.unwrap_or(false),
        hostname: spec.hostname.clone().filter(|h| !h.is_empty()),
        subdomain: spec.subdomain.clone().filter(|h| !h.is_empty()),
        set_hostname_as_fqdn: spec.set_hostname_as_fqdn.unwrap_or(false),
        dns_policy,
        dns_config,
        containers,
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        restart_policy,
    }
}

pub fn pod_from_k8s(o: &core::Pod) -> Result<Pod> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, true, is_dns1123_subdomain, SUBDOMAIN, &mut e);
    let labels = labels_of(&o.metadata.labels, "metadata.labels", &mut e);
    let annotations = o.metadata.annotations.clone().unwrap_or_default();
    let spec = match &o.spec {
        Some(s) => pod_spec_of(s, "spec", &mut e),
        None => {
            e.add("spec", "required");
            PodSpec::default()
        }
    };
    let owner = o
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| OwnerRef {
            kind: r.kind.clone(),
            name: r.name.clone(),
        });
    let mut phase = PodPhase::Pending;
    let mut ready = false;
    let mut pod_ips = Vec::new();
    let mut host_ip = None;
    if let Some(st) = &o.status {
        phase = match st.phase.as_deref() {
            None | Some("") | Some("Pending") => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some(_) => PodPhase::Unknown,
        };
        ready = st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let ips: Vec<String> = match (&st.pod_ips, &st.pod_ip) {
            (Some(list), _) if !list.is_empty() => list.iter().map(|p| p.ip.clone()).collect(),
            (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
            _ => Vec::new(),
        };
        for (i, s) in ips.iter().enumerate() {
            if let Some(ip) = ip_of(s, &format!("status.podIPs[{i}].ip"), &mut e) {
                pod_ips.push(ip);
            }
        }
        host_ip = st
            .host_ip
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| ip_of(s, "status.hostIP", &mut e));
    }
    e.finish(Pod {
        key,
        labels,
        annotations,
        owner,
        spec,
        phase,
        ready,
        terminating: o.metadata.deletion_timestamp.is_some(),
        pod_ips,
        host_ip,
    })
}

fn workload_of(
    kind: WorkloadKind,
    metadata: &meta::ObjectMeta,
    replicas: Option<i32>,
    selector: Option<&meta::LabelSelector>,
    template: Option<&core::PodTemplateSpec>,
) -> Result<Workload> {
    let mut e = Errors::default();
    let key = key_of(metadata, true, is_dns1123_subdomain, SUBDOMAIN, &mut e);
    let labels = labels_of(&metadata.labels, "metadata.labels", &mut e);
    let replicas = match replicas {
        None => 1,
        Some(n) if n >= 0 => n as u32,
        Some(n) => {
            e.add(
                "spec.replicas",
                format!("{n} must be greater than or equal to 0"),
            );
            0
        }
    };
    let selector = match selector {
        Some(s) => {
            let sel = selector_of(s, "spec.selector", &mut e);
            if sel.is_empty() {
                e.add("spec.selector", "empty selector is invalid for a workload");
            }
            sel
        }
        None => {
            e.add("spec.selector", "required");
            LabelSelector::default()
        }
    };
    let template = match template {
        Some(t) => {
            let empty = meta::ObjectMeta::default();
            let m = t.metadata.as_ref().unwrap_or(&empty);
            let labels = labels_of(&m.labels, "spec.template.metadata.labels", &mut e);
            if !selector.is_empty() && !selector.matches(&labels) {
                e.add(
                    "spec.template.metadata.labels",
                    format!("selector {selector} does not match template labels"),
                );
            }
            let spec = match &t.spec {
                Some(s) => pod_spec_of(s, "spec.template.spec", &mut e),
                None => {
                    e.add("spec.template.spec", "required");
                    PodSpec::default()
                }
            };
            PodTemplate {
                labels,
                annotations: m.annotations.clone().unwrap_or_default(),
                spec,
            }
        }
        None => {
            e.add("spec.template", "required");
            PodTemplate::default()
        }
    };
    e.finish(Workload {
        kind,
        key,
        labels,
        replicas,
        selector,
        template,
    })
}

pub fn deployment_from_k8s(o: &apps::Deployment) -> Result<Workload> {
    let s = o.spec.as_ref();
    workload_of(
        WorkloadKind::Deployment,
        &o.metadata,
        s.and_then(|s| s.replicas),
        s.map(|s| &s.selector),
        s.map(|s| &s.template),
    )
}

pub fn replica_set_from_k8s(o: &apps::ReplicaSet) -> Result<Workload> {
    let s = o.spec.as_ref();
    workload_of(
        WorkloadKind::ReplicaSet,
        &o.metadata,
        s.and_then(|s| s.replicas),
        s.map(|s| &s.selector),
        s.and_then(|s| s.template.as_ref()),
    )
}

pub fn daemon_set_from_k8s(o: &apps::DaemonSet) -> Result<Workload> {
    let s = o.spec.as_ref();
    workload_of(
        WorkloadKind::DaemonSet,
        &o.metadata,
        None,
        s.map(|s| &s.selector),
        s.map(|s| &s.template),
    )
}

fn policy_rule_of(
    ports: &Option<Vec<net::NetworkPolicyPort>>,
    peers: &Option<Vec<net::NetworkPolicyPeer>>,
    path: &str,
    peer_field: &str,
    e: &mut Errors,
) -> PolicyRule {
    let mut out = PolicyRule::default();
    for (i, p) in ports.iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        let protocol = protocol_of(&p.protocol, &format!("{pp}.protocol"), e);
        let port = p
            .port
            .as_ref()
            .map(|t| target_port_of(t, &format!("{pp}.port"), e));
        let end_port = p.end_port.map(|n| port_of(n, &format!("{pp}.endPort"), e));
        if let Some(end) = end_port {
            match &port {
                Some(TargetPort::Number(start)) if end < *start => e.add(
                    format!("{pp}.endPort"),
                    format!("{end} must be greater than or equal to port {start}"),
                ),
                Some(TargetPort::Number(_)) => {}
                Some(TargetPort::Name(_)) => e.add(
                    format!("{pp}.endPort"),
                    "may not be specified when port is a name",
                ),
                None => e.add(format!("{pp}.endPort"), "may not be specified without port"),
            }
        }
        out.ports.push(PolicyPort {
            protocol,
            port,
            end_port,
        });
    }
    for (i, peer) in peers.iter().flatten().enumerate() {
        let pp = format!("{path}.{peer_field}[{i}]");
        let has_sel = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, has_sel) {
            (Some(_), true) => e.add(&pp, "may not specify ipBlock together with a selector"),
            (None, false) => e.add(
                &pp,
                "must specify a podSelector, namespaceSelector or ipBlock",
            ),
            (Some(b), false) => {
                let cidr = parse_net_lenient(&b.cidr);
                if cidr.is_none() {
                    e.add(
                        format!("{pp}.ipBlock.cidr"),
                        format!("{:?} is not a valid CIDR", b.cidr),
                    );
                }
                let mut except = Vec::new();
                for (j, x) in b.except.iter().flatten().enumerate() {
                    match (parse_net_lenient(x), cidr) {
                        (None, _) => e.add(
                            format!("{pp}.ipBlock.except[{j}]"),
                            format!("{x:?} is not a valid CIDR"),
                        ),
                        (Some(xn), Some(c))
                            if !(c.contains(&xn) && xn.prefix_len() > c.prefix_len()) =>
                        {
                            e.add(
                                format!("{pp}.ipBlock.except[{j}]"),
                                format!("{x} must be a strict subset of cidr {}", b.cidr),
                            )
                        }
                        (Some(xn), _) => except.push(xn.trunc()),
                    }
                }
                if let Some(c) = cidr {
                    out.peers.push(PolicyPeer::IpBlock {
                        cidr: c.trunc(),
                        except,
                    });
                }
            }
            (None, true) => out.peers.push(PolicyPeer::Pods {
                namespace_selector: peer
                    .namespace_selector
                    .as_ref()
                    .map(|s| selector_of(s, &format!("{pp}.namespaceSelector"), e)),
                pod_selector: peer
                    .pod_selector
                    .as_ref()
                    .map(|s| selector_of(s, &format!("{pp}.podSelector"), e)),
            }),
        }
    }
    out
}

pub fn network_policy_from_k8s(o: &net::NetworkPolicy) -> Result<NetworkPolicy> {
    let mut e = Errors::default();
    let key = key_of(&o.metadata, true, is_dns1123_subdomain, SUBDOMAIN, &mut e);
    let labels = labels_of(&o.metadata.labels, "metadata.labels", &mut e);
    let empty = net::NetworkPolicySpec::default();
    let spec = o.spec.as_ref().unwrap_or(&empty);
    let pod_selector = spec
        .pod_selector
        .as_ref()
        .map(|s| selector_of(s, "spec.podSelector", &mut e))
        .unwrap_or_default();
    let ingress: Vec<PolicyRule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            policy_rule_of(
                &r.ports,
                &r.from,
                &format!("spec.ingress[{i}]"),
                "from",
                &mut e,
            )
        })
        .collect();
    let egress: Vec<PolicyRule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| policy_rule_of(&r.ports, &r.to, &format!("spec.egress[{i}]"), "to", &mut e))
        .collect();
    // Upstream's inference (pkg/apis/networking defaults): with no policyTypes, Ingress
    // always, Egress only if egress rules exist.
    let types = spec.policy_types.clone().unwrap_or_default();
    let (mut ingress_isolation, mut egress_isolation) = (false, false);
    if types.is_empty() {
        ingress_isolation = true;
        egress_isolation = !egress.is_empty();
    }
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress_isolation = true,
            "Egress" => egress_isolation = true,
            x => e.add(
                format!("spec.policyTypes[{i}]"),
                format!("unsupported value {x:?}: supported values: \"Egress\", \"Ingress\""),
            ),
        }
    }
    e.finish(NetworkPolicy {
        key,
        labels,
        pod_selector,
        ingress_isolation,
        egress_isolation,
        ingress,
        egress,
    })
}
