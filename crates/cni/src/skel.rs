//! The plugin side of the CNI protocol (what `containernetworking/cni` `pkg/skel` does
//! for Go plugins): read `CNI_*` variables and stdin, check them in the reference's
//! order (missing variables, config decoding, network name, container id, interface
//! name, version), call the plugin, print the result or the error JSON.

use serde_json::{Value, json};

use crate::spec::{
    CURRENT_VERSION, CniError, ErrorCode, SUPPORTED_VERSIONS, parse_version, version_at_least,
};

/// A CNI command. Anything else gets code 4 (`unknown CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// Everything a plugin command gets.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    /// Empty when unset (allowed for DEL).
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    pub stdin: Vec<u8>,
    pub conf: Value,
    /// The config's `cniVersion` (`0.1.0` when absent, like the reference).
    pub version: String,
}

/// What the process prints and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit: i32,
}

/// The plugin's commands: ADD returns a result to print; the others print nothing.
pub trait Plugin {
    fn add(&self, a: &CmdArgs) -> Result<Value, CniError>;
    fn del(&self, a: &CmdArgs) -> Result<(), CniError>;
    fn check(&self, a: &CmdArgs) -> Result<(), CniError>;
    fn gc(&self, a: &CmdArgs) -> Result<(), CniError>;
    fn status(&self, a: &CmdArgs) -> Result<(), CniError>;
}

fn required(var: &str, cmd: &str) -> bool {
    match var {
        "CNI_COMMAND" => true,
        "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(cmd, "ADD" | "CHECK" | "DEL"),
        "CNI_NETNS" => matches!(cmd, "ADD" | "CHECK"),
        "CNI_PATH" => matches!(cmd, "ADD" | "CHECK" | "DEL" | "GC" | "STATUS"),
        _ => false,
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_ifname(ifname: &str) -> Result<(), CniError> {
    let bad = |m: &str| {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_IFNAME: {m}"),
        ))
    };
    if ifname.is_empty() {
        return bad("interface name is empty");
    }
    if ifname.len() > 15 {
        return bad("interface name is too long");
    }
    if ifname == "." || ifname == ".." {
        return bad("interface name is . or ..");
    }
    if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad("interface name contains / or : or whitespace characters");
    }
    Ok(())
}

fn version_details(v: &str) -> String {
    let list: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    format!("config is {v:?}, plugin supports [{}]", list.join(" "))
}

/// Parse env and stdin into [`CmdArgs`] and a command, or the error skel would report.
pub fn prepare(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<CmdArgs, (CniError, String)> {
    let get = |k: &str| env(k).unwrap_or_default();
    let cmd = get("CNI_COMMAND");
    let vars = [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ];
    let missing: Vec<&str> = vars
        .iter()
        .copied()
        .filter(|v| get(v).is_empty() && required(v, &cmd))
        .collect();
    let fail = |e: CniError| (e, CURRENT_VERSION.to_string());
    if !missing.is_empty() {
        return Err(fail(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("required env variables [{}] missing", missing.join(",")),
        )));
    }
    let Some(command) = Command::parse(&cmd) else {
        return Err(fail(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("unknown CNI_COMMAND: {cmd}"),
        )));
    };
    let mut a = CmdArgs {
        command,
        container_id: get("CNI_CONTAINERID"),
        netns: get("CNI_NETNS"),
        ifname: get("CNI_IFNAME"),
        args: get("CNI_ARGS"),
        path: get("CNI_PATH"),
        stdin: stdin.to_vec(),
        conf: Value::Null,
        version: CURRENT_VERSION.to_string(),
    };
    if command == Command::Version {
        return Ok(a);
    }
    let conf: Value = serde_json::from_slice(stdin).map_err(|e| {
        fail(CniError::new(
            ErrorCode::Decoding,
            format!("error unmarshall network config: {e}"),
        ))
    })?;
    if !conf.is_object() {
        return Err(fail(CniError::new(
            ErrorCode::Decoding,
            "error unmarshall network config: not a JSON object",
        )));
    }
    let version = match conf.get("cniVersion") {
        None | Some(Value::Null) => "0.1.0".to_string(),
        Some(Value::String(s)) if s.is_empty() => "0.1.0".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(fail(CniError::new(
                ErrorCode::Decoding,
                format!(
                    "error unmarshall network config: cniVersion: expected a string, got {other}"
                ),
            )));
        }
    };
    a.version = version.clone();
    let fail_v = |e: CniError| (e, version.clone());
    let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        return Err(fail_v(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "missing network name",
        )));
    }
    if !valid_name(name) {
        return Err(fail_v(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("invalid characters found in network name {name:?}"),
        )));
    }
    a.conf = conf;
    if matches!(command, Command::Add | Command::Check | Command::Del) {
        if !valid_name(&a.container_id) {
            // The reference skel's words, the ID in `details` (libcni's
            // ValidateContainerID).
            return Err(fail_v(
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "invalid characters in containerID",
                )
                .with_details(a.container_id.clone()),
            ));
        }
        validate_ifname(&a.ifname).map_err(fail_v)?;
    }
    if parse_version(&version).is_none() {
        return Err(fail_v(CniError::new(
            ErrorCode::Decoding,
            format!("cniVersion {version:?} is not a version"),
        )));
    }
    let min = match command {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = min
        && !version_at_least(&version, min)
    {
        return Err(fail_v(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("config version does not allow {}", command.as_str()),
        )));
    }
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(fail_v(
            CniError::new(ErrorCode::IncompatibleVersion, "incompatible CNI versions")
                .with_details(version_details(&version)),
        ));
    }
    Ok(a)
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

fn print(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Run one plugin invocation end to end.
pub fn run(plugin: &dyn Plugin, env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let a = match prepare(env, stdin) {
        Ok(a) => a,
        Err((e, v)) => {
            return Outcome {
                stdout: print(&e.to_json(&v)),
                exit: 1,
            };
        }
    };
    let r = match a.command {
        Command::Version => Ok(Some(version_info())),
        Command::Add => plugin.add(&a).map(Some),
        Command::Del => plugin.del(&a).map(|_| None),
        Command::Check => plugin.check(&a).map(|_| None),
        Command::Gc => plugin.gc(&a).map(|_| None),
        Command::Status => plugin.status(&a).map(|_| None),
    };
    match r {
        Ok(Some(v)) => Outcome {
            stdout: print(&v),
            exit: 0,
        },
        Ok(None) => Outcome {
            stdout: Vec::new(),
            exit: 0,
        },
        Err(e) => Outcome {
            stdout: print(&e.to_json(&a.version)),
            exit: 1,
        },
    }
}

#[cfg(test)]
mod tests;
