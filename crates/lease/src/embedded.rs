//! The embedded store: one JSON file, read-modify-write under an exclusive `flock`, written
//! through a temporary file and `rename` so a crash never leaves half a file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use twill_overlay::{Lease, LeaseAttrs, SubnetKey};

use crate::{Error, Listing};

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileData {
    /// The network config text (`<prefix>/config`).
    #[serde(default)]
    config: Option<String>,
    /// Bumped on every change.
    #[serde(default)]
    revision: i64,
    /// Key segment (`10.244.1.0-24`) → record.
    #[serde(default)]
    subnets: BTreeMap<String, Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The lease value exactly as flannel would store it.
    value: String,
    /// Unix seconds.
    expires_at: u64,
}

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    path: PathBuf,
}

/// An exclusive `flock` held while the guard lives. std has `File::lock` only from 1.89
/// on some targets; libc's flock is used directly so the workspace MSRV holds.
struct Locked {
    file: File,
}

impl Locked {
    fn open(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let lock_path = path.with_extension("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        // SAFETY: flock on a valid fd has no memory-safety preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(Locked { file })
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl EmbeddedStore {
    /// A store in `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl Fn(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn read(&self) -> Result<FileData, Error> {
        let mut text = String::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_string(&mut text).map_err(self.io())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileData::default()),
            Err(e) => return Err(self.io()(e)),
        }
        if text.trim().is_empty() {
            return Ok(FileData::default());
        }
        serde_json::from_str(&text).map_err(|source| Error::Corrupt {
            path: self.path.display().to_string(),
            source,
        })
    }

    fn write(&self, data: &FileData) -> Result<(), Error> {
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_string_pretty(data).expect("store data serializes");
        std::fs::write(&tmp, text).map_err(self.io())?;
        std::fs::rename(&tmp, &self.path).map_err(self.io())
    }

    /// Run `f` on the file's data under the lock; writes back when `f` says it changed.
    fn transact<R>(
        &self,
        now: u64,
        f: impl FnOnce(&mut FileData) -> (bool, R),
    ) -> Result<R, Error> {
        let _lock = Locked::open(&self.path)?;
        let mut data = self.read()?;
        let before = data.subnets.len();
        data.subnets.retain(|_, r| r.expires_at > now);
        let expired = data.subnets.len() != before;
        let (changed, out) = f(&mut data);
        if changed || expired {
            data.revision += 1;
            self.write(&data)?;
        }
        Ok(out)
    }

    /// Store the network config text.
    pub fn set_config(&self, text: &str) -> Result<(), Error> {
        self.transact(0, |d| {
            d.config = Some(text.to_string());
            (true, ())
        })
    }

    pub fn config(&self) -> Result<String, Error> {
        self.read()?.config.ok_or_else(|| Error::NoConfig {
            key: format!("{} (config)", self.path.display()),
        })
    }

    pub fn list(&self, now: u64) -> Result<Listing, Error> {
        self.transact(now, |d| {
            let mut out = Listing {
                revision: d.revision,
                ..Listing::default()
            };
            for (seg, r) in &d.subnets {
                let decoded = SubnetKey::parse(seg)
                    .map_err(|e| e.to_string())
                    .and_then(|k| {
                        LeaseAttrs::from_json(seg, &r.value)
                            .map(|a| (k, a))
                            .map_err(|e| e.to_string())
                    });
                match decoded {
                    Ok((subnet, attrs)) => out.leases.push(Lease {
                        subnet,
                        attrs,
                        expires_at: r.expires_at,
                    }),
                    Err(e) => {
                        tracing::warn!(key = %seg, error = %e, "skipping corrupt lease");
                        out.skipped.push((seg.clone(), e));
                    }
                }
            }
            (false, out)
        })
    }

    pub fn create(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        ttl: u64,
        now: u64,
    ) -> Result<Option<u64>, Error> {
        self.transact(now, |d| {
            let seg = key.segment();
            if d.subnets.contains_key(&seg) {
                return (false, None);
            }
            let expires_at = now + ttl;
            d.subnets.insert(
                seg,
                Record {
                    value: attrs.to_json(),
                    expires_at,
                },
            );
            (true, Some(expires_at))
        })
    }

    pub fn update(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        ttl: u64,
        now: u64,
    ) -> Result<u64, Error> {
        self.transact(now, |d| {
            let expires_at = now + ttl;
            d.subnets.insert(
                key.segment(),
                Record {
                    value: attrs.to_json(),
                    expires_at,
                },
            );
            (true, expires_at)
        })
    }

    pub fn delete(&self, key: SubnetKey, now: u64) -> Result<(), Error> {
        self.transact(now, |d| (d.subnets.remove(&key.segment()).is_some(), ()))
    }

    /// Write a raw value under a key (tests and repair tools: e.g. a corrupt value).
    pub fn put_raw(&self, segment: &str, value: &str, expires_at: u64) -> Result<(), Error> {
        self.transact(0, |d| {
            d.subnets.insert(
                segment.to_string(),
                Record {
                    value: value.to_string(),
                    expires_at,
                },
            );
            (true, ())
        })
    }
}

#[cfg(test)]
mod tests;
