//! The NetworkPolicy truth-table schema (`shared/testdata/netpol/README.md`) and its
//! replay: cluster, policies, then steps of actions and probes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use twill_model::{Labels, ObjectKey, Protocol};
use twill_netpol::{Cluster, NamedPort, NodeInfo, Peer, PolicyPod};

use twill_netpol_agent::source::policy_from_json;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: scenario {scenario}: {message}")]
    Invalid {
        file: String,
        scenario: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct CorpusFile {
    pub schema: String,
    #[serde(default)]
    pub group: String,
    pub cluster: ClusterSpec,
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSpec {
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub ip: IpAddr,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    pub ip: IpAddr,
    pub node: String,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServicePortSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(rename = "targetPort")]
    pub target_port: Value,
    pub protocol: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: IpAddr,
    #[serde(default)]
    pub selector: Labels,
    pub ports: Vec<ServicePortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub cluster: Option<ClusterSpec>,
    #[serde(default)]
    pub policies: Vec<Value>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub probes: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    UpsertPolicy {
        policy: Value,
    },
    DeletePolicy {
        namespace: String,
        name: String,
    },
    SetNamespaceLabels {
        namespace: String,
        labels: Labels,
    },
    SetPodLabels {
        namespace: String,
        pod: String,
        labels: Labels,
    },
    CreateNamespace {
        namespace: NamespaceSpec,
    },
    DeleteNamespace {
        name: String,
    },
    CreatePod {
        pod: PodSpec,
    },
    DeletePod {
        namespace: String,
        name: String,
    },
}

/// A probe's port as written: a number, or a container port name of the destination pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// One expanded probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub port: PortRef,
    pub protocol: Protocol,
    pub expected: bool,
    /// Index of the matrix this cell came from within its step, if any.
    pub matrix: Option<usize>,
}

/// Load every `*.json` directly inside `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, CorpusFile)>, CorpusError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CorpusError::Read {
        path: dir.into(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| CorpusError::Read {
            path: path.clone(),
            source,
        })?;
        let file: CorpusFile =
            serde_json::from_str(&text).map_err(|source| CorpusError::Parse {
                path: path.clone(),
                source,
            })?;
        out.push((path, file));
    }
    Ok(out)
}

fn invalid(file: &str, scenario: &str, message: impl Into<String>) -> CorpusError {
    CorpusError::Invalid {
        file: file.into(),
        scenario: scenario.into(),
        message: message.into(),
    }
}

fn protocol(file: &str, scenario: &str, s: &str) -> Result<Protocol, CorpusError> {
    Protocol::parse(s).ok_or_else(|| invalid(file, scenario, format!("unknown protocol {s:?}")))
}

fn port_ref(file: &str, scenario: &str, v: Option<&Value>) -> Result<PortRef, CorpusError> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .map(PortRef::Number)
            .ok_or_else(|| invalid(file, scenario, format!("bad port {n}"))),
        Some(Value::String(s)) => Ok(PortRef::Name(s.clone())),
        other => Err(invalid(file, scenario, format!("bad port {other:?}"))),
    }
}

/// Expand a step's probe list (matrix and single forms) into single probes.
pub fn expand_probes(
    file: &str,
    scenario: &str,
    probes: &[Value],
) -> Result<Vec<Probe>, CorpusError> {
    let mut out = Vec::new();
    let mut matrices = 0;
    for p in probes {
        let proto = protocol(
            file,
            scenario,
            p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
        )?;
        let port = port_ref(file, scenario, p.get("port"))?;
        if let Some(m) = p.get("matrix") {
            let rows = m
                .as_object()
                .ok_or_else(|| invalid(file, scenario, "matrix must be an object"))?;
            for (from, row) in rows {
                let cols = row
                    .as_object()
                    .ok_or_else(|| invalid(file, scenario, "matrix row must be an object"))?;
                for (to, v) in cols {
                    let expected = v
                        .as_bool()
                        .ok_or_else(|| invalid(file, scenario, "matrix cell must be a boolean"))?;
                    out.push(Probe {
                        from: from.clone(),
                        to: to.clone(),
                        port: port.clone(),
                        protocol: proto,
                        expected,
                        matrix: Some(matrices),
                    });
                }
            }
            matrices += 1;
        } else {
            let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(from), Some(to)) = (s("from"), s("to")) else {
                return Err(invalid(file, scenario, "a probe needs from and to"));
            };
            let expected = p
                .get("expected")
                .and_then(Value::as_bool)
                .ok_or_else(|| invalid(file, scenario, "a probe needs expected"))?;
            out.push(Probe {
                from,
                to,
                port,
                protocol: proto,
                expected,
                matrix: None,
            });
        }
    }
    Ok(out)
}

