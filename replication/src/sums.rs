//! Block sums of a region copy: what lets a memory node restarted from its files vouch for a
//! copy it kept (docs/failures.md#whole-cluster-restart, the layout in
//! docs/formats.md#block-sums-of-a-region-copy-acre-replication).
//!
//! A node that stops cleanly (SIGTERM), once its worker and copier no longer change its copies,
//! writes next to each copy's file a sums file (`<region file>.sums`): one CRC32C per
//! [`SUMS_BLOCK_BYTES`] of the copy, under a header that names the region, its size and the
//! configuration the copy was current in, the whole file checksummed and published by rename.
//! Restarted, the node checks each copy against its sums before anything reads the copy
//! ([`check_and_remove`]), then removes the sums file whatever it found: sums describe the copy
//! as it was at one stop, and must not outlive the next change to it (after a later `kill -9`
//! there are none, and the node vouches for the copy by its objects' own sums instead:
//! `SlabAllocator::check_objects`).

use acre_engine::addr::RegionId;
use acre_engine::region::Region;
use acre_nvm_log::crc::crc32c;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// `"ACRESUMS"`, little-endian.
pub const SUMS_MAGIC: u64 = u64::from_le_bytes(*b"ACRESUMS");
/// The layout's version; a change of layout bumps it.
pub const SUMS_VERSION: u32 = 1;
/// Bytes of the header before the block sums.
pub const SUMS_HEADER_BYTES: usize = 64;
/// Bytes of a copy one sum covers. 64 KiB: small enough that a damaged block names a place in
/// the copy an operator can look at (a slab block is 1 MiB by default, and a region's block
/// size may differ between clusters: a fixed size keeps the file's meaning independent of the
/// configuration), large enough that the sums of a 1 GiB region are 64 KiB, written and read
/// in a few milliseconds besides the CRC of the copy itself.
pub const SUMS_BLOCK_BYTES: u64 = 64 << 10;
/// The damaged blocks a [`Verdict::Damaged`] lists (it counts them all).
pub const DAMAGED_LISTED_MAX: usize = 8;

/// The sums of one region copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySums {
    pub region: RegionId,
    pub region_bytes: u64,
    pub block_bytes: u64,
    /// The configuration the copy was last current in: its node's configuration when it
    /// stopped. Said in the node's log at restart; nothing is decided by it.
    pub config_id: u64,
    /// One CRC32C per block, the last block possibly shorter.
    pub sums: Vec<u32>,
}

/// Why a sums file cannot be used: nothing about the copy can be proved by it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SumsError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("is {bytes} bytes, shorter than its {SUMS_HEADER_BYTES}-byte header")]
    Short { bytes: usize },
    #[error("has no sums magic at offset 0")]
    Magic,
    #[error("has version {version}, not {SUMS_VERSION}")]
    Version { version: u32 },
    #[error("header checksum (offset 60) does not match")]
    HeaderChecksum,
    #[error("is {bytes} bytes, but its header says {expected}: truncated or extended")]
    Length { bytes: usize, expected: u64 },
    #[error("block sums checksum (offset 56) does not match")]
    SumsChecksum,
    #[error("header field at offset {offset} is out of range")]
    Field { offset: usize },
    #[error(
        "describes {region} of {region_bytes} bytes in blocks of {block_bytes}, not this copy \
         ({copy_region} of {copy_bytes} bytes)"
    )]
    OtherCopy {
        region: RegionId,
        region_bytes: u64,
        block_bytes: u64,
        copy_region: RegionId,
        copy_bytes: u64,
    },
}

/// What a restarted node can say of a copy it kept.
#[derive(Debug)]
pub enum Verdict {
    /// Every block matches the sums written when the node stopped cleanly in configuration
    /// `config_id`: the copy is as it was then.
    Intact { config_id: u64 },
    /// No sums file: the node was killed (or its stop could not write them). The copy is
    /// vouched for by its objects' own sums instead (`SlabAllocator::check_objects`,
    /// docs/failures.md#whole-cluster-restart).
    NoSums,
    /// `count` blocks do not match their sums (the first of them listed, by index): the copy
    /// changed after the stop, and is not served.
    Damaged { blocks: Vec<u64>, count: u64 },
    /// A sums file is there but does not decode or check: written at a clean stop and damaged
    /// since, so nothing vouches for the copy, which is not served. (A file that cannot be read
    /// at all fails the check instead: [`check_and_remove`].)
    Unreadable(SumsError),
    /// An earlier run marked the copy damaged ([`mark_damaged`]): a restart found it damaged
    /// and emptied it, or the node failed when records it had acknowledged were damaged or lost.
    /// No configuration has counted it complete since: it holds zeros, a part of a copy from a
    /// live replica, or what the failed node left, and is not served.
    NotCopiedAgain,
}

