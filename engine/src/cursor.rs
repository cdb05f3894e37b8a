//! A bounds-checked little-endian cursor over bytes that came from the network, a log or another
//! node's memory. Every decoder of such bytes reads through it (the TCP frame decoder here,
//! acre-txn's log records and index nodes), so a length or count taken from those bytes can
//! never index past them.
//!
//! A read that would pass the end returns [`Short`] and consumes nothing, so [`Cursor::at`] is
//! still the offset of the field that did not fit; each decoder turns that into its own error,
//! naming the field, the frame, record or object, and that offset.

/// A read needed more bytes than were left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("needs {needed} bytes, {left} left")]
#[non_exhaustive]
pub struct Short {
    /// Bytes the read asked for.
    pub needed: usize,
    /// Bytes that were left.
    pub left: usize,
}

/// Reads fields one after another from the front of `bytes`.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, at: 0 }
    }

    /// Bytes read so far: the offset of the next field.
    pub fn at(&self) -> usize {
        self.at
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The next `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], Short> {
        if len > self.remaining() {
            return Err(Short {
                needed: len,
                left: self.remaining(),
            });
        }
        let taken = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(taken)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        Ok(self
            .take(N)?
            .try_into()
            .expect("take returns exactly N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_never_past_the_end() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut cursor = Cursor::new(&bytes);
        assert_eq!(cursor.u8(), Ok(1));
        assert_eq!(cursor.u16(), Ok(2));
        assert_eq!(cursor.u32(), Ok(3));
        assert_eq!(cursor.u64(), Ok(4));
        assert_eq!((cursor.at(), cursor.remaining()), (15, 1));
        assert_eq!(cursor.u16(), Err(Short { needed: 2, left: 1 }));
        assert_eq!(cursor.at(), 15, "a short read consumes nothing");
        assert_eq!(cursor.take(1), Ok(&[9u8][..]));
        assert_eq!(
            cursor.take(usize::MAX),
            Err(Short {
                needed: usize::MAX,
                left: 0
            })
        );
    }

    #[test]
    fn arrays_come_whole_or_not_at_all() {
        let mut cursor = Cursor::new(b"ACRE!");
        assert_eq!(cursor.array::<4>(), Ok(*b"ACRE"));
        assert_eq!(cursor.array::<2>(), Err(Short { needed: 2, left: 1 }));
        assert_eq!(cursor.at(), 4, "a short read consumes nothing");
        assert_eq!(
            Short { needed: 2, left: 1 }.to_string(),
            "needs 2 bytes, 1 left"
        );
    }
}
