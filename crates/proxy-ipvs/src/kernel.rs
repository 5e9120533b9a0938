//! The thin kernel side: one generic-netlink socket, the IPVS family resolved once,
//! dumps read back into a [`KernelState`], and [`Op`]s applied one acknowledged
//! request each.
//!
//! This machine's kernel has no IPVS, so only the failure path (the family is missing)
//! runs in tests here; the message bytes themselves are covered by the golden tests in
//! [`crate::netlink`], and the replies' parsing by decoding kernel-format buffers.

use std::collections::BTreeMap;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use crate::diff::{KernelService, KernelState, Op};
use crate::netlink::{self, ReplyError};
use crate::plan::RealServer;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error("the kernel has no IPVS (generic netlink family IPVS not found)")]
    NoIpvs,
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("after {applied} operations: {source}")]
    Partial {
        applied: usize,
        #[source]
        source: Box<KernelError>,
    },
    #[error("IPVS {what}: {source}")]
    Reply {
        what: String,
        #[source]
        source: ReplyError,
    },
}

impl KernelError {
    pub fn is_no_ipvs(&self) -> bool {
        matches!(self, KernelError::NoIpvs)
    }
}

/// A generic-netlink socket bound to the IPVS family, in the calling thread's netns.
pub struct IpvsSocket {
    sock: Socket,
    family: u16,
    seq: u32,
}

impl std::fmt::Debug for IpvsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsSocket")
            .field("family", &self.family)
            .finish()
    }
}

impl IpvsSocket {
    /// Open a socket and resolve the IPVS family.
    pub fn open() -> Result<Self, KernelError> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(KernelError::Socket)?;
        sock.bind_auto().map_err(KernelError::Socket)?;
        let mut s = IpvsSocket {
            sock,
            family: 0,
            seq: 1,
        };
        s.send(&netlink::resolve_family(1))?;
        let buf = s.recv()?;
        s.family = match netlink::parse_family_id(&buf) {
            Ok(id) => id,
            Err(ReplyError::Errno { errno: 2 }) => return Err(KernelError::NoIpvs),
            Err(source) => {
                return Err(KernelError::Reply {
                    what: "family lookup".into(),
                    source,
                });
            }
        };
        Ok(s)
    }

    pub fn family(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), KernelError> {
        self.sock
            .send_to(msg, &SocketAddr::new(0, 0), 0)
            .map(|_| ())
            .map_err(KernelError::Socket)
    }

    fn recv(&mut self) -> Result<Vec<u8>, KernelError> {
        self.sock
            .recv_from_full()
            .map(|(b, _)| b)
            .map_err(KernelError::Socket)
    }

    /// Send one request and wait for its acknowledgement.
    fn request(&mut self, what: String, msg: &[u8], seq: u32) -> Result<(), KernelError> {
        self.send(msg)?;
        loop {
            let buf = self.recv()?;
            let parts = netlink::split(&buf).map_err(|source| KernelError::Reply {
                what: what.clone(),
                source,
            })?;
            for r in parts.iter().filter(|r| r.seq == seq) {
                if let Some(errno) = r.error() {
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(KernelError::Reply {
                            what,
                            source: ReplyError::Errno { errno },
                        })
                    };
                }
            }
        }
    }

    /// Feed every message of a dump to `each` until `NLMSG_DONE`.
    fn dump(
        &mut self,
        what: &str,
        msg: &[u8],
        seq: u32,
        mut each: impl FnMut(&netlink::Reply<'_>) -> Result<(), ReplyError>,
    ) -> Result<(), KernelError> {
        self.send(msg)?;
        let err = |source| KernelError::Reply {
            what: what.to_string(),
            source,
        };
        loop {
            let buf = self.recv()?;
            for r in netlink::split(&buf)
                .map_err(err)?
                .iter()
                .filter(|r| r.seq == seq)
            {
                if r.is_done() {
                    return Ok(());
                }
                if let Some(errno) = r.error() {
                    if errno != 0 {
                        return Err(err(ReplyError::Errno { errno }));
                    }
                    continue;
                }
                each(r).map_err(err)?;
            }
        }
    }

    /// The IPVS table: every virtual server with its real servers. Firewall-mark
    /// services (not ours: they have no address) are left out.
    pub fn read_state(&mut self) -> Result<KernelState, KernelError> {
        let seq = self.next_seq();
        let mut state = KernelState::default();
        let req = netlink::get_services(self.family, seq);
        self.dump("service dump", &req, seq, |r| {
            match netlink::parse_service(r) {
                Ok((key, spec)) => {
                    state.services.insert(
                        key,
                        KernelService {
                            spec,
                            dests: BTreeMap::new(),
                        },
                    );
                }
                Err(ReplyError::Missing(_)) => {}
                Err(e) => return Err(e),
            }
            Ok(())
        })?;
        let keys: Vec<_> = state.services.keys().copied().collect();
        for key in keys {
            let seq = self.next_seq();
            let req = netlink::get_dests(self.family, &key, seq);
            let af = netlink::family_of(&key.addr);
            let mut dests = BTreeMap::new();
            self.dump(&format!("destination dump of {key}"), &req, seq, |r| {
                let (addr, d) = netlink::parse_dest(r, af)?;
                dests.insert(addr, d);
                Ok(())
            })?;
            if let Some(s) = state.services.get_mut(&key) {
                s.dests = dests;
            }
        }
        Ok(state)
    }

    /// Apply `ops` in order; stops at the first failure. Returns how many succeeded.
    pub fn apply_ops(&mut self, ops: &[Op]) -> Result<usize, KernelError> {
        for (i, op) in ops.iter().enumerate() {
            let seq = self.next_seq();
            let f = self.family;
            let (what, msg) = match op {
                Op::AddService(k, s) => (format!("add {k}"), netlink::new_service(f, k, s, seq)),
                Op::UpdateService(k, s) => {
                    (format!("update {k}"), netlink::set_service(f, k, s, seq))
                }
                Op::DelService(k) => (format!("delete {k}"), netlink::del_service(f, k, seq)),
                Op::AddDest(k, a, w) => (
                    format!("add real server {a} to {k}"),
                    netlink::new_dest(
                        f,
                        k,
                        &RealServer {
                            addr: *a,
                            weight: *w,
                        },
                        seq,
                    ),
                ),
                Op::UpdateDest(k, a, w) => (
                    format!("set weight {w} of {a} in {k}"),
                    netlink::set_dest(
                        f,
                        k,
                        &RealServer {
                            addr: *a,
                            weight: *w,
                        },
                        seq,
                    ),
                ),
                Op::DelDest(k, a) => (
                    format!("delete real server {a} from {k}"),
                    netlink::del_dest(f, k, a, seq),
                ),
            };
            if let Err(e) = self.request(what, &msg, seq) {
                return Err(KernelError::Partial {
                    applied: i,
                    source: Box::new(e),
                });
            }
        }
        Ok(ops.len())
    }
}
