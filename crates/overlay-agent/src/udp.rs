//! The udp backend's data path (flannel's `pkg/backend/udp` proxy): IP packets read from
//! the TUN device `flannel0` are sent as UDP datagrams to the peer owning the destination
//! subnet; datagrams received on the UDP port are written back into the TUN device.
//!
//! Speed comes from batching and from not allocating per packet: each direction runs on
//! its own thread with buffers allocated once; the UDP side moves up to [`BATCH`]
//! datagrams per `recvmmsg`/`sendmmsg` call, with UDP GSO on send (a run of packets for one
//! peer passes the stack once) and UDP GRO on receive; the TUN side drains every ready
//! packet before sending, and the peer table is read once per batch. TUN offloads (`IFF_VNET_HDR` with
//! GSO) are not used: a GSO super-packet would have to be segmented in userspace before
//! encapsulation, which is where the cost is, so the device stays at plain MTU-sized
//! packets. libc is called directly because neither std nor tokio expose `recvmmsg`,
//! `sendmmsg` or `TUNSETIFF`.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use twill_overlay::state::UdpPeer;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;

/// Counters the relay keeps (for metrics and tests).
#[derive(Debug, Default)]
pub struct RelayStats {
    pub tun_to_udp: AtomicU64,
    pub udp_to_tun: AtomicU64,
    /// Packets for a destination no peer owns.
    pub no_route: AtomicU64,
}

type PeerMap = Arc<RwLock<Vec<(Ipv4Net, SocketAddrV4)>>>;

/// A running relay; stops and closes the TUN device (which then disappears) on drop.
pub struct UdpRelay {
    stop: Arc<AtomicBool>,
    peers: PeerMap,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<RelayStats>,
}

impl std::fmt::Debug for UdpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpRelay")
            .field("peers", &self.peers)
            .finish()
    }
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Create (or attach to) the TUN device `name`, without packet-info headers.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TUN name {name:?} too long"),
        ));
    }
    // SAFETY: a NUL-terminated literal path; the returned fd is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct we own.
    if unsafe { libc::ioctl(owned.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// Bytes of UDP socket buffer asked for in each direction.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn grow_buffers(fd: RawFd, bytes: libc::c_int) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let v: *const libc::c_void = (&bytes as *const libc::c_int).cast();
        // SAFETY: setsockopt reads one c_int from a live local.
        let forced = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, force, v, len) } == 0;
        if !forced {
            // Without CAP_NET_ADMIN the kernel caps this at net.core.*mem_max; fine.
            // SAFETY: as above.
            unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, plain, v, len) };
        }
    }
}

fn poll_in(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 && (p.revents & libc::POLLIN) != 0 }
}

/// Longest-prefix match of an IPv4 destination in a short, sorted peer list.
fn lookup(peers: &[(Ipv4Net, SocketAddrV4)], dst: Ipv4Addr) -> Option<SocketAddrV4> {
    peers
        .iter()
        .filter(|(n, _)| n.contains(&dst))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, a)| *a)
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

impl UdpRelay {
    /// Create `tun_name` and bind `listen` in the calling thread's namespace, then relay.
    pub fn start(tun_name: &str, listen: SocketAddrV4, mtu: usize) -> io::Result<UdpRelay> {
        let tun = Arc::new(open_tun(tun_name)?);
        let sock = Arc::new(UdpSocket::bind(listen)?);
        sock.set_nonblocking(true)?;
        // Deep socket buffers: a burst the relay thread cannot drain at once would be dropped
        // by the kernel, and TCP inside the tunnel reads drops as congestion.
        grow_buffers(sock.as_raw_fd(), SOCKET_BUFFER);
        let stop = Arc::new(AtomicBool::new(false));
        let peers: PeerMap = Arc::default();
        let stats = Arc::new(RelayStats::default());
        let buf_len = mtu.max(1500) + 64;
        let mut threads = Vec::new();
        {
            let (tun, sock, stop, peers, stats) = (
                tun.clone(),
                sock.clone(),
                stop.clone(),
                peers.clone(),
                stats.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("udp-relay-out".into())
                    .spawn(move || tun_to_udp(&tun, &sock, &stop, &peers, &stats, buf_len))?,
            );
        }
        {
            let (tun, sock, stop, stats) = (tun.clone(), sock.clone(), stop.clone(), stats.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("udp-relay-in".into())
                    .spawn(move || udp_to_tun(&tun, &sock, &stop, &stats, buf_len))?,
            );
        }
        Ok(UdpRelay {
            stop,
            peers,
            threads,
            stats,
        })
    }

