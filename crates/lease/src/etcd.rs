//! The etcd store, with flannel's layout: `<prefix>/config` holds the network config and
//! `<prefix>/subnets/<a.b.c.d>-<len>` one JSON lease value each, attached to an etcd lease
//! with the lease TTL so that etcd itself expires a node that stopped renewing. Creation is
//! a transaction on `create_revision == 0` (create-if-absent), as flannel's `createSubnet`.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use twill_overlay::{Lease, LeaseAttrs, SubnetKey};

use crate::{Error, Listing};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoint: String,
    prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl EtcdStore {
    /// Connect to `endpoint` (`http://127.0.0.1:2379`; `etcd://` is accepted as `http://`).
    pub async fn connect(endpoint: &str, prefix: &str) -> Result<Self, Error> {
        let url = match endpoint.strip_prefix("etcd://") {
            Some(rest) => format!("http://{rest}"),
            None => endpoint.to_string(),
        };
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5));
        let client = Client::connect([url.as_str()], Some(opts))
            .await
            .map_err(|e| Error::Etcd {
                endpoint: url.clone(),
                message: format!("connecting: {e}"),
            })?;
        Ok(EtcdStore {
            client,
            endpoint: url,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    fn err(&self, what: String) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
        move |e| Error::Etcd {
            endpoint: self.endpoint.clone(),
            message: format!("{what}: {e}"),
        }
    }

    fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub async fn config(&mut self) -> Result<String, Error> {
        let key = self.config_key();
        let mut c = self.client.clone();
        let r = c
            .get(key.clone(), None)
            .await
            .map_err(self.err(format!("get {key}")))?;
        match r.kvs().first() {
            Some(kv) => Ok(String::from_utf8_lossy(kv.value()).into_owned()),
            None => Err(Error::NoConfig { key }),
        }
    }

    /// Put the config unless one is there already. Returns whether it was written.
    pub async fn put_config_if_absent(&mut self, text: &str) -> Result<bool, Error> {
        let key = self.config_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), text, None)]);
        let mut c = self.client.clone();
        let r = c.txn(txn).await.map_err(self.err(format!("put {key}")))?;
        Ok(r.succeeded())
    }

    pub async fn list(&mut self) -> Result<Listing, Error> {
        let prefix = self.subnets_prefix();
        let mut c = self.client.clone();
        let r = c
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.err(format!("list {prefix}")))?;
        let mut out = Listing {
            revision: r.header().map(|h| h.revision()).unwrap_or(0),
            ..Listing::default()
        };
        let now = unix_now();
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            let decoded = SubnetKey::parse(&key)
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    LeaseAttrs::from_json(&key, &value)
                        .map(|a| (k, a))
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok((subnet, attrs)) => {
                    let ttl = if kv.lease() != 0 {
                        c.lease_time_to_live(kv.lease(), None)
                            .await
                            .map_err(self.err(format!("ttl of {key}")))?
                            .ttl()
                    } else {
                        // No etcd lease: never expires on its own (written by hand).
                        i64::from(u32::MAX)
                    };
                    if ttl > 0 {
                        out.leases.push(Lease {
                            subnet,
                            attrs,
                            expires_at: now + ttl as u64,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "skipping corrupt lease");
                    out.skipped.push((key, e));
                }
            }
        }
        Ok(out)
    }

    pub async fn create(
        &mut self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        ttl: u64,
        now: u64,
    ) -> Result<Option<u64>, Error> {
        let k = key.key(&self.prefix);
        let mut c = self.client.clone();
        let lease = c
            .lease_grant(ttl as i64, None)
            .await
            .map_err(self.err(format!("grant lease for {k}")))?;
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k.clone(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(lease.id())),
            )]);
        let r = c.txn(txn).await.map_err(self.err(format!("create {k}")))?;
        if r.succeeded() {
            Ok(Some(now + ttl))
        } else {
            let _ = c.lease_revoke(lease.id()).await;
            Ok(None)
        }
    }

    pub async fn update(
        &mut self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        ttl: u64,
        now: u64,
    ) -> Result<u64, Error> {
        let k = key.key(&self.prefix);
        let mut c = self.client.clone();
        let lease = c
            .lease_grant(ttl as i64, None)
            .await
            .map_err(self.err(format!("grant lease for {k}")))?;
        c.put(
            k.clone(),
            attrs.to_json(),
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .map_err(self.err(format!("put {k}")))?;
        Ok(now + ttl)
    }

    pub async fn delete(&mut self, key: SubnetKey) -> Result<(), Error> {
        let k = key.key(&self.prefix);
        let mut c = self.client.clone();
        c.delete(k.clone(), None)
            .await
            .map_err(self.err(format!("delete {k}")))?;
        Ok(())
    }

    /// Wait until something under `<prefix>/subnets/` changes after `revision`, or `timeout`.
    /// Returns true on a change.
    pub async fn wait_change(&mut self, revision: i64, timeout: Duration) -> Result<bool, Error> {
        let prefix = self.subnets_prefix();
        let mut c = self.client.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = c
            .watch(prefix.clone(), Some(opts))
            .await
            .map_err(self.err(format!("watch {prefix}")))?;
        let got = tokio::time::timeout(timeout, async {
            loop {
                match stream.message().await {
                    Ok(Some(m)) if !m.events().is_empty() => return Ok(true),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match got {
            Ok(r) => r.map_err(self.err(format!("watch {prefix}"))),
            Err(_) => Ok(false),
        }
    }
}