impl Verdict {
    /// Whether the copy must not be served: re-copied from a live replica, or lost.
    pub fn is_damaged(&self) -> bool {
        matches!(
            self,
            Verdict::Damaged { .. } | Verdict::Unreadable(_) | Verdict::NotCopiedAgain
        )
    }
}

/// The sums file of the copy in `copy_file`: next to it, `.sums` appended.
/// The file `acre cluster down` leaves in the cluster directory while it stops every node: a
/// node writes the block sums of its copies at a clean stop only then. A node stopped alone
/// (SIGTERM to its process while the others run) writes none: over shm, running coordinators
/// go on writing its primary copies one-sided until the CM moves them, so sums taken at its
/// stop would call committed writes damage, and its restart would empty a copy clients still
/// read. Its restart then trusts its copies as after a kill.
pub const CLUSTER_STOPPING_FILE: &str = "stopping";

/// Marks the cluster in `dir` as stopping as a whole ([`CLUSTER_STOPPING_FILE`]).
pub fn mark_cluster_stopping(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join(CLUSTER_STOPPING_FILE), b"acre cluster down\n")
}

/// Clears the mark (`acre cluster up` starts nodes again).
pub fn clear_cluster_stopping(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(CLUSTER_STOPPING_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `acre cluster down` is stopping the whole cluster in `dir`.
pub fn cluster_stopping(dir: &Path) -> bool {
    dir.join(CLUSTER_STOPPING_FILE).exists()
}

pub fn sums_path(copy_file: &Path) -> PathBuf {
    let mut name = copy_file.as_os_str().to_owned();
    name.push(".sums");
    PathBuf::from(name)
}

impl CopySums {
    /// The sums of `region` as it is now. Read through atomic word loads, as every access to
    /// region memory is.
    pub fn of(region: &Region, config_id: u64) -> CopySums {
        CopySums {
            region: region.id(),
            region_bytes: region.len(),
            block_bytes: SUMS_BLOCK_BYTES,
            config_id,
            sums: block_sums(region, SUMS_BLOCK_BYTES),
        }
    }

    /// The file's bytes (docs/formats.md#block-sums-of-a-region-copy-acre-replication).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; SUMS_HEADER_BYTES + 4 * self.sums.len()];
        for (index, sum) in self.sums.iter().enumerate() {
            let at = SUMS_HEADER_BYTES + 4 * index;
            bytes[at..at + 4].copy_from_slice(&sum.to_le_bytes());
        }
        let sums_checksum = crc32c(&bytes[SUMS_HEADER_BYTES..]);
        let block_bytes = u32::try_from(self.block_bytes).expect("a block is under 4 GiB");
        bytes[0..8].copy_from_slice(&SUMS_MAGIC.to_le_bytes());
        bytes[8..12].copy_from_slice(&SUMS_VERSION.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.region.0.to_le_bytes());
        bytes[20..24].copy_from_slice(&block_bytes.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.region_bytes.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.config_id.to_le_bytes());
        bytes[40..48].copy_from_slice(&(self.sums.len() as u64).to_le_bytes());
        bytes[56..60].copy_from_slice(&sums_checksum.to_le_bytes());
        let header_checksum = crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&header_checksum.to_le_bytes());
        bytes
    }

    /// Decodes a sums file's bytes, checking its magic, version, both checksums, its length
    /// and that its fields agree.
    pub fn decode(bytes: &[u8]) -> Result<CopySums, SumsError> {
        if bytes.len() < SUMS_HEADER_BYTES {
            return Err(SumsError::Short { bytes: bytes.len() });
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if u64_at(0) != SUMS_MAGIC {
            return Err(SumsError::Magic);
        }
        if u32_at(60) != crc32c(&bytes[..60]) {
            return Err(SumsError::HeaderChecksum);
        }
        let version = u32_at(8);
        if version != SUMS_VERSION {
            return Err(SumsError::Version { version });
        }
        let block_count = u64_at(40);
        let expected = block_count
            .checked_mul(4)
            .and_then(|b| b.checked_add(SUMS_HEADER_BYTES as u64))
            .ok_or(SumsError::Field { offset: 40 })?;
        if bytes.len() as u64 != expected {
            return Err(SumsError::Length {
                bytes: bytes.len(),
                expected,
            });
        }
        if u32_at(56) != crc32c(&bytes[SUMS_HEADER_BYTES..]) {
            return Err(SumsError::SumsChecksum);
        }
        let block_bytes = u64::from(u32_at(20));
        let region_bytes = u64_at(24);
        if block_bytes == 0 {
            return Err(SumsError::Field { offset: 20 });
        }
        if region_bytes.div_ceil(block_bytes) != block_count {
            return Err(SumsError::Field { offset: 40 });
        }
        let sums = bytes[SUMS_HEADER_BYTES..]
            .chunks_exact(4)
            .map(|sum| u32::from_le_bytes(sum.try_into().expect("4")))
            .collect();
        Ok(CopySums {
            region: RegionId(u32_at(16)),
            region_bytes,
            block_bytes,
            config_id: u64_at(32),
            sums,
        })
    }

    /// Writes the sums to `path` atomically: a temporary file, synced, renamed over `path`,
    /// and the directory synced, so that after a crash `path` holds these sums whole or what
    /// it held before.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let temporary = temporary_path(path);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&self.encode())?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The sums in `path`; `Ok(None)` when there is no such file.
    pub fn read(path: &Path) -> Result<Option<CopySums>, SumsError> {
        match fs::read(path) {
            Ok(bytes) => CopySums::decode(&bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SumsError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Checks `region` against these sums: [`Verdict::Intact`] or [`Verdict::Damaged`], or
    /// [`Verdict::Unreadable`] when they describe another copy.
    pub fn check(&self, region: &Region) -> Verdict {
        if self.region != region.id() || self.region_bytes != region.len() {
            return Verdict::Unreadable(SumsError::OtherCopy {
                region: self.region,
                region_bytes: self.region_bytes,
                block_bytes: self.block_bytes,
                copy_region: region.id(),
                copy_bytes: region.len(),
            });
        }
        let now = block_sums(region, self.block_bytes);
        debug_assert_eq!(now.len(), self.sums.len());
        let mut blocks = Vec::new();
        let mut count = 0;
        for (index, (then, now)) in self.sums.iter().zip(&now).enumerate() {
            if then != now {
                count += 1;
                if blocks.len() < DAMAGED_LISTED_MAX {
                    blocks.push(index as u64);
                }
            }
        }
        if count == 0 {
            Verdict::Intact {
                config_id: self.config_id,
            }
        } else {
            Verdict::Damaged { blocks, count }
        }
    }
}

/// The file whose presence says that the copy in `copy_file` was found damaged and emptied at
/// a restart, and has not been counted complete since: next to it, `.damaged` appended.
pub fn damaged_path(copy_file: &Path) -> PathBuf {
    let mut name = copy_file.as_os_str().to_owned();
    name.push(".damaged");
    PathBuf::from(name)
}

/// Marks the copy in `copy_file` damaged, durably, before it is emptied: until
/// [`clear_damaged`], every restart finds it [`Verdict::NotCopiedAgain`], whatever sums or
/// none sit next to it. Without the mark, a clean stop before the copy is taken again would
/// write sums of the emptied copy, and a kill would leave none: either way the next restart
/// would serve it, while the configuration in force may still count it complete (the CM's
/// restart configuration, which makes it a backup copying again, may never have committed).
pub fn mark_damaged(copy_file: &Path) -> io::Result<()> {
    let path = damaged_path(copy_file);
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?
        .sync_all()?;
    sync_parent(&path)
}

/// Removes the mark of [`mark_damaged`]: a configuration counts the copy complete again.
pub fn clear_damaged(copy_file: &Path) -> io::Result<()> {
    let path = damaged_path(copy_file);
    match fs::remove_file(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    }
    sync_parent(&path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks the copy `region`, mapped from `copy_file`, against the sums its node wrote when it
/// stopped, then removes the sums file (also when it is damaged): the copy is about to change.
/// A copy [`mark_damaged`] marked is [`Verdict::NotCopiedAgain`], whatever its sums say.
/// An error when the sums file is there but cannot be read (it proves nothing either way), or
/// cannot be removed, which must stop the start: sums left behind would describe a copy that
/// has changed since.
pub fn check_and_remove(region: &Region, copy_file: &Path) -> io::Result<Verdict> {
    let path = sums_path(copy_file);
    // A stop killed while it wrote the sums left its temporary file: it proves nothing.
    match fs::remove_file(temporary_path(&path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let marked = damaged_path(copy_file).exists();
    let verdict = match CopySums::read(&path) {
        Ok(None) if marked => return Ok(Verdict::NotCopiedAgain),
        Ok(None) => return Ok(Verdict::NoSums),
        Ok(Some(_)) if marked => Verdict::NotCopiedAgain,
        Ok(Some(sums)) => sums.check(region),
        Err(_) if marked => Verdict::NotCopiedAgain,
        // The file is there but could not be read: nothing is known of the copy, and deciding
        // it damaged would empty a copy that may be the region's last intact one. The start
        // fails, the file stays, and the operator looks.
        Err(SumsError::Io { path, source }) => {
            return Err(io::Error::new(
                source.kind(),
                format!("read the block sums {}: {source}", path.display()),
            ));
        }
        Err(e) => Verdict::Unreadable(e),
    };
    fs::remove_file(&path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(verdict)
}

/// Where [`CopySums::write`] writes the sums for `path` before renaming them there.
fn temporary_path(path: &Path) -> PathBuf {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    PathBuf::from(temporary)
}

/// One CRC32C per `block_bytes` of `region`, read through atomic word loads.
fn block_sums(region: &Region, block_bytes: u64) -> Vec<u32> {
    let words = region.words();
    let words_per_block = (block_bytes / 8) as usize;
    let mut buffer = Vec::with_capacity(block_bytes as usize);
    words
        .chunks(words_per_block.max(1))
        .map(|block| {
            buffer.clear();
            for word in block {
                buffer.extend_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
            }
            crc32c(&buffer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::NodeId;
    use acre_nvm_log::MapOptions;

    const REGION_BYTES: u64 = 4 * SUMS_BLOCK_BYTES + 4096;

    fn copy(dir: &Path) -> (Region, PathBuf) {
        let region = Region::create_file(
            dir,
            NodeId(2),
            RegionId(3),
            REGION_BYTES,
            MapOptions::default(),
        )
        .unwrap();
        for (index, word) in region.words().iter().enumerate().step_by(97) {
            word.store(index as u64 * 0x9e37_79b9, Ordering::Relaxed);
        }
        let path = region.path().unwrap();
        (region, path)
    }

    #[test]
    fn sums_written_at_a_stop_prove_the_copy_intact_once() {
        let dir = tempfile::tempdir().unwrap();
        let (region, file) = copy(dir.path());
        let sums = CopySums::of(&region, 17);
        assert_eq!(sums.sums.len(), 5, "the short last block has a sum too");
        sums.write(&sums_path(&file)).unwrap();
        assert_eq!(CopySums::read(&sums_path(&file)).unwrap(), Some(sums));
        let verdict = check_and_remove(&region, &file).unwrap();
        assert!(
            matches!(verdict, Verdict::Intact { config_id: 17 }),
            "{verdict:?}"
        );
        assert!(!sums_path(&file).exists(), "sums never outlive their check");
        // A stop killed while writing leaves a temporary file only: no sums, and it goes.
        fs::write(temporary_path(&sums_path(&file)), b"half").unwrap();
        let verdict = check_and_remove(&region, &file).unwrap();
        assert!(matches!(verdict, Verdict::NoSums), "{verdict:?}");
        assert!(!temporary_path(&sums_path(&file)).exists());
    }

    #[test]
    fn a_flipped_bit_in_the_copy_is_found_in_its_block() {
        let dir = tempfile::tempdir().unwrap();
        let (region, file) = copy(dir.path());
        CopySums::of(&region, 4).write(&sums_path(&file)).unwrap();
        // The map goes away as a stopped node's does; the bit flips in the file.
        let key = region.key();
        drop(region);
        let mut bytes = fs::read(&file).unwrap();
        let at = 2 * SUMS_BLOCK_BYTES as usize + 12_345;
        bytes[at] ^= 0x10;
        fs::write(&file, bytes).unwrap();
        let region = Region::open_file(
            dir.path(),
            NodeId(2),
            RegionId(3),
            key,
            MapOptions::default(),
        )
        .unwrap();
        let verdict = check_and_remove(&region, &file).unwrap();
        assert!(verdict.is_damaged());
        match verdict {
            Verdict::Damaged { blocks, count } => {
                assert_eq!((blocks, count), (vec![2], 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(!sums_path(&file).exists());
    }

    #[test]
    fn a_damaged_or_truncated_sums_file_vouches_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (region, file) = copy(dir.path());
        let bytes = CopySums::of(&region, 4).encode();
        let path = sums_path(&file);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", bytes[..bytes.len() - 4].to_vec()),
            ("header only", bytes[..SUMS_HEADER_BYTES].to_vec()),
            ("short", bytes[..10].to_vec()),
            ("a sum flipped", {
                let mut b = bytes.clone();
                b[SUMS_HEADER_BYTES + 5] ^= 1;
                b
            }),
            ("the header flipped", {
                let mut b = bytes.clone();
                b[33] ^= 1;
                b
            }),
        ];
        for (what, damaged) in cases {
            fs::write(&path, damaged).unwrap();
            let verdict = check_and_remove(&region, &file).unwrap();
            assert!(
                matches!(verdict, Verdict::Unreadable(_)),
                "{what}: {verdict:?}"
            );
            assert!(verdict.is_damaged(), "{what}");
            assert!(!path.exists(), "{what}: removed");
        }
        // Sums of another region of the same size describe another copy.
        let mut other = CopySums::of(&region, 4);
        other.region = RegionId(9);
        other.write(&path).unwrap();
        let verdict = check_and_remove(&region, &file).unwrap();
        assert!(
            matches!(verdict, Verdict::Unreadable(SumsError::OtherCopy { .. })),
            "{verdict:?}"
        );
    }

    /// A sums file that cannot be read (an I/O error, not a missing file: here a symbolic link
    /// to itself, ELOOP; on a real node EIO or EMFILE) says nothing of the copy: the start
    /// fails and leaves both alone. Before, the error was taken for damage, the sums file was
    /// removed and the caller emptied an intact copy (`Verdict::Unreadable`), its region lost
    /// if that copy was its last intact replica.
    #[test]
    fn an_error_reading_the_sums_file_fails_the_check_and_decides_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (region, file) = copy(dir.path());
        let path = sums_path(&file);
        std::os::unix::fs::symlink(&path, &path).unwrap();
        let checked = check_and_remove(&region, &file);
        assert!(checked.is_err(), "{checked:?}");
        assert!(
            fs::symlink_metadata(&path).is_ok(),
            "the sums file stays for the operator"
        );
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let sums = CopySums {
            region: RegionId(5),
            region_bytes: 3 * SUMS_BLOCK_BYTES,
            block_bytes: SUMS_BLOCK_BYTES,
            config_id: 0x0102_0304,
            sums: vec![0xaabb_ccdd, 1, 2],
        };
        let bytes = sums.encode();
        assert_eq!(bytes.len(), SUMS_HEADER_BYTES + 12);
        assert_eq!(&bytes[..8], b"ACRESUMS");
        assert_eq!(&bytes[16..20], &5u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &(64u32 << 10).to_le_bytes());
        assert_eq!(&bytes[40..48], &3u64.to_le_bytes());
        assert_eq!(&bytes[64..68], &0xaabb_ccddu32.to_le_bytes());
        assert_eq!(CopySums::decode(&bytes).unwrap(), sums);
    }
}