fn pod_from_spec(file: &str, scenario: &str, p: &PodSpec) -> Result<PolicyPod, CorpusError> {
    let ports = p
        .ports
        .iter()
        .map(|x| {
            Ok(NamedPort {
                name: x.name.clone(),
                port: x.port,
                protocol: protocol(file, scenario, &x.protocol)?,
            })
        })
        .collect::<Result<Vec<_>, CorpusError>>()?;
    Ok(PolicyPod {
        key: ObjectKey::new(&p.namespace, &p.name),
        labels: p.labels.clone(),
        ip: p.ip,
        node: p.node.clone(),
        ports,
    })
}

/// The replayed state of one scenario: the policy model plus the services (which only the
/// probe resolution and the harness's DNAT need).
#[derive(Debug, Clone, Default)]
pub struct World {
    pub cluster: Cluster,
    pub services: Vec<ServiceSpec>,
    pub node_specs: Vec<NodeSpec>,
    /// Messages of policies rejected so far (they are enforced fail-closed).
    pub rejected: Vec<String>,
}

/// Where a probe goes once names and ClusterIPs are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod(ObjectKey),
    Ip(IpAddr),
}

/// A probe resolved against the state: what to connect to, and whom policy judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub src: Target,
    /// The address and port the client dials (a ClusterIP for services).
    pub dial_ip: IpAddr,
    pub dial_port: u16,
    /// The endpoint after DNAT and the port it sees.
    pub dst: Target,
    pub dst_port: u16,
    pub protocol: Protocol,
}

impl World {
    pub fn new(
        file: &str,
        scenario: &str,
        spec: &ClusterSpec,
        policies: &[Value],
    ) -> Result<Self, CorpusError> {
        let mut w = World {
            services: spec.services.clone(),
            node_specs: spec.nodes.clone(),
            ..World::default()
        };
        for n in &spec.nodes {
            let mut addresses = vec![n.ip];
            addresses.extend(n.addresses.iter().copied());
            w.cluster.nodes.insert(
                n.name.clone(),
                NodeInfo {
                    name: n.name.clone(),
                    addresses,
                    ..Default::default()
                },
            );
        }
        for ns in &spec.namespaces {
            w.cluster
                .namespaces
                .insert(ns.name.clone(), ns.labels.clone());
        }
        for p in &spec.pods {
            let pod = pod_from_spec(file, scenario, p)?;
            w.cluster.pods.insert(pod.key.clone(), pod);
        }
        for (i, p) in policies.iter().enumerate() {
            w.upsert_policy(&format!("{file} scenario {scenario} policies[{i}]"), p);
        }
        Ok(w)
    }

