//! The CNI conformance runner: executes case files of the shared corpus schema
//! (`shared/testdata/cni/README.md`) against the plugins under test, the way a runtime
//! would, in namespaces it creates per case, and compares result, error, host and
//! container state, store files, invocations and files.
//!
//! The plugin directory (`${CNI_PATH}`) holds the plugins under test under their
//! reference names (`bridge`, `host-local`: links to the Twill binary) and every other
//! plugin of the reference directory (`/usr/lib/cni`: `portmap`, `tuning`, ...), so
//! chains run against the real reference plugins. When a plugin case lists
//! `invocations` (a plugin that delegates), `${CNI_PATH}` holds small recording shims.

pub mod matching;
mod runtime;
pub mod sandbox;
pub mod state;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use matching::json_matches;
use sandbox::{Exec, Netns, TempDir, exec_plugin};

/// Where the runner finds plugins.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The binary that acts as `bridge`/`host-local` when run under those names.
    pub plugin_exe: PathBuf,
    /// Reference plugins for everything else (`/usr/lib/cni`).
    pub reference_dir: PathBuf,
    /// Plugins `plugin_exe` provides (by reference name).
    pub provided: Vec<String>,
    pub timeout: Duration,
}

/// One case file, loaded.
#[derive(Debug)]
pub struct CaseFile {
    pub path: PathBuf,
    pub case: Result<Value, String>,
}

/// Every `*.json` file of `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<CaseFile>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|path| {
            let case = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_str::<Value>(&t).map_err(|e| format!("invalid JSON: {e}"))
                });
            CaseFile { path, case }
        })
        .collect())
}

/// Placeholder values: path-like strings, and whole-value JSON substitutions.
#[derive(Debug, Default, Clone)]
struct Vars {
    text: BTreeMap<String, String>,
    json: BTreeMap<String, Value>,
}

impl Vars {
    fn subst_str(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (k, v) in &self.text {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    }

    fn subst(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => {
                if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
                    && let Some(j) = self.json.get(name)
                {
                    return j.clone();
                }
                Value::String(self.subst_str(s))
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| self.subst(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (self.subst_str(k), self.subst(x)))
                    .collect::<Map<_, _>>(),
            ),
            other => other.clone(),
        }
    }
}

fn env_of(v: Option<&Value>, vars: &Vars) -> Vec<(String, String)> {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, x)| (k.clone(), vars.subst_str(x.as_str().unwrap_or_default())))
        .collect()
}

struct Sandbox {
    host: Netns,
    ctr: Netns,
    ctr2: Netns,
    tmp: TempDir,
}

impl Sandbox {
    fn data(&self) -> PathBuf {
        self.tmp.0.join("data")
    }
    fn bin(&self) -> PathBuf {
        self.tmp.0.join("bin")
    }
    fn shims(&self) -> PathBuf {
        self.tmp.0.join("shim")
    }
    fn rec(&self) -> PathBuf {
        self.tmp.0.join("rec")
    }
}

