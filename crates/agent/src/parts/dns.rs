//! The cluster DNS part (CoreDNS's `kubernetes` plugin's data): a new answer snapshot is
//! swapped into the running server whenever the state changed. Queries keep being
//! answered from the last snapshot meanwhile; a sync never blocks them.

use std::sync::Arc;

use twill_dns::Snapshot;
use twill_dns_server::Engine;

use super::{PartError, SyncContext};

pub struct DnsPart {
    engine: Arc<Engine>,
    /// `None`: the snapshot the server started with stays (manifests read once).
    config: Option<twill_dns::Config>,
    generation: Option<u64>,
}

impl DnsPart {
    pub fn new(engine: Arc<Engine>, config: twill_dns::Config) -> Self {
        DnsPart {
            engine,
            config: Some(config),
            generation: None,
        }
    }

    /// A server whose data was loaded once: syncs only report its health.
    pub fn fixed(engine: Arc<Engine>) -> Self {
        DnsPart {
            engine,
            config: None,
            generation: None,
        }
    }

    pub(crate) fn sync(&mut self, ctx: &SyncContext) -> Result<bool, PartError> {
        let Some(config) = &self.config else {
            return Ok(false);
        };
        if self.generation == Some(ctx.generation) {
            return Ok(false);
        }
        let snapshot = Snapshot::build(ctx.state, config, serial_now());
        self.engine.swap(snapshot);
        self.generation = Some(ctx.generation);
        tracing::info!(
            services = ctx.state.services.len(),
            "cluster DNS data swapped in"
        );
        Ok(true)
    }

    pub(crate) fn summary(&self) -> String {
        format!("dns {} services", self.engine.snapshot().service_count())
    }
}

/// The SOA serial: seconds since the epoch, as CoreDNS's.
pub fn serial_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}