    fn upsert_policy(&mut self, source: &str, value: &Value) {
        // Beyond the shared schema: a ClusterNetworkPolicy (the project's own cases
        // translated from sigs.k8s.io/network-policy-api's conformance suite). An
        // invalid one is what the API server would refuse: it is reported and absent.
        if value.get("kind").and_then(Value::as_str) == Some("ClusterNetworkPolicy") {
            let parsed =
                serde_json::from_value::<twill_model::k8s::ClusterNetworkPolicyJson>(value.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|j| {
                        twill_model::k8s::cnp_from_k8s(&j).map_err(|e| {
                            e.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                    });
            match parsed {
                Ok(p) => {
                    self.cluster.cluster_policies.insert(p.name.clone(), p);
                }
                Err(e) => self.rejected.push(format!("{source}: {e}")),
            }
            return;
        }
        match policy_from_json(source, value) {
            Ok(p) => self.cluster.upsert_policy(p),
            Err(r) => {
                self.rejected.push(r.message.clone());
                self.cluster.upsert_broken(r.fail_closed);
            }
        }
    }

    /// Apply one action. `where_` names it for messages.
    pub fn apply(
        &mut self,
        file: &str,
        scenario: &str,
        where_: &str,
        action: &Action,
    ) -> Result<(), CorpusError> {
        match action {
            Action::UpsertPolicy { policy } => {
                self.upsert_policy(&format!("{file} scenario {scenario} {where_}"), policy)
            }
            // A cluster-scoped ClusterNetworkPolicy has no namespace.
            Action::DeletePolicy { namespace, name } if namespace.is_empty() => {
                self.cluster.cluster_policies.remove(name);
            }
            Action::DeletePolicy { namespace, name } => {
                self.cluster.delete_policy(&ObjectKey::new(namespace, name))
            }
            Action::SetNamespaceLabels { namespace, labels } => {
                let l = self.cluster.namespaces.get_mut(namespace).ok_or_else(|| {
                    invalid(
                        file,
                        scenario,
                        format!("{where_}: unknown namespace {namespace}"),
                    )
                })?;
                *l = labels.clone();
            }
            Action::SetPodLabels {
                namespace,
                pod,
                labels,
            } => {
                let p = self
                    .cluster
                    .pods
                    .get_mut(&ObjectKey::new(namespace, pod))
                    .ok_or_else(|| {
                        invalid(
                            file,
                            scenario,
                            format!("{where_}: unknown pod {namespace}/{pod}"),
                        )
                    })?;
                p.labels = labels.clone();
            }
            Action::CreateNamespace { namespace } => {
                self.cluster
                    .namespaces
                    .insert(namespace.name.clone(), namespace.labels.clone());
            }
            Action::DeleteNamespace { name } => {
                self.cluster.delete_namespace(name);
                self.services.retain(|s| &s.namespace != name);
            }
            Action::CreatePod { pod } => {
                let p = pod_from_spec(file, scenario, pod)?;
                self.cluster.pods.insert(p.key.clone(), p);
            }
            Action::DeletePod { namespace, name } => {
                self.cluster.pods.remove(&ObjectKey::new(namespace, name));
            }
        }
        Ok(())
    }

    fn pod(&self, name: &str) -> Option<&PolicyPod> {
        let (ns, pod) = name.split_once('/')?;
        self.cluster.pods.get(&ObjectKey::new(ns, pod))
    }

    /// Resolve a probe: pod names, named ports, and ClusterIPs (to their backend).
    pub fn resolve(&self, probe: &Probe) -> Result<Connection, String> {
        let src = match self.pod(&probe.from) {
            Some(p) => Target::Pod(p.key.clone()),
            None => Target::Ip(
                probe
                    .from
                    .parse()
                    .map_err(|_| format!("unknown source {}", probe.from))?,
            ),
        };
        if let Some(pod) = self.pod(&probe.to) {
            let port = match &probe.port {
                PortRef::Number(n) => *n,
                PortRef::Name(name) => pod.find_port(name, probe.protocol).ok_or_else(|| {
                    format!("{} has no {}/{} port", probe.to, name, probe.protocol)
                })?,
            };
            return Ok(Connection {
                src,
                dial_ip: pod.ip,
                dial_port: port,
                dst: Target::Pod(pod.key.clone()),
                dst_port: port,
                protocol: probe.protocol,
            });
        }
        let ip: IpAddr = probe
            .to
            .parse()
            .map_err(|_| format!("unknown destination {}", probe.to))?;
        let PortRef::Number(port) = probe.port else {
            return Err(format!(
                "named port {} towards a non-pod {}",
                probe.port, probe.to
            ));
        };
        if let Some(svc) = self.services.iter().find(|s| s.cluster_ip == ip) {
            let (pod, target) =
                self.service_backend(svc, port, probe.protocol)
                    .ok_or_else(|| {
                        format!(
                            "service {}/{} has no backend for {port}/{}",
                            svc.namespace, svc.name, probe.protocol
                        )
                    })?;
            return Ok(Connection {
                src,
                dial_ip: ip,
                dial_port: port,
                dst: Target::Pod(pod.key.clone()),
                dst_port: target,
                protocol: probe.protocol,
            });
        }
        Ok(Connection {
            src,
            dial_ip: ip,
            dial_port: port,
            dst: Target::Ip(ip),
            dst_port: port,
            protocol: probe.protocol,
        })
    }

    /// Every backend of a service port with its resolved target port (sorted by pod).
    pub fn service_backends(
        &self,
        svc: &ServiceSpec,
        port: u16,
        protocol: Protocol,
    ) -> Vec<(&PolicyPod, u16)> {
        let Some(sp) = svc
            .ports
            .iter()
            .find(|p| p.port == port && Protocol::parse(&p.protocol) == Some(protocol))
        else {
            return vec![];
        };
        self.cluster
            .pods
            .values()
            .filter(|p| {
                p.key.namespace == svc.namespace
                    && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .filter_map(|p| {
                let target = match &sp.target_port {
                    Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                    Value::String(name) => p.find_port(name, protocol),
                    _ => None,
                }?;
                Some((p, target))
            })
            .collect()
    }

    fn service_backend(
        &self,
        svc: &ServiceSpec,
        port: u16,
        protocol: Protocol,
    ) -> Option<(&PolicyPod, u16)> {
        self.service_backends(svc, port, protocol)
            .into_iter()
            .next()
    }

    /// The model's verdict for a resolved connection.
    pub fn verdict(&self, c: &Connection) -> bool {
        let peer = |t: &Target| match t {
            Target::Pod(k) => self
                .cluster
                .pods
                .get(k)
                .map(Peer::Pod)
                .unwrap_or(Peer::Ip(IpAddr::from([0, 0, 0, 0]))),
            Target::Ip(ip) => Peer::Ip(*ip),
        };
        twill_netpol::allows(
            &self.cluster,
            peer(&c.src),
            peer(&c.dst),
            c.dst_port,
            c.protocol,
        )
    }
}

/// The path shown in messages: the file name only.
pub fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Scenario replay for the pure check: every probe's verdict from the model.
/// Returns `(passed, failures)` with one line per failure.
pub fn check_pure(path: &Path, file: &CorpusFile) -> (usize, Vec<String>) {
    let label = file_label(path);
    let mut passed = 0;
    let mut failures = Vec::new();
    for sc in &file.scenarios {
        let spec = sc.cluster.as_ref().unwrap_or(&file.cluster);
        let mut world = match World::new(&label, &sc.name, spec, &sc.policies) {
            Ok(w) => w,
            Err(e) => {
                failures.push(format!("FAIL {e}"));
                continue;
            }
        };
        for (si, step) in sc.steps.iter().enumerate() {
            let mut ok = true;
            for (ai, a) in step.actions.iter().enumerate() {
                if let Err(e) =
                    world.apply(&label, &sc.name, &format!("steps[{si}].actions[{ai}]"), a)
                {
                    failures.push(format!("FAIL {e}"));
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            let probes = match expand_probes(&label, &sc.name, &step.probes) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("FAIL {e}"));
                    continue;
                }
            };
            for p in probes {
                match world.resolve(&p) {
                    Ok(c) if world.verdict(&c) == p.expected => passed += 1,
                    Ok(_) => failures.push(format!(
                        "FAIL {label}: {} step {si}: {} -> {} {}/{}: expected {}, got {}",
                        sc.name,
                        p.from,
                        p.to,
                        p.port,
                        p.protocol,
                        verdict_word(p.expected),
                        verdict_word(!p.expected)
                    )),
                    Err(e) => failures.push(format!("FAIL {label}: {} step {si}: {e}", sc.name)),
                }
            }
        }
    }
    (passed, failures)
}

pub fn verdict_word(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "blocked" }
}
