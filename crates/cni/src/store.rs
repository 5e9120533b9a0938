//! host-local's on-disk store, in the reference layout (`plugins/ipam/host-local/backend/disk`)
//! so a node can switch between the reference plugin and Twill's in either direction:
//!
//! ```text
//! <dataDir>/<network>/lock                  empty; flock(LOCK_EX) serialises writers
//! <dataDir>/<network>/<ip>                  "<containerID>\r\n<ifname>" (legacy: "<containerID>")
//! <dataDir>/<network>/last_reserved_ip.<n>  the last address handed out by range set n
//! ```
//!
//! A reservation file is created with `O_EXCL`, so even a writer that ignores the lock
//! cannot double-allocate.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use twill_ipam::Reservation;

/// The reference's default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("host-local store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open, locked store directory. The lock is held until drop.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Create `<data_dir>/<network>` if needed and take its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, StoreError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(StoreError::Io {
                    path: lock_path,
                    source: e,
                });
            }
        }
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every reservation file (other files are skipped).
    pub fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_err() {
                continue;
            }
            let path = e.path();
            let content = match fs::read_to_string(&path) {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io { path, source: e }),
            };
            out.extend(Reservation::parse(&name, &content));
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    /// `last_reserved_ip.<range_set>`, when present and parseable.
    pub fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("last_reserved_ip.{range_set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Create the reservation file (`O_EXCL`) and move the range set's cursor. False when
    /// the address was taken meanwhile.
    pub fn reserve(
        &self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        range_set: usize,
    ) -> Result<bool, StoreError> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        if let Err(e) = f.write_all(Reservation::render(container_id, ifname).as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(StoreError::Io { path, source: e });
        }
        let last = self.dir.join(format!("last_reserved_ip.{range_set}"));
        fs::write(&last, ip.to_string()).map_err(io(&last))?;
        Ok(true)
    }

    /// Remove reservation files; already-missing ones are fine.
    pub fn release(&self, ips: &[IpAddr]) -> Result<(), StoreError> {
        for ip in ips {
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        Ok(())
    }
}
