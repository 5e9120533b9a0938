pub mod replay;

use std::path::PathBuf;

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn recorded(name: &str) -> PathBuf {
    crate_dir().join("tests/recorded").join(name)
}

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    crate_dir().join("../../deploy")
}
