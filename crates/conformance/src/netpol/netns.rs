//! The harness's namespaces: `twnp<pid>-<n><tag>`, from the shared `twill-netns`.

pub use twill_netns::{Netns, NetnsError, enter};

const PREFIX: &str = "twnp";

/// A namespace owned by this process under the harness's prefix.
pub fn create(tag: &str) -> Result<Netns, NetnsError> {
    Netns::create(PREFIX, tag)
}

/// Delete harness namespaces whose owning process is gone.
pub fn sweep_stale() {
    twill_netns::sweep_stale(PREFIX);
}
