//! The iptables-mode service proxy's I/O side.
//!
//! - [`proxier`]: one `iptables-restore --noflush` per sync, partial when only some
//!   services changed, full periodically and after failures.
//! - [`metrics`]: kube-proxy's metric names (served by the agent runtime's one HTTP
//!   server, `twill_agent::http`, with `/healthz` and the health-check node ports).
//! - [`nft_proxier`]: the nftables mode's applier, one `nft -f -` transaction per sync
//!   (incremental when it can be).

pub mod conntrack;
pub mod metrics;
pub mod nft_proxier;
pub mod proxier;

pub use proxier::{Backend, Kernel, Proxier, SyncError, SyncReport, Variant};
