//! IPVS generic-netlink messages (`include/uapi/linux/ip_vs.h`,
//! `include/uapi/linux/genetlink.h`).
//!
//! Framing (the `nlmsghdr`, attribute headers, alignment, nesting) is
//! `netlink-packet-core`'s, the same layer rtnetlink builds on. The generic-netlink
//! header is four bytes (`cmd`, `version`, two reserved) and is written here rather than
//! pulling in `netlink-packet-generic` for it; the IPVS attributes are defined here
//! because no crate carries them.
//!
//! Layout choices, each as the kernel reads them (`net/netfilter/ipvs/ip_vs_ctl.c`,
//! `ip_vs_genl_parse_service`, `ip_vs_genl_parse_dest`):
//! - addresses are sent as the 16-byte `union nf_inet_addr` (IPv4 in the first four
//!   bytes, the rest zero), as ipvsadm's libipvs does;
//! - ports are big-endian (`__be16`), every other integer host order;
//! - a full service (`NEW_SERVICE`/`SET_SERVICE`) must carry scheduler, flags, timeout
//!   and netmask; a full destination (`NEW_DEST`/`SET_DEST`) forwarding method, weight
//!   and both thresholds, or the kernel answers `EINVAL`;
//! - nested attributes carry `NLA_F_NESTED`, which the kernel's parser accepts and
//!   newer policies expect.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    Emitable, NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, Nla,
};
use twill_model::Protocol;

use crate::diff::KernelDest;
use crate::plan::{RealServer, ServiceSpec, VsKey};

/// `GENL_ID_CTRL`: the controller family's fixed id.
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_NEWFAMILY: u8 = 1;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// The controller's version as sent by libnl's `genl_ctrl_resolve`.
pub const CTRL_VERSION: u8 = 1;

/// `IPVS_GENL_NAME`, `IPVS_GENL_VERSION`.
pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 0x1;

/// `enum { IPVS_CMD_UNSPEC = 0, IPVS_CMD_NEW_SERVICE, ... }`.
pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub const IPVS_CMD_SET_SERVICE: u8 = 2;
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub const IPVS_CMD_GET_SERVICE: u8 = 4;
pub const IPVS_CMD_NEW_DEST: u8 = 5;
pub const IPVS_CMD_SET_DEST: u8 = 6;
pub const IPVS_CMD_DEL_DEST: u8 = 7;
pub const IPVS_CMD_GET_DEST: u8 = 8;

/// `IPVS_CMD_ATTR_*`.
pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
pub const IPVS_CMD_ATTR_DEST: u16 = 2;

/// `IPVS_SVC_ATTR_*`.
pub const IPVS_SVC_ATTR_AF: u16 = 1;
pub const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
pub const IPVS_SVC_ATTR_ADDR: u16 = 3;
pub const IPVS_SVC_ATTR_PORT: u16 = 4;
pub const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
pub const IPVS_SVC_ATTR_FLAGS: u16 = 7;
pub const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
pub const IPVS_SVC_ATTR_NETMASK: u16 = 9;

/// `IPVS_DEST_ATTR_*`.
pub const IPVS_DEST_ATTR_ADDR: u16 = 1;
pub const IPVS_DEST_ATTR_PORT: u16 = 2;
pub const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
pub const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
pub const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
pub const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
pub const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
pub const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// `IP_VS_CONN_F_MASQ`: NAT forwarding, what kube-proxy uses.
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

fn ip_proto(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn proto_of(n: u16) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

fn af(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in front.
fn inet_addr(ip: &IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
    }
    b
}

/// An attribute: kind (with `NLA_F_NESTED` for nests) and its value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Attr {
    fn u16(kind: u16, v: u16) -> Self {
        Attr::Bytes(kind, v.to_ne_bytes().to_vec())
    }
    fn u32(kind: u16, v: u32) -> Self {
        Attr::Bytes(kind, v.to_ne_bytes().to_vec())
    }
    fn be16(kind: u16, v: u16) -> Self {
        Attr::Bytes(kind, v.to_be_bytes().to_vec())
    }
    fn cstr(kind: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        Attr::Bytes(kind, v)
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, v) => v.len(),
            Attr::Nested(_, inner) => inner.as_slice().buffer_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes(k, _) => *k,
            Attr::Nested(k, _) => *k | NLA_F_NESTED,
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, v) => buffer[..v.len()].copy_from_slice(v),
            Attr::Nested(_, inner) => inner.as_slice().emit(buffer),
        }
    }
}

/// A generic-netlink message: family id (the netlink message type), the four-byte
/// `genlmsghdr`, attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenlMessage {
    pub family: u16,
    pub cmd: u8,
    pub version: u8,
    pub attrs: Vec<Attr>,
}

