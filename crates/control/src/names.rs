//! Generated names in Kubernetes' style, derived from a seed instead of randomness.

use sha2::{Digest, Sha256};

/// apimachinery's `rand.String` alphabet: no vowels (no accidental words) and no
/// look-alike characters.
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn digest(parts: &[&str], seed: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

fn encode(bytes: &[u8], len: usize) -> String {
    bytes
        .iter()
        .take(len)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The five-character suffix of a generated name (`web-7d4b9c8f6-x2k9p` → `x2k9p`).
pub fn pod_name_suffix(seed: u64, parts: &[&str]) -> String {
    encode(&digest(parts, seed), 5)
}

/// The `pod-template-hash` label value of a Deployment's ReplicaSet (ten characters,
/// like upstream's safe-encoded FNV hash of the template).
pub fn template_hash(seed: u64, template_repr: &str) -> String {
    encode(&digest(&["template", template_repr], seed), 10)
}

/// A 64-bit number for probing allocators.
pub(crate) fn hash64(seed: u64, parts: &[&str]) -> u64 {
    let d = digest(parts, seed);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}
