//! Regions: fixed-size blocks of memory that make up the global address space, each registered
//! under an unguessable access key.
//!
//! A region is anonymous memory when every node lives in one process, and a file in the cluster
//! directory (default under `/dev/shm`) when nodes are separate processes. The file's name
//! contains the access key, so a process that has not been given the key cannot even find the file
//! (the directory is mode 0700 and the files 0600). Every remote operation names the key and is
//! checked against it and against the region's bounds before it touches memory.

use crate::addr::{Addr, NodeId, RegionId};
use acre_nvm_log::{MapOptions, Mapping};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

/// Default region size: 64 MiB.
pub const REGION_BYTES_DEFAULT: u64 = 64 << 20;
/// Largest region: offsets are 32 bits.
pub const REGION_BYTES_MAX: u64 = 4 << 30;

/// A capability for one registered memory area: whoever presents it may read and write there.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AccessKey(pub u64);

impl AccessKey {
    /// A fresh key from the operating system's random source (never 0).
    pub fn random() -> AccessKey {
        loop {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("the OS random source is available");
            let key = u64::from_le_bytes(bytes);
            if key != 0 {
                return AccessKey(key);
            }
        }
    }
}

impl fmt::Debug for AccessKey {
    // Keys are secrets: never print one whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessKey({:04x}…)", self.0 >> 48)
    }
}

/// Why an access to registered memory was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("{node} has no region {region}: check the configuration's region map")]
    UnknownRegion { node: NodeId, region: RegionId },
    #[error("wrong access key for {region}: the region was re-registered or the key is stale")]
    BadKey { region: RegionId },
    #[error("{addr} + {len} bytes is outside its region of {region_bytes} bytes")]
    OutOfBounds {
        addr: Addr,
        len: u64,
        region_bytes: u64,
    },
    #[error("{addr} (length {len}) is not aligned to {align} bytes")]
    Misaligned { addr: Addr, len: u64, align: u64 },
}

/// Checks a requested access against a region's key and bounds. Reads and writes must be whole
/// aligned 8-byte words (one-sided operations touch memory only through atomic words).
pub fn check_access(
    region: RegionId,
    region_key: AccessKey,
    region_bytes: u64,
    key: AccessKey,
    addr: Addr,
    len: u64,
) -> Result<(), AccessError> {
    if key != region_key {
        return Err(AccessError::BadKey { region });
    }
    let offset = addr.offset() as u64;
    if !offset.is_multiple_of(8) || !len.is_multiple_of(8) {
        return Err(AccessError::Misaligned {
            addr,
            len,
            align: 8,
        });
    }
    if offset + len > region_bytes {
        return Err(AccessError::OutOfBounds {
            addr,
            len,
            region_bytes,
        });
    }
    Ok(())
}

/// One registered memory area: a region of the address space, or a node's log ring or doorbell.
pub struct Region {
    id: RegionId,
    key: AccessKey,
    mapping: Mapping,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.id)
            .field("bytes", &self.mapping.len())
            .field("path", &self.mapping.path())
            .finish()
    }
}

fn check_size(bytes: u64) -> io::Result<usize> {
    if bytes == 0 || !bytes.is_multiple_of(4096) || bytes > REGION_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("region size {bytes} must be a multiple of 4096 between 4 KiB and 4 GiB"),
        ));
    }
    Ok(bytes as usize)
}

impl Region {
    /// Zeroed anonymous memory under a fresh key (nodes in one process).
    pub fn anonymous(id: RegionId, bytes: u64) -> io::Result<Region> {
        let mapping = Mapping::anonymous(check_size(bytes)?)?;
        Ok(Region {
            id,
            key: AccessKey::random(),
            mapping,
        })
    }

    /// The file name of a region: node, region and key, so only key holders can find it.
    pub fn file_name(node: NodeId, id: RegionId, key: AccessKey) -> String {
        format!("{node}-{id}-{:016x}.region", key.0)
    }

    /// A new zeroed region file in `dir` under a fresh key (nodes as separate processes).
    pub fn create_file(
        dir: &Path,
        node: NodeId,
        id: RegionId,
        bytes: u64,
        options: MapOptions,
    ) -> io::Result<Region> {
        let key = AccessKey::random();
        let path = dir.join(Region::file_name(node, id, key));
        let mapping = Mapping::create_file(&path, check_size(bytes)?, options)?;
        Ok(Region { id, key, mapping })
    }

