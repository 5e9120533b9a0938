//! The lab's container runtime: a pod is a network namespace attached through CNI,
//! plus per-container processes with their own UTS namespace (hostname = pod name) and
//! mount namespace (`/etc/resolv.conf` and `/etc/hosts` as kubelet writes them).

use std::ffi::CString;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use twill_model::{Pod, Protocol};

use crate::lifecycle::{ContainerStatus, Event, Runtime, runtime_for};
use crate::spec::{LabSpec, NodeSpec};
use crate::{LabError, cni, netns};

/// What the runtime knows about a started pod (kept in status.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Option<IpAddr>,
    pub pids: Vec<i32>,
    /// The built-in responder stands in for at least one container.
    pub responder: bool,
    pub host_network: bool,
    pub ready: bool,
    pub ports: Vec<(u16, String)>,
    pub container_id: String,
    pub cni_result: Option<serde_json::Value>,
    /// When the pod was started (unix seconds): its AGE.
    #[serde(default)]
    pub created_at: u64,
    /// One per container, in the pod's order: what runs, its state and restarts.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    /// What happened to the pod (`kubectl describe`'s Events).
    #[serde(default)]
    pub events: Vec<Event>,
}

impl RunningPod {
    /// Keep `pids` (what exec, logs and stop use) in step with the containers.
    pub fn refresh_pids(&mut self) {
        self.pids = self.containers.iter().filter_map(|c| c.pid).collect();
    }
}

pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    data_encoding::HEXLOWER.encode(&d[..4])
}

pub fn pod_netns(spec: &LabSpec, pod: &Pod) -> String {
    format!(
        "{}p-{}",
        spec.prefix(),
        short_hash(&pod_key(&pod.key.namespace, &pod.key.name))
    )
}

pub fn pod_dir(spec: &LabSpec, namespace: &str, name: &str) -> PathBuf {
    spec.pods_dir().join(format!("{namespace}_{name}"))
}

/// `/etc/hosts` the way kubelet writes it (`pkg/kubelet/kubelet_pods.go`
/// `managedHostsFileContent`).
pub fn hosts_file(pod: &Pod, ip: Option<IpAddr>, cluster_domain: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let hostname = pod
        .spec
        .hostname
        .clone()
        .unwrap_or_else(|| pod.key.name.clone());
    if let Some(ip) = ip {
        match &pod.spec.subdomain {
            Some(sub) => s.push_str(&format!(
                "{ip}\t{hostname}.{sub}.{}.svc.{cluster_domain}\t{hostname}\n",
                pod.key.namespace
            )),
            None => s.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    s
}

/// The argv of container `i` under its runtime: its command, or the responder on its
/// declared ports.
fn container_argv(spec: &LabSpec, pod: &Pod, i: usize, runtime: &Runtime) -> Vec<String> {
    match runtime {
        Runtime::Command { argv, .. } => argv.clone(),
        Runtime::Responder { .. } => {
            let ports: Vec<String> = pod.spec.containers[i]
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.container_port, p.protocol.as_str()))
                .collect();
            vec![
                spec.twill.display().to_string(),
                "lab".into(),
                "responder".into(),
                "--pod".into(),
                pod.key.name.clone(),
                "--namespace".into(),
                pod.key.namespace.clone(),
                "--ports".into(),
                ports.join(","),
            ]
        }
    }
}

/// Start container `i` of a started pod (its first start or a restart). `Err` is the
/// message a container runtime gives when the process cannot start (`exec: "java":
/// executable file not found in $PATH`); the caller records it as a `StartError`.
pub fn start_container(
    spec: &LabSpec,
    pod: &Pod,
    running: &RunningPod,
    i: usize,
) -> Result<Child, String> {
    let c = &pod.spec.containers[i];
    let runtime = &running.containers[i].runtime;
    let argv = container_argv(spec, pod, i, runtime);
    let dir = pod_dir(spec, &pod.key.namespace, &pod.key.name);
    let hostname = pod
        .spec
        .hostname
        .clone()
        .unwrap_or_else(|| pod.key.name.clone());
    spawn(&running.netns, &hostname, &dir, &argv, &c.env).map_err(|e| match e {
        LabError::Io(_, io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("exec: {:?}: executable file not found in $PATH", argv[0])
        }
        LabError::Io(_, io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            format!("exec: {:?}: permission denied", argv[0])
        }
        e => e.to_string(),
    })
}

