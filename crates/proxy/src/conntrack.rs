//! UDP conntrack cleanup over netlink (ctnetlink), in the calling thread's namespace.
//!
//! When a UDP endpoint goes away, entries NATed to it keep steering the client's
//! "connection" at a dead address; when a service gets its first endpoint, entries
//! created while it rejected traffic keep rejecting. Upstream deletes those with
//! conntrack filters; we dump the table (`IPCTNL_MSG_CT_GET` + `NLM_F_DUMP`), pick the
//! matching UDP entries, and delete each by its original tuple (`IPCTNL_MSG_CT_DELETE`).
//! Hand-rolled because only these two messages are needed and no maintained crate
//! covers ctnetlink; the layout is `linux/netfilter/nfnetlink_conntrack.h`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use twill_proxy_core::StaleConntrack;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConntrackError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("conntrack {op}: kernel said errno {errno}")]
    Kernel { op: &'static str, errno: i32 },
    #[error("conntrack dump: malformed message")]
    Malformed,
}

/// One tuple as conntrack reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: u8,
    sport: Option<u16>,
    dport: Option<u16>,
}

/// One entry: its raw original-tuple attribute (for deletion) and parsed tuples.
#[derive(Debug, Clone)]
struct Entry {
    orig_raw: Vec<u8>,
    orig: Tuple,
    reply: Tuple,
}

fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    // (type, payload, whole attribute)
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len], &b[..len]));
        let adv = (len + 3) & !3;
        b = &b[adv.min(b.len())..];
    }
    out
}

fn ip_of(ty: u16, v: &[u8]) -> Option<IpAddr> {
    match (ty, v.len()) {
        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
            Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])))
        }
        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(v);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

