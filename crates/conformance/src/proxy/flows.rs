//! Real-kernel packet flows for the proxy corpus.
//!
//! One topology per fixture, all in network namespaces this process creates (named
//! `twp<pid>-<n><tag>`, deleted on drop, stale ones from dead runs swept):
//!
//! ```text
//!   client ns (flow sources) ──vc── node ns ──e0── endpoint ns (one per endpoint IP)
//!                                    │  │  └─e1── endpoint ns …
//!                                    │  └ owns localAddresses, runs the rules
//!                                    └──vs── sink ns (default route; swallows the rest)
//! ```
//!
//! The node namespace gets the rendered rules: in iptables mode through
//! `iptables-restore --noflush` plus kube-proxy's base-chain jumps, in nftables mode as
//! one `nft -f -` transaction building table `kube-proxy`. Endpoints answer with `ip:port|peer`, so a flow sees
//! which endpoint answered and whether its source was rewritten (masquerade). Flows from
//! a node-local source (or from an address equal to the destination, the LB-hairpin
//! case) are sent from inside the node namespace (the OUTPUT path); flows from an
//! endpoint address are sent from that endpoint's namespace (pod hairpin). The sink makes
//! unrouted traffic reach the FORWARD hook, so filter REJECT/DROP rules apply as on a
//! real node. SCTP flows are left to the tracer (no SCTP sockets here).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use twill_model::IpFamily;
use twill_proxy_iptables::base_chain_jumps;

use super::corpus::{
    Fixture, Flow, FlowOutcome, Outcome, canonical_endpoint, check_nft_listing, parse_ip,
};

/// Which proxy mode programs the node namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
}

/// One fixture run in one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeRun {
    /// One per flow, in order.
    pub flows: Vec<FlowOutcome>,
    /// Problems with the fixture's `nftables` lines (nftables mode, when it states any).
    pub nftables: Option<Vec<String>>,
}

/// Why `flow` cannot be checked in `mode`, if it cannot. Localhost NodePorts exist only
/// in iptables mode for IPv4 (upstream's nftables mode has no `localhostNodePorts`), and
/// SCTP cannot be sent here (no SCTP sockets in this kernel); iptables mode checks those
/// with its rule tracer instead.
pub fn skip_reason(mode: Mode, flow: &Flow) -> Option<String> {
    if mode == Mode::Iptables {
        return None;
    }
    if flow.protocol.eq_ignore_ascii_case("sctp") {
        return Some("SCTP flows cannot be sent in this kernel (no SCTP sockets) and nftables mode has no rule tracer".into());
    }
    let dst = parse_ip(&flow.dest_ip)?;
    if dst.is_loopback() && !matches!(flow.expected.outcome(), Ok(Outcome::None)) {
        return Some(
            "localhost NodePorts are an iptables/IPv4 feature; nftables mode does not support localhostNodePorts".into(),
        );
    }
    None
}

const PREFIX: &str = "twp";
static COUNTER: AtomicUsize = AtomicUsize::new(0);
/// How long a flow waits for an answer before calling it dropped.
const TIMEOUT: Duration = Duration::from_millis(1500);

/// Whether real-kernel flows can run here.
pub fn available() -> Result<(), String> {
    available_for(Mode::Iptables)
}

