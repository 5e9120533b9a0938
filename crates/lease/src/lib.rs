//! Subnet lease stores for the overlay agent, with flannel's layout:
//!
//! - [`EmbeddedStore`]: Twill's own store, one JSON file guarded by `flock`, for
//!   standalone nodes and the lab (namespaces on one host share the file; no service to
//!   start). Expired leases are dropped on every read and write.
//! - `EtcdStore` (feature `etcd`): keys `<prefix>/config` and `<prefix>/subnets/<a.b.c.d>-<len>`,
//!   JSON values, each lease bound to an etcd lease with the TTL, so etcd expires dead nodes.
//!
//! [`Store`] picks one with a closed enum. Values that do not decode are skipped with a
//! warning, never fatal: one corrupt lease must not take the cluster's routing down.

mod embedded;
#[cfg(feature = "etcd")]
mod etcd;

pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;

use twill_overlay::{Lease, LeaseAttrs, SubnetKey};

/// Errors of the lease stores; each names the store and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("lease store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lease store {path}: not valid store JSON: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("lease store: no network config at {key}")]
    NoConfig { key: String },
    #[error("etcd {endpoint}: {message}")]
    Etcd { endpoint: String, message: String },
    #[error("lease {key}: {message}")]
    Lease { key: String, message: String },
}

impl Error {
    /// True when the store could not be reached (retry with backoff; keep the data plane).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Etcd { .. } | Error::Io { .. })
    }
}

/// Leases as listed, with a revision that changes whenever any lease changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub leases: Vec<Lease>,
    pub revision: i64,
    /// Keys whose value did not decode (skipped, with the reason).
    pub skipped: Vec<(String, String)>,
}

/// A lease store. A closed set on purpose (see the style guide: no registries).
#[derive(Debug)]
#[non_exhaustive]
pub enum Store {
    Embedded(EmbeddedStore),
    /// Boxed: the etcd client is large and the enum is moved around.
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdStore>),
}

impl Store {
    /// The network config text.
    pub async fn config(&mut self) -> Result<String, Error> {
        match self {
            Store::Embedded(s) => s.config(),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.config().await,
        }
    }

    /// Every live lease at `now` (unix seconds).
    pub async fn list(&mut self, now: u64) -> Result<Listing, Error> {
        match self {
            Store::Embedded(s) => s.list(now),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.list().await,
        }
    }

    /// Create the lease if nobody holds the key; returns its expiry, or None when taken.
    pub async fn create(
        &mut self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        ttl: u64,
        now: u64,
    ) -> Result<Option<u64>, Error> {
        match self {
            Store::Embedded(s) => s.create(key, attrs, ttl, now),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.create(key, attrs, ttl, now).await,
        }
    }

    /// Rewrite attrs and re-grant `ttl` (acquire-again and renewal). Returns the expiry.
    pub async fn update(
        &mut self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        ttl: u64,
        now: u64,
    ) -> Result<u64, Error> {
        match self {
            Store::Embedded(s) => s.update(key, attrs, ttl, now),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.update(key, attrs, ttl, now).await,
        }
    }

    /// Wait for a change after `revision` (etcd: a watch) or until `timeout` passes
    /// (embedded: polling is the only way to notice another process's write).
    pub async fn wait_change(
        &mut self,
        revision: i64,
        timeout: std::time::Duration,
    ) -> Result<bool, Error> {
        match self {
            Store::Embedded(_) => {
                let _ = revision;
                tokio::time::sleep(timeout).await;
                Ok(false)
            }
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.wait_change(revision, timeout).await,
        }
    }

    pub async fn delete(&mut self, key: SubnetKey, now: u64) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.delete(key, now),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.delete(key).await,
        }
    }
}
