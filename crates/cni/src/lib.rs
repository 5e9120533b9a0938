//! Twill's CNI plugins: `bridge` (main) and `host-local` (IPAM), following the CNI
//! specification 1.1.0 (versions 0.3.0 to 1.1.0 for results; 0.1.0/0.2.0 as well), and
//! interoperable with the reference plugins of `containernetworking/plugins`:
//! the same config keys, the same host-local store layout, the same error codes and
//! messages where runtimes or tests match them.
//!
//! - [`skel`]: the CNI protocol (env, stdin, version checks, error JSON);
//! - [`spec`]: versions, errors, results in every format;
//! - [`host_local`] + [`store`]: IPAM over the reference on-disk store, decisions in `twill-ipam`;
//! - [`bridge`]: the bridge plugin through rtnetlink;
//! - [`ipmasq`]: per-container masquerade chains;
//! - [`flannel`]: the flannel CNI plugin (delegates to bridge + host-local from `subnet.env`);

pub mod bridge;
pub mod delegate;
pub mod flannel;
pub mod host_local;
pub mod ipmasq;
pub mod skel;
pub mod spec;
pub mod store;

use std::io::{Read, Write};

/// The plugins in this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Bridge,
    HostLocal,
    Flannel,
}

impl PluginKind {
    /// The plugin a multi-call binary should act as, from the basename it was run under:
    /// `twill-bridge`/`twill-host-local` (what `twill cni install` makes), or the
    /// reference names `bridge`/`host-local` when installed as a drop-in replacement.
    pub fn from_argv0(base: &str) -> Option<PluginKind> {
        match base {
            "twill-bridge" | "bridge" => Some(PluginKind::Bridge),
            "twill-host-local" | "host-local" => Some(PluginKind::HostLocal),
            "twill-flannel" | "flannel" => Some(PluginKind::Flannel),
            _ => None,
        }
    }

    /// The names `twill cni install` creates.
    pub const INSTALL_NAMES: [&'static str; 3] =
        ["twill-bridge", "twill-host-local", "twill-flannel"];
}

/// Run a plugin as a process would: env and stdin in, result or error on stdout.
/// Returns the exit status.
pub fn plugin_main(kind: PluginKind) -> i32 {
    let mut stdin = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    let is_version = env("CNI_COMMAND").as_deref() == Some("VERSION");
    if !is_version && std::io::stdin().read_to_end(&mut stdin).is_err() {
        let e = spec::CniError::new(spec::ErrorCode::Io, "error reading from stdin");
        println!("{}", e.to_json(spec::CURRENT_VERSION));
        return 1;
    }
    let out = match kind {
        PluginKind::Bridge => skel::run(&bridge::Bridge, &env, &stdin),
        PluginKind::HostLocal => skel::run(&host_local::HostLocal, &env, &stdin),
        PluginKind::Flannel => skel::run(&flannel::Flannel, &env, &stdin),
    };
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(&out.stdout);
    let _ = so.flush();
    out.exit
}