    /// Maps the existing file of region `id` of `node` in `dir`, if `key` is its key.
    pub fn open_file(
        dir: &Path,
        node: NodeId,
        id: RegionId,
        key: AccessKey,
        options: MapOptions,
    ) -> io::Result<Region> {
        let path = dir.join(Region::file_name(node, id, key));
        let mapping = Mapping::open_file(&path, options)?;
        Ok(Region { id, key, mapping })
    }

    pub fn id(&self) -> RegionId {
        self.id
    }

    pub fn key(&self) -> AccessKey {
        self.key
    }

    pub fn len(&self) -> u64 {
        self.mapping.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    pub fn path(&self) -> Option<PathBuf> {
        self.mapping.path().map(Path::to_path_buf)
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The whole region as atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        self.mapping.words()
    }

    /// The words of `[offset, offset + len)`; both must be 8-aligned and in bounds.
    pub fn words_at(&self, offset: u32, len: u64) -> &[AtomicU64] {
        let start = offset as u64;
        assert!(
            start.is_multiple_of(8),
            "unaligned words: offset={offset} len={len}"
        );
        assert!(
            len.is_multiple_of(8),
            "unaligned words: offset={offset} len={len}"
        );
        assert!(
            start + len <= self.len(),
            "words out of bounds: offset={offset} len={len}"
        );
        &self.words()[(start / 8) as usize..((start + len) / 8) as usize]
    }

    /// Checks `key` and that `[addr, addr + len)` is aligned and inside this region.
    pub fn check(&self, key: AccessKey, addr: Addr, len: u64) -> Result<(), AccessError> {
        check_access(self.id, self.key, self.len(), key, addr, len)
    }
}

/// A region holding a log ring is the ring's media (receiver side).
impl acre_nvm_log::Media for Region {
    fn len(&self) -> u64 {
        Region::len(self)
    }
    fn load(&self, offset: u64) -> u64 {
        acre_nvm_log::Media::load(&self.mapping, offset)
    }
    fn store(&self, offset: u64, value: u64) {
        acre_nvm_log::Media::store(&self.mapping, offset, value)
    }
    fn persist(&self, offset: u64, len: u64) -> io::Result<()> {
        self.mapping.persist(offset as usize, len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_checks_key_alignment_and_bounds() {
        let region = Region::anonymous(RegionId(2), 8192).unwrap();
        let key = region.key();
        let at = |offset| Addr::new(RegionId(2), offset);
        assert_eq!(region.check(key, at(0), 8192), Ok(()));
        assert_eq!(
            region.check(AccessKey(key.0 ^ 1), at(0), 8),
            Err(AccessError::BadKey {
                region: RegionId(2)
            })
        );
        assert!(matches!(
            region.check(key, at(4), 8),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(matches!(
            region.check(key, at(8), 12),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(matches!(
            region.check(key, at(8192), 8),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            region.check(key, at(8184), 16),
            Err(AccessError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn region_files_are_found_only_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let opts = MapOptions::default();
        let region = Region::create_file(dir.path(), NodeId(1), RegionId(7), 8192, opts).unwrap();
        region.words()[3].store(99, std::sync::atomic::Ordering::Release);
        let again =
            Region::open_file(dir.path(), NodeId(1), RegionId(7), region.key(), opts).unwrap();
        assert_eq!(
            again.words()[3].load(std::sync::atomic::Ordering::Acquire),
            99
        );
        let wrong = AccessKey(region.key().0 ^ 0xff);
        assert!(Region::open_file(dir.path(), NodeId(1), RegionId(7), wrong, opts).is_err());
    }

    #[test]
    fn sizes_are_validated_and_keys_differ() {
        assert!(Region::anonymous(RegionId(0), 0).is_err());
        assert!(Region::anonymous(RegionId(0), 5000).is_err());
        assert!(Region::anonymous(RegionId(0), REGION_BYTES_MAX + 4096).is_err());
        assert_ne!(AccessKey::random(), AccessKey::random());
        assert!(!format!("{:?}", AccessKey(0x1234_5678_9abc_def0)).contains("9abc"));
    }
}