impl Runner {
    fn build_bin(&self, sb: &Sandbox) -> Result<(), String> {
        let bin = sb.bin();
        let shims = sb.shims();
        for d in [&bin, &shims, &sb.rec(), &sb.data()] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.reference_dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !self.provided.contains(&n) {
                    names.push((n, e.path()));
                }
            }
        }
        for n in &self.provided {
            names.push((n.clone(), self.plugin_exe.clone()));
        }
        for (n, target) in names {
            symlink(&target, bin.join(&n)).map_err(|e| format!("link {n}: {e}"))?;
            let shim = format!(
                "#!/bin/sh\n\
                 if [ -n \"$TWILL_CNI_RECORD\" ] && [ -z \"$TWILL_CNI_NESTED\" ]; then\n\
                 f=$(mktemp \"$TWILL_CNI_RECORD/stdin.XXXXXX\")\n\
                 cat > \"$f\"\n\
                 printf '%s %s %s\\n' '{n}' \"$CNI_COMMAND\" \"$f\" >> \"$TWILL_CNI_RECORD/log\"\n\
                 TWILL_CNI_NESTED=1 exec '{bin}/{n}' < \"$f\"\n\
                 fi\n\
                 exec '{bin}/{n}'\n",
                bin = bin.display()
            );
            let p = shims.join(&n);
            std::fs::write(&p, shim).map_err(|e| format!("{}: {e}", p.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn exec(
        &self,
        sb: &Sandbox,
        cni_path: &Path,
        plugin: &str,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> Result<Exec, String> {
        let prog = cni_path.join(plugin);
        if !prog.exists() {
            return Err(format!(
                "plugin {plugin:?} not found in {}",
                cni_path.display()
            ));
        }
        exec_plugin(&sb.host, &prog, env, stdin, self.timeout)
    }

    /// Run one case; the failures (empty = pass).
    pub fn run_case(&self, case: &Value) -> Vec<String> {
        match self.run_case_inner(case) {
            Ok(f) => f,
            Err(e) => vec![e],
        }
    }

    fn run_case_inner(&self, case: &Value) -> Result<Vec<String>, String> {
        let sb = Sandbox {
            host: sandbox::netns("h")?,
            ctr: sandbox::netns("c")?,
            ctr2: sandbox::netns("d")?,
            tmp: TempDir::new()?,
        };
        self.build_bin(&sb)?;
        let expected = case.get("expected").cloned().unwrap_or(Value::Null);
        let recording = case.get("kind").and_then(Value::as_str) != Some("runtime")
            && expected.get("invocations").is_some();
        let cni_path = if recording { sb.shims() } else { sb.bin() };
        let mut vars = Vars::default();
        vars.text
            .insert("NETNS".into(), sb.ctr.path().display().to_string());
        vars.text
            .insert("NETNS_2".into(), sb.ctr2.path().display().to_string());
        vars.text
            .insert("CNI_PATH".into(), cni_path.display().to_string());
        vars.text
            .insert("DATADIR".into(), sb.data().display().to_string());
        vars.text.insert(
            "SUBNET_ENV".into(),
            sb.tmp.0.join("subnet.env").display().to_string(),
        );

        // preState
        let pre = case.get("preState").cloned().unwrap_or(Value::Null);
        for (k, v) in pre
            .get("sysctls")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            sb.host
                .sysctl_set(k, v.as_str().unwrap_or_default())
                .map_err(|e| format!("preState.sysctls: {e}"))?;
        }
        for (network, files) in pre
            .get("store")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let dir = sb.data().join(network);
            std::fs::create_dir_all(&dir).map_err(|e| format!("preState.store: {e}"))?;
            std::fs::write(dir.join("lock"), "").map_err(|e| format!("preState.store: {e}"))?;
            for (name, content) in files.as_object().into_iter().flatten() {
                std::fs::write(dir.join(name), content.as_str().unwrap_or_default())
                    .map_err(|e| format!("preState.store {network}/{name}: {e}"))?;
            }
        }
        for (path, content) in pre
            .get("files")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let p = PathBuf::from(vars.subst_str(path));
            if let Some(parent) = p.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let text = match content {
                Value::String(s) => vars.subst_str(s),
                other => vars.subst(other).to_string(),
            };
            std::fs::write(&p, text).map_err(|e| format!("preState.files {}: {e}", p.display()))?;
        }
        let default_plugin = case
            .get("plugin")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for (i, step) in pre
            .get("steps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let config = vars.subst(step.get("config").unwrap_or(&Value::Null));
            let plugin = config
                .get("type")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or(default_plugin.clone());
            let env = env_of(step.get("env"), &vars);
            let out = self.exec(&sb, &sb.bin(), &plugin, &env, config.to_string().as_bytes())?;
            if out.exit != 0 {
                return Err(format!(
                    "preState.steps[{i}] ({plugin}) exited {}: {}{}",
                    out.exit,
                    out.stdout.trim(),
                    out.stderr.trim()
                ));
            }
            let prev = if out.stdout.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&out.stdout)
                    .map_err(|e| format!("preState.steps[{i}] output: {e}"))?
            };
            vars.json.insert("PREV_RESULT".into(), prev);
        }
        for line in pre
            .get("hostSetup")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            sb.host
                .shell(&vars.subst_str(line))
                .map_err(|e| format!("preState.hostSetup: {e}"))?;
        }
        for line in pre
            .get("containerSetup")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            sb.ctr
                .shell(&vars.subst_str(line))
                .map_err(|e| format!("preState.containerSetup: {e}"))?;
        }

        // The invocation under test.
        let env = env_of(case.get("env"), &vars);
        let ctr_path = sb.ctr.path().display().to_string();
        let get_env = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let related = match (get_env("CNI_NETNS"), get_env("CNI_IFNAME")) {
            (Some(ns), Some(ifname)) if ns == ctr_path => {
                state::host_peer(&sb.host, &sb.ctr, &ifname)
            }
            _ => None,
        };
        let mut invocations: Option<Vec<runtime::Invocation>> = None;
        let out = if case.get("kind").and_then(Value::as_str) == Some("runtime") {
            let rt = runtime::Runtime {
                runner: self,
                sb: &sb,
                cni_path: &cni_path,
                env: &env,
            };
            let conflist = vars.subst(case.get("conflist").unwrap_or(&Value::Null));
            let runtime_config = vars.subst(case.get("runtimeConfig").unwrap_or(&Value::Null));
            let valid = vars.subst(case.get("validAttachments").unwrap_or(&Value::Null));
            let cached = match pre.get("cachedResult") {
                Some(Value::String(s)) if s == "${ADD_RESULT}" => {
                    let (o, _) = rt.run(&conflist, &runtime_config, &valid, "ADD", None)?;
                    if o.exit != 0 {
                        return Err(format!(
                            "preState.cachedResult: conflist ADD failed: {}",
                            o.stdout.trim()
                        ));
                    }
                    let r: Value = serde_json::from_str(&o.stdout)
                        .map_err(|e| format!("cached ADD result: {e}"))?;
                    vars.json.insert("ADD_RESULT".into(), r.clone());
                    Some(r)
                }
                Some(v) if !v.is_null() => Some(vars.subst(v)),
                _ => None,
            };
            let command = case
                .get("command")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (o, inv) = rt.run(&conflist, &runtime_config, &valid, command, cached)?;
            for (i, x) in inv.iter().enumerate() {
                vars.json
                    .insert(format!("RESULT_{i}"), x.stdout_json.clone());
            }
            invocations = Some(inv);
            o
        } else {
            let stdin = match (case.get("configRaw"), case.get("config")) {
                (Some(Value::String(raw)), _) => vars.subst_str(raw).into_bytes(),
                (_, Some(c)) => vars.subst(c).to_string().into_bytes(),
                _ => Vec::new(),
            };
            let mut env = env.clone();
            if recording {
                env.push(("TWILL_CNI_RECORD".into(), sb.rec().display().to_string()));
            }
            let o = self.exec(&sb, &sb.bin(), &default_plugin, &env, &stdin)?;
            if recording {
                invocations = Some(runtime::read_recording(&sb.rec())?);
            }
            o
        };

        Ok(self.compare(
            &sb,
            &expected,
            &vars,
            &out,
            invocations.as_deref(),
            related.as_deref(),
        ))
    }

    fn compare(
        &self,
        sb: &Sandbox,
        expected: &Value,
        vars: &Vars,
        out: &Exec,
        inv: Option<&[runtime::Invocation]>,
        related: Option<&str>,
    ) -> Vec<String> {
        let mut fails = Vec::new();
        let expected = vars.subst(expected);
        let want_exit = expected
            .get("exitCode")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let ok_exit = if want_exit == 0 {
            out.exit == 0
        } else {
            out.exit != 0
        };
        if !ok_exit {
            fails.push(format!(
                "exit code: expected {want_exit}, got {} (stdout: {}) (stderr: {})",
                out.exit,
                out.stdout.trim(),
                out.stderr.trim()
            ));
        }
        let stdout_json: Option<Value> = serde_json::from_str(&out.stdout).ok();
        if let Some(want) = expected.get("result") {
            match (want, &stdout_json) {
                (Value::Null, _) => {
                    if !out.stdout.trim().is_empty() {
                        fails.push(format!(
                            "result: expected no output, got {}",
                            out.stdout.trim()
                        ));
                    }
                }
                (_, Some(have)) => {
                    if let Err(e) = json_matches(want, have, false) {
                        fails.push(format!("result: {e}"));
                    }
                }
                (_, None) => fails.push(format!(
                    "result: output is not JSON: {:?}",
                    out.stdout.trim()
                )),
            }
        }
        if let Some(err) = expected.get("error").filter(|e| !e.is_null()) {
            match &stdout_json {
                None => fails.push(format!(
                    "error: output is not JSON: {:?}",
                    out.stdout.trim()
                )),
                Some(have) => {
                    if let Some(code) = err.get("code").and_then(Value::as_u64)
                        && have.get("code").and_then(Value::as_u64) != Some(code)
                    {
                        fails.push(format!(
                            "error.code: expected {code}, got {}",
                            have.get("code").unwrap_or(&Value::Null)
                        ));
                    }
                    for (k, field) in [("msgContains", "msg"), ("detailsContains", "details")] {
                        if let Some(sub) = err.get(k).and_then(Value::as_str) {
                            let text = have.get(field).and_then(Value::as_str).unwrap_or_default();
                            if !text.contains(sub) {
                                fails.push(format!(
                                    "error.{field}: {text:?} does not contain {sub:?}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        if let Some(h) = expected.get("hostState") {
            fails.extend(state::compare(&sb.host, h, "hostState", related));
        }
        if let Some(c) = expected.get("containerState") {
            fails.extend(state::compare(&sb.ctr, c, "containerState", None));
        }
        if let Some(s) = expected.get("storeState") {
            fails.extend(compare_store(&sb.data(), s));
        }
        if let Some(want) = expected.get("invocations").and_then(Value::as_array) {
            let have = inv.unwrap_or_default();
            if have.len() != want.len() {
                fails.push(format!(
                    "invocations: expected {}, got {}: {}",
                    want.len(),
                    have.len(),
                    have.iter()
                        .map(|i| format!("{} {}", i.plugin, i.command))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            } else {
                for (i, (w, h)) in want.iter().zip(have).enumerate() {
                    let wp = w.get("plugin").and_then(Value::as_str).unwrap_or_default();
                    let wc = w.get("command").and_then(Value::as_str).unwrap_or_default();
                    if wp != h.plugin || wc != h.command {
                        fails.push(format!(
                            "invocations[{i}]: expected {wp} {wc}, got {} {}",
                            h.plugin, h.command
                        ));
                    }
                    if let Some(ws) = w.get("stdin")
                        && let Err(e) = json_matches(ws, &h.stdin, true)
                    {
                        fails.push(format!("invocations[{i}].stdin: {e}"));
                    }
                }
            }
        }
        for (path, want) in expected
            .get("files")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            match std::fs::read_to_string(path) {
                Err(e) => fails.push(format!("files {path}: {e}")),
                Ok(text) => match want {
                    Value::String(s) => {
                        if &text != s {
                            fails.push(format!("files {path}: expected {s:?}, got {text:?}"));
                        }
                    }
                    other => match serde_json::from_str::<Value>(&text) {
                        Ok(have) => {
                            if let Err(e) = json_matches(other, &have, false) {
                                fails.push(format!("files {path}: {e}"));
                            }
                        }
                        Err(e) => fails.push(format!("files {path}: not JSON: {e}")),
                    },
                },
            }
        }
        fails
    }
}

fn compare_store(data: &Path, s: &Value) -> Vec<String> {
    let mut fails = Vec::new();
    let network = s.get("network").and_then(Value::as_str).unwrap_or_default();
    let dir = data.join(network);
    let mut have: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            have.insert(n, std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    let want = s
        .get("files")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, content) in &want {
        match have.get(name) {
            None => fails.push(format!("storeState {network}/{name}: missing")),
            Some(c) if Some(c.as_str()) != content.as_str() => fails.push(format!(
                "storeState {network}/{name}: expected {content}, got {c:?}"
            )),
            Some(_) => {}
        }
    }
    for name in s
        .get("absentFiles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if have.contains_key(name) {
            fails.push(format!("storeState {network}/{name}: should be absent"));
        }
    }
    if s.get("exact").and_then(Value::as_bool) == Some(true) {
        for name in have.keys().filter(|n| !want.contains_key(*n)) {
            fails.push(format!(
                "storeState {network}/{name}: unexpected file ({:?})",
                have[name]
            ));
        }
    }
    fails
}

/// Run every case of `dir`; `report(file, case_name, failure)` is called per failure.
/// Returns (passed, failed).
pub fn run_dir(
    runner: &Runner,
    dir: &Path,
    report: &mut dyn FnMut(&str, &str),
) -> Result<(usize, usize), String> {
    sandbox::sweep_stale();
    let files = load_dir(dir)?;
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        let file = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fails = match &f.case {
            Err(e) => vec![e.clone()],
            Ok(case) => runner.run_case(case),
        };
        if fails.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            for msg in fails {
                // One line per failure: plugin output is pretty-printed JSON.
                let line: Vec<&str> = msg.split_whitespace().collect();
                report(&file, &line.join(" "));
            }
        }
    }
    Ok((passed, failed))
}

#[cfg(test)]
mod tests;
