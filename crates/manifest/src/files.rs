//! The thin shell around [`crate::parse_str`]: files, directories (recursive, `.yaml`,
//! `.yml`, `.json`, in name order) and `-` for stdin.
#![allow(clippy::disallowed_methods)] // This module is the crate's only I/O, by design.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{LoadResult, Problem, Severity};

/// The most one input (a file, or stdin) may hold. Far above any real cluster's
/// manifests (10,000 Services with their EndpointSlices are about 11 MB), far below what
/// would exhaust a node's memory; `-f /dev/zero` stops here with a clear message.
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

fn is_manifest(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// The manifest files under `dir`, recursively, in name order. A directory reached again
/// through a symlink (a loop) is not entered twice: that is a warning, not an endless
/// walk. Unreadable directories are problems; the rest of the walk goes on.
pub fn manifest_files(dir: &Path) -> (Vec<PathBuf>, Vec<Problem>) {
    let mut out = (Vec::new(), Vec::new());
    let mut stack = Vec::new();
    walk(dir, &mut stack, &mut out);
    out
}

fn walk(dir: &Path, stack: &mut Vec<PathBuf>, out: &mut (Vec<PathBuf>, Vec<Problem>)) {
    let name = dir.display().to_string();
    let real = match std::fs::canonicalize(dir) {
        Ok(r) => r,
        Err(e) => return out.1.push(io_problem(&name, e)),
    };
    if let Some(seen) = stack.iter().find(|s| **s == real) {
        return out.1.push(Problem {
            severity: Severity::Warning,
            location: None,
            object: None,
            path: String::new(),
            message: format!(
                "{name}: a symlink loop back to {}; not followed again",
                seen.display()
            ),
        });
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return out.1.push(io_problem(&name, e)),
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    stack.push(real);
    for p in entries {
        if p.is_dir() {
            walk(&p, stack, out);
        } else if is_manifest(&p) {
            out.0.push(p);
        }
    }
    stack.pop();
}

/// Read one input whole, refusing more than [`MAX_INPUT_BYTES`] (without reading past it).
pub fn read_capped(name: &str, r: impl Read) -> Result<String, Problem> {
    let mut bytes = Vec::new();
    r.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_problem(name, e))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(Problem {
            severity: Severity::Error,
            location: None,
            object: None,
            path: String::new(),
            message: format!(
                "{name}: larger than {} MiB, the most one manifest input may be; not loaded",
                MAX_INPUT_BYTES >> 20
            ),
        });
    }
    String::from_utf8(bytes).map_err(|e| Problem {
        severity: Severity::Error,
        location: None,
        object: None,
        path: String::new(),
        message: format!(
            "{name}: not UTF-8 text (byte {} is invalid); not loaded",
            e.utf8_error().valid_up_to()
        ),
    })
}

fn read_file(path: &Path) -> Result<String, Problem> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| io_problem(&name, e))?;
    read_capped(&name, f)
}

fn io_problem(source: &str, e: std::io::Error) -> Problem {
    Problem {
        severity: Severity::Error,
        location: None,
        object: None,
        path: String::new(),
        message: format!("{source}: {e}"),
    }
}

/// Load every path (`-` reads stdin). Unreadable paths become problems; the rest load.
pub fn load_paths<S: AsRef<str>>(paths: &[S]) -> LoadResult {
    load(paths, crate::parse_str)
}

/// [`load_paths`], also keeping each object's document as written.
pub fn load_paths_keep_raw<S: AsRef<str>>(paths: &[S]) -> LoadResult {
    load(paths, crate::parse_str_keep_raw)
}

fn load<S: AsRef<str>>(paths: &[S], parse: fn(&str, &str) -> LoadResult) -> LoadResult {
    let mut out = LoadResult::default();
    for p in paths {
        let p = p.as_ref();
        if p == "-" {
            match read_capped("<stdin>", std::io::stdin().lock()) {
                Ok(text) => out.extend(parse("<stdin>", &text)),
                Err(problem) => out.problems.push(problem),
            }
            continue;
        }
        let path = Path::new(p);
        let files = if path.is_dir() {
            let (files, problems) = manifest_files(path);
            out.problems.extend(problems);
            files
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            match read_file(&f) {
                Ok(text) => out.extend(parse(&f.display().to_string(), &text)),
                Err(problem) => out.problems.push(problem),
            }
        }
    }
    out.problems.extend(crate::checks::duplicates(&out.objects));
    out
}

/// A manifest source that can be polled for changes, for daemons fed by files (the
/// lab's control plane writes its state to a file each node agent watches).
///
/// Polling, not inotify: the files may be replaced by rename from another process and
/// live on any filesystem; a `stat` per path per interval is cheap at the sizes we read.
#[derive(Debug)]
pub struct Watcher {
    paths: Vec<String>,
    stamp: Option<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>>,
    state: twill_model::ClusterState,
}

impl Watcher {
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Self {
        Self {
            paths: paths.iter().map(|p| p.as_ref().to_string()).collect(),
            stamp: None,
            state: twill_model::ClusterState::default(),
        }
    }

    fn stamps(&self) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
        let mut files = Vec::new();
        for p in &self.paths {
            let path = Path::new(p);
            if path.is_dir() {
                files.extend(manifest_files(path).0);
            } else {
                files.push(path.to_path_buf());
            }
        }
        files
            .into_iter()
            .map(|f| {
                let m = std::fs::metadata(&f).ok();
                let modified = m.as_ref().and_then(|m| m.modified().ok());
                let len = m.map_or(0, |m| m.len());
                (f, modified, len)
            })
            .collect()
    }

    /// Events since the last poll (the first poll lists everything, then `Synced`),
    /// plus the load problems of a changed source. Nothing when no file changed.
    pub fn poll(&mut self) -> (Vec<twill_model::ObjectEvent>, Vec<Problem>) {
        let stamps = self.stamps();
        if self.stamp.as_ref() == Some(&stamps) {
            return (Vec::new(), Vec::new());
        }
        self.stamp = Some(stamps);
        let loaded = load_paths(&self.paths);
        let problems = loaded.problems.clone();
        let target = twill_model::ClusterState::from_objects(loaded.into_objects());
        let events = self.state.diff_events(&target);
        self.state = target;
        (events, problems)
    }

    /// The state as of the last poll.
    pub fn state(&self) -> &twill_model::ClusterState {
        &self.state
    }
}