    /// Replace the peer table.
    pub fn set_peers(&self, peers: &BTreeSet<UdpPeer>) {
        let table: Vec<(Ipv4Net, SocketAddrV4)> = peers
            .iter()
            .map(|p| (p.subnet, SocketAddrV4::new(p.public_ip, p.port)))
            .collect();
        *self.peers.write().expect("peer table lock") = table;
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Room for one cmsg carrying a u16 or an int (UDP_SEGMENT / UDP_GRO), 8-byte aligned.
type Ctrl = [u64; 4];

/// Group consecutive packets for one peer into one GSO send: all but the last of a group
/// must have the group's size (the kernel cuts the payload every `gso_size` bytes, which
/// then falls exactly on our packet boundaries). Returns (start, count, gso_size) groups.
fn gso_groups(peers: &[SocketAddrV4], lens: &[usize], out: &mut Vec<(usize, usize, usize)>) {
    out.clear();
    let mut j = 0;
    while j < peers.len() {
        let size = lens[j];
        let mut k = j + 1;
        let mut total = size;
        while k < peers.len()
            && peers[k] == peers[j]
            && k - j < MAX_GSO_SEGMENTS
            && total + lens[k] <= MAX_GSO_BYTES
            && lens[k] <= size
            && lens[k - 1] == size
        {
            total += lens[k];
            k += 1;
        }
        out.push((j, k - j, size));
        j = k;
    }
}

/// Kernel limits for one UDP GSO send.
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 60_000;

fn tun_to_udp(
    tun: &OwnedFd,
    sock: &UdpSocket,
    stop: &AtomicBool,
    peers: &PeerMap,
    stats: &RelayStats,
    buf_len: usize,
) {
    let mut bufs = vec![vec![0u8; buf_len]; BATCH];
    let mut lens = [0usize; BATCH];
    // Per outgoing packet, in send order.
    let mut out_peer: Vec<SocketAddrV4> = Vec::with_capacity(BATCH);
    let mut out_len: Vec<usize> = Vec::with_capacity(BATCH);
    let mut groups: Vec<(usize, usize, usize)> = Vec::with_capacity(BATCH);
    // SAFETY (for the zeroed values below): these are plain C structs; all-zero is valid.
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut ctrls: Vec<Ctrl> = vec![[0; 4]; BATCH];
    // UDP GSO (Linux 4.18+) turns a batch for one peer into one trip through the stack;
    // the datagrams on the wire are the same. Off for good after the first refusal.
    let mut gso = true;
    while !stop.load(Ordering::Relaxed) {
        if !poll_in(tun.as_raw_fd(), 200) {
            continue;
        }
        let mut n = 0;
        while n < BATCH {
            // SAFETY: reading into our own buffer of buf_len bytes.
            let r = unsafe { libc::read(tun.as_raw_fd(), bufs[n].as_mut_ptr().cast(), buf_len) };
            if r <= 0 {
                break;
            }
            lens[n] = r as usize;
            n += 1;
        }
        out_peer.clear();
        out_len.clear();
        {
            let table = peers.read().expect("peer table lock");
            for i in 0..n {
                let pkt = &bufs[i][..lens[i]];
                if pkt.len() < 20 || pkt[0] >> 4 != 4 {
                    continue;
                }
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                let Some(peer) = lookup(&table, dst) else {
                    stats.no_route.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                iovs[out_peer.len()] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr().cast(),
                    iov_len: lens[i],
                };
                out_peer.push(peer);
                out_len.push(lens[i]);
            }
        }
        let m = out_peer.len();
        if m == 0 {
            continue;
        }
        loop {
            if gso {
                gso_groups(&out_peer, &out_len, &mut groups);
            } else {
                groups.clear();
                groups.extend((0..m).map(|j| (j, 1, out_len[j])));
            }
            for (g, &(start, count, size)) in groups.iter().enumerate() {
                addrs[g] = sockaddr(out_peer[start]);
                let h = &mut msgs[g].msg_hdr;
                h.msg_name = (&mut addrs[g] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iovs[start];
                h.msg_iovlen = count;
                h.msg_flags = 0;
                if count > 1 {
                    h.msg_control = ctrls[g].as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE/LEN are pure size computations.
                    h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
                    // SAFETY: the control buffer is 32 aligned bytes, enough for one u16 cmsg.
                    unsafe {
                        let c = libc::CMSG_FIRSTHDR(h);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = libc::UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
                    }
                } else {
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                }
            }
            let total = groups.len();
            let mut sent = 0;
            let mut refused = false;
            while sent < total {
                // SAFETY: msgs[sent..total] point at live buffers, iovecs, addresses, cmsgs.
                let r = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        msgs[sent..].as_mut_ptr(),
                        (total - sent) as u32,
                        0,
                    )
                };
                if r > 0 {
                    sent += r as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    let mut p = libc::pollfd {
                        fd: sock.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 100) };
                    continue;
                }
                if gso
                    && sent == 0
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                    )
                {
                    refused = true;
                }
                // Unreachable peer and the like: drop the rest of this batch, as a router would.
                break;
            }
            if refused {
                tracing::info!("UDP GSO refused by the kernel; sending one datagram per packet");
                gso = false;
                continue;
            }
            let packets: usize = groups[..sent].iter().map(|g| g.1).sum();
            stats
                .tun_to_udp
                .fetch_add(packets as u64, Ordering::Relaxed);
            break;
        }
    }
}

