//! CRC32C (Castagnoli) for records and headers, and the CRC-8 that guards the head and tail words.
//!
//! CRC32C uses the SSE4.2 `crc32` instruction when the CPU has it and a table otherwise; both give
//! the same result (tested against the standard check value).

const CASTAGNOLI_REFLECTED: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CASTAGNOLI_REFLECTED
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A running CRC32C: feed it pieces with [`Crc32c::update`], then [`Crc32c::finish`].
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    pub fn new() -> Self {
        Crc32c(!0)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.2") {
                self.0 = update_sse42(self.0, bytes);
                return;
            }
        }
        self.0 = update_table(self.0, bytes);
    }

    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC32C of one byte string.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(bytes);
    crc.finish()
}

fn update_table(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn update_sse42(crc: u32, bytes: &[u8]) -> u32 {
    #[target_feature(enable = "sse4.2")]
    fn run(mut crc: u32, bytes: &[u8]) -> u32 {
        use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
        let mut chunks = bytes.chunks_exact(8);
        let mut crc64 = crc as u64;
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8)"));
            crc64 = _mm_crc32_u64(crc64, word);
        }
        crc = crc64 as u32;
        for &b in chunks.remainder() {
            crc = _mm_crc32_u8(crc, b);
        }
        crc
    }
    // SAFETY: the caller checked `is_x86_feature_detected!("sse4.2")`, the only requirement of a
    // `target_feature(enable = "sse4.2")` function; `run` itself touches only its arguments.
    unsafe { run(crc, bytes) }
}

/// CRC-8 (polynomial x^8 + x^2 + x + 1) of the low 56 bits of `value`. It detects every single-bit
/// and every double-bit error in a 64-bit head or tail word, which an 8-byte atomic persist cannot
/// tear.
pub fn crc8_56(value: u64) -> u8 {
    let mut crc: u8 = 0;
    for i in 0..7 {
        crc ^= (value >> (8 * i)) as u8;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C (iSCSI) for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(update_table(!0, b"123456789") ^ !0, 0xE306_9283);
    }

    #[test]
    fn sse_and_table_agree_on_every_length() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..bytes.len() {
            let mut a = Crc32c::new();
            a.update(&bytes[..len]);
            assert_eq!(a.finish(), !update_table(!0, &bytes[..len]), "len={len}");
        }
    }

    #[test]
    fn split_updates_equal_one_update() {
        let bytes = b"the quick brown fox jumps over the lazy dog";
        let mut a = Crc32c::new();
        a.update(&bytes[..10]);
        a.update(&bytes[10..]);
        assert_eq!(a.finish(), crc32c(bytes));
    }

    #[test]
    fn crc8_detects_every_single_and_double_bit_flip() {
        let value = 0x0012_3456_789a_bcdeu64;
        let check = crc8_56(value);
        for i in 0..56 {
            assert_ne!(crc8_56(value ^ (1 << i)), check, "bit {i}");
            for j in (i + 1)..56 {
                assert_ne!(crc8_56(value ^ (1 << i) ^ (1 << j)), check, "bits {i},{j}");
            }
        }
    }
}
