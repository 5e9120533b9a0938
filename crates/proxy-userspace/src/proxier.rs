//! The userspace proxier: owns the listeners, keeps their endpoint sets current, and
//! writes the portal rules.
//!
//! Threads rather than tokio: `splice(2)` blocks on a socket and a pipe at once, which
//! does not fit a readiness reactor without extra bookkeeping, and a thread per
//! direction keeps the forwarding loop a dozen lines. A node proxy's concurrency is
//! modest; each forwarding thread costs a small stack.
//!
//! Namespaces: sockets belong to the network namespace of the thread that creates them,
//! and threads start in their creator's namespace. Call [`Proxier::sync`] from a thread
//! inside the node's namespace; listeners, backend connections and `iptables-restore`
//! then all live there.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use twill_model::{IpFamily, Protocol};
use twill_netfilter::Family;
use twill_proxy_core::ProxyModel;

use crate::balancer::Balancer;
use crate::forward::{UdpFlows, splice_both};
use crate::plan::{Config, ListenerKey, ListenerPlan, base_jumps, plan, render_rules};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("listener for {listener}: {source}")]
    Listen {
        listener: String,
        #[source]
        source: io::Error,
    },
    #[error("applying portal rules: {0}")]
    Rules(#[source] twill_netfilter::Error),
    /// `jump` reads like `nat PREROUTING -> KUBE-PORTALS-CONTAINER`.
    #[error("ensuring base-chain jump {jump}: {source}")]
    Jump {
        jump: String,
        #[source]
        source: twill_netfilter::Error,
    },
}

/// Runtime knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Connect timeouts of the successive backend attempts of one connection (upstream:
    /// 250 ms, 500 ms, 1 s, 2 s); each attempt goes to another endpoint when possible.
    pub dial_timeouts: Vec<Duration>,
    /// Idle time after which a UDP client flow is forgotten (`--udp-timeout`).
    pub udp_idle: Duration,
    /// Write rules with iptables-restore (off for tests of the listeners alone).
    pub apply_rules: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dial_timeouts: [250, 500, 1000, 2000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            udp_idle: Duration::from_millis(250),
            apply_rules: true,
        }
    }
}

struct Running {
    port: u16,
    protocol: Protocol,
    balancer: Arc<Mutex<Balancer>>,
    stop: Arc<AtomicBool>,
    fd: i32,
    thread: Option<JoinHandle<()>>,
    udp: Option<Arc<UdpFlows>>,
}

impl Running {
    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.protocol == Protocol::Tcp {
            // Wakes the blocked accept(); the listener is closed when its thread ends.
            // SAFETY: fd is the listener's, still open (its thread owns it until join).
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub listeners_opened: usize,
    pub listeners_updated: usize,
    pub listeners_closed: usize,
    pub listeners_total: usize,
    pub blocked_portals: usize,
}

pub struct Proxier {
    cfg: Config,
    opts: Options,
    running: BTreeMap<ListenerKey, Running>,
    jumps_ensured: bool,
}

impl std::fmt::Debug for Proxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxier")
            .field("listeners", &self.ports())
            .finish()
    }
}

impl Proxier {
    pub fn new(cfg: Config, opts: Options) -> Self {
        Proxier {
            cfg,
            opts,
            running: BTreeMap::new(),
            jumps_ensured: false,
        }
    }

    /// Listen port of every listener.
    pub fn ports(&self) -> BTreeMap<ListenerKey, u16> {
        self.running
            .iter()
            .map(|(k, r)| (k.clone(), r.port))
            .collect()
    }

