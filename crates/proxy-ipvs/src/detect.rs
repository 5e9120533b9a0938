//! Can this kernel run the ipvs mode? Two things are needed: the IPVS generic-netlink
//! family (the `ip_vs` module), and dummy links (upstream binds service addresses on a
//! dummy `kube-ipvs0`).
//!
//! The probes touch nothing shared: the family lookup is a read-only controller query,
//! and the dummy link is created in a throwaway network namespace (`ip netns add` with a
//! unique name, always deleted). The decision from the probe results is pure
//! ([`decide`]) and unit-tested both ways.

#![allow(clippy::disallowed_methods)] // the probes are this module's whole job: I/O

use std::fmt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::netlink::{self, ReplyError};

/// One probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Present,
    /// Absent, with what was observed.
    Absent(String),
    /// Could not be checked, and why.
    Unknown(String),
}

/// What the kernel lacks for the ipvs mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Missing {
    /// `None` when IPVS is there.
    pub ipvs: Option<String>,
    /// `None` when dummy links work.
    pub dummy: Option<String>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(why) = &self.ipvs {
            parts.push(format!(
                "the kernel has no IPVS (generic netlink family IPVS not found: {why}; load \
                 the ip_vs module or use another --mode)"
            ));
        }
        if let Some(why) = &self.dummy {
            parts.push(format!(
                "no dummy link support (needed for kube-ipvs0: {why}; load the dummy module)"
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Pure decision from the two probes.
pub fn decide(ipvs: Probe, dummy: Probe) -> Result<(), Missing> {
    let why = |p: Probe| match p {
        Probe::Present => None,
        Probe::Absent(w) => Some(w),
        Probe::Unknown(w) => Some(format!("could not check: {w}")),
    };
    let m = Missing {
        ipvs: why(ipvs),
        dummy: why(dummy),
    };
    if m.ipvs.is_none() && m.dummy.is_none() {
        Ok(())
    } else {
        Err(m)
    }
}

/// Probe the running kernel. Needs root for the dummy-link probe.
pub fn check_kernel() -> Result<(), Missing> {
    decide(probe_ipvs(), probe_dummy())
}

/// What a `CTRL_CMD_GETFAMILY` reply means.
pub fn classify_family_reply(reply: Result<u16, ReplyError>) -> Probe {
    match reply {
        Ok(_) => Probe::Present,
        Err(ReplyError::Errno { errno }) if errno == ENOENT => {
            Probe::Absent("the controller answered ENOENT".into())
        }
        Err(e) => Probe::Unknown(e.to_string()),
    }
}

/// `ENOENT`: the controller's answer for an unknown family name.
const ENOENT: i32 = 2;

/// Ask the generic-netlink controller for the IPVS family.
pub fn probe_ipvs() -> Probe {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
    let mut sock = match Socket::new(NETLINK_GENERIC) {
        Ok(s) => s,
        Err(e) => return Probe::Unknown(format!("netlink socket: {e}")),
    };
    if let Err(e) = sock.bind_auto() {
        return Probe::Unknown(format!("netlink bind: {e}"));
    }
    let req = netlink::resolve_family(1);
    if let Err(e) = sock.send_to(&req, &SocketAddr::new(0, 0), 0) {
        return Probe::Unknown(format!("netlink send: {e}"));
    }
    match sock.recv_from_full() {
        Ok((buf, _)) => classify_family_reply(netlink::parse_family_id(&buf)),
        Err(e) => Probe::Unknown(format!("netlink receive: {e}")),
    }
}

static PROBES: AtomicUsize = AtomicUsize::new(0);

/// Create a dummy link in a throwaway namespace.
pub fn probe_dummy() -> Probe {
    let name = format!(
        "twill-ipvs-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::SeqCst)
    );
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    match run(&["netns", "add", &name]) {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Probe::Unknown(format!(
                "ip netns add: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Err(e) => return Probe::Unknown(format!("ip: {e}")),
    }
    let made = run(&["-n", &name, "link", "add", "kube-ipvs0", "type", "dummy"]);
    let _ = run(&["netns", "del", &name]);
    match made {
        Ok(o) if o.status.success() => Probe::Present,
        Ok(o) => Probe::Absent(format!(
            "ip link add type dummy: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Probe::Unknown(format!("ip: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_present_means_the_mode_can_run() {
        assert_eq!(decide(Probe::Present, Probe::Present), Ok(()));
    }

    #[test]
    fn both_missing_names_both_in_one_message() {
        let m = decide(
            Probe::Absent("ENOENT".into()),
            Probe::Absent("Unknown device type".into()),
        )
        .unwrap_err();
        let s = m.to_string();
        assert!(s.starts_with("the kernel has no IPVS (generic netlink family IPVS not found"));
        assert!(s.contains("; no dummy link support"));
    }

    #[test]
    fn one_missing_names_only_that_one() {
        let m = decide(Probe::Present, Probe::Absent("x".into())).unwrap_err();
        assert!(m.ipvs.is_none() && m.dummy.is_some());
        assert!(!m.to_string().contains("IPVS"));
        let m = decide(Probe::Unknown("no netlink".into()), Probe::Present).unwrap_err();
        assert!(m.to_string().contains("could not check: no netlink"));
    }

    #[test]
    fn an_enoent_family_reply_means_absent_and_an_id_means_present() {
        assert_eq!(classify_family_reply(Ok(37)), Probe::Present);
        assert!(matches!(
            classify_family_reply(Err(ReplyError::Errno { errno: 2 })),
            Probe::Absent(_)
        ));
        assert!(matches!(
            classify_family_reply(Err(ReplyError::Errno { errno: 1 })),
            Probe::Unknown(_)
        ));
    }
}