/// Whether real-kernel flows of `mode` can run here.
pub fn available_for(mode: Mode) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (CAP_NET_ADMIN)".into());
    }
    let tools: &[&str] = match mode {
        Mode::Iptables => &["ip", "iptables-restore", "ip6tables-restore", "sysctl"],
        Mode::Nftables => &["ip", "nft", "sysctl"],
    };
    for &tool in tools {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
            || Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
        if !ok {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

/// A named network namespace owned by this process.
#[derive(Debug)]
pub struct Ns {
    name: String,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete `twp<pid>-…` namespaces whose process is gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Ns {
    pub fn new(tag: &str) -> Result<Self, String> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}{tag}", std::process::id());
        run("ip", &["netns", "add", &name], None)?;
        let ns = Ns { name };
        ns.batch(&["link set lo up".to_string()])?;
        Ok(ns)
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
    /// `ip -n NS -batch -` with these lines.
    pub fn batch(&self, lines: &[String]) -> Result<(), String> {
        let input = lines.join("\n") + "\n";
        run(
            "ip",
            &["-n", &self.name, "-batch", "-"],
            Some(input.as_bytes()),
        )
    }
    /// Run a program inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str], input: Option<&[u8]>) -> Result<(), String> {
        let mut a = vec!["netns", "exec", &self.name, program];
        a.extend_from_slice(args);
        run("ip", &a, input)
    }
    /// Run a program inside the namespace; return its stdout.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
    /// Run `f` on a new thread inside the namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<Result<R, String>> {
        let path = self.path();
        std::thread::spawn(move || {
            let file =
                std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            Ok(f())
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions; these are
                    // processes left inside a namespace this process created.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(i) = input {
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(i).map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Append base-chain jumps (`-I CHAIN … -j KUBE-…`) to each table of a restore input.
pub fn with_base_jumps(text: &str, with_firewall: bool) -> String {
    let jumps = base_chain_jumps(with_firewall);
    let mut out = String::with_capacity(text.len() + 2048);
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        }
        if line == "COMMIT" {
            for j in jumps.iter().rev().filter(|j| j.table == table) {
                let args: Vec<String> = j
                    .args
                    .iter()
                    .map(|a| {
                        if a.contains(' ') {
                            format!("\"{a}\"")
                        } else {
                            a.to_string()
                        }
                    })
                    .collect();
                out.push_str(&format!("-I {} {} -j {}\n", j.from, args.join(" "), j.to));
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

struct Addrs {
    v6: bool,
}

impl Addrs {
    /// Address of the node on its link `i` (1 endpoints, 2 clients, 3 sink) and the peer.
    fn node(&self, i: u8) -> String {
        if self.v6 {
            format!("fd99::{i}:1")
        } else {
            format!("169.254.{i}.1")
        }
    }
    fn peer(&self, i: u8) -> String {
        if self.v6 {
            format!("fd99::{i}:2")
        } else {
            format!("169.254.{i}.2")
        }
    }
    fn host(&self, ip: &IpAddr) -> String {
        if self.v6 {
            format!("{ip}/128 nodad")
        } else {
            format!("{ip}/32")
        }
    }
    fn node_host(&self, s: &str) -> String {
        if self.v6 {
            format!("{s}/128 nodad")
        } else {
            format!("{s}/32")
        }
    }
}

/// Where a flow is sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Node,
    Endpoint(IpAddr),
    Client,
}

/// The namespaces of one fixture run.
pub struct Topology {
    pub node: Ns,
    /// One namespace per endpoint address, as pods have (so a pod's hairpin traffic to
    /// another endpoint is not a martian in its own namespace).
    pub endpoints: std::collections::BTreeMap<IpAddr, Ns>,
    pub cli: Ns,
    _sink: Ns,
}

impl Topology {
    /// The namespace that owns endpoint address `ip`.
    pub fn endpoint(&self, ip: IpAddr) -> Option<&Ns> {
        self.endpoints.get(&ip)
    }
}

fn sysctls(ns: &Ns, v6: bool, extra: &[&str]) -> Result<(), String> {
    let mut args = vec![
        "-q",
        "-w",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ];
    if v6 {
        args.extend([
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
    }
    args.extend_from_slice(extra);
    ns.exec("sysctl", &args, None)
}

fn veth(a: &Ns, a_if: &str, b: &Ns) -> Result<(), String> {
    run(
        "ip",
        &[
            "link",
            "add",
            "name",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            b.name(),
        ],
        None,
    )
}

/// Build the namespaces for family `v6`: the node owns `node_local`, each address in
/// `endpoint_ips` gets a namespace of its own, the client namespace holds `client_ips`.
pub fn build(
    v6: bool,
    node_local: &BTreeSet<IpAddr>,
    endpoint_ips: &BTreeSet<IpAddr>,
    client_ips: &BTreeSet<IpAddr>,
) -> Result<Topology, String> {
    sweep_stale();
    let a = Addrs { v6 };
    let node = Ns::new("node")?;
    let cli = Ns::new("cli")?;
    let sink = Ns::new("sink")?;
    sysctls(
        &node,
        v6,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.route_localnet=1",
        ],
    )?;
    for ns in [&cli, &sink] {
        sysctls(ns, v6, &[])?;
    }
    let mut endpoints = std::collections::BTreeMap::new();
    for (k, e) in endpoint_ips.iter().enumerate() {
        let ns = Ns::new("ep")?;
        if v6 {
            sysctls(&ns, v6, &[])?;
        }
        veth(&node, &format!("e{k}"), &ns)?;
        endpoints.insert(*e, ns);
    }
    veth(&node, "vc", &cli)?;
    veth(&node, "vs", &sink)?;
    // `ip -batch` takes no `-6`; the family follows the addresses (and `::/0`).
    let ip = "";
    let default = if v6 { "::/0" } else { "default" };
    let mut n = Vec::new();
    for (i, dev) in [(2u8, "vc"), (3, "vs")] {
        n.push(format!("addr add {} dev {dev}", a.node_host(&a.node(i))));
        n.push(format!("link set {dev} up"));
    }
    // Every endpoint link carries the same node address (like a CNI's gateway).
    for k in 0..endpoint_ips.len() {
        n.push(format!("addr add {} dev e{k}", a.node_host(&a.node(1))));
        n.push(format!("link set e{k} up"));
    }
    for l in node_local.iter().filter(|ip| !ip.is_loopback()) {
        n.push(format!("addr add {} dev lo", a.host(l)));
    }
    for (k, e) in endpoint_ips.iter().enumerate() {
        n.push(format!("{ip}route add {e} dev e{k}"));
    }
    for c in client_ips {
        n.push(format!("{ip}route add {c} dev vc"));
    }
    n.push(format!("{ip}route add {} dev vs", a.peer(3)));
    n.push(format!("{ip}route add {default} via {} dev vs", a.peer(3)));
    node.batch(&n)?;
    let singles: Vec<(&Ns, u8, BTreeSet<IpAddr>)> = endpoints
        .iter()
        .map(|(ip, ns)| (ns, 1u8, BTreeSet::from([*ip])))
        .collect();
    for (ns, i, ips) in singles.into_iter().chain([(&cli, 2, client_ips.clone())]) {
        let mut l = vec!["link set eth0 up".to_string()];
        for x in &ips {
            l.push(format!("addr add {} dev eth0", a.host(x)));
        }
        l.push(format!("{ip}route add {} dev eth0", a.node(i)));
        l.push(format!(
            "{ip}route add {default} via {} dev eth0",
            a.node(i)
        ));
        ns.batch(&l)?;
    }
    sink.batch(&[
        "link set eth0 up".to_string(),
        format!("addr add {} dev eth0", a.node_host(&a.peer(3))),
    ])?;
    Ok(Topology {
        node,
        endpoints,
        cli,
        _sink: sink,
    })
}

fn is_tcp(p: &str) -> bool {
    p.eq_ignore_ascii_case("tcp")
}

/// A listener that answers `identity|peer` until stopped.
pub type Server = std::thread::JoinHandle<Result<(), String>>;

/// A listener in `ns` answering every connection (TCP) or datagram (UDP) with
/// `identity|peer` until `stop`; other proxy modes' runners use it too.
pub fn serve(
    ns: &Ns,
    addr: SocketAddr,
    tcp: bool,
    identity: String,
    stop: Arc<AtomicBool>,
) -> Result<Server, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let h = ns.spawn(move || {
        if tcp {
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("listen {addr}: {e}")));
                    return;
                }
            };
            let _ = l.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(format!("{identity}|{}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(3)),
                }
            }
        } else {
            let s = match UdpSocket::bind(addr) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(format!("bind {addr}: {e}")));
                    return;
                }
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
            let _ = tx.send(Ok(()));
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{identity}|{}\n", peer.ip()).as_bytes(), peer);
                }
            }
        }
    });
    match rx.recv() {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "server for {addr} did not start (namespace entry failed)"
        )),
    }
}