impl NetlinkSerializable for GenlMessage {
    fn message_type(&self) -> u16 {
        self.family
    }
    fn buffer_len(&self) -> usize {
        4 + self.attrs.as_slice().buffer_len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.cmd;
        buffer[1] = self.version;
        buffer[2] = 0;
        buffer[3] = 0;
        self.attrs.as_slice().emit(&mut buffer[4..]);
    }
}

/// The wire bytes of `msg` with `flags` and sequence number `seq` (port id 0: the
/// kernel fills in the sender).
pub fn frame(msg: GenlMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// `CTRL_CMD_GETFAMILY` for `IPVS`: the reply carries the family id every other
/// message needs.
pub fn resolve_family(seq: u32) -> Vec<u8> {
    frame(
        GenlMessage {
            family: GENL_ID_CTRL,
            cmd: CTRL_CMD_GETFAMILY,
            version: CTRL_VERSION,
            attrs: vec![Attr::cstr(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME)],
        },
        NLM_F_REQUEST,
        seq,
    )
}

fn service_key_attrs(key: &VsKey) -> Vec<Attr> {
    vec![
        Attr::u16(IPVS_SVC_ATTR_AF, af(&key.addr)),
        Attr::u16(IPVS_SVC_ATTR_PROTOCOL, ip_proto(key.protocol)),
        Attr::Bytes(IPVS_SVC_ATTR_ADDR, inet_addr(&key.addr).to_vec()),
        Attr::be16(IPVS_SVC_ATTR_PORT, key.port),
    ]
}

fn service_full_attrs(key: &VsKey, spec: &ServiceSpec) -> Vec<Attr> {
    let mut a = service_key_attrs(key);
    a.push(Attr::cstr(IPVS_SVC_ATTR_SCHED_NAME, &spec.scheduler));
    // struct ip_vs_flags { __u32 flags; __u32 mask; }: the mask says which flags to set.
    let mut f = spec.flags.to_ne_bytes().to_vec();
    f.extend_from_slice(&u32::MAX.to_ne_bytes());
    a.push(Attr::Bytes(IPVS_SVC_ATTR_FLAGS, f));
    a.push(Attr::u32(IPVS_SVC_ATTR_TIMEOUT, spec.timeout));
    a.push(Attr::u32(IPVS_SVC_ATTR_NETMASK, spec.netmask));
    a
}

fn dest_attrs(rs: &SocketAddr, weight: Option<u32>) -> Vec<Attr> {
    let ip = rs.ip();
    let mut a = vec![
        Attr::Bytes(IPVS_DEST_ATTR_ADDR, inet_addr(&ip).to_vec()),
        Attr::be16(IPVS_DEST_ATTR_PORT, rs.port()),
    ];
    if let Some(w) = weight {
        a.push(Attr::u32(IPVS_DEST_ATTR_FWD_METHOD, IP_VS_CONN_F_MASQ));
        a.push(Attr::u32(IPVS_DEST_ATTR_WEIGHT, w));
        a.push(Attr::u32(IPVS_DEST_ATTR_U_THRESH, 0));
        a.push(Attr::u32(IPVS_DEST_ATTR_L_THRESH, 0));
        a.push(Attr::u16(IPVS_DEST_ATTR_ADDR_FAMILY, af(&ip)));
    }
    a
}

fn ipvs(family: u16, cmd: u8, attrs: Vec<Attr>) -> GenlMessage {
    GenlMessage {
        family,
        cmd,
        version: IPVS_GENL_VERSION,
        attrs,
    }
}

const REQ_ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

pub fn new_service(family: u16, key: &VsKey, spec: &ServiceSpec, seq: u32) -> Vec<u8> {
    let a = vec![Attr::Nested(
        IPVS_CMD_ATTR_SERVICE,
        service_full_attrs(key, spec),
    )];
    frame(ipvs(family, IPVS_CMD_NEW_SERVICE, a), REQ_ACK, seq)
}

pub fn set_service(family: u16, key: &VsKey, spec: &ServiceSpec, seq: u32) -> Vec<u8> {
    let a = vec![Attr::Nested(
        IPVS_CMD_ATTR_SERVICE,
        service_full_attrs(key, spec),
    )];
    frame(ipvs(family, IPVS_CMD_SET_SERVICE, a), REQ_ACK, seq)
}

pub fn del_service(family: u16, key: &VsKey, seq: u32) -> Vec<u8> {
    let a = vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_key_attrs(key))];
    frame(ipvs(family, IPVS_CMD_DEL_SERVICE, a), REQ_ACK, seq)
}

pub fn new_dest(family: u16, key: &VsKey, rs: &RealServer, seq: u32) -> Vec<u8> {
    dest_cmd(
        family,
        IPVS_CMD_NEW_DEST,
        key,
        &rs.addr,
        Some(rs.weight),
        seq,
    )
}