/// Spawn one container process inside the pod's namespaces.
fn spawn(
    netns_name: &str,
    hostname: &str,
    dir: &Path,
    argv: &[String],
    env: &[(String, String)],
) -> Result<Child, LabError> {
    let io = |e| LabError::Io(format!("starting {:?}", argv), e);
    let net = File::open(netns::path(netns_name)).map_err(io)?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .map_err(io)?;
    let cstr = |s: &str| CString::new(s).expect("no NUL in paths");
    let resolv_src = cstr(&dir.join("resolv.conf").display().to_string());
    let hosts_src = cstr(&dir.join("hosts").display().to_string());
    let (resolv_dst, hosts_dst, root) = (cstr("/etc/resolv.conf"), cstr("/etc/hosts"), cstr("/"));
    let host = hostname.as_bytes().to_vec();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io)?)
        .stderr(log);
    // SAFETY: only raw syscalls on values prepared before fork (fds, C strings), all
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let err = || Err(std::io::Error::last_os_error());
            if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return err();
            }
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                return err();
            }
            // Keep our bind mounts from propagating back to the host.
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return err();
            }
            for (src, dst) in [(&resolv_src, &resolv_dst), (&hosts_src, &hosts_dst)] {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return err();
                }
            }
            if libc::sethostname(host.as_ptr().cast(), host.len()) != 0 {
                return err();
            }
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(io)
}

/// Start a pod's sandbox on its node: namespace, CNI ADD, files. Its containers are
/// `ContainerCreating` until the caller starts them ([`start_container`]). On failure
/// nothing is left behind.
pub fn start(
    spec: &LabSpec,
    node: &NodeSpec,
    pod: &Pod,
    resolv_conf: &str,
    conflist: &serde_json::Value,
    now: u64,
) -> Result<RunningPod, LabError> {
    let dir = pod_dir(spec, &pod.key.namespace, &pod.key.name);
    std::fs::create_dir_all(&dir).map_err(|e| LabError::Io(dir.display().to_string(), e))?;
    let host_network = pod.spec.host_network;
    let ns = if host_network {
        node.netns.clone()
    } else {
        pod_netns(spec, pod)
    };
    let container_id = short_hash(&format!(
        "{}/{}/{}",
        spec.name, pod.key.namespace, pod.key.name
    ));
    let mut running = RunningPod {
        namespace: pod.key.namespace.clone(),
        name: pod.key.name.clone(),
        node: node.name.clone(),
        netns: ns.clone(),
        ip: host_network.then_some(IpAddr::V4(node.ip)),
        pids: Vec::new(),
        responder: false,
        host_network,
        ready: false,
        ports: pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .map(|p| (p.container_port, p.protocol.as_str().to_string()))
            .collect(),
        container_id,
        cni_result: None,
        created_at: now,
        containers: pod
            .spec
            .containers
            .iter()
            .map(|c| ContainerStatus::new(&c.name, runtime_for(pod, c)))
            .collect(),
        events: Vec::new(),
    };
    running.responder = running
        .containers
        .iter()
        .any(|c| matches!(c.runtime, Runtime::Responder { .. }));
    let result = (|| {
        if !host_network {
            netns::add(&ns)?;
            let att = attachment(spec, node, pod, &running);
            let res = cni::add(conflist, &att)?;
            running.ip = cni::result_ip(&res);
            running.cni_result = Some(res);
        }
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text)
                .map_err(|e| LabError::Io(dir.join(name).display().to_string(), e))
        };
        write("resolv.conf", resolv_conf)?;
        write("hosts", &hosts_file(pod, running.ip, "cluster.local"))?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(running),
        Err(e) => {
            let _ = stop(spec, node, &running);
            Err(e)
        }
    }
}