/// What one connection attempt saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Answer { identity: String, peer: String },
    Refused,
    Timeout,
    Unreachable(String),
}

fn set_timeouts(fd: &OwnedFd, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        // SAFETY: fd is a valid socket; tv outlives the call and its size is passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
    }
}

/// Connect from `source` (bound explicitly, as the flow's sender) and read one answer.
pub fn send_flow(source: IpAddr, dest: SocketAddr, tcp: bool) -> Seen {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, connect, socket,
    };
    let fam = if dest.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let (ty, proto) = if tcp {
        (SockType::Stream, SockProtocol::Tcp)
    } else {
        (SockType::Datagram, SockProtocol::Udp)
    };
    let fd = match socket(fam, ty, SockFlag::SOCK_CLOEXEC, proto) {
        Ok(fd) => fd,
        Err(e) => return Seen::Unreachable(format!("socket: {e}")),
    };
    set_timeouts(&fd, TIMEOUT);
    if let Err(e) = bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(source, 0)),
    ) {
        return Seen::Unreachable(format!("bind {source}: {e}"));
    }
    let classify = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Seen::Refused,
        Some(libc::EAGAIN | libc::EINPROGRESS | libc::ETIMEDOUT) => Seen::Timeout,
        _ if e.kind() == std::io::ErrorKind::WouldBlock
            || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Seen::Timeout
        }
        _ => Seen::Unreachable(e.to_string()),
    };
    if let Err(e) = connect(fd.as_raw_fd(), &SockaddrStorage::from(dest)) {
        return classify(std::io::Error::from_raw_os_error(e as i32));
    }
    let mut buf = Vec::new();
    let got = if tcp {
        // SAFETY: the fd is a connected TCP socket we own; ownership moves to the stream.
        let mut s = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let mut chunk = [0u8; 256];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        }
    } else {
        // SAFETY: as above, for a connected UDP socket.
        let s = unsafe { UdpSocket::from_raw_fd(fd.into_raw_fd()) };
        s.send(b"who\n").and_then(|_| {
            let mut chunk = [0u8; 256];
            s.recv(&mut chunk)
                .map(|n| buf.extend_from_slice(&chunk[..n]))
        })
    };
    if let Err(e) = got
        && buf.is_empty()
    {
        return classify(e);
    }
    if buf.is_empty() {
        return Seen::Unreachable("connection closed without an answer".into());
    }
    let text = String::from_utf8_lossy(&buf);
    let (identity, peer) = text.trim().split_once('|').unwrap_or((text.trim(), ""));
    Seen::Answer {
        identity: super::corpus::canonical_endpoint(identity)
            .unwrap_or_else(|| identity.to_string()),
        peer: peer.to_string(),
    }
}

