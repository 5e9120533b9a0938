//! The thin shell around [`crate::parse_str`]: files, directories (recursive, `.yaml`,
//! `.yml`, `.json`, in name order) and `-` for stdin.
#![allow(clippy::disallowed_methods)] // This module is the crate's only I/O, by design.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{LoadResult, Problem, Severity};

fn is_manifest(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    Ok(())
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
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => out.extend(parse("<stdin>", &text)),
                Err(e) => out.problems.push(io_problem("<stdin>", e)),
            }
            continue;
        }
        let path = Path::new(p);
        let mut files = Vec::new();
        if path.is_dir() {
            if let Err(e) = walk(path, &mut files) {
                out.problems.push(io_problem(p, e));
            }
        } else {
            files.push(path.to_path_buf());
        }
        for f in files {
            let name = f.display().to_string();
            match std::fs::read_to_string(&f) {
                Ok(text) => out.extend(parse(&name, &text)),
                Err(e) => out.problems.push(io_problem(&name, e)),
            }
        }
    }
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
                let _ = walk(path, &mut files);
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
