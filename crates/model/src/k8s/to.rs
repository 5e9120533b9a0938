//! model → k8s-openapi, for printing what the cluster looks like (`twill cluster render`,
//! `twill lab get -o yaml`). Only the fields the model keeps are written back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::*;

fn non_empty(m: &Labels) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then(|| m.clone())
}

pub(super) fn metadata(key: &ObjectKey, labels: &Labels, annotations: &Labels) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: Some(key.name.clone()),
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
        labels: non_empty(labels),
        annotations: non_empty(annotations),
        ..Default::default()
    }
}

fn int_or_string(t: &TargetPort) -> IntOrString {
    match t {
        TargetPort::Number(n) => IntOrString::Int(i32::from(*n)),
        TargetPort::Name(s) => IntOrString::String(s.clone()),
    }
}

pub fn namespace_to_k8s(n: &Namespace) -> core::Namespace {
    core::Namespace {
        metadata: metadata(
            &ObjectKey::cluster(n.name.clone()),
            &n.labels,
            &Labels::new(),
        ),
        ..Default::default()
    }
}

pub fn service_cidr_to_k8s(c: &ServiceCidr) -> k8s_openapi::api::networking::v1::ServiceCIDR {
    k8s_openapi::api::networking::v1::ServiceCIDR {
        metadata: metadata(
            &ObjectKey::cluster(c.name.clone()),
            &Labels::new(),
            &Labels::new(),
        ),
        spec: Some(k8s_openapi::api::networking::v1::ServiceCIDRSpec {
            cidrs: Some(c.cidrs.iter().map(ToString::to_string).collect()),
        }),
        ..Default::default()
    }
}

