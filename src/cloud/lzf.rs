//! LZF (liblzf's format), the compression of PCD `binary_compressed`. Decompression checks every length and
//! back-reference, so a corrupt file is an error, not a panic or an out-of-bounds read.

use super::{CloudError, Result};

const MAX_LITERAL: usize = 32;
const MAX_OFFSET: usize = 1 << 13;
const MAX_MATCH: usize = 2 + 7 + 255; // the longest back-reference the format can express
const HASH_BITS: u32 = 14;
/// The most output one input byte can give (a longest back-reference takes three bytes): a declared size
/// beyond `input × MAX_EXPANSION` is a lie, and is not allocated.
pub const MAX_EXPANSION: usize = MAX_MATCH.div_ceil(3) + 1;

pub fn decompress(input: &[u8], expected_len: usize) -> Result<Vec<u8>> {
    let err = |what: String| CloudError::Compression(what);
    if expected_len > input.len().saturating_mul(MAX_EXPANSION) {
        return Err(err(format!("{} bytes cannot decompress to the declared {expected_len}", input.len())));
    }
    let mut out = Vec::with_capacity(expected_len);
    let mut ip = 0;
    while ip < input.len() {
        let ctrl = usize::from(input[ip]);
        ip += 1;
        if ctrl < 32 {
            let len = ctrl + 1;
            let lit = input.get(ip..ip + len).ok_or_else(|| err(format!("literal run past end of input at {ip}")))?;
            out.extend_from_slice(lit);
            ip += len;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += usize::from(*input.get(ip).ok_or_else(|| err("truncated match length".into()))?);
                ip += 1;
            }
            len += 2;
            let low = usize::from(*input.get(ip).ok_or_else(|| err("truncated match offset".into()))?);
            ip += 1;
            let distance = ((ctrl & 0x1f) << 8) + low + 1;
            let start = out
                .len()
                .checked_sub(distance)
                .ok_or_else(|| err(format!("back-reference {distance} bytes before the start of the output")))?;
            // Overlapping copies repeat a short pattern, so copy byte by byte.
            for k in 0..len {
                let b = out[start + k];
                out.push(b);
            }
        }
        if out.len() > expected_len {
            return Err(err(format!("output exceeds the declared {expected_len} bytes")));
        }
    }
    if out.len() != expected_len {
        return Err(err(format!("decompressed to {} bytes, the header declares {expected_len}", out.len())));
    }
    Ok(out)
}

pub fn compress(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2 + 16);
    let mut table = vec![usize::MAX; 1 << HASH_BITS];
    let hash = |p: usize| {
        let v = u32::from(input[p]) << 16 | u32::from(input[p + 1]) << 8 | u32::from(input[p + 2]);
        (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
    };
    let mut literal_start = 0;
    let flush_literals = |out: &mut Vec<u8>, from: usize, to: usize| {
        for chunk in input[from..to].chunks(MAX_LITERAL) {
            out.push((chunk.len() - 1) as u8);
            out.extend_from_slice(chunk);
        }
    };
    let mut ip = 0;
    while ip + 2 < input.len() {
        let h = hash(ip);
        let candidate = table[h];
        table[h] = ip;
        if candidate != usize::MAX
            && ip - candidate <= MAX_OFFSET
            && input[candidate..candidate + 3] == input[ip..ip + 3]
        {
            let max = MAX_MATCH.min(input.len() - ip);
            let mut len = 3;
            while len < max && input[candidate + len] == input[ip + len] {
                len += 1;
            }
            flush_literals(&mut out, literal_start, ip);
            let offset = ip - candidate - 1;
            let code = len - 2;
            if code < 7 {
                out.push(((code << 5) | (offset >> 8)) as u8);
            } else {
                out.push(((7 << 5) | (offset >> 8)) as u8);
                out.push((code - 7) as u8);
            }
            out.push((offset & 0xff) as u8);
            ip += len;
            literal_start = ip;
        } else {
            ip += 1;
        }
    }
    flush_literals(&mut out, literal_start, input.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_runs_and_far_matches_round_trip() {
        let mut data = vec![0u8; 5000];
        data.extend((0..20_000u32).map(|i| (i * 7 % 251) as u8));
        data.extend(std::iter::repeat_n(9u8, 1000));
        let packed = compress(&data);
        assert!(packed.len() < data.len() / 2);
        assert_eq!(decompress(&packed, data.len()).unwrap(), data);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        assert!(decompress(&[0x20, 0x05], 10).is_err(), "back-reference before start");
        assert!(decompress(&[0x05, 1, 2], 6).is_err(), "truncated literal");
        assert!(decompress(&[0x00, 1], 2).is_err(), "wrong declared size");
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(0u8..4, 0..3000)) {
            prop_assert_eq!(decompress(&compress(&data), data.len()).unwrap(), data);
        }

        #[test]
        fn never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..300), len in 0usize..2000) {
            let _ = decompress(&data, len);
        }
    }
}
