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