    /// Make listeners and rules match `model`: new listeners are opened before the
    /// rules point at them, unchanged ones keep their socket (and connections), and
    /// removed ones close after the rules stop sending them traffic.
    pub fn sync(&mut self, model: &ProxyModel) -> Result<SyncReport, Error> {
        let p = plan(&self.cfg, model);
        let mut report = SyncReport {
            blocked_portals: p.blocked.len(),
            ..Default::default()
        };
        for l in &p.listeners {
            match self.running.get(&l.key) {
                Some(r) if r.protocol == l.protocol => {
                    if let Ok(mut b) = r.balancer.lock() {
                        b.update(l.endpoints.clone(), l.affinity_timeout);
                    }
                    report.listeners_updated += 1;
                }
                _ => {
                    let r = self.open(l).map_err(|source| Error::Listen {
                        listener: l.key.to_string(),
                        source,
                    })?;
                    if let Some(mut old) = self.running.insert(l.key.clone(), r) {
                        old.halt();
                    }
                    report.listeners_opened += 1;
                }
            }
        }
        let wanted: std::collections::BTreeSet<&ListenerKey> =
            p.listeners.iter().map(|l| &l.key).collect();
        let gone: Vec<ListenerKey> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        if self.opts.apply_rules {
            let text = render_rules(&self.cfg, &p, &self.ports());
            let fam = match self.cfg.family {
                IpFamily::V4 => Family::V4,
                IpFamily::V6 => Family::V6,
            };
            twill_netfilter::iptables_restore(fam, &text).map_err(Error::Rules)?;
            if !self.jumps_ensured {
                ensure_jumps(fam)?;
                self.jumps_ensured = true;
            }
        }
        for k in gone {
            if let Some(mut r) = self.running.remove(&k) {
                r.halt();
                report.listeners_closed += 1;
            }
        }
        report.listeners_total = self.running.len();
        tracing::info!(
            opened = report.listeners_opened,
            updated = report.listeners_updated,
            closed = report.listeners_closed,
            blocked = report.blocked_portals,
            "userspace proxy synced"
        );
        Ok(report)
    }

