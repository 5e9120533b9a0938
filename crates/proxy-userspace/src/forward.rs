//! Moving bytes between a client and a backend.
//!
//! TCP goes through `splice(2)`: socket → pipe → socket, so the payload never enters
//! user memory (upstream's Go proxier copied with `io.Copy`, which read and wrote every
//! byte and managed 36% of direct throughput). One thread per direction; end of stream
//! on one side becomes a write shutdown on the other (half-close), and an error on
//! either side tears both down so the other thread wakes.
//!
//! UDP keeps one connected socket per client towards the backend, so the backend's
//! answers find their way back to the right client, and forgets it after an idle
//! timeout (upstream's `--udp-timeout`, 250 ms by default).

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes asked of one `splice` call; the pipe is grown to match where allowed.
const CHUNK: usize = 1 << 20;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors nobody else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe means fewer round trips; failure (pipe-max-size) is harmless.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    Ok((r, w))
}

/// `SPLICE_F_MORE` (`MSG_MORE`) lets TCP fill segments instead of sending every chunk
/// as it comes, but it corks the tail: a small reply in request/response traffic would
/// sit in the proxy until the next ACK. So it is set only while the source socket
/// already holds more unread bytes, i.e. when another write follows at once.
fn more_pending(fd: RawFd) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    r == 0 && n > 0
}

fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open for the duration of the call (owned by the
        // caller); null offsets are allowed for sockets and pipes.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Copy `from` → `to` until end of stream, then shut down `to`'s write side.
pub fn splice_one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (r, w) = pipe()?;
    let mut total = 0u64;
    loop {
        let n = splice(from.as_raw_fd(), w.as_raw_fd(), CHUNK, libc::SPLICE_F_MOVE)?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let flags = if more_pending(from.as_raw_fd()) {
                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE
            } else {
                libc::SPLICE_F_MOVE
            };
            let m = splice(r.as_raw_fd(), to.as_raw_fd(), left, flags)?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        total += n as u64;
    }
    to.shutdown(Shutdown::Write)?;
    Ok(total)
}

/// Forward both directions until both are done. Blocks the calling thread; one helper
/// thread carries the backend → client direction.
pub fn splice_both(client: TcpStream, backend: TcpStream) {
    let (c2, b2) = match (client.try_clone(), backend.try_clone()) {
        (Ok(c), Ok(b)) => (c, b),
        _ => return,
    };
    let back = std::thread::spawn(move || {
        if splice_one_way(&b2, &c2).is_err() {
            let _ = b2.shutdown(Shutdown::Both);
            let _ = c2.shutdown(Shutdown::Both);
        }
    });
    if splice_one_way(&client, &backend).is_err() {
        let _ = client.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
    }
    let _ = back.join();
}

/// Per-client UDP flows of one listener.
struct Flow {
    sock: UdpSocket,
    /// Last traffic in either direction.
    last: Mutex<Instant>,
}

impl Flow {
    fn touch(&self) {
        if let Ok(mut l) = self.last.lock() {
            *l = Instant::now();
        }
    }
    fn idle_for(&self) -> Duration {
        self.last.lock().map(|l| l.elapsed()).unwrap_or_default()
    }
}

pub struct UdpFlows {
    listener: Arc<UdpSocket>,
    flows: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    idle: Duration,
    stop: Arc<AtomicBool>,
}

impl UdpFlows {
    pub fn new(listener: Arc<UdpSocket>, idle: Duration, stop: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(UdpFlows {
            listener,
            flows: Mutex::new(HashMap::new()),
            idle,
            stop,
        })
    }

    /// Number of live client flows.
    pub fn len(&self) -> usize {
        self.flows.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Send `data` from `client` to its flow's backend, opening the flow with
    /// `open(client)` (which picks the backend) when there is none.
    pub fn forward(
        self: &Arc<Self>,
        client: SocketAddr,
        data: &[u8],
        open: impl FnOnce() -> Option<SocketAddr>,
    ) -> io::Result<()> {
        let existing = self.flows.lock().ok().and_then(|f| f.get(&client).cloned());
        let flow = match existing {
            Some(f) => f,
            None => {
                let Some(backend) = open() else {
                    return Ok(());
                };
                let any: SocketAddr = if backend.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(any)?;
                s.connect(backend)?;
                s.set_read_timeout(Some(
                    self.idle
                        .clamp(Duration::from_millis(10), Duration::from_millis(500)),
                ))?;
                let flow = Arc::new(Flow {
                    sock: s,
                    last: Mutex::new(Instant::now()),
                });
                if let Ok(mut f) = self.flows.lock() {
                    f.insert(client, flow.clone());
                }
                let me = self.clone();
                let rf = flow.clone();
                std::thread::spawn(move || me.replies(client, rf));
                flow
            }
        };
        flow.touch();
        flow.sock.send(data).map(|_| ())
    }

    /// Carry the backend's answers back to `client` until the flow idles out.
    fn replies(self: Arc<Self>, client: SocketAddr, flow: Arc<Flow>) {
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::Relaxed) {
            match flow.sock.recv(&mut buf) {
                Ok(n) => {
                    flow.touch();
                    let _ = self.listener.send_to(&buf[..n], client);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if flow.idle_for() >= self.idle {
                        break;
                    }
                }
                // ICMP errors from the backend (refused) end the flow.
                Err(_) => break,
            }
        }
        if let Ok(mut f) = self.flows.lock()
            && f.get(&client).is_some_and(|s| Arc::ptr_eq(s, &flow))
        {
            f.remove(&client);
        }
    }
}
