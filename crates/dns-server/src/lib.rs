//! Twill's cluster DNS server: the wire, threads and I/O around [`twill_dns`]'s answers.
//!
//! - UDP: `workers` `SO_REUSEPORT` sockets per listen address, each drained by its own
//!   thread with `recvmmsg`/`sendmmsg` ([`udp`]). Answers come from an immutable
//!   [`twill_dns::Snapshot`] behind an `ArcSwap`: the hot path takes no lock, and a
//!   change swaps the whole snapshot ([`Engine::swap`]).
//! - TCP on the same addresses ([`tcp`]), for truncated retries.
//! - Names outside the cluster zones, and CNAME chains that leave it, go to the upstreams
//!   ([`forward`]) through a response cache ([`cache`]) as tasks on one forwarding
//!   thread (a tokio runtime), bounded by `max_concurrent`, never on a UDP worker.
//! - Metrics under CoreDNS's names ([`metrics`]); `/health`, `/ready` and `/metrics` are
//!   served by the node agent runtime's HTTP server (`twill_agent::http`).
//! - Loop detection as CoreDNS's `loop` plugin does it: a random probe name is sent to
//!   ourselves once; seeing it come back through the upstream means a forwarding loop.

pub mod cache;
pub mod engine;
pub mod forward;
pub mod metrics;
mod tcp;
pub mod udp;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub use cache::{Cache, CacheConfig};
pub use engine::{Engine, Transport};
pub use forward::{ForwardConfig, Forwarder, Policy};
pub use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("binding {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting a server thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("starting the forwarding runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// DNS addresses (UDP and TCP). Port 0 picks one port, shared by UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// UDP worker threads (sockets) per listen address.
    pub workers: usize,
    pub tcp: bool,
    /// Send the loop-detection probe to ourselves after binding.
    pub loop_probe: Option<hickory_proto::rr::Name>,
    /// Entries in each UDP worker's wire cache (0 disables it). Each costs ~300 bytes.
    pub answer_cache_entries: usize,
}

impl ServerConfig {
    pub fn new(listen: Vec<SocketAddr>) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ServerConfig {
            listen,
            workers: cores,
            tcp: true,
            loop_probe: None,
            answer_cache_entries: 8192,
        }
    }
}

/// A started server. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    forwarding: tokio::runtime::Runtime,
}

impl Running {
    /// Stop every thread and wait for them (each notices within ~200 ms).
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.forwarding.shutdown_background();
    }

    /// Block until the process is killed.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ServerError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(ServerError::Spawn)
}

/// A TCP listener; an IPv6 one is IPv6-only, so `0.0.0.0:53` and `[::]:53` can both be
/// served (as they are for UDP).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Bind everything and start the threads.
pub fn start(config: &ServerConfig, engine: Arc<Engine>) -> Result<Running, ServerError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // One thread is plenty: forwarded queries spend their time waiting, not computing.
    let forwarding = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dns-forward")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let mut udp_addrs = Vec::new();
    let mut tcp_addrs = Vec::new();
    for want in &config.listen {
        let first = udp::bind_reuseport(*want).map_err(|source| ServerError::Bind {
            proto: "udp",
            addr: *want,
            source,
        })?;
        let addr = first.local_addr().map_err(|source| ServerError::Bind {
            proto: "udp",
            addr: *want,
            source,
        })?;
        udp_addrs.push(addr);
        let mut sockets = vec![first];
        for _ in 1..config.workers.max(1) {
            sockets.push(
                udp::bind_reuseport(addr).map_err(|source| ServerError::Bind {
                    proto: "udp",
                    addr,
                    source,
                })?,
            );
        }
        for (i, s) in sockets.into_iter().enumerate() {
            let (engine, stop) = (engine.clone(), stop.clone());
            let handle = forwarding.handle().clone();
            let cache = config.answer_cache_entries;
            threads.push(spawn(format!("dns-udp-{i}"), move || {
                udp::run_worker(Arc::new(s), engine, handle, stop, cache)
            })?);
        }
        if config.tcp {
            let l = bind_tcp(addr).map_err(|source| ServerError::Bind {
                proto: "tcp",
                addr,
                source,
            })?;
            tcp_addrs.push(addr);
            let (engine, stop) = (engine.clone(), stop.clone());
            let handle = forwarding.handle().clone();
            threads.push(spawn("dns-tcp".into(), move || {
                tcp::run_listener(l, engine, handle, stop)
            })?);
        }
    }
    if let Some(f) = engine.forwarder() {
        let every = f.config().health_check;
        let (engine, stop) = (engine.clone(), stop.clone());
        forwarding.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                if let Some(f) = engine.forwarder() {
                    f.health_check().await;
                }
            }
        });
    }
    if let (Some(probe), Some(addr)) = (&config.loop_probe, udp_addrs.first()) {
        send_probe(probe, *addr);
    }
    Ok(Running {
        udp: udp_addrs,
        tcp: tcp_addrs,
        stop,
        threads,
        forwarding,
    })
}

/// The host's non-loopback interface addresses: what CoreDNS's `boundIPs` uses as the
/// server's own addresses (for the apex NS record) when it listens on a wildcard address.
pub fn interface_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return vec![];
    };
    let mut out: Vec<std::net::IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Hand freed heap pages back to the kernel. Loading manifests builds large temporary
/// JSON trees; glibc keeps their pages after they are freed, which would count against
/// the server's RSS for its whole life. Call once after the first snapshot is built.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The address to reach a listener bound to a wildcard address.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

fn send_probe(probe: &hickory_proto::rr::Name, addr: SocketAddr) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        probe.clone(),
        hickory_proto::rr::RecordType::HINFO,
    ));
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    if let (Ok(s), Ok(bytes)) = (UdpSocket::bind(bind), m.to_vec()) {
        let _ = s.send_to(&bytes, reachable(addr));
    }
}
