//! Tiny servers and clients for probing: a TCP server that answers `ok` and closes, a UDP
//! echo, and clients that may bind a chosen source address (probes from node and
//! external addresses need it; std's `TcpStream` cannot bind before connecting, hence the
//! few lines of libc here).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use twill_model::Protocol;

/// How often an idle listener looks at its stop flag.
const IDLE: Duration = Duration::from_millis(200);

fn poll_fd(fd: i32, events: i16, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & events != 0
}

/// Serve `port/protocol` on `addr` (every address when unspecified) in `netns` until
/// `stop`. Binds before returning, so a probe right after cannot race the bind. A host
/// with several addresses needs one UDP listener per address: an unbound UDP socket
/// answers from the route's preferred source, which a connected client drops.
pub fn spawn_listener(
    netns: std::path::PathBuf,
    addr: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = std::thread::spawn(move || {
        if let Err(e) = super::netns::enter(&netns) {
            let _ = tx.send(Err(e));
            return;
        }
        let addr = SocketAddr::from((addr, port));
        match protocol {
            Protocol::Tcp => {
                let l = match TcpListener::bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(format!("bind tcp {port}: {e}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    if poll_fd(l.as_raw_fd(), libc::POLLIN, IDLE)
                        && let Ok((mut s, _)) = l.accept()
                    {
                        let _ = s.write_all(b"ok");
                    }
                }
            }
            Protocol::Udp => {
                let s = match UdpSocket::bind(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(format!("bind udp {port}: {e}")));
                        return;
                    }
                };
                let _ = s.set_read_timeout(Some(IDLE));
                let _ = tx.send(Ok(()));
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            }
            Protocol::Sctp => {
                let _ = tx.send(Err(
                    "SCTP listeners are not supported by this harness".into()
                ));
            }
        }
    });
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err("listener thread ended".into()),
    }
}

/// Whether this kernel can open SCTP sockets at all.
pub fn sctp_supported() -> bool {
    // SAFETY: plain socket(2); the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd >= 0 {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        true
    } else {
        false
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// TCP: connect (from `bind` if given) and read the server's `ok`.
pub fn tcp_probe(bind: Option<Ipv4Addr>, dst: SocketAddrV4, timeout: Duration) -> bool {
    // SAFETY: socket(2) returns a new fd or -1.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return false;
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    if let Some(src) = bind {
        let sa = sockaddr(SocketAddrV4::new(src, 0));
        // SAFETY: sa lives across the call; len matches its type.
        if unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_in).cast(), len) } != 0 {
            return false;
        }
    }
    let sa = sockaddr(dst);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(raw, (&sa as *const libc::sockaddr_in).cast(), len) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return false;
    }
    if !poll_fd(raw, libc::POLLOUT, timeout) {
        return false;
    }
    let mut err: libc::c_int = 0;
    let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err/elen are valid for writing.
    let rc = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut elen,
        )
    };
    if rc != 0 || err != 0 {
        return false;
    }
    let mut stream = TcpStream::from(fd);
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    let mut buf = [0u8; 2];
    matches!(stream.read(&mut buf), Ok(n) if n > 0)
}

/// UDP: send a datagram (from `bind` if given) and wait for the echo.
pub fn udp_probe(bind: Option<Ipv4Addr>, dst: SocketAddrV4, timeout: Duration) -> bool {
    let src = SocketAddr::from((bind.unwrap_or(Ipv4Addr::UNSPECIFIED), 0));
    let Ok(s) = UdpSocket::bind(src) else {
        return false;
    };
    if s.connect(dst).is_err() || s.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    if s.send(b"probe").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.recv(&mut buf), Ok(n) if n > 0)
}

/// One probe from the calling thread's namespace.
pub fn probe(
    bind: Option<IpAddr>,
    dst: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Option<bool> {
    let bind = match bind {
        Some(IpAddr::V4(a)) => Some(a),
        Some(IpAddr::V6(_)) => return None,
        None => None,
    };
    let IpAddr::V4(dst) = dst else { return None };
    let dst = SocketAddrV4::new(dst, port);
    match protocol {
        Protocol::Tcp => Some(tcp_probe(bind, dst, timeout)),
        Protocol::Udp => Some(udp_probe(bind, dst, timeout)),
        Protocol::Sctp => None,
    }
}
