//! Memory mappings that can be made durable: files (DAX with `MAP_SYNC` where the filesystem
//! supports it, an ordinary shared mapping otherwise) and anonymous memory.
//!
//! This is the only module that calls `mmap`. It hands out the mapped bytes only as a slice of
//! [`AtomicU64`] words, because other threads, other processes (shm transport) and the fabric's
//! NIC threads may write them concurrently, and a plain read of such memory is a data race.
//!
//! How a range is made durable ([`Durability`]):
//! - `Dax`: the file is on a DAX filesystem and mapped with `MAP_SYNC`: flush + drain suffices.
//! - `ForcedFlush`: flush + drain on an ordinary file, forced by [`PersistMode::Flush`] or the
//!   environment variable `ACRE_FORCE_FLUSH=1`. It exercises the flush path in tests; on a page-cache
//!   file it is *not* durable across an OS crash (the data survives a process crash either way).
//! - `Msync`: `msync(MS_SYNC)` of the pages covering the range: the honest fallback for ordinary
//!   files.
//! - `Volatile`: anonymous memory; persist only orders stores (it drains) and nothing survives the
//!   process. Embedded single-process clusters use it.
//! - `Libpmem` (feature `libpmem`): PMDK's `pmem_persist` or `pmem_msync`, as it decides.
#![allow(unsafe_code)]

use crate::flush::{self, FlushKind};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// Environment variable that, when `1`, makes [`PersistMode::Auto`] use flush + drain on ordinary
/// files (so tests run the flush path without persistent memory).
pub const FORCE_FLUSH_ENV: &str = "ACRE_FORCE_FLUSH";

/// What a caller asks for; resolved to a [`Durability`] when the file is mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PersistMode {
    /// DAX + flush where the filesystem supports `MAP_SYNC`; otherwise flush when
    /// `ACRE_FORCE_FLUSH=1`, otherwise `msync`.
    #[default]
    Auto,
    /// Flush + drain even on an ordinary file (tests and benchmarks of the flush path).
    Flush,
    /// `msync` even where DAX would be available.
    Msync,
    /// PMDK's libpmem maps and persists (feature `libpmem`).
    #[cfg(feature = "libpmem")]
    Libpmem,
}

impl PersistMode {
    /// Parses the names used in config files and on the command line.
    pub fn parse(name: &str) -> Option<PersistMode> {
        match name {
            "auto" => Some(PersistMode::Auto),
            "flush" => Some(PersistMode::Flush),
            "msync" => Some(PersistMode::Msync),
            #[cfg(feature = "libpmem")]
            "libpmem" => Some(PersistMode::Libpmem),
            _ => None,
        }
    }
}

/// How [`Mapping::persist`] makes a range durable, decided once at map time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Dax,
    ForcedFlush,
    Msync,
    Volatile,
    #[cfg(feature = "libpmem")]
    Libpmem {
        is_pmem: bool,
    },
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Dax => "dax+flush",
            Durability::ForcedFlush => "forced-flush",
            Durability::Msync => "msync",
            Durability::Volatile => "volatile",
            #[cfg(feature = "libpmem")]
            Durability::Libpmem { .. } => "libpmem",
        }
    }
}

/// Options for mapping a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapOptions {
    pub persist: PersistMode,
}

/// A live memory mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    durability: Durability,
    flush: FlushKind,
    path: Option<PathBuf>,
    /// Keeps the descriptor for `msync`-free bookkeeping and so the file stays open while mapped.
    _file: Option<File>,
}

// SAFETY: the mapping is plain shared memory that is only ever accessed through atomic words
// (`words`) or by flush instructions and syscalls that do not need exclusive access; the raw
// pointer is not tied to any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: every access through `&Mapping` is atomic or a read-only syscall.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.len)
            .field("durability", &self.durability)
            .field("path", &self.path)
            .finish()
    }
}