pub fn set_dest(family: u16, key: &VsKey, rs: &RealServer, seq: u32) -> Vec<u8> {
    dest_cmd(
        family,
        IPVS_CMD_SET_DEST,
        key,
        &rs.addr,
        Some(rs.weight),
        seq,
    )
}

pub fn del_dest(family: u16, key: &VsKey, rs: &SocketAddr, seq: u32) -> Vec<u8> {
    dest_cmd(family, IPVS_CMD_DEL_DEST, key, rs, None, seq)
}

fn dest_cmd(
    family: u16,
    cmd: u8,
    key: &VsKey,
    rs: &SocketAddr,
    weight: Option<u32>,
    seq: u32,
) -> Vec<u8> {
    let a = vec![
        Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_key_attrs(key)),
        Attr::Nested(IPVS_CMD_ATTR_DEST, dest_attrs(rs, weight)),
    ];
    frame(ipvs(family, cmd, a), REQ_ACK, seq)
}

/// `IPVS_CMD_GET_SERVICE` as a dump: every virtual server.
pub fn get_services(family: u16, seq: u32) -> Vec<u8> {
    frame(
        ipvs(family, IPVS_CMD_GET_SERVICE, Vec::new()),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// `IPVS_CMD_GET_DEST` as a dump: the real servers of one virtual server.
pub fn get_dests(family: u16, key: &VsKey, seq: u32) -> Vec<u8> {
    frame(
        ipvs(
            family,
            IPVS_CMD_GET_DEST,
            vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_key_attrs(key))],
        ),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    #[error("netlink error {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Errno { errno: i32 },
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("reply lacks attribute {0}")]
    Missing(&'static str),
}

/// One netlink message of a (possibly multipart) buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    pub message_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the 16-byte `nlmsghdr`.
    pub payload: &'a [u8],
}

/// Split a receive buffer into messages.
pub fn split(buf: &[u8]) -> Result<Vec<Reply<'_>>, ReplyError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(ReplyError::Malformed(format!(
                "message length {len} at offset {off} of {}",
                buf.len()
            )));
        }
        out.push(Reply {
            message_type: u16::from_ne_bytes([buf[off + 4], buf[off + 5]]),
            flags: u16::from_ne_bytes([buf[off + 6], buf[off + 7]]),
            seq: u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes")),
            payload: &buf[off + 16..off + len],
        });
        off += (len + 3) & !3;
    }
    Ok(out)
}

impl Reply<'_> {
    /// `Some(errno)` for an `NLMSG_ERROR` (0 is an ACK).
    pub fn error(&self) -> Option<i32> {
        (self.message_type == NLMSG_ERROR && self.payload.len() >= 4)
            .then(|| -i32::from_ne_bytes(self.payload[..4].try_into().expect("4 bytes")))
    }
    pub fn is_done(&self) -> bool {
        self.message_type == NLMSG_DONE
    }
    /// The attributes after the `genlmsghdr`.
    fn attrs(&self) -> Result<Vec<(u16, &[u8])>, ReplyError> {
        let body = self
            .payload
            .get(4..)
            .ok_or_else(|| ReplyError::Malformed("short generic netlink header".into()))?;
        attrs_of(body)
    }
}

/// Attributes of `buf` as `(kind without flags, value)`. Walked by hand because the
/// values must borrow from `buf` itself, not from a per-item buffer wrapper.
fn attrs_of(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, ReplyError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]])
            & !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
        if len < 4 || off + len > buf.len() {
            return Err(ReplyError::Malformed(format!(
                "attribute length {len} at offset {off} of {}",
                buf.len()
            )));
        }
        out.push((kind, &buf[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// The family id from the reply to [`resolve_family`].
pub fn parse_family_id(buf: &[u8]) -> Result<u16, ReplyError> {
    for r in split(buf)? {
        if let Some(errno) = r.error() {
            if errno != 0 {
                return Err(ReplyError::Errno { errno });
            }
            continue;
        }
        if r.message_type != GENL_ID_CTRL {
            continue;
        }
        for (k, v) in r.attrs()? {
            if k == CTRL_ATTR_FAMILY_ID && v.len() >= 2 {
                return Ok(u16::from_ne_bytes([v[0], v[1]]));
            }
        }
        return Err(ReplyError::Missing("CTRL_ATTR_FAMILY_ID"));
    }
    Err(ReplyError::Malformed("no controller reply".into()))
}

fn ip_from(af: u16, b: &[u8]) -> Result<IpAddr, ReplyError> {
    match af {
        AF_INET if b.len() >= 4 => Ok(IpAddr::from([b[0], b[1], b[2], b[3]])),
        AF_INET6 if b.len() >= 16 => {
            let a: [u8; 16] = b[..16].try_into().expect("16 bytes");
            Ok(IpAddr::from(a))
        }
        _ => Err(ReplyError::Malformed(format!(
            "address of family {af} with {} bytes",
            b.len()
        ))),
    }
}

fn u16_of(v: &[u8]) -> Result<u16, ReplyError> {
    v.get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| ReplyError::Malformed("short u16".into()))
}

fn u32_of(v: &[u8]) -> Result<u32, ReplyError> {
    v.get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| ReplyError::Malformed("short u32".into()))
}

fn nested<'a>(r: &Reply<'a>, kind: u16) -> Result<Vec<(u16, &'a [u8])>, ReplyError> {
    let body = r
        .payload
        .get(4..)
        .ok_or_else(|| ReplyError::Malformed("short generic netlink header".into()))?;
    for (k, v) in attrs_of(body)? {
        if k == kind {
            return attrs_of(v);
        }
    }
    Err(ReplyError::Missing(if kind == IPVS_CMD_ATTR_SERVICE {
        "IPVS_CMD_ATTR_SERVICE"
    } else {
        "IPVS_CMD_ATTR_DEST"
    }))
}