fn judge(flow: &Flow, seen: &Seen) -> Result<(), String> {
    let want = flow.expected.outcome()?;
    match (&want, seen) {
        (Outcome::Endpoints(eps), Seen::Answer { identity, peer }) => {
            if !eps.contains(identity) {
                return Err(format!("answered by {identity}, expected one of {eps:?}"));
            }
            let masq = peer
                != &parse_ip(&flow.source_ip)
                    .map(|i| i.to_string())
                    .unwrap_or_default();
            let want_masq = flow
                .expected
                .masq_per_output
                .as_ref()
                .and_then(|m| {
                    m.iter()
                        .find(|(k, _)| canonical_endpoint(k).as_deref() == Some(identity))
                        .map(|(_, v)| *v)
                })
                .unwrap_or(flow.expected.masq);
            if masq != want_masq {
                return Err(format!(
                    "{identity} saw source {peer}: masquerade {masq}, expected {want_masq}"
                ));
            }
            Ok(())
        }
        (Outcome::Accept, Seen::Answer { identity, .. }) if identity == "node" => Ok(()),
        (Outcome::Reject, Seen::Refused) => Ok(()),
        (Outcome::Drop, Seen::Timeout) => Ok(()),
        (Outcome::None, s) if !matches!(s, Seen::Answer { identity, .. } if identity != "node") => {
            Ok(())
        }
        (w, s) => Err(format!("expected {w:?}, saw {s:?}")),
    }
}