fn tuple(b: &[u8]) -> Tuple {
    let mut t = Tuple {
        src: None,
        dst: None,
        proto: 0,
        sport: None,
        dport: None,
    };
    for (ty, v, _) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ity, iv, _) in attrs(v) {
                    match ity {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = ip_of(ity, iv),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = ip_of(ity, iv),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (pty, pv, _) in attrs(v) {
                    match (pty, pv.len()) {
                        (CTA_PROTO_NUM, 1) => t.proto = pv[0],
                        (CTA_PROTO_SRC_PORT, 2) => {
                            t.sport = Some(u16::from_be_bytes([pv[0], pv[1]]))
                        }
                        (CTA_PROTO_DST_PORT, 2) => {
                            t.dport = Some(u16::from_be_bytes([pv[0], pv[1]]))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

fn header(ty: u16, flags: u16, seq: u32, family: u8, payload: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(payload);
    m
}

fn open() -> Result<OwnedFd, ConntrackError> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(ConntrackError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, msg: &[u8]) -> Result<(), ConntrackError> {
    // SAFETY: msg is a valid buffer of msg.len() bytes; the kernel is the peer (no address needed).
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        Err(ConntrackError::Socket(std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Read messages until DONE (dump) or the ack (single request); call `f` on each
/// data message's payload (after the nfgenmsg header).
fn recv_all(
    fd: &OwnedFd,
    op: &'static str,
    mut f: impl FnMut(&[u8]),
) -> Result<(), ConntrackError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(ConntrackError::Socket(std::io::Error::last_os_error()));
        }
        let mut b = &buf[..n as usize];
        while b.len() >= 16 {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            if len < 16 || len > b.len() {
                return Err(ConntrackError::Malformed);
            }
            let body = &b[16..len];
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    return match errno {
                        0 => Ok(()),
                        e if -e == libc::ENOENT => Ok(()),
                        e => Err(ConntrackError::Kernel { op, errno: -e }),
                    };
                }
                _ if body.len() >= 4 => f(&body[4..]),
                _ => {}
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
    }
}

fn dump(family: u8) -> Result<Vec<Entry>, ConntrackError> {
    let fd = open()?;
    send(
        &fd,
        &header(
            IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family,
            &[],
        ),
    )?;
    let mut out = Vec::new();
    recv_all(&fd, "dump", |payload| {
        let mut e = Entry {
            orig_raw: Vec::new(),
            orig: tuple(&[]),
            reply: tuple(&[]),
        };
        for (ty, v, whole) in attrs(payload) {
            match ty {
                CTA_TUPLE_ORIG => {
                    e.orig_raw = whole.to_vec();
                    e.orig = tuple(v);
                }
                CTA_TUPLE_REPLY => e.reply = tuple(v),
                _ => {}
            }
        }
        out.push(e);
    })?;
    Ok(out)
}

fn matches(e: &Entry, s: &StaleConntrack) -> bool {
    if e.orig.proto != IPPROTO_UDP {
        return false;
    }
    match s {
        StaleConntrack::ServiceIp { ip, port } => {
            e.orig.dst == Some(*ip) && e.orig.dport == Some(*port)
        }
        StaleConntrack::Endpoint {
            service_ip,
            endpoint_ip,
        } => e.orig.dst == Some(*service_ip) && e.reply.src == Some(*endpoint_ip),
    }
}

/// Delete the UDP entries the selectors name; returns how many were deleted.
pub fn clear_stale(stale: &[StaleConntrack]) -> Result<usize, ConntrackError> {
    if stale.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let entries = dump(family)?;
        let fd = open()?;
        for (i, e) in entries
            .iter()
            .filter(|e| stale.iter().any(|s| matches(e, s)))
            .enumerate()
        {
            send(
                &fd,
                &header(
                    IPCTNL_MSG_CT_DELETE,
                    NLM_F_REQUEST | NLM_F_ACK,
                    2 + i as u32,
                    family,
                    &e.orig_raw,
                ),
            )?;
            recv_all(&fd, "delete", |_| {})?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_nested_tuples_and_matches_stale_udp_selectors() {
        let ip = [
            nla(CTA_IP_V4_SRC, &[10, 0, 0, 2]),
            nla(CTA_IP_V4_DST, &[172, 30, 0, 1]),
        ]
        .concat();
        let proto = [
            nla(CTA_PROTO_NUM, &[17]),
            nla(CTA_PROTO_DST_PORT, &53u16.to_be_bytes()),
        ]
        .concat();
        let orig = [
            nla(CTA_TUPLE_IP | 0x8000, &ip),
            nla(CTA_TUPLE_PROTO | 0x8000, &proto),
        ]
        .concat();
        let rip = [
            nla(CTA_IP_V4_SRC, &[10, 1, 0, 7]),
            nla(CTA_IP_V4_DST, &[10, 0, 0, 2]),
        ]
        .concat();
        let reply = [
            nla(CTA_TUPLE_IP | 0x8000, &rip),
            nla(CTA_TUPLE_PROTO | 0x8000, &proto),
        ]
        .concat();
        let payload = [
            nla(CTA_TUPLE_ORIG | 0x8000, &orig),
            nla(CTA_TUPLE_REPLY | 0x8000, &reply),
        ]
        .concat();
        let mut e = None;
        for (ty, v, whole) in attrs(&payload) {
            if ty == CTA_TUPLE_ORIG {
                e = Some(Entry {
                    orig_raw: whole.to_vec(),
                    orig: tuple(v),
                    reply: tuple(&[]),
                });
            } else if ty == CTA_TUPLE_REPLY {
                e.as_mut().unwrap().reply = tuple(v);
            }
        }
        let e = e.unwrap();
        let svc: IpAddr = "172.30.0.1".parse().unwrap();
        assert!(matches(
            &e,
            &StaleConntrack::ServiceIp { ip: svc, port: 53 }
        ));
        assert!(!matches(
            &e,
            &StaleConntrack::ServiceIp { ip: svc, port: 54 }
        ));
        assert!(matches(
            &e,
            &StaleConntrack::Endpoint {
                service_ip: svc,
                endpoint_ip: "10.1.0.7".parse().unwrap()
            }
        ));
        assert!(!matches(
            &e,
            &StaleConntrack::Endpoint {
                service_ip: svc,
                endpoint_ip: "10.1.0.8".parse().unwrap()
            }
        ));
        assert_eq!(e.orig_raw.len(), 4 + orig.len());
    }
}

/// The conntrack sysctls kube-proxy sets at start (`--conntrack-*`); `None` leaves one
/// as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls {
    /// `nf_conntrack_max` (kube-proxy: max(maxPerCore × CPUs, min)); the hash table is
    /// grown to a quarter of it, as kube-proxy does.
    pub max: Option<u64>,
    pub tcp_established_timeout: Option<Duration>,
    pub tcp_close_wait_timeout: Option<Duration>,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Option<Duration>,
    pub udp_stream_timeout: Option<Duration>,
}

const NETFILTER: &str = "/proc/sys/net/netfilter";

/// Write one value when it differs; a note either way it changed or failed.
fn set(path: &str, want: u64, notes: &mut Vec<String>) {
    let now = std::fs::read_to_string(path).ok();
    if now.as_deref().map(str::trim) == Some(want.to_string().as_str()) {
        return;
    }
    match std::fs::write(path, want.to_string()) {
        Ok(()) => notes.push(format!("set {path}={want}")),
        Err(e) => notes.push(format!("could not set {path}={want}: {e}")),
    }
}

/// Whether this thread is in the host's network namespace (the one pid 1 is in).
fn in_initial_netns() -> bool {
    match (
        std::fs::read_link("/proc/thread-self/ns/net"),
        std::fs::read_link("/proc/1/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Apply kube-proxy's conntrack settings in the calling thread's network namespace.
/// `nf_conntrack_max` and the hash size are host-wide: the kernel takes them only from
/// the initial namespace, so elsewhere they are left alone (and said so), as kube-proxy
/// leaves them when it cannot write them.
pub fn apply_settings(s: &Sysctls) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(max) = s.max {
        if in_initial_netns() {
            set(&format!("{NETFILTER}/nf_conntrack_max"), max, &mut notes);
            let hash = "/sys/module/nf_conntrack/parameters/hashsize";
            let now: u64 = std::fs::read_to_string(hash)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            if now < max / 4 {
                set(hash, max / 4, &mut notes);
            }
        } else {
            notes.push(format!(
                "nf_conntrack_max={max} not set: it is host-wide and this is not the host's network namespace"
            ));
        }
    }
    for (name, v) in [
        (
            "nf_conntrack_tcp_timeout_established",
            s.tcp_established_timeout,
        ),
        (
            "nf_conntrack_tcp_timeout_close_wait",
            s.tcp_close_wait_timeout,
        ),
        ("nf_conntrack_udp_timeout", s.udp_timeout),
        ("nf_conntrack_udp_timeout_stream", s.udp_stream_timeout),
    ] {
        if let Some(d) = v.filter(|d| !d.is_zero()) {
            set(
                &format!("{NETFILTER}/{name}"),
                d.as_secs().max(1),
                &mut notes,
            );
        }
    }
    if s.tcp_be_liberal {
        set(
            &format!("{NETFILTER}/nf_conntrack_tcp_be_liberal"),
            1,
            &mut notes,
        );
    }
    notes
}

/// A new connection as conntrack reports it: where it was addressed (the original
/// destination) and who answers it (the reply's source: after DNAT, the endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewConnection {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub dst: IpAddr,
    pub dport: u16,
    pub reply_src: IpAddr,
    pub reply_sport: u16,
}

/// `NFNLGRP_CONNTRACK_NEW`'s bit in the netlink groups mask.
const NF_NETLINK_CONNTRACK_NEW: u32 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;

/// Parse one netlink datagram of conntrack events into the new connections it holds.
fn new_connections(buf: &[u8]) -> Vec<NewConnection> {
    let mut out = Vec::new();
    let mut b = buf;
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < 16 || len > b.len() {
            break;
        }
        if ty == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW && len >= 20 {
            let (mut orig, mut reply) = (None, None);
            for (ty, v, _) in attrs(&b[20..len]) {
                match ty {
                    CTA_TUPLE_ORIG => orig = Some(tuple(v)),
                    CTA_TUPLE_REPLY => reply = Some(tuple(v)),
                    _ => {}
                }
            }
            if let (Some(o), Some(r)) = (orig, reply)
                && let (Some(dst), Some(dport), Some(reply_src), Some(reply_sport)) =
                    (o.dst, o.dport, r.src, r.sport)
            {
                out.push(NewConnection {
                    proto: o.proto,
                    dst,
                    dport,
                    reply_src,
                    reply_sport,
                });
            }
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// Follow conntrack's new-connection events in the calling thread's network namespace,
/// calling `f` for each until it returns false. Events the kernel could not queue (the
/// socket's buffer full under a flood) are skipped, not fatal: the counts are a view,
/// not the data plane.
pub fn watch_new(mut f: impl FnMut(NewConnection) -> bool) -> Result<(), ConntrackError> {
    let fd = open()?;
    // SAFETY: a zeroed sockaddr_nl is valid; its family and groups are set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = NF_NETLINK_CONNTRACK_NEW;
    // SAFETY: sa is a valid sockaddr_nl of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(ConntrackError::Socket(std::io::Error::last_os_error()));
    }
    let size: libc::c_int = 4 << 20;
    // SAFETY: setting an int socket option from a valid int.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                _ => return Err(ConntrackError::Socket(e)),
            }
        }
        for c in new_connections(&buf[..n as usize]) {
            if !f(c) {
                return Ok(());
            }
        }
    }
}
