//! Receiving from a blocking socket without blocking: `recv` with `MSG_DONTWAIT`, which std
//! does not offer. The socket's own blocking mode cannot be switched instead, because its clones
//! (the writer's, the reader's) share it and a writer would then see `WouldBlock`.
#![allow(unsafe_code)]

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Receives into `buf` what has already arrived on `stream`; `WouldBlock` if nothing has. With
/// `peek` the bytes stay queued for the next read. `Ok(0)` means the peer hung up.
pub(super) fn recv_now(stream: &TcpStream, buf: &mut [u8], peek: bool) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes for the whole call and the
    // kernel writes at most that many; the descriptor is open because `stream` is borrowed.
    let count = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            flags,
        )
    };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(count as usize)
}