fn attachment<'a>(
    spec: &LabSpec,
    node: &'a NodeSpec,
    pod: &Pod,
    running: &'a RunningPod,
) -> cni::Attachment<'a> {
    let port_mappings = pod
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| {
            p.host_port.map(|h| {
                serde_json::json!({"hostPort": h, "containerPort": p.container_port, "protocol": p.protocol.lower()})
            })
        })
        .collect();
    cni::Attachment {
        node_netns: &node.netns,
        container_id: &running.container_id,
        netns_path: netns::path(&running.netns),
        ifname: "eth0",
        args: format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.key.namespace, pod.key.name, running.container_id
        ),
        cni_path: vec![spec.cni_bin(), PathBuf::from("/usr/lib/cni")],
        port_mappings,
    }
}

/// Stop a pod: its processes, CNI DEL (with the cached result), its namespace.
pub fn stop(spec: &LabSpec, node: &NodeSpec, running: &RunningPod) -> Result<(), LabError> {
    for pid in &running.pids {
        // The container is its own session: kill the whole group.
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-*pid, libc::SIGKILL);
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    let mut first_err = None;
    if !running.host_network {
        let conflist = node_conflist(spec, node);
        let pod = Pod {
            key: twill_model::ObjectKey::new(running.namespace.clone(), running.name.clone()),
            ..Default::default()
        };
        let att = attachment(spec, node, &pod, running);
        if let Err(e) = cni::del(&conflist, &att, running.cni_result.as_ref()) {
            first_err = Some(e);
        }
        if let Err(e) = netns::delete(&running.netns) {
            first_err.get_or_insert(e);
        }
    }
    let _ = std::fs::remove_dir_all(pod_dir(spec, &running.namespace, &running.name));
    first_err.map_or(Ok(()), Err)
}

/// The node's CNI network configuration.
pub fn node_conflist(spec: &LabSpec, node: &NodeSpec) -> serde_json::Value {
    let mtu = node.mtu.unwrap_or(match spec.backend {
        crate::spec::Backend::Vxlan => 1450,
        crate::spec::Backend::Udp => 1472,
        crate::spec::Backend::HostGw => 1500,
    });
    cni::node_conflist(
        &node.pod_cidr.to_string(),
        mtu,
        &spec.node_dir(&node.name).join("ipam"),
    )
}

/// Ports a process listens on, read from its own view of /proc/net.
fn listening(pid: i32, proto: Protocol) -> Vec<u16> {
    let files: &[&str] = match proto {
        Protocol::Tcp => &["tcp", "tcp6"],
        Protocol::Udp => &["udp", "udp6"],
        Protocol::Sctp => &[],
    };
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            // TCP must be in LISTEN (0A); any bound UDP socket counts.
            if proto == Protocol::Tcp && cols[3] != "0A" {
                continue;
            }
            if let Some(port) = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                out.push(port);
            }
        }
    }
    out
}

/// Ready when every container is running and, per container, its readiness probe
/// passes (`probe(i)` is `Some`) or, without one, every TCP/UDP port it declares is
/// bound in the pod (the lab's rule for containers without probes).
pub fn probe_ready(running: &RunningPod, pod: &Pod, probe: impl Fn(usize) -> Option<bool>) -> bool {
    if running.pids.is_empty() || !running.containers.iter().all(ContainerStatus::running) {
        return false;
    }
    if !running
        .pids
        .iter()
        .all(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        return false;
    }
    pod.spec
        .containers
        .iter()
        .enumerate()
        .all(|(i, c)| match probe(i) {
            Some(ready) => ready,
            None => c.ports.iter().all(|p| match p.protocol {
                proto @ (Protocol::Tcp | Protocol::Udp) => running
                    .pids
                    .iter()
                    .any(|pid| listening(*pid, proto).contains(&p.container_port)),
                Protocol::Sctp => true,
            }),
        })
}
