//! A bounds-checked little-endian cursor over bytes that came from a log or from another
//! node's memory. The crate's decoders (log records, index nodes) read through it, so a length
//! or count taken from those bytes can never index past them; each decoder turns a [`Short`]
//! into its own error, naming the record or object.

/// The cursor ran out of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    pub needed: usize,
    pub left: usize,
}

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "needs {} bytes, {} left", self.needed, self.left)
    }
}

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, at: 0 }
    }

    /// Bytes read so far.
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
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
}
