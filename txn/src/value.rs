//! How a transaction's value is kept in an object's payload: a length word, then the bytes.
//! Applications read back exactly the bytes they wrote, while the slot itself is a whole size
//! class (engine::slab).

/// Bytes of the length word in front of a value.
pub const LEN_BYTES: usize = 8;

/// The payload that stores `value`.
pub fn encode(value: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(LEN_BYTES + value.len());
    payload.extend_from_slice(&(value.len() as u64).to_le_bytes());
    payload.extend_from_slice(value);
    payload
}

/// The value stored in `payload`, or why the payload is not one.
pub fn decode(payload: &[u8]) -> Result<&[u8], String> {
    let Some((len, rest)) = payload.split_first_chunk::<LEN_BYTES>() else {
        return Err(format!(
            "payload of {} bytes has no length word",
            payload.len()
        ));
    };
    let len = u64::from_le_bytes(*len);
    if len > rest.len() as u64 {
        return Err(format!(
            "length word {len} exceeds the {} payload bytes",
            rest.len()
        ));
    }
    Ok(&rest[..len as usize])
}

/// The largest value a slot of `payload_bytes` holds.
pub fn capacity(payload_bytes: usize) -> usize {
    payload_bytes.saturating_sub(LEN_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_lengths_are_errors() {
        for value in [&b""[..], b"x", &[7u8; 100]] {
            let mut payload = encode(value);
            payload.resize(payload.len() + 5, 0);
            assert_eq!(decode(&payload).unwrap(), value);
        }
        assert!(decode(&[1, 2, 3]).is_err());
        assert!(decode(&encode(b"abc")[..10]).is_err());
        // A zeroed slot (fresh allocation) holds the empty value.
        assert_eq!(decode(&[0; 16]).unwrap(), b"");
        assert_eq!(capacity(16), 8);
    }
}
