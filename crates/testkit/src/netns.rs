//! Uniquely named network namespaces for tests: `twill-netns` with panicking helpers,
//! since a test that cannot build its namespaces has nothing left to check.
//!
//! Names are `twt<pid>-<n><tag>`; namespaces of dead test processes are swept by every
//! [`Netns::new`], and dropping a [`Netns`] kills what runs inside and deletes it.

use std::path::PathBuf;
use std::process::{Command, Output};

const PREFIX: &str = "twt";

/// A named network namespace owned by this test process.
#[derive(Debug)]
pub struct Netns(twill_netns::Netns);

/// Delete test namespaces whose owning process is gone.
pub fn sweep_stale() {
    twill_netns::sweep_stale(PREFIX);
}

impl Netns {
    /// Create `twt<pid>-<n><tag>` with loopback up. `tag` should be short (a few letters).
    pub fn new(tag: &str) -> Self {
        Netns(twill_netns::Netns::create(PREFIX, tag).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// `/run/netns/<name>`, what CNI_NETNS takes.
    pub fn path(&self) -> PathBuf {
        self.0.path()
    }

    /// The shared runtime namespace, for code under test that takes one.
    pub fn inner(&self) -> &twill_netns::Netns {
        &self.0
    }

    /// Run a command inside the namespace (`ip netns exec`); any exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.0
            .output(program, args)
            .unwrap_or_else(|e| panic!("ip netns exec {} {program}: {e}", self.name()))
    }

    /// A command builder that runs inside the namespace (for spawning servers).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), program]);
        c
    }

    /// `ip ARGS` inside the namespace; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run `f` on a fresh thread that has entered this namespace (so netlink sockets and
    /// child processes it opens live there).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.0.run(f).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Connect two namespaces with a veth pair `a_if`@a — `b_if`@b.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    twill_netns::veth_pair(&a.0, a_if, &b.0, b_if).unwrap_or_else(|e| panic!("{e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_created_isolated_and_removed() {
        if !crate::require_root("namespace_is_created_isolated_and_removed") {
            return;
        }
        let ns = Netns::new("kt");
        let path = ns.path();
        assert!(path.exists());
        let links = ns.ip(&["-o", "link"]);
        assert_eq!(
            links.lines().count(),
            1,
            "only lo in a fresh namespace: {links}"
        );
        let inside = ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        drop(ns);
        assert!(!path.exists());
    }
}
