//! Delegating to another plugin found in `CNI_PATH` (the reference `pkg/ipam` /
//! `pkg/invoke`): same environment, `CNI_COMMAND` set, the same config on stdin.
//!
//! When the plugin found is this very binary under a name that dispatches to
//! host-local, the call runs in-process: one exec fewer per ADD and DEL, and the same
//! code would run anyway.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::skel::{CmdArgs, Command};
use crate::spec::{CniError, CniResult};
use crate::{PluginKind, host_local};

/// Find `name` in the colon-separated `cni_path`.
pub fn find_plugin(name: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    if name.is_empty() || name.contains('/') {
        return Err(CniError::internal(format!("invalid plugin type {name:?}")));
    }
    for d in &dirs {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CniError::internal(format!(
        "failed to find plugin {name:?} in path [{}]",
        dirs.join(" ")
    )))
}

fn runs_in_process(path: &Path) -> bool {
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if PluginKind::from_argv0(base) != Some(PluginKind::HostLocal) {
        return false;
    }
    match (
        std::fs::canonicalize(path),
        std::env::current_exe().and_then(std::fs::canonicalize),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Run `command` of plugin `name` with `stdin`; ADD returns the parsed result.
pub fn exec(
    name: &str,
    a: &CmdArgs,
    command: Command,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let path = find_plugin(name, &a.path)?;
    if runs_in_process(&path) {
        let mut inner = a.clone();
        inner.command = command;
        inner.stdin = stdin.to_vec();
        inner.conf =
            serde_json::from_slice(stdin).map_err(|e| CniError::internal(e.to_string()))?;
        return match command {
            Command::Add => host_local::add(&inner).map(Some),
            Command::Del => host_local::del(&inner).map(|_| None),
            Command::Check => host_local::check(&inner).map(|_| None),
            Command::Gc => host_local::gc(&inner).map(|_| None),
            Command::Status => host_local::status(&inner).map(|_| None),
            Command::Version => Ok(None),
        };
    }
    let mut child = Process::new(&path)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &a.container_id)
        .env("CNI_NETNS", &a.netns)
        .env("CNI_IFNAME", &a.ifname)
        .env("CNI_ARGS", &a.args)
        .env("CNI_PATH", &a.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::internal(format!("failed to run plugin {}: {e}", path.display())))?;
    if let Some(mut w) = child.stdin.take() {
        // A config is a few KiB at most; it fits the pipe buffer, so no writer thread.
        let _ = w.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::internal(format!("failed to wait for plugin {}: {e}", path.display()))
    })?;
    if !out.status.success() {
        let err = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| CniError::from_json(&v));
        return Err(err.unwrap_or_else(|| {
            CniError::internal(format!(
                "plugin {} failed ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }));
    }
    if command != Command::Add {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::internal(format!(
            "plugin {} printed an undecodable result: {e}",
            path.display()
        ))
    })?;
    CniResult::from_json(&v)
        .map(Some)
        .map_err(|e| CniError::internal(format!("plugin {}: {e}", path.display())))
}
