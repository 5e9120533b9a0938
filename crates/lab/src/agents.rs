//! Long-running lab processes: the controller (in the root namespace, it only touches
//! lab namespaces) and each node's agents (inside the node's namespace). Each is its own
//! session with a log and a pid file, so it outlives the command that started it and
//! `down` can find it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::spec::{LabSpec, NodeSpec};
use crate::{LabError, netns};

/// A daemon to run: a name (for its log and pid file) and its argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub name: String,
    pub argv: Vec<String>,
}

/// Start `argv` detached, inside `ns` (or here), logging to `dir/NAME.log`; writes
/// `dir/NAME.pid`.
pub fn start(dir: &Path, ns: Option<&str>, d: &Daemon) -> Result<u32, LabError> {
    std::fs::create_dir_all(dir).map_err(|e| LabError::Io(dir.display().to_string(), e))?;
    let log_path = dir.join(format!("{}.log", d.name));
    let io = |e| LabError::Io(log_path.display().to_string(), e);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io)?;
    let mut cmd = match ns {
        Some(ns) => netns::in_netns(ns, &d.argv[0]),
        None => Command::new(&d.argv[0]),
    };
    cmd.args(&d.argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io)?)
        .stderr(log);
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| LabError::Io(format!("starting {}", d.argv.join(" ")), e))?;
    let pid = child.id();
    std::fs::write(dir.join(format!("{}.pid", d.name)), pid.to_string()).map_err(io)?;
    // The daemon is reaped by init once we exit; we never wait for it.
    std::mem::forget(child);
    Ok(pid)
}

/// Kill the daemons whose pid files are in `dir` (and their sessions).
pub fn stop_all(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "pid")
            && let Ok(pid) = std::fs::read_to_string(&p)
                .unwrap_or_default()
                .trim()
                .parse::<i32>()
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(-pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGTERM);
            }
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Whether the daemon recorded in `pid_file` still runs: its pid exists and is not a
/// zombie (a killed daemon whose parent has not reaped it still has a `/proc` entry).
pub fn alive(pid_file: &Path) -> bool {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(pid_running)
}

/// `pid` exists and is neither a zombie nor dead (`/proc/PID/stat` state `Z` or `X`).
pub fn pid_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// The node agents this build of twill can run on a lab node.
pub fn node_agents(spec: &LabSpec, node: &NodeSpec, available: &[&str]) -> Vec<Daemon> {
    let twill = spec.twill.display().to_string();
    let cluster = spec.cluster_file().display().to_string();
    let mut out = Vec::new();
    if available.contains(&"overlay") {
        out.push(Daemon {
            name: "overlay".into(),
            argv: vec![
                twill.clone(),
                "overlay".into(),
                "--config".into(),
                spec.dir.join("net-conf.json").display().to_string(),
                "--store".into(),
                format!("embedded:{}", spec.dir.join("leases.json").display()),
                "--iface".into(),
                "eth0".into(),
                "--ip-masq".into(),
                "--subnet-file".into(),
                spec.node_dir(&node.name)
                    .join("subnet.env")
                    .display()
                    .to_string(),
                // Peers show up within a second of joining.
                "--resync-secs".into(),
                "1".into(),
            ],
        });
    }
    if available.contains(&"netpol") {
        out.push(Daemon {
            name: "netpol".into(),
            argv: vec![
                twill.clone(),
                "netpol".into(),
                "--node".into(),
                node.name.clone(),
                "-f".into(),
                cluster.clone(),
                "--node-address".into(),
                node.ip.to_string(),
                "--interval-ms".into(),
                "200".into(),
                // The flow log of `lab flows` and `lab ui` (by default every decision,
                // so a learner sees admitted connections too).
                "--metrics-addr".into(),
                crate::flows::AGENT_HTTP.into(),
                "--flow-log".into(),
                spec.flow_log.clone(),
            ],
        });
    }
    if available.contains(&"proxy") {
        out.push(Daemon {
            name: "proxy".into(),
            argv: vec![
                twill.clone(),
                "proxy".into(),
                "--mode".into(),
                spec.proxy_mode.clone(),
                "-f".into(),
                cluster.clone(),
                "--hostname-override".into(),
                node.name.clone(),
                "--cluster-cidr".into(),
                spec.pod_cidr.to_string(),
                // kube-proxy batches changes for a second by default; in a lab a
                // change should show at once (and `up` should not wait a batch for
                // endpoints that turned ready just after the first sync).
                "--min-sync-period".into(),
                "100ms".into(),
            ],
        });
    }
    out
}

pub fn controller_dir(spec: &LabSpec) -> PathBuf {
    spec.dir.clone()
}
