//! Named network namespaces owned by this process (`twnp<pid>-<n>`), deleted on drop.
//!
//! A local version of `twill-testkit`'s sandbox: the testkit is a dev-dependency only, and
//! the conformance runner in the `twill` binary needs the same thing at run time.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const PREFIX: &str = "twnp";
const NETNS_DIR: &str = "/run/netns";
static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    #[error("{command} (in {netns}): {message}")]
    Command {
        netns: String,
        command: String,
        message: String,
    },
    #[error("entering netns {netns}: {message}")]
    Enter { netns: String, message: String },
}

#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn kill_all_in(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Delete namespaces of this prefix whose owning process is gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            kill_all_in(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self, NetnsError> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}{tag}", std::process::id());
        run("", "ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Run a program inside the namespace; stdout on success.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run(&self.name, "ip", &full)
    }

    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        self.exec("ip", args)
    }

    /// Run `f` on a new thread inside the namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        let path = self.path();
        let name = self.name.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&path).map_err(|message| NetnsError::Enter {
                    netns: name,
                    message,
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Enter {
                    netns: self.name.clone(),
                    message: "thread panicked".into(),
                })
            })
        })
    }
}

/// Move the calling thread into the namespace at `path`.
pub fn enter(path: &std::path::Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))
}

fn run(netns: &str, program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let err = |message: String| NetnsError::Command {
        netns: netns.into(),
        command: format!("{program} {}", args.join(" ")),
        message,
    };
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
