//! The lab's container runtime: a pod is a network namespace attached through CNI,
//! plus per-container processes with their own UTS namespace (hostname = pod name) and
//! mount namespace (`/etc/resolv.conf` and `/etc/hosts` as kubelet writes them).

use std::ffi::CString;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd};
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
    /// When the pod began terminating (ms): SIGTERM was sent, SIGKILL follows after
    /// the grace period.
    #[serde(default)]
    pub terminating_since_ms: Option<u64>,
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
    // A restart begins a new log, as a container runtime's does; the last run's stays
    // as `log.previous` (`logs --previous`). The log is the pod's, shared by its
    // containers.
    if running.containers[i].restart_at_ms.is_some() {
        let _ = std::fs::rename(dir.join("log"), dir.join("log.previous"));
    }
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
        terminating_since_ms: None,
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

/// The TCP ports in LISTEN and the bound UDP ports of network namespace `netns`.
///
/// Asked over netlink `sock_diag` with a socket opened inside the namespace, not read
/// from `/proc/PID/net/tcp`: that file walks the machine's whole established-connection
/// hash on every read (about 4 ms here), a LISTEN-only dump walks only the listening
/// table. Hand-rolled because it is one fixed request and a reply of which one field is
/// read; the sock_diag crate pins an older netlink-packet-core than the rest of the
/// workspace. Layouts: `linux/sock_diag.h`, `linux/inet_diag.h`.
pub fn bound_ports(netns: &str) -> std::io::Result<(Vec<u16>, Vec<u16>)> {
    let path = netns::path(netns);
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(&path)?;
            // SAFETY: setns on an fd we hold, for this short-lived thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let (mut tcp, mut udp) = (Vec::new(), Vec::new());
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                // TCP_LISTEN is state 10; every state for UDP (an unconnected socket is
                // TCP_CLOSE, 7).
                tcp.extend(diag_dump(family, libc::IPPROTO_TCP as u8, 1 << 10)?);
                udp.extend(diag_dump(family, libc::IPPROTO_UDP as u8, u32::MAX)?);
            }
            Ok((tcp, udp))
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("sock_diag thread panicked")))
    })
}

/// One `SOCK_DIAG_BY_FAMILY` dump: the local ports of the matching sockets.
fn diag_dump(family: u8, protocol: u8, states: u32) -> std::io::Result<Vec<u16>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    // SAFETY: a plain socket(2) call; the fd is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh socket nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56): family, protocol, ext, pad, states,
    // then the socket id (all zero: any).
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family;
    req[17] = protocol;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: send(2) of a buffer we own.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ports = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer we own, bounded by its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut at = 0usize;
        let end = n as usize;
        while at + 16 <= end {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
            if len < 16 || at + len > end {
                return Ok(ports);
            }
            match kind {
                // An error reply means a family the kernel lacks (no IPv6): no sockets.
                NLMSG_DONE | NLMSG_ERROR => return Ok(ports),
                // inet_diag_msg: family, state, timer, retrans, then the socket id whose
                // first field is the local port, big-endian.
                SOCK_DIAG_BY_FAMILY if len >= 16 + 6 => {
                    ports.push(u16::from_be_bytes([buf[at + 20], buf[at + 21]]));
                }
                _ => {}
            }
            // Messages are 4-byte aligned.
            at += len.div_ceil(4) * 4;
        }
    }
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
    let needs_ports = pod
        .spec
        .containers
        .iter()
        .enumerate()
        .any(|(i, c)| probe(i).is_none() && !c.ports.is_empty());
    let (tcp, udp) = if needs_ports {
        match bound_ports(&running.netns) {
            Ok(p) => p,
            Err(_) => return false,
        }
    } else {
        Default::default()
    };
    pod.spec
        .containers
        .iter()
        .enumerate()
        .all(|(i, c)| match probe(i) {
            Some(ready) => ready,
            None => c.ports.iter().all(|p| match p.protocol {
                Protocol::Tcp => tcp.contains(&p.container_port),
                Protocol::Udp => udp.contains(&p.container_port),
                Protocol::Sctp => true,
            }),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_ports_lists_listening_tcp_and_bound_udp_of_one_namespace_only() {
        if !twill_testkit::require_root("bound_ports_lists_listening_tcp_and_bound_udp") {
            return;
        }
        let ns = twill_testkit::netns::Netns::new("bp");
        assert_eq!(ns.path(), netns::path(ns.name()), "named like the lab's");
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let keep = std::thread::spawn({
            let path = ns.path();
            move || {
                twill_netns::enter(&path).unwrap();
                let l4 = std::net::TcpListener::bind("0.0.0.0:18080").unwrap();
                let l6 = std::net::TcpListener::bind("[::]:18443").ok();
                let u = std::net::UdpSocket::bind("0.0.0.0:15353").unwrap();
                // A connected TCP socket is not a listener.
                let c = std::net::TcpStream::connect("127.0.0.1:18080").unwrap();
                tx.send(()).unwrap();
                let _ = done_rx.recv();
                drop((l4, l6, u, c));
            }
        });
        rx.recv().unwrap();
        let (tcp, udp) = bound_ports(ns.name()).unwrap();
        done_tx.send(()).unwrap();
        keep.join().unwrap();
        assert!(tcp.contains(&18080), "{tcp:?}");
        assert!(udp.contains(&15353), "{udp:?}");
        assert!(!udp.contains(&18080), "{udp:?}");
        // The client end of the connection is bound to an ephemeral port, not listening.
        assert!(tcp.iter().all(|p| [18080, 18443].contains(p)), "{tcp:?}");
        // Outside the namespace nothing of this is seen.
        let other = twill_testkit::netns::Netns::new("bq");
        let (tcp, udp) = bound_ports(other.name()).unwrap();
        assert!(tcp.is_empty() && udp.is_empty(), "{tcp:?} {udp:?}");
    }
}