/// Receive buffer per slot: room for a GRO-coalesced train of datagrams.
const GRO_BUF: usize = 65_536;

fn udp_to_tun(
    tun: &OwnedFd,
    sock: &UdpSocket,
    stop: &AtomicBool,
    stats: &RelayStats,
    buf_len: usize,
) {
    // UDP GRO (Linux 5.0+): the kernel may hand over a train of same-size datagrams in one
    // buffer, with the datagram size in a cmsg; each datagram is one inner packet.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    let gro = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    let slot = if gro { GRO_BUF.max(buf_len) } else { buf_len };
    let mut bufs = vec![vec![0u8; slot]; BATCH];
    // SAFETY: plain C structs; all-zero is valid.
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut ctrls: Vec<Ctrl> = vec![[0; 4]; BATCH];
    for i in 0..BATCH {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: slot,
        };
    }
    while !stop.load(Ordering::Relaxed) {
        if !poll_in(sock.as_raw_fd(), 200) {
            continue;
        }
        for i in 0..BATCH {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = ctrls[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<Ctrl>();
            h.msg_flags = 0;
            msgs[i].msg_len = 0;
        }
        // SAFETY: BATCH headers pointing at BATCH live buffers and control areas.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            let mut seg = len;
            // SAFETY: walking the control area the kernel filled for this message.
            unsafe {
                let h = &msgs[i].msg_hdr;
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        seg = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>())
                            as usize;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            if seg == 0 {
                continue;
            }
            let mut off = 0;
            while off < len {
                let end = (off + seg).min(len);
                if end - off >= 20 {
                    // SAFETY: writing bytes we received, inside our buffer.
                    let w = unsafe {
                        libc::write(tun.as_raw_fd(), bufs[i][off..].as_ptr().cast(), end - off)
                    };
                    if w > 0 {
                        stats.udp_to_tun.fetch_add(1, Ordering::Relaxed);
                    }
                }
                off = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_groups_split_on_peer_size_and_a_short_tail() {
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 2), 8285);
        let b = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 3), 8285);
        let mut g = Vec::new();
        gso_groups(
            &[a, a, a, b, b, a],
            &[1400, 1400, 600, 1400, 1400, 1400],
            &mut g,
        );
        assert_eq!(g, vec![(0, 3, 1400), (3, 2, 1400), (5, 1, 1400)]);
        gso_groups(&[a, a, a], &[600, 1400, 1400], &mut g);
        assert_eq!(
            g,
            vec![(0, 1, 600), (1, 2, 1400)],
            "a longer packet never follows in a group"
        );
        let many = vec![a; 100];
        gso_groups(&many, &[1400; 100], &mut g);
        assert!(
            g.iter()
                .all(|x| x.1 * 1400 <= MAX_GSO_BYTES && x.1 <= MAX_GSO_SEGMENTS)
        );
        assert_eq!(g.iter().map(|x| x.1).sum::<usize>(), 100);
    }

    #[test]
    fn longest_prefix_wins_and_unknown_destinations_have_no_peer() {
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 2), 8285);
        let b = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 3), 8285);
        let peers = vec![
            ("10.244.0.0/16".parse().unwrap(), a),
            ("10.244.3.0/24".parse().unwrap(), b),
        ];
        assert_eq!(lookup(&peers, Ipv4Addr::new(10, 244, 3, 9)), Some(b));
        assert_eq!(lookup(&peers, Ipv4Addr::new(10, 244, 7, 9)), Some(a));
        assert_eq!(lookup(&peers, Ipv4Addr::new(10, 9, 0, 1)), None);
    }
}