/// Send every flow of `fx` through a real kernel programmed in iptables mode; one
/// result per flow, in order.
pub fn run_fixture(fx: &Fixture) -> Vec<Result<(), String>> {
    run_fixture_mode(fx, Mode::Iptables)
        .flows
        .into_iter()
        .map(|o| match o {
            FlowOutcome::Passed | FlowOutcome::Skipped(_) => Ok(()),
            FlowOutcome::Failed(e) => Err(e),
        })
        .collect()
}

/// Send every flow of `fx` through a real kernel programmed in `mode`.
pub fn run_fixture_mode(fx: &Fixture, mode: Mode) -> ModeRun {
    let skips: Vec<Option<String>> = fx.flows.iter().map(|f| skip_reason(mode, f)).collect();
    let (results, nftables) = match run_fixture_inner(fx, mode, &skips) {
        Ok(v) => v,
        Err(e) => (
            fx.flows
                .iter()
                .map(|_| Err(format!("topology: {e}")))
                .collect(),
            None,
        ),
    };
    let flows = results
        .into_iter()
        .zip(skips)
        .map(|(r, skip)| match (skip, r) {
            (Some(why), _) => FlowOutcome::Skipped(why),
            (None, Ok(())) => FlowOutcome::Passed,
            (None, Err(e)) => FlowOutcome::Failed(e),
        })
        .collect();
    ModeRun { flows, nftables }
}

/// Program the node namespace in `mode`; in nftables mode, return the problems with
/// the fixture's `nftables` lines.
fn program_node(
    topo: &Topology,
    prepared: &super::corpus::Prepared,
    fx: &Fixture,
    mode: Mode,
) -> Result<Option<Vec<String>>, String> {
    match mode {
        Mode::Iptables => {
            let rendered = prepared.render();
            let with_fw = rendered.text.contains(":KUBE-FIREWALL ");
            let input = with_base_jumps(&rendered.text, with_fw);
            let program = if prepared.family == IpFamily::V6 {
                "ip6tables-restore"
            } else {
                "iptables-restore"
            };
            topo.node
                .exec(program, &["--noflush", "-w", "5"], Some(input.as_bytes()))?;
            Ok(None)
        }
        Mode::Nftables => {
            let desired = twill_proxy_nftables::render(&prepared.config, &prepared.model);
            let script = twill_proxy_nftables::full_script(&desired, None);
            topo.node
                .exec("nft", &["-f", "-"], Some(script.as_bytes()))?;
            if fx.nftables.is_none() {
                return Ok(None);
            }
            let fam = if prepared.family == IpFamily::V6 {
                "ip6"
            } else {
                "ip"
            };
            let listing = topo
                .node
                .output("nft", &["list", "table", fam, twill_proxy_nftables::TABLE])?;
            Ok(check_nft_listing(fx, &listing))
        }
    }
}

type FixtureResults = (Vec<Result<(), String>>, Option<Vec<String>>);