/// One virtual server of a `GET_SERVICE` dump reply. Firewall-mark services (no
/// address) are reported as `Missing("IPVS_SVC_ATTR_ADDR")`; callers skip them.
pub fn parse_service(r: &Reply<'_>) -> Result<(VsKey, ServiceSpec), ReplyError> {
    let a = nested(r, IPVS_CMD_ATTR_SERVICE)?;
    let get = |k: u16, name: &'static str| {
        a.iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, v)| *v)
            .ok_or(ReplyError::Missing(name))
    };
    let af = u16_of(get(IPVS_SVC_ATTR_AF, "IPVS_SVC_ATTR_AF")?)?;
    let proto = u16_of(get(IPVS_SVC_ATTR_PROTOCOL, "IPVS_SVC_ATTR_PROTOCOL")?)?;
    let protocol =
        proto_of(proto).ok_or_else(|| ReplyError::Malformed(format!("protocol {proto}")))?;
    let addr = ip_from(af, get(IPVS_SVC_ATTR_ADDR, "IPVS_SVC_ATTR_ADDR")?)?;
    let p = get(IPVS_SVC_ATTR_PORT, "IPVS_SVC_ATTR_PORT")?;
    let port = u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)]);
    let sched = get(IPVS_SVC_ATTR_SCHED_NAME, "IPVS_SVC_ATTR_SCHED_NAME")?;
    let scheduler =
        String::from_utf8_lossy(sched.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
    let flags = u32_of(get(IPVS_SVC_ATTR_FLAGS, "IPVS_SVC_ATTR_FLAGS")?)?;
    let timeout = u32_of(get(IPVS_SVC_ATTR_TIMEOUT, "IPVS_SVC_ATTR_TIMEOUT")?)?;
    let netmask = u32_of(get(IPVS_SVC_ATTR_NETMASK, "IPVS_SVC_ATTR_NETMASK")?)?;
    Ok((
        VsKey {
            addr,
            protocol,
            port,
        },
        ServiceSpec {
            scheduler,
            flags,
            timeout,
            netmask,
        },
    ))
}

/// One real server of a `GET_DEST` dump reply; `af` is the virtual server's family
/// (older kernels do not send `IPVS_DEST_ATTR_ADDR_FAMILY`).
pub fn parse_dest(r: &Reply<'_>, af_default: u16) -> Result<(SocketAddr, KernelDest), ReplyError> {
    let a = nested(r, IPVS_CMD_ATTR_DEST)?;
    let find = |k: u16| a.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v);
    let af = match find(IPVS_DEST_ATTR_ADDR_FAMILY) {
        Some(v) => u16_of(v)?,
        None => af_default,
    };
    let addr = ip_from(
        af,
        find(IPVS_DEST_ATTR_ADDR).ok_or(ReplyError::Missing("IPVS_DEST_ATTR_ADDR"))?,
    )?;
    let p = find(IPVS_DEST_ATTR_PORT).ok_or(ReplyError::Missing("IPVS_DEST_ATTR_PORT"))?;
    let port = u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)]);
    let n = |k: u16| find(k).map(u32_of).transpose().map(|v| v.unwrap_or(0));
    Ok((
        SocketAddr::new(addr, port),
        KernelDest {
            weight: n(IPVS_DEST_ATTR_WEIGHT)?,
            active_conns: n(IPVS_DEST_ATTR_ACTIVE_CONNS)?,
            inactive_conns: n(IPVS_DEST_ATTR_INACT_CONNS)?,
        },
    ))
}

/// The address family number the kernel uses for `ip`.
pub fn family_of(ip: &IpAddr) -> u16 {
    af(ip)
}

#[cfg(test)]
mod tests;
