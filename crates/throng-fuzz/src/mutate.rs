//! Byte-level mutation of valid encodings: what reaches a decoder's deep paths (a valid frame
//! whose nested message lies about a length, a record whose third frame is cut short) that
//! random bytes almost never reach.

use crate::rng::Rng;

/// Varint encodings (postcard's lengths, tags and integers) of values decoders meet at their
/// edges, and a few that are no valid varint at all.
const VARINTS: [&[u8]; 10] = [
    &[0x00],
    &[0x7f],
    &[0x80, 0x01],
    &[0xff, 0x7f],
    &[0x80, 0x80, 0x40],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ],
    &[
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    ],
    &[0xff],
];

/// 32-bit values for fixed-width length prefixes (the handshake's big-endian one, a record's
/// little-endian one).
const PREFIXES: [u32; 8] = [0, 1, 1023, 1025, 64 * 1024, 8 << 20, 0x7fff_ffff, u32::MAX];

/// Apply one to four random mutations to `input`; `other` is another input to splice from.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let n = 1 + rng.below(4).min(rng.below(4));
    for _ in 0..n {
        once(rng, input, other);
    }
}

fn once(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    let at = rng.below(len + 1);
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = *rng.pick(&[0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x10, 0x20]);
        }
        2 => {
            let v = rng.pick(&VARINTS);
            input.splice(at..at, v.iter().copied());
        }
        3 => {
            let v = rng.pick(&VARINTS);
            let end = (at + v.len()).min(len);
            input.splice(at..end, v.iter().copied());
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(8)).min(len);
            input.drain(start..end);
        }
        5 if len > 0 => {
            let from = rng.below(len);
            let end = (from + 1 + rng.below(16)).min(len);
            let copy: Vec<u8> = input[from..end].to_vec();
            input.splice(at..at, copy);
        }
        6 => input.truncate(at),
        7 => {
            let n = 1 + rng.below(16);
            let extra = rng.bytes(n);
            input.extend_from_slice(&extra);
        }
        8 if !other.is_empty() => {
            let from = rng.below(other.len());
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        9 => {
            let v = *rng.pick(&PREFIXES);
            let bytes = if rng.bool() {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            let end = (at + 4).min(len);
            input.splice(at..end, bytes);
        }
        10 if len > 1 => {
            let (i, j) = (rng.below(len), rng.below(len));
            input.swap(i, j);
        }
        _ => {
            let b = rng.byte();
            input.insert(at, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_change_inputs_and_never_panic() {
        let mut rng = Rng::new(3);
        let mut changed = 0;
        for i in 0..20_000 {
            let mut input = rng.bytes(i % 40);
            let before = input.clone();
            mutate(&mut rng, &mut input, b"other input");
            changed += usize::from(input != before);
        }
        assert!(changed > 15_000, "{changed}");
    }
}
