//! Pods, their templates and the workloads that stamp them out.

use std::net::IpAddr;

use crate::TargetPort;
use crate::meta::{LabelSelector, Labels, ObjectKey, Protocol};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_port: Option<u16>,
    pub host_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub ports: Vec<ContainerPort>,
    pub env: Vec<(String, String)>,
    pub readiness_probe: Option<Probe>,
    pub liveness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
}

/// A container probe (`readinessProbe`, `livenessProbe`, `startupProbe`), with the
/// API's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_seconds: u32,
    /// Default 10.
    pub period_seconds: u32,
    /// Default 1.
    pub timeout_seconds: u32,
    /// Default 1 (and always 1 for liveness and startup probes).
    pub success_threshold: u32,
    /// Default 3.
    pub failure_threshold: u32,
}

/// What a probe does; exactly one per probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeAction {
    /// `httpGet`: a GET of `path`; status 200-399 is success.
    HttpGet {
        path: String,
        port: TargetPort,
        https: bool,
    },
    /// `tcpSocket`: a TCP connect.
    TcpSocket { port: TargetPort },
    /// `exec`: a command in the container; exit 0 is success.
    Exec { command: Vec<String> },
    /// `grpc`: the gRPC health check on `port`.
    Grpc { port: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum DnsPolicy {
    #[default]
    ClusterFirst,
    ClusterFirstWithHostNet,
    Default,
    None,
}

impl DnsPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsPolicy::ClusterFirst => "ClusterFirst",
            DnsPolicy::ClusterFirstWithHostNet => "ClusterFirstWithHostNet",
            DnsPolicy::Default => "Default",
            DnsPolicy::None => "None",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ClusterFirst" => Some(DnsPolicy::ClusterFirst),
            "ClusterFirstWithHostNet" => Some(DnsPolicy::ClusterFirstWithHostNet),
            "Default" => Some(DnsPolicy::Default),
            "None" => Some(DnsPolicy::None),
            _ => None,
        }
    }
}

/// `spec.dnsConfig`, kept in the order written (kubelet's merge depends on it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PodDnsConfig {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `(name, value)`.
    pub options: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub node_selector: Labels,
    pub host_network: bool,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub set_hostname_as_fqdn: bool,
    pub dns_policy: DnsPolicy,
    pub dns_config: Option<PodDnsConfig>,
    pub containers: Vec<Container>,
    pub termination_grace_period_seconds: Option<i64>,
    pub restart_policy: RestartPolicy,
}

/// `spec.restartPolicy`: whether kubelet restarts a container that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Always, Self::OnFailure, Self::Never]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

impl PodSpec {
    /// Resolve a named container port the way the EndpointSlice controller does
    /// (`podutil.FindPort`): the first container port with that name and protocol.
    pub fn find_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.container_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }
}

/// `metadata.ownerReferences[controller=true]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pod {
    pub key: ObjectKey,
    pub labels: Labels,
    pub annotations: Labels,
    pub owner: Option<OwnerRef>,
    pub spec: PodSpec,
    pub phase: PodPhase,
    /// The `Ready` condition.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    pub pod_ips: Vec<IpAddr>,
    pub host_ip: Option<IpAddr>,
}

impl Pod {
    /// Whether the pod can carry traffic at all (has an IP and has not finished).
    pub fn is_active(&self) -> bool {
        !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// The `spec.template` of a workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PodTemplate {
    pub labels: Labels,
    pub annotations: Labels,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// A Deployment, ReplicaSet or DaemonSet: something the control loop turns into pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub key: ObjectKey,
    pub labels: Labels,
    /// Ignored for DaemonSets (one pod per eligible node).
    pub replicas: u32,
    pub selector: LabelSelector,
    pub template: PodTemplate,
}
