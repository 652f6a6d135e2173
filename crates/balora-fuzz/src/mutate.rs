//! A deterministic byte mutator: the same seed gives the same sequence of inputs.

/// xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n ≥ 1`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// 4-byte values that break length and count fields.
pub const U32S: [u32; 6] = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF];
/// 8-byte values that break length and count fields.
pub const U64S: [u64; 7] = [
    0,
    1,
    0xFFFF_FFFF,
    1 << 40,
    i64::MAX as u64,
    u64::MAX - 7,
    u64::MAX,
];
/// Text fragments for JSON / TOML / JSONL inputs.
pub const TOKENS: [&str; 16] = [
    "0",
    "-1",
    "4294967295",
    "18446744073709551615",
    "1e309",
    "-0.0",
    "NaN",
    "nan",
    "\"",
    "[[[[[[[[",
    "{}",
    "null",
    "\n",
    "\u{FFFD}",
    "999999999999",
    "inf",
];

/// The mutation kinds, for reports.
pub const KINDS: [&str; 8] = [
    "bit flips",
    "truncation",
    "u32 overwrite",
    "u64 overwrite",
    "splice",
    "range duplication",
    "text token",
    "byte run",
];

/// One mutation of `input` (`other`: a second corpus entry for splices). Returns the new
/// bytes and the kind index into [`KINDS`].
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> (Vec<u8>, usize) {
    let mut v = input.to_vec();
    let kind = rng.below(KINDS.len());
    let n = v.len();
    match kind {
        0 if n > 0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(n);
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 => v.truncate(rng.below(n + 1)),
        2 if n >= 4 => {
            let i = rng.below(n - 3);
            let x = U32S[rng.below(U32S.len())];
            v[i..i + 4].copy_from_slice(&x.to_le_bytes());
        }
        3 if n >= 8 => {
            let i = rng.below(n - 7);
            let x = U64S[rng.below(U64S.len())];
            v[i..i + 8].copy_from_slice(&x.to_le_bytes());
        }
        4 => {
            let i = rng.below(n + 1);
            let j = rng.below(other.len() + 1);
            v.truncate(i);
            v.extend_from_slice(&other[j..]);
        }
        5 if n > 0 => {
            let a = rng.below(n);
            let len = 1 + rng.below((n - a).min(256));
            let at = rng.below(n + 1);
            let chunk = v[a..a + len].to_vec();
            v.splice(at..at, chunk);
        }
        6 => {
            let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
            let at = rng.below(n + 1);
            let cut = rng.below(4).min(n - at);
            v.splice(at..at + cut, t.iter().copied());
        }
        _ => {
            let at = rng.below(n + 1);
            let len = 1 + rng.below(16);
            let b = rng.next_u64() as u8;
            v.splice(at..at, std::iter::repeat_n(b, len));
        }
    }
    (v, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inputs_and_every_kind_occurs() {
        let input: Vec<u8> = (0..64).collect();
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..200)
                .map(|_| mutate(&mut r, &input, b"other"))
                .collect::<Vec<_>>()
        };
        let a = run(3);
        assert_eq!(a, run(3));
        assert_ne!(a, run(4));
        for k in 0..KINDS.len() {
            assert!(a.iter().any(|(_, kind)| *kind == k), "kind {k} never drawn");
        }
        // Every mutation changes something or is a no-op truncation at full length.
        assert!(a.iter().filter(|(m, _)| *m == input).count() < 20);
    }
}