fn check_len(len: usize) -> io::Result<()> {
    if len == 0 || !len.is_multiple_of(8) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mapping length {len} must be a positive multiple of 8"),
        ));
    }
    Ok(())
}

impl Mapping {
    /// Zeroed anonymous memory of `len` bytes, private to this process.
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        check_len(len)?;
        // SAFETY: a fresh anonymous mapping: no address hint, no file; the kernel picks the place.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        let ptr = mmap_result(ptr)?;
        Ok(Mapping {
            ptr,
            len,
            durability: Durability::Volatile,
            flush: FlushKind::detect(),
            path: None,
            _file: None,
        })
    }

    /// Creates a new file of `len` zero bytes (mode 0600) and maps it. Fails if it exists.
    pub fn create_file(path: &Path, len: usize, options: MapOptions) -> io::Result<Mapping> {
        check_len(len)?;
        #[cfg(feature = "libpmem")]
        if options.persist == PersistMode::Libpmem {
            return crate::mapping::libpmem::map(path, len, true);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(len as u64)?;
        Self::map_file(file, path, len, options)
    }

    /// Maps an existing file whole.
    pub fn open_file(path: &Path, options: MapOptions) -> io::Result<Mapping> {
        #[cfg(feature = "libpmem")]
        if options.persist == PersistMode::Libpmem {
            let len = std::fs::metadata(path)?.len() as usize;
            return crate::mapping::libpmem::map(path, len, false);
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large to map"))?;
        check_len(len)?;
        Self::map_file(file, path, len, options)
    }

    fn map_file(file: File, path: &Path, len: usize, options: MapOptions) -> io::Result<Mapping> {
        let fd = file.as_raw_fd();
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let mut durability = None;
        if options.persist != PersistMode::Msync {
            // SAFETY: maps `len` bytes of an open file we own; MAP_SYNC is validated by the
            // kernel (MAP_SHARED_VALIDATE) and refused with EOPNOTSUPP on non-DAX files.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
                    fd,
                    0,
                )
            };
            if let Ok(ptr) = mmap_result(ptr) {
                durability = Some((ptr, Durability::Dax));
            }
        }
        let (ptr, durability) = match durability {
            Some(found) => found,
            None => {
                // SAFETY: as above, an ordinary shared mapping of our open file.
                let ptr =
                    unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
                let ptr = mmap_result(ptr)?;
                let forced = options.persist == PersistMode::Flush
                    || (options.persist == PersistMode::Auto && force_flush_from_env());
                let flush_available = FlushKind::detect() != FlushKind::Unsupported;
                let durability = if forced && flush_available {
                    Durability::ForcedFlush
                } else {
                    Durability::Msync
                };
                (ptr, durability)
            }
        };
        Ok(Mapping {
            ptr,
            len,
            durability,
            flush: FlushKind::detect(),
            path: Some(path.to_path_buf()),
            _file: Some(file),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn flush_kind(&self) -> FlushKind {
        self.flush
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The mapping as 8-byte atomic words. All access to mapped bytes goes through these.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len` bytes (a multiple of 8), page-aligned, readable and
        // writable, and lives as long as `self`. `AtomicU64` has the size and alignment of `u64`
        // and is valid for any bit pattern, and atomics tolerate concurrent writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Makes `[offset, offset + len)` durable as decided by [`Mapping::durability`], after every
    /// store to it that this thread made (and every store it has observed through acquire loads).
    pub fn persist(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "persist out of bounds: offset={offset} len={len} mapping={}",
            self.len
        );
        match self.durability {
            Durability::Dax | Durability::ForcedFlush => {
                // SAFETY: the range was checked to lie inside this live mapping.
                let flushed = unsafe {
                    flush::flush_and_drain(self.flush, self.ptr.as_ptr().add(offset), len)
                };
                assert!(
                    flushed,
                    "flush durability chosen without a flush instruction"
                );
                Ok(())
            }
            Durability::Msync => self.msync(offset, len),
            Durability::Volatile => {
                flush::drain();
                Ok(())
            }
            #[cfg(feature = "libpmem")]
            Durability::Libpmem { is_pmem } => {
                // SAFETY: the range was checked to lie inside this live mapping.
                unsafe { libpmem::persist(self.ptr.as_ptr().add(offset), len, is_pmem) }
            }
        }
    }

    fn msync(&self, offset: usize, len: usize) -> io::Result<()> {
        let page = page_bytes();
        let start = offset / page * page;
        let end = offset + len;
        // SAFETY: `[start, end)` lies inside the mapping (start rounds down to a page boundary
        // of the page-aligned mapping, end was bounds-checked by the caller).
        let rc = unsafe {
            libc::msync(
                self.ptr.as_ptr().add(start).cast(),
                end - start,
                libc::MS_SYNC,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        #[cfg(feature = "libpmem")]
        if matches!(self.durability, Durability::Libpmem { .. }) {
            // SAFETY: this mapping came from pmem_map_file with this length and is dropped once.
            unsafe { libpmem::unmap(self.ptr.as_ptr(), self.len) };
            return;
        }
        // SAFETY: `ptr`/`len` are exactly what mmap returned; after drop nothing refers to them
        // (every borrow of `words` ended with the borrow of `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn mmap_result(ptr: *mut libc::c_void) -> io::Result<NonNull<u8>> {
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

fn page_bytes() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 { page as usize } else { 4096 }
}

fn force_flush_from_env() -> bool {
    std::env::var(FORCE_FLUSH_ENV).is_ok_and(|v| v == "1")
}

#[cfg(feature = "libpmem")]
mod libpmem {
    //! The few libpmem functions Acre needs, bound by hand (the `pmem` crate 0.1 is unsound).
    use super::{Durability, FlushKind, Mapping, mmap_result};
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const PMEM_FILE_CREATE: libc::c_int = 1 << 0;
    const PMEM_FILE_EXCL: libc::c_int = 1 << 1;

    #[link(name = "pmem")]
    unsafe extern "C" {
        fn pmem_map_file(
            path: *const libc::c_char,
            len: libc::size_t,
            flags: libc::c_int,
            mode: libc::mode_t,
            mapped_lenp: *mut libc::size_t,
            is_pmemp: *mut libc::c_int,
        ) -> *mut libc::c_void;
        fn pmem_unmap(addr: *mut libc::c_void, len: libc::size_t) -> libc::c_int;
        fn pmem_persist(addr: *const libc::c_void, len: libc::size_t);
        fn pmem_msync(addr: *const libc::c_void, len: libc::size_t) -> libc::c_int;
        fn pmem_drain();
        fn pmem_is_pmem(addr: *const libc::c_void, len: libc::size_t) -> libc::c_int;
    }

    pub(super) fn map(path: &Path, len: usize, create: bool) -> io::Result<Mapping> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        let flags = if create {
            PMEM_FILE_CREATE | PMEM_FILE_EXCL
        } else {
            0
        };
        let map_len = if create { len } else { 0 };
        let mut mapped_len: libc::size_t = 0;
        let mut is_pmem: libc::c_int = 0;
        // SAFETY: `c_path` is a valid C string; the out-pointers point at live locals of the
        // types libpmem writes (size_t and int).
        let ptr = unsafe {
            pmem_map_file(
                c_path.as_ptr(),
                map_len,
                flags,
                0o600,
                &mut mapped_len,
                &mut is_pmem,
            )
        };
        if ptr.is_null() {
            return Err(io::Error::last_os_error());
        }
        let ptr = mmap_result(ptr)?;
        // SAFETY: the range is the mapping libpmem just returned.
        let checked = unsafe { pmem_is_pmem(ptr.as_ptr().cast(), mapped_len) } != 0;
        Ok(Mapping {
            ptr,
            len: mapped_len,
            durability: Durability::Libpmem {
                is_pmem: is_pmem != 0 && checked,
            },
            flush: FlushKind::detect(),
            path: Some(path.to_path_buf()),
            _file: None,
        })
    }

    /// # Safety
    /// `[addr, addr + len)` lies inside a live libpmem mapping.
    pub(super) unsafe fn persist(addr: *const u8, len: usize, is_pmem: bool) -> io::Result<()> {
        if is_pmem {
            // SAFETY: the caller guarantees the range is mapped.
            unsafe { pmem_persist(addr.cast(), len) };
            Ok(())
        } else {
            // SAFETY: the caller guarantees the range is mapped.
            let rc = unsafe { pmem_msync(addr.cast(), len) };
            // SAFETY: no preconditions.
            unsafe { pmem_drain() };
            if rc != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    }

    /// # Safety
    /// `addr`/`len` are a mapping from [`map`], not used afterwards.
    pub(super) unsafe fn unmap(addr: *mut u8, len: usize) {
        // SAFETY: the caller guarantees this is a libpmem mapping being dropped.
        unsafe { pmem_unmap(addr.cast(), len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn anonymous_memory_is_zeroed_and_writable() {
        let m = Mapping::anonymous(4096).unwrap();
        assert_eq!(m.durability(), Durability::Volatile);
        assert!(m.words().iter().all(|w| w.load(Ordering::Relaxed) == 0));
        m.words()[7].store(42, Ordering::Relaxed);
        m.persist(56, 8).unwrap();
        assert_eq!(m.words()[7].load(Ordering::Relaxed), 42);
    }

    #[test]
    fn file_contents_survive_remapping_on_every_path() {
        let dir = tempfile::tempdir().unwrap();
        for (i, mode) in [PersistMode::Flush, PersistMode::Msync, PersistMode::Auto]
            .into_iter()
            .enumerate()
        {
            let path = dir.path().join(format!("f{i}"));
            let m = Mapping::create_file(&path, 8192, MapOptions { persist: mode }).unwrap();
            match mode {
                PersistMode::Flush => assert!(matches!(
                    m.durability(),
                    Durability::ForcedFlush | Durability::Dax
                )),
                PersistMode::Msync => assert_eq!(m.durability(), Durability::Msync),
                _ => {}
            }
            m.words()[1000].store(0xfeed_face, Ordering::Release);
            m.persist(8000, 8).unwrap();
            drop(m);
            let again = Mapping::open_file(&path, MapOptions::default()).unwrap();
            assert_eq!(again.len(), 8192);
            assert_eq!(again.words()[1000].load(Ordering::Acquire), 0xfeed_face);
        }
    }

    #[test]
    fn creating_an_existing_file_fails_and_bad_lengths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let _m = Mapping::create_file(&path, 4096, MapOptions::default()).unwrap();
        assert!(Mapping::create_file(&path, 4096, MapOptions::default()).is_err());
        assert!(Mapping::anonymous(0).is_err());
        assert!(Mapping::anonymous(12).is_err());
    }

    #[cfg(feature = "libpmem")]
    #[test]
    fn libpmem_maps_persists_and_reopens_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pmem");
        let options = MapOptions {
            persist: PersistMode::Libpmem,
        };
        let m = Mapping::create_file(&path, 8192, options).unwrap();
        // tmpfs or disk here, so libpmem must say "not pmem" and fall back to msync.
        assert!(matches!(m.durability(), Durability::Libpmem { .. }));
        m.words()[5].store(0xabcd, Ordering::Release);
        m.persist(40, 8).unwrap();
        drop(m);
        let again = Mapping::open_file(&path, options).unwrap();
        assert_eq!(again.len(), 8192);
        assert_eq!(again.words()[5].load(Ordering::Acquire), 0xabcd);
    }

    #[test]
    #[should_panic(expected = "persist out of bounds")]
    fn persist_out_of_bounds_is_a_programmer_error() {
        let m = Mapping::anonymous(4096).unwrap();
        let _ = m.persist(4000, 200);
    }
}
