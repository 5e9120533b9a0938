//! The shared corpus: `<workspace>/../shared/testdata/<area>`, or `$TWILL_SHARED_DIR/testdata/<area>`.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .expect("crates/testkit sits two levels below the root")
        .to_path_buf()
}

/// The shared folder (`../shared` beside the checkout) unless `TWILL_SHARED_DIR` says otherwise.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("TWILL_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("..").join("shared"),
    }
}

/// `shared/testdata/<area>`; panics with a clear message when it is missing.
pub fn area_dir(area: &str) -> PathBuf {
    let d = shared_dir().join("testdata").join(area);
    assert!(
        d.is_dir(),
        "shared testdata folder {} is missing (set TWILL_SHARED_DIR to the shared/ folder)",
        d.display()
    );
    d
}

/// `shared/examples`.
pub fn examples_dir() -> PathBuf {
    shared_dir().join("examples")
}

/// Every `*.json` case file of an area, sorted by name, parsed.
pub fn json_cases(area: &str) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = area_dir(area);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}
