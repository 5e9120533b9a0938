//! kube-proxy's chain names: a prefix plus the first 16 characters of
//! `base32(sha256(input))` (RFC 4648 alphabet). Sixteen characters keep every name under
//! iptables' 28-character chain-name limit (`KUBE-SEP-` + 16 = 25).
//!
//! The service-port input is `servicePortName + protocol` (`ns/name:port` + `tcp`); the
//! endpoint chain adds the endpoint (`10.0.0.1:80`, `[fd00::1]:80`). kube-proxy before
//! about 2020 hashed an unnamed port as `ns/name:`; current upstream leaves the colon out,
//! and so do we.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

pub const SVC_PREFIX: &str = "KUBE-SVC-";
pub const SVL_PREFIX: &str = "KUBE-SVL-";
pub const EXT_PREFIX: &str = "KUBE-EXT-";
pub const FW_PREFIX: &str = "KUBE-FW-";
pub const SEP_PREFIX: &str = "KUBE-SEP-";

/// The first 16 characters of base32(sha256(input)).
pub fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut s = BASE32.encode(digest.as_slice());
    s.truncate(16);
    s
}

/// `prefix + hash16(service_port_name + protocol)`.
pub fn service_chain(prefix: &str, service_port_name: &str, protocol_lower: &str) -> String {
    format!(
        "{prefix}{}",
        hash16(&format!("{service_port_name}{protocol_lower}"))
    )
}

/// `KUBE-SEP-` + hash16(service_port_name + protocol + endpoint).
pub fn endpoint_chain(service_port_name: &str, protocol_lower: &str, endpoint: &str) -> String {
    format!(
        "{SEP_PREFIX}{}",
        hash16(&format!("{service_port_name}{protocol_lower}{endpoint}"))
    )
}

/// Whether `name` is one of the per-service chains a proxier owns (and may delete).
pub fn is_service_chain(name: &str) -> bool {
    [
        SVC_PREFIX,
        SVL_PREFIX,
        EXT_PREFIX,
        FW_PREFIX,
        SEP_PREFIX,
        "KUBE-XLB-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// RFC 4648 base32 alphabet.
const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// `hash16` of the concatenation of `parts`, without building the input string or the
/// full base32 text: sixteen base32 characters are exactly the digest's first 80 bits
/// (ten bytes), so only those are encoded. Renderers call this once per endpoint per
/// sync, which made the allocating form a visible share of render time at 10k services.
pub fn hash16_parts(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    let mut out = [0u8; 16];
    for (i, c) in out.iter_mut().enumerate() {
        *c = B32[((bits >> (75 - 5 * i)) & 31) as usize];
    }
    out
}

/// A chain name of at most 28 bytes (iptables' limit), stored inline so rule sets with
/// a hundred thousand chains need no allocation per name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainName {
    len: u8,
    buf: [u8; ChainName::MAX],
}

impl ChainName {
    /// iptables' chain-name limit.
    pub const MAX: usize = 28;

    /// `None` when `name` is longer than [`ChainName::MAX`].
    pub fn new(name: &str) -> Option<Self> {
        if name.len() > Self::MAX {
            return None;
        }
        let mut buf = [0u8; Self::MAX];
        buf[..name.len()].copy_from_slice(name.as_bytes());
        Some(ChainName {
            len: name.len() as u8,
            buf,
        })
    }

    /// `prefix` (a `*_PREFIX` constant) followed by a 16-character hash.
    pub fn hashed(prefix: &str, hash: &[u8; 16]) -> Self {
        debug_assert!(prefix.len() + 16 <= Self::MAX);
        let mut buf = [0u8; Self::MAX];
        buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
        buf[prefix.len()..prefix.len() + 16].copy_from_slice(hash);
        ChainName {
            len: (prefix.len() + 16) as u8,
            buf,
        }
    }

    /// `KUBE-SEP-` + hash16(service_port_name + protocol + endpoint), like
    /// [`endpoint_chain`] without allocating.
    pub fn endpoint(service_port_name: &str, protocol_lower: &str, endpoint: &str) -> Self {
        Self::hashed(
            SEP_PREFIX,
            &hash16_parts(&[
                service_port_name.as_bytes(),
                protocol_lower.as_bytes(),
                endpoint.as_bytes(),
            ]),
        )
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Built only from `&str` and base32 (ASCII), so always UTF-8.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::ops::Deref for ChainName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ChainName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialOrd for ChainName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ChainName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for ChainName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ChainName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
