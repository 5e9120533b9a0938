//! ARCHITECTURE.md's crate table against every `Cargo.toml`: each crate is listed once,
//! no crate depends on a crate of a higher layer, and no library depends on test code.
//! The map stays true because a change that breaks it fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A crate's place: its layer number, or `None` for test code.
type Layer = Option<u32>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `| 2 pure cores | `proxy-core` | … |` rows → crate directory name → layer.
fn layers_from_map(text: &str) -> BTreeMap<String, Layer> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let (layer, krate) = (cells[1], cells[2]);
        let Some(name) = krate.strip_prefix('`').and_then(|k| k.strip_suffix('`')) else {
            continue;
        };
        let parsed: Layer = if layer == "test" {
            None
        } else {
            match layer.split_whitespace().next().map(str::parse::<u32>) {
                Some(Ok(n)) => Some(n),
                _ => continue,
            }
        };
        assert!(
            out.insert(name.to_string(), parsed).is_none(),
            "ARCHITECTURE.md lists `{name}` twice"
        );
    }
    out
}

/// The `twill-*` crates in a manifest's `[dependencies]` (not dev- or build-), by
/// directory name (`twill-proxy-core` → `proxy-core`, `twill` itself → `twill`).
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps {
            continue;
        }
        let key = line.split(['=', '.', ' ']).next().unwrap_or("");
        if let Some(name) = key.strip_prefix("twill-") {
            out.push(name.to_string());
        }
    }
    out
}

#[test]
fn every_crate_is_on_the_map_and_no_dependency_points_up() {
    let map = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let layers = layers_from_map(&map);
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(repo().join("crates")).expect("crates/") {
        let dir = entry.expect("entry").path();
        if dir.join("Cargo.toml").is_file() {
            crates.push(dir);
        }
    }
    assert!(crates.len() > 20, "found only {} crates", crates.len());
    let mut problems = Vec::new();
    for dir in &crates {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let Some(&layer) = layers.get(&name) else {
            problems.push(format!("crate `{name}` is not in ARCHITECTURE.md's table"));
            continue;
        };
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        for dep in normal_dependencies(&manifest) {
            let Some(&dep_layer) = layers.get(&dep) else {
                problems.push(format!(
                    "`{name}` depends on `{dep}`, which is not on the map"
                ));
                continue;
            };
            match (layer, dep_layer) {
                // The binary runs the corpus runners (`twill conformance`).
                (_, None) if name == "twill" && dep == "conformance" => {}
                // Test code may use anything.
                (None, _) => {}
                (Some(_), None) => problems.push(format!(
                    "`{name}` (a library) depends on test code `{dep}`; make it a dev-dependency"
                )),
                (Some(l), Some(d)) if d > l => problems.push(format!(
                    "`{name}` (layer {l}) depends on `{dep}` (layer {d}): an upward edge"
                )),
                _ => {}
            }
        }
    }
    for name in layers.keys() {
        if !crates.iter().any(|d| d.ends_with(name)) {
            problems.push(format!(
                "ARCHITECTURE.md lists `{name}`, which is not a crate"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_map_parser_reads_layers_and_test_rows_and_the_dependency_parser_skips_dev_deps() {
    let layers = layers_from_map(
        "| layer | crate | what |\n|---|---|---|\n| 2 pure cores | `a` | x |\n| test | `t` | y |\n",
    );
    assert_eq!(layers.get("a"), Some(&Some(2)));
    assert_eq!(layers.get("t"), Some(&None));
    assert_eq!(layers.len(), 2);
    let deps = normal_dependencies(
        "[package]\nname = \"twill-x\"\n[dependencies]\ntwill-model.workspace = true\n\
         twill-dns = { workspace = true }\nserde = \"1\"\n[dev-dependencies]\ntwill-testkit.workspace = true\n",
    );
    assert_eq!(deps, ["model", "dns"]);
}
