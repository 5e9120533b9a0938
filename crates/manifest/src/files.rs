//! The thin shell around [`crate::parse_str`]: files, directories (recursive, `.yaml`,
//! `.yml`, `.json`, in name order) and `-` for stdin.
#![allow(clippy::disallowed_methods)] // This module is the crate's only I/O, by design.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{LoadResult, Problem, Severity};

fn is_manifest(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
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
    let mut out = LoadResult::default();
    for p in paths {
        let p = p.as_ref();
        if p == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => out.extend(crate::parse_str("<stdin>", &text)),
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
                Ok(text) => out.extend(crate::parse_str(&name, &text)),
                Err(e) => out.problems.push(io_problem(&name, e)),
            }
        }
    }
    out
}
