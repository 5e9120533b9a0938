//! A minimal CNI runtime for `kind: runtime` cases (SPEC.md section 3, "Execution of
//! Network Configurations"): pick the version, derive each plugin's config (name and
//! cniVersion copied in, `capabilities` turned into a `runtimeConfig` with only the
//! declared capabilities the runtime has, `prevResult` chained), run ADD in order and
//! DEL in reverse, honour `disableCheck` / `disableGC`.

use std::path::Path;

use serde_json::{Map, Value};

use super::sandbox::Exec;
use super::{Runner, Sandbox};
use twill_cni::spec::{SUPPORTED_VERSIONS, parse_version};

/// One plugin execution: what was run, with what, and what it printed.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub plugin: String,
    pub command: String,
    pub stdin: Value,
    pub stdout_json: Value,
}

pub(super) struct Runtime<'a> {
    pub runner: &'a Runner,
    pub sb: &'a Sandbox,
    pub cni_path: &'a Path,
    pub env: &'a [(String, String)],
}

/// The highest version listed by the conflist that this runtime supports.
fn pick_version(conflist: &Value) -> String {
    let mut listed: Vec<String> = conflist
        .get("cniVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    if let Some(v) = conflist.get("cniVersion").and_then(Value::as_str) {
        listed.push(v.to_string());
    }
    listed
        .into_iter()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .max_by_key(|v| parse_version(v))
        .unwrap_or_else(|| "1.0.0".to_string())
}

/// The stdin a plugin of the list gets.
pub fn derive_config(
    plugin: &Value,
    name: &str,
    version: &str,
    runtime_config: &Value,
    prev: Option<&Value>,
    valid: Option<&Value>,
) -> Value {
    let mut m: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    m.insert("name".into(), Value::String(name.into()));
    m.insert("cniVersion".into(), Value::String(version.into()));
    if let Some(Value::Object(caps)) = m.remove("capabilities") {
        let mut rc = Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = runtime_config.get(&cap)
            {
                rc.insert(cap, v.clone());
            }
        }
        if !rc.is_empty() {
            m.insert("runtimeConfig".into(), Value::Object(rc));
        }
    }
    if let Some(p) = prev {
        m.insert("prevResult".into(), p.clone());
    }
    if let Some(v) = valid {
        m.insert("cni.dev/valid-attachments".into(), v.clone());
    }
    Value::Object(m)
}

impl Runtime<'_> {
    fn call(
        &self,
        plugin: &str,
        command: &str,
        stdin: &Value,
    ) -> Result<(Exec, Invocation), String> {
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k.clone(), command.to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        let out = self.runner.exec(
            self.sb,
            self.cni_path,
            plugin,
            &env,
            stdin.to_string().as_bytes(),
        )?;
        let inv = Invocation {
            plugin: plugin.to_string(),
            command: command.to_string(),
            stdin: stdin.clone(),
            stdout_json: serde_json::from_str(&out.stdout).unwrap_or(Value::Null),
        };
        Ok((out, inv))
    }

    /// Execute `command` over the list; the final output and the invocations made.
    pub fn run(
        &self,
        conflist: &Value,
        runtime_config: &Value,
        valid: &Value,
        command: &str,
        cached: Option<Value>,
    ) -> Result<(Exec, Vec<Invocation>), String> {
        let name = conflist
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let version = pick_version(conflist);
        let plugins: Vec<Value> = conflist
            .get("plugins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let flag = |k: &str| conflist.get(k).and_then(Value::as_bool).unwrap_or(false);
        let ty = |p: &Value| {
            p.get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let empty = Exec {
            stdout: String::new(),
            stderr: String::new(),
            exit: 0,
        };
        let mut invs = Vec::new();
        match command {
            "ADD" => {
                let mut prev: Option<Value> = None;
                let mut last = empty;
                for p in &plugins {
                    let conf =
                        derive_config(p, name, &version, runtime_config, prev.as_ref(), None);
                    let (out, inv) = self.call(&ty(p), "ADD", &conf)?;
                    let failed = out.exit != 0;
                    prev = Some(inv.stdout_json.clone());
                    invs.push(inv);
                    last = out;
                    if failed {
                        break;
                    }
                }
                Ok((last, invs))
            }
            "DEL" => {
                let mut last = empty;
                for p in plugins.iter().rev() {
                    let conf =
                        derive_config(p, name, &version, runtime_config, cached.as_ref(), None);
                    let (out, inv) = self.call(&ty(p), "DEL", &conf)?;
                    invs.push(inv);
                    if out.exit != 0 {
                        last = out;
                    }
                }
                Ok((last, invs))
            }
            "CHECK" | "GC" | "STATUS" => {
                if (command == "CHECK" && flag("disableCheck"))
                    || (command == "GC" && flag("disableGC"))
                {
                    return Ok((empty, invs));
                }
                let prev = if command == "CHECK" {
                    cached.as_ref()
                } else {
                    None
                };
                let valid = if command == "GC" { Some(valid) } else { None };
                for p in &plugins {
                    let conf = derive_config(p, name, &version, runtime_config, prev, valid);
                    let (out, inv) = self.call(&ty(p), command, &conf)?;
                    invs.push(inv);
                    if out.exit != 0 {
                        return Ok((out, invs));
                    }
                }
                Ok((empty, invs))
            }
            other => Err(format!("runtime: unsupported command {other:?}")),
        }
    }
}

/// Invocations recorded by the shims (`<plugin> <command> <stdin file>` per line).
pub fn read_recording(dir: &Path) -> Result<Vec<Invocation>, String> {
    let log = match std::fs::read_to_string(dir.join("log")) {
        Ok(l) => l,
        Err(_) => return Ok(Vec::new()),
    };
    log.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let plugin = parts.next().unwrap_or_default().to_string();
            let command = parts.next().unwrap_or_default().to_string();
            let file = parts.next().unwrap_or_default();
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("recording {file}: {e}"))?;
            Ok(Invocation {
                plugin,
                command,
                stdin: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                stdout_json: Value::Null,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