fn run_fixture_inner(
    fx: &Fixture,
    mode: Mode,
    skips: &[Option<String>],
) -> Result<FixtureResults, String> {
    let prepared = fx.prepare(false)?;
    let v6 = prepared.family == IpFamily::V6;
    let fam = |ip: &IpAddr| ip.is_ipv6() == v6;
    let mut node_local: BTreeSet<IpAddr> = prepared
        .local_addresses
        .iter()
        .copied()
        .filter(fam)
        .collect();
    let mut endpoint_addrs: BTreeSet<(IpAddr, u16, bool)> = BTreeSet::new();
    for eps in prepared.model.endpoints.values() {
        for e in eps {
            endpoint_addrs.insert((e.ip, e.port, true));
            endpoint_addrs.insert((e.ip, e.port, false));
        }
    }
    let endpoint_ips: BTreeSet<IpAddr> = endpoint_addrs.iter().map(|(ip, _, _)| *ip).collect();
    let mut senders = Vec::new();
    let mut client_ips = BTreeSet::new();
    for f in &fx.flows {
        let src = parse_ip(&f.source_ip).ok_or("bad sourceIP")?;
        let dst = parse_ip(&f.dest_ip).ok_or("bad destIP")?;
        let s = if node_local.contains(&src) || src == dst {
            node_local.insert(src);
            Sender::Node
        } else if endpoint_ips.contains(&src) {
            Sender::Endpoint(src)
        } else {
            client_ips.insert(src);
            Sender::Client
        };
        senders.push(s);
    }
    let topo = build(v6, &node_local, &endpoint_ips, &client_ips)?;
    let nft_problems = program_node(&topo, &prepared, fx, mode)?;

    // Servers: every endpoint on TCP and UDP, and the node's health-check ports.
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (ip, port, tcp) in &endpoint_addrs {
        let sa = SocketAddr::new(*ip, *port);
        let ns = topo.endpoint(*ip).ok_or("endpoint namespace missing")?;
        match serve(ns, sa, *tcp, sa.to_string(), stop.clone()) {
            Ok(h) => servers.push(h),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
    let accept_ports: BTreeSet<u16> = fx
        .flows
        .iter()
        .filter(|f| matches!(f.expected.outcome(), Ok(Outcome::Accept)))
        .map(|f| f.dest_port)
        .collect();
    let any: IpAddr = if v6 {
        "::".parse().expect("literal")
    } else {
        "0.0.0.0".parse().expect("literal")
    };
    for p in accept_ports {
        match serve(
            &topo.node,
            SocketAddr::new(any, p),
            true,
            "node".into(),
            stop.clone(),
        ) {
            Ok(h) => servers.push(h),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }

    // Flows, in parallel.
    let mut handles = Vec::new();
    for ((f, s), skip) in fx.flows.iter().zip(&senders).zip(skips) {
        if skip.is_some() {
            handles.push(None);
            continue;
        }
        let ns = match s {
            Sender::Node => &topo.node,
            Sender::Endpoint(ip) => topo.endpoint(*ip).ok_or("endpoint namespace missing")?,
            Sender::Client => &topo.cli,
        };
        let flow = f.clone();
        if flow.protocol.eq_ignore_ascii_case("sctp") {
            handles.push(None);
            continue;
        }
        handles.push(Some(ns.spawn(move || {
            let src = parse_ip(&flow.source_ip).ok_or("bad sourceIP".to_string())?;
            let dst = parse_ip(&flow.dest_ip).ok_or("bad destIP".to_string())?;
            let seen = send_flow(
                src,
                SocketAddr::new(dst, flow.dest_port),
                is_tcp(&flow.protocol),
            );
            judge(&flow, &seen)
        })));
    }
    let results = handles
        .into_iter()
        .map(|h| match h {
            None => Ok(()),
            Some(h) => h
                .join()
                .map_err(|_| "flow thread panicked".to_string())
                .and_then(|r| r.and_then(|x| x)),
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    Ok((results, nft_problems))
}