    fn open(&self, l: &ListenerPlan) -> io::Result<Running> {
        let any: IpAddr = match self.cfg.family {
            IpFamily::V4 => Ipv4Addr::UNSPECIFIED.into(),
            IpFamily::V6 => Ipv6Addr::UNSPECIFIED.into(),
        };
        let balancer = Arc::new(Mutex::new(Balancer::new(
            l.endpoints.clone(),
            l.affinity_timeout,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let name = l.key.to_string();
        match l.protocol {
            Protocol::Udp => {
                let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
                sock.set_read_timeout(Some(Duration::from_millis(100)))?;
                let port = sock.local_addr()?.port();
                let fd = sock.as_raw_fd();
                let sock = Arc::new(sock);
                let flows = UdpFlows::new(sock.clone(), self.opts.udp_idle, stop.clone());
                let (b, s, f) = (balancer.clone(), stop.clone(), flows.clone());
                let thread = std::thread::Builder::new()
                    .name(format!("udp {port}"))
                    .spawn(move || serve_udp(sock, f, b, s, name))?;
                Ok(Running {
                    port,
                    protocol: Protocol::Udp,
                    balancer,
                    stop,
                    fd,
                    thread: Some(thread),
                    udp: Some(flows),
                })
            }
            _ => {
                let listener = TcpListener::bind(SocketAddr::new(any, 0))?;
                let port = listener.local_addr()?.port();
                let fd = listener.as_raw_fd();
                let (b, s, dials) = (
                    balancer.clone(),
                    stop.clone(),
                    self.opts.dial_timeouts.clone(),
                );
                let thread = std::thread::Builder::new()
                    .name(format!("tcp {port}"))
                    .spawn(move || serve_tcp(listener, b, s, dials, name))?;
                Ok(Running {
                    port,
                    protocol: Protocol::Tcp,
                    balancer,
                    stop,
                    fd,
                    thread: Some(thread),
                    udp: None,
                })
            }
        }
    }

    /// Live UDP client flows of a listener (`None` for TCP or unknown listeners).
    pub fn udp_flows(&self, key: &ListenerKey) -> Option<usize> {
        self.running.get(key)?.udp.as_ref().map(|f| f.len())
    }

    /// Close every listener (established connections finish on their own). The rules
    /// are left in place, as upstream leaves them until the next start cleans up.
    pub fn shutdown(mut self) {
        for (_, mut r) in std::mem::take(&mut self.running) {
            r.halt();
        }
    }
}

impl Drop for Proxier {
    fn drop(&mut self) {
        for (_, mut r) in std::mem::take(&mut self.running) {
            r.halt();
        }
    }
}

fn ensure_jumps(fam: Family) -> Result<(), Error> {
    let tool = match fam {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    // Inserted at the top in reverse, so they end up in list order.
    for (table, chain, args, target) in base_jumps().into_iter().rev() {
        let mut rule: Vec<&str> = vec![chain];
        rule.extend(args.iter().copied());
        rule.extend(["-j", target]);
        let mut check = vec!["-w", "5", "-t", table, "-C"];
        check.extend(rule.iter().copied());
        if twill_netfilter::run_with_input(tool, &check, b"").is_ok() {
            continue;
        }
        let mut insert = vec!["-w", "5", "-t", table, "-I"];
        insert.extend(rule.iter().copied());
        twill_netfilter::run_with_input(tool, &insert, b"").map_err(|source| Error::Jump {
            jump: format!("{table} {chain} -> {target}"),
            source,
        })?;
    }
    Ok(())
}

fn serve_tcp(
    listener: TcpListener,
    balancer: Arc<Mutex<Balancer>>,
    stop: Arc<AtomicBool>,
    dials: Vec<Duration>,
    name: String,
) {
    let mut last_expire = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let (client, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !stop.load(Ordering::Relaxed) {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        if last_expire.elapsed() > Duration::from_secs(10)
            && let Ok(mut b) = balancer.lock()
        {
            b.expire(Instant::now());
            last_expire = Instant::now();
        }
        let (b, d, n) = (balancer.clone(), dials.clone(), name.clone());
        let _ = std::thread::Builder::new()
            .name("tcp conn".into())
            .spawn(move || {
                if let Some(backend) = dial(&b, peer.ip(), &d, &n) {
                    // Each splice into the socket is a complete write; without NODELAY,
                    // Nagle holds its tail back (the `modes` bench lost about half).
                    let _ = client.set_nodelay(true);
                    let _ = backend.set_nodelay(true);
                    splice_both(client, backend);
                }
                // Without a backend the client is closed (dropped) here.
            });
    }
}

/// Connect to a backend, trying another endpoint after each failure.
fn dial(
    balancer: &Mutex<Balancer>,
    client: IpAddr,
    timeouts: &[Duration],
    name: &str,
) -> Option<TcpStream> {
    let mut failed = Vec::new();
    for t in timeouts {
        let ep = balancer
            .lock()
            .ok()?
            .pick(client, Instant::now(), &failed)?;
        match TcpStream::connect_timeout(&ep, *t) {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::debug!(listener = %name, endpoint = %ep, error = %e, "backend connect failed; trying the next");
                failed.push(ep);
                // With every endpoint tried, start over (a restarting pod may be back).
                let n = balancer.lock().ok()?.endpoints().len();
                if failed.len() >= n {
                    failed.clear();
                }
            }
        }
    }
    tracing::warn!(listener = %name, %client, "no backend accepted the connection");
    None
}

fn serve_udp(
    sock: Arc<UdpSocket>,
    flows: Arc<UdpFlows>,
    balancer: Arc<Mutex<Balancer>>,
    stop: Arc<AtomicBool>,
    name: String,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, client)) => {
                let open = || {
                    balancer
                        .lock()
                        .ok()
                        .and_then(|mut b| b.pick(client.ip(), Instant::now(), &[]))
                };
                if let Err(e) = flows.forward(client, &buf[..n], open) {
                    tracing::debug!(listener = %name, %client, error = %e, "udp forward failed");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::debug!(listener = %name, error = %e, "udp receive failed");
            }
        }
    }
}
