//! Property-based fuzzing helpers shared by the fuzz tests (`tests/fuzz.rs` of the
//! manifest, CNI and DNS crates): how many cases to run, and byte-level mutations of
//! valid inputs. proptest rather than cargo-fuzz: it runs on the stable toolchain, inside
//! the ordinary test suite, with a bounded case count in CI and a larger one on demand.

/// Cases per property: `TWILL_FUZZ_CASES`, else 256 (a few seconds in CI). For a long
/// run: `TWILL_FUZZ_CASES=100000 cargo test --release -p CRATE --test fuzz`.
pub fn cases() -> u32 {
    std::env::var("TWILL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Tokens that matter to YAML and JSON parsers, spliced in by [`mutate`].
pub const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "! ",
    "'",
    "\"",
    "#",
    "\n",
    "\n  ",
    "\t",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "null",
    "~",
    "true",
    "-1",
    "0",
    "65536",
    "99999999999999999999",
    "1e400",
    "\u{feff}",
    "\u{0}",
    "\\u0000",
    "kind: List\nitems:\n",
    "apiVersion: v1\n",
    "metadata: {}",
    "namespace: ",
    "name: ",
];

/// Apply edits to `input`. Each edit is `(position, op, length)`: positions and lengths
/// wrap around the current length, so any numbers make a valid edit.
/// Ops (by `op % 5`): replace one byte, delete a range, duplicate a range, insert a
/// [`TOKENS`] entry, cut the input off.
pub fn mutate(input: &[u8], edits: &[(usize, u8, usize)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for &(pos, op, len) in edits {
        let n = out.len();
        let at = if n == 0 { 0 } else { pos % (n + 1) };
        let span = len % 64;
        match op % 5 {
            0 if at < n => out[at] = op.wrapping_mul(31).wrapping_add(len as u8),
            1 => {
                let end = (at + span).min(n);
                out.drain(at..end);
            }
            2 => {
                let end = (at + span).min(n);
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            3 => {
                let t = TOKENS[len % TOKENS.len()].as_bytes();
                out.splice(at..at, t.iter().copied());
            }
            4 => out.truncate(at),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_wrap_and_every_op_changes_something() {
        let s = b"abcdef";
        assert_eq!(mutate(s, &[(1, 0, 0)]), b"a\0cdef");
        assert_eq!(mutate(s, &[(1, 1, 2)]), b"adef");
        assert_eq!(mutate(s, &[(1, 2, 2)]), b"abcbcdef");
        assert_eq!(mutate(s, &[(7, 3, 0)]), b":abcdef", "7 wraps to 0");
        assert_eq!(mutate(s, &[(3, 4, 0)]), b"abc");
        assert_eq!(mutate(b"", &[(9, 1, 9), (9, 2, 9), (9, 0, 1)]), b"");
    }
}