pub fn node_to_k8s(n: &Node) -> core::Node {
    core::Node {
        metadata: metadata(
            &ObjectKey::cluster(n.name.clone()),
            &n.labels,
            &Labels::new(),
        ),
        spec: Some(core::NodeSpec {
            pod_cidr: n.pod_cidrs.first().map(|c| c.to_string()),
            pod_cidrs: (!n.pod_cidrs.is_empty())
                .then(|| n.pod_cidrs.iter().map(|c| c.to_string()).collect()),
            unschedulable: n.unschedulable.then_some(true),
            ..Default::default()
        }),
        status: Some(core::NodeStatus {
            addresses: Some(
                n.internal_ips
                    .iter()
                    .map(|ip| core::NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.to_string(),
                    })
                    .chain(std::iter::once(core::NodeAddress {
                        type_: "Hostname".into(),
                        address: n.name.clone(),
                    }))
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

pub fn service_to_k8s(s: &Service) -> core::Service {
    let ips: Vec<String> = if s.headless {
        vec!["None".into()]
    } else {
        s.cluster_ips.iter().map(|ip| ip.to_string()).collect()
    };
    let affinity_config = match s.session_affinity {
        SessionAffinity::ClientIp { timeout_seconds } => Some(core::SessionAffinityConfig {
            client_ip: Some(core::ClientIPConfig {
                timeout_seconds: Some(timeout_seconds as i32),
            }),
        }),
        SessionAffinity::None => None,
    };
    let external = s.service_type.has_node_ports();
    core::Service {
        metadata: metadata(&s.key, &s.labels, &s.annotations),
        spec: Some(core::ServiceSpec {
            type_: Some(s.service_type.as_str().into()),
            selector: s.selector.clone(),
            cluster_ip: ips.first().cloned(),
            cluster_ips: (!ips.is_empty()).then_some(ips),
            ip_families: (!s.ip_families.is_empty()).then(|| {
                s.ip_families
                    .iter()
                    .map(|f| f.as_str().to_string())
                    .collect()
            }),
            ip_family_policy: (s.service_type != ServiceType::ExternalName)
                .then(|| s.ip_family_policy.as_str().to_string()),
            ports: (!s.ports.is_empty()).then(|| {
                s.ports
                    .iter()
                    .map(|p| core::ServicePort {
                        name: (!p.name.is_empty()).then(|| p.name.clone()),
                        protocol: Some(p.protocol.as_str().into()),
                        port: i32::from(p.port),
                        target_port: Some(int_or_string(&p.target_port)),
                        node_port: p.node_port.map(i32::from),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect()
            }),
            external_ips: (!s.external_ips.is_empty())
                .then(|| s.external_ips.iter().map(|ip| ip.to_string()).collect()),
            load_balancer_ip: s.load_balancer_ip.map(|ip| ip.to_string()),
            load_balancer_source_ranges: (!s.load_balancer_source_ranges.is_empty()).then(|| {
                s.load_balancer_source_ranges
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            }),
            external_traffic_policy: external.then(|| s.external_traffic_policy.as_str().into()),
            internal_traffic_policy: (s.service_type != ServiceType::ExternalName)
                .then(|| s.internal_traffic_policy.as_str().into()),
            health_check_node_port: s.health_check_node_port.map(i32::from),
            session_affinity: Some(
                match s.session_affinity {
                    SessionAffinity::None => "None",
                    SessionAffinity::ClientIp { .. } => "ClientIP",
                }
                .into(),
            ),
            session_affinity_config: affinity_config,
            publish_not_ready_addresses: s.publish_not_ready_addresses.then_some(true),
            external_name: s.external_name.clone(),
            traffic_distribution: s.traffic_distribution.clone(),
            allocate_load_balancer_node_ports: (s.service_type == ServiceType::LoadBalancer)
                .then_some(s.allocate_load_balancer_node_ports),
            ..Default::default()
        }),
        status: (!s.load_balancer_ingress.is_empty()).then(|| core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus {
                ingress: Some(
                    s.load_balancer_ingress
                        .iter()
                        .map(|i| core::LoadBalancerIngress {
                            ip: Some(i.ip.to_string()),
                            ip_mode: Some(if i.ip_mode_proxy { "Proxy" } else { "VIP" }.into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        }),
    }
}

fn probe_to_k8s(p: &Probe) -> core::Probe {
    let mut out = core::Probe {
        initial_delay_seconds: Some(p.initial_delay_seconds as i32),
        period_seconds: Some(p.period_seconds as i32),
        timeout_seconds: Some(p.timeout_seconds as i32),
        success_threshold: Some(p.success_threshold as i32),
        failure_threshold: Some(p.failure_threshold as i32),
        ..Default::default()
    };
    match &p.action {
        ProbeAction::HttpGet { path, port, https } => {
            out.http_get = Some(core::HTTPGetAction {
                path: Some(path.clone()),
                port: int_or_string(port),
                scheme: Some(if *https { "HTTPS" } else { "HTTP" }.into()),
                ..Default::default()
            });
        }
        ProbeAction::TcpSocket { port } => {
            out.tcp_socket = Some(core::TCPSocketAction {
                port: int_or_string(port),
                ..Default::default()
            });
        }
        ProbeAction::Exec { command } => {
            out.exec = Some(core::ExecAction {
                command: Some(command.clone()),
            });
        }
        ProbeAction::Grpc { port } => {
            out.grpc = Some(core::GRPCAction {
                port: i32::from(*port),
                service: None,
            });
        }
    }
    out
}

fn pod_spec_to_k8s(s: &PodSpec) -> core::PodSpec {
    core::PodSpec {
        node_name: s.node_name.clone(),
        node_selector: non_empty(&s.node_selector),
        host_network: s.host_network.then_some(true),
        hostname: s.hostname.clone(),
        subdomain: s.subdomain.clone(),
        set_hostname_as_fqdn: s.set_hostname_as_fqdn.then_some(true),
        dns_policy: Some(s.dns_policy.as_str().into()),
        dns_config: s.dns_config.as_ref().map(|c| core::PodDNSConfig {
            nameservers: (!c.nameservers.is_empty()).then(|| c.nameservers.clone()),
            searches: (!c.searches.is_empty()).then(|| c.searches.clone()),
            options: (!c.options.is_empty()).then(|| {
                c.options
                    .iter()
                    .map(|(n, v)| core::PodDNSConfigOption {
                        name: Some(n.clone()),
                        value: v.clone(),
                    })
                    .collect()
            }),
        }),
        termination_grace_period_seconds: s.termination_grace_period_seconds,
        restart_policy: Some(s.restart_policy.as_str().into()),
        containers: s
            .containers
            .iter()
            .map(|c| core::Container {
                name: c.name.clone(),
                image: (!c.image.is_empty()).then(|| c.image.clone()),
                command: (!c.command.is_empty()).then(|| c.command.clone()),
                args: (!c.args.is_empty()).then(|| c.args.clone()),
                readiness_probe: c.readiness_probe.as_ref().map(probe_to_k8s),
                liveness_probe: c.liveness_probe.as_ref().map(probe_to_k8s),
                startup_probe: c.startup_probe.as_ref().map(probe_to_k8s),
                env: (!c.env.is_empty()).then(|| {
                    c.env
                        .iter()
                        .map(|(n, v)| core::EnvVar {
                            name: n.clone(),
                            value: Some(v.clone()),
                            ..Default::default()
                        })
                        .collect()
                }),
                ports: (!c.ports.is_empty()).then(|| {
                    c.ports
                        .iter()
                        .map(|p| core::ContainerPort {
                            name: p.name.clone(),
                            container_port: i32::from(p.container_port),
                            protocol: Some(p.protocol.as_str().into()),
                            host_port: p.host_port.map(i32::from),
                            host_ip: p.host_ip.map(|ip| ip.to_string()),
                        })
                        .collect()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub fn pod_to_k8s(p: &Pod) -> core::Pod {
    let mut m = metadata(&p.key, &p.labels, &p.annotations);
    // The model keeps only whether a deletion is under way, not when it began: the
    // epoch stands for "set", which is all readers of the field look at.
    if p.terminating {
        m.deletion_timestamp = Some(meta::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    }
    m.owner_references = p.owner.as_ref().map(|o| {
        vec![meta::OwnerReference {
            api_version: "apps/v1".into(),
            kind: o.kind.clone(),
            name: o.name.clone(),
            controller: Some(true),
            ..Default::default()
        }]
    });
    core::Pod {
        metadata: m,
        spec: Some(pod_spec_to_k8s(&p.spec)),
        status: Some(core::PodStatus {
            phase: Some(p.phase.as_str().into()),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".into(),
                status: if p.ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            pod_ip: p.pod_ips.first().map(|ip| ip.to_string()),
            pod_ips: (!p.pod_ips.is_empty()).then(|| {
                p.pod_ips
                    .iter()
                    .map(|ip| core::PodIP { ip: ip.to_string() })
                    .collect()
            }),
            host_ip: p.host_ip.map(|ip| ip.to_string()),
            ..Default::default()
        }),
    }
}

pub fn endpoint_slice_to_k8s(s: &EndpointSlice) -> discovery::EndpointSlice {
    discovery::EndpointSlice {
        metadata: metadata(&s.key, &s.labels, &Labels::new()),
        address_type: s.address_type.as_str().into(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| discovery::Endpoint {
                addresses: if s.address_type == AddressType::Fqdn {
                    e.fqdn_addresses.clone()
                } else {
                    e.addresses.iter().map(|ip| ip.to_string()).collect()
                },
                conditions: Some(discovery::EndpointConditions {
                    ready: e.conditions.ready,
                    serving: e.conditions.serving,
                    terminating: e.conditions.terminating,
                }),
                hostname: e.hostname.clone(),
                node_name: e.node_name.clone(),
                zone: e.zone.clone(),
                target_ref: e.target_ref.as_ref().map(|r| core::ObjectReference {
                    kind: Some(r.kind.as_str().into()),
                    namespace: Some(r.key.namespace.clone()),
                    name: Some(r.key.name.clone()),
                    ..Default::default()
                }),
                hints: (!e.hints_for_zones.is_empty()).then(|| discovery::EndpointHints {
                    for_zones: Some(
                        e.hints_for_zones
                            .iter()
                            .map(|z| discovery::ForZone { name: z.clone() })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: (!s.ports.is_empty()).then(|| {
            s.ports
                .iter()
                .map(|p| discovery::EndpointPort {
                    name: Some(p.name.clone()),
                    protocol: Some(p.protocol.as_str().into()),
                    port: p.port.map(i32::from),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect()
        }),
    }
}

pub(super) fn selector_to_k8s(s: &LabelSelector) -> meta::LabelSelector {
    meta::LabelSelector {
        match_labels: non_empty(&s.match_labels),
        match_expressions: (!s.match_expressions.is_empty()).then(|| {
            s.match_expressions
                .iter()
                .map(|r| meta::LabelSelectorRequirement {
                    key: r.key.clone(),
                    operator: r.operator.as_str().into(),
                    values: (!r.values.is_empty()).then(|| r.values.clone()),
                })
                .collect()
        }),
    }
}

fn policy_rule_parts(
    r: &PolicyRule,
) -> (
    Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>,
    Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
) {
    use k8s_openapi::api::networking::v1 as net;
    let ports = (!r.ports.is_empty()).then(|| {
        r.ports
            .iter()
            .map(|p| net::NetworkPolicyPort {
                protocol: Some(p.protocol.as_str().into()),
                port: p.port.as_ref().map(int_or_string),
                end_port: p.end_port.map(i32::from),
            })
            .collect()
    });
    let peers = (!r.peers.is_empty()).then(|| {
        r.peers
            .iter()
            .map(|p| match p {
                PolicyPeer::Pods {
                    namespace_selector,
                    pod_selector,
                } => net::NetworkPolicyPeer {
                    namespace_selector: namespace_selector.as_ref().map(selector_to_k8s),
                    pod_selector: pod_selector.as_ref().map(selector_to_k8s),
                    ip_block: None,
                },
                PolicyPeer::IpBlock { cidr, except } => net::NetworkPolicyPeer {
                    ip_block: Some(net::IPBlock {
                        cidr: cidr.to_string(),
                        except: (!except.is_empty())
                            .then(|| except.iter().map(ToString::to_string).collect()),
                    }),
                    ..Default::default()
                },
            })
            .collect()
    });
    (ports, peers)
}

/// A NetworkPolicy with its inferred `policyTypes` written out.
pub fn network_policy_to_k8s(p: &NetworkPolicy) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    use k8s_openapi::api::networking::v1 as net;
    let mut types = Vec::new();
    if p.ingress_isolation {
        types.push("Ingress".to_string());
    }
    if p.egress_isolation {
        types.push("Egress".to_string());
    }
    net::NetworkPolicy {
        metadata: metadata(&p.key, &p.labels, &Labels::new()),
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(selector_to_k8s(&p.pod_selector)),
            policy_types: Some(types),
            ingress: (!p.ingress.is_empty()).then(|| {
                p.ingress
                    .iter()
                    .map(|r| {
                        let (ports, from) = policy_rule_parts(r);
                        net::NetworkPolicyIngressRule { ports, from }
                    })
                    .collect()
            }),
            egress: (!p.egress.is_empty()).then(|| {
                p.egress
                    .iter()
                    .map(|r| {
                        let (ports, to) = policy_rule_parts(r);
                        net::NetworkPolicyEgressRule { ports, to }
                    })
                    .collect()
            }),
        }),
    }
}
