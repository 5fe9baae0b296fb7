//! An AF_PACKET socket with a TPACKET_V2 transmit ring (packet(7), Documentation/networking/packet_mmap.rst):
//! the one place of the raw ESP fast path that holds unsafe code. Frames are written in the mmap'd ring and
//! handed to the kernel with one `sendto` per batch, which costs about 1.6-2.0 us of sender CPU per 1.4 KB packet
//! here against 4.3-4.7 us for `sendmmsg` on a raw IP socket (benches/README.md, "Raw ESP: send methods").
//!
//! Invariants of the unsafe code:
//! - `base` points at `frames * frame` bytes mapped shared with the kernel from `fd`, alive until `Drop` unmaps
//!   them (after which nothing reads them: `Ring` owns both).
//! - Each frame starts with a `struct tpacket2_hdr` whose first word, `tp_status`, both sides change: it is
//!   only read and written through an `AtomicU32` (frames are 16-byte aligned: TPACKET_ALIGNMENT). User space
//!   writes the rest of a frame only while `tp_status` is `TP_STATUS_AVAILABLE` (the kernel does not touch it
//!   then) and hands it over with a release store of `TP_STATUS_SEND_REQUEST`.
//! - Every byte range written is checked against the frame's size first (`Frame::data`).
//! - The kernel walks the ring from its own head index, one frame after the other, and sends those marked
//!   SEND_REQUEST; `next` follows it in the same order and never skips a frame, so both stay in step.
//! - The kernel looks at SEND_REQUEST frames only inside our `sendto` (`tpacket_snd`, under the ring's lock);
//!   what it leaves SEND_REQUEST when that fails (all of them for a link that is down), or stops short with a
//!   full send buffer (sendto then succeeds), starts at its head and ends at `next - 1`. [`Ring::flush`] takes those back (AVAILABLE, `next` back to the first), so a failed
//!   send neither leaves them to go out with a later batch, on another interface and behind another next hop,
//!   nor fills the ring for good: a full ring is never flushed again, as only a batch that found a frame
//!   flushes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// `SOL_PACKET` options (include/uapi/linux/if_packet.h).
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_LOSS: libc::c_int = 14;
const TPACKET_V2: libc::c_int = 1;
/// `tp_status` values of a transmit frame.
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
/// Where a frame's data starts: `TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)` = TPACKET_ALIGN(32) + 20 - 20,
/// the offset `tpacket_parse_header` uses when PACKET_TX_HAS_OFF is off.
pub(super) const DATA_AT: usize = 32;
/// Offset of `tp_len` in `struct tpacket2_hdr`.
const TP_LEN_AT: usize = 4;
/// The ring's memory, whatever the frame size: 2 MiB (1024 frames of 2 KiB for a 1500-byte MTU).
pub(super) const RING_BYTES: usize = 2 << 20;
/// The kernel's block size for the ring (a multiple of the page size, and of every frame size we use).
const BLOCK: usize = 1 << 16;

/// A transmit ring and its socket.
pub(super) struct Ring {
    fd: OwnedFd,
    base: *mut u8,
    frame: usize,
    frames: usize,
    /// The next frame to fill: the kernel's head follows the same sequence.
    next: usize,
}

// SAFETY: the mapping belongs to this Ring only (no other Rust reference to it exists) and moves with it; the
// kernel side is synchronised through the atomic status words.
unsafe impl Send for Ring {}

impl Ring {
    /// Opens an AF_PACKET socket that receives nothing (protocol 0) with a transmit ring whose frames hold
    /// `max_frame` bytes (link-layer header included), rounded up to a power of two of at least 2 KiB.
    pub(super) fn open(max_frame: usize) -> io::Result<Ring> {
        let frame = (max_frame + DATA_AT).next_power_of_two().clamp(2048, BLOCK);
        if max_frame + DATA_AT > frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too large for the ring",
            ));
        }
        let frames = RING_BYTES / frame;
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt(&fd, PACKET_VERSION, &TPACKET_V2)?;
        // A frame the kernel cannot send is skipped (and marked available again) instead of stopping the ring.
        setsockopt(&fd, PACKET_LOSS, &1)?;
        // The kernel charges each frame it takes to the socket's send buffer until the qdisc or NIC frees it and
        // stops a flush at the first frame over it: at the default 208 KiB (net.core.wmem_default) about 90
        // full-size frames of the 1024 were ever in flight (measured: 908 of 1000 left after one flush into a
        // slow qdisc), the rest going to the raw socket. A buffer the size of the ring's data lets the ring be
        // the limit. Best effort, as for the daemon's other sockets: SO_SNDBUFFORCE needs CAP_NET_ADMIN (which
        // vmsecd has), SO_SNDBUF is capped at net.core.wmem_max.
        let sndbuf = (RING_BYTES * 2) as libc::c_int;
        if sol_socket(&fd, libc::SO_SNDBUFFORCE, sndbuf).is_err() {
            let _ = sol_socket(&fd, libc::SO_SNDBUF, sndbuf);
        }
        let req: [u32; 4] = [
            BLOCK as u32,
            (RING_BYTES / BLOCK) as u32,
            frame as u32,
            frames as u32,
        ];
        setsockopt(&fd, PACKET_TX_RING, &req)?;
        // SAFETY: maps the ring the kernel just made for this socket, RING_BYTES long; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring {
            fd,
            base: base.cast(),
            frame,
            frames,
            next: 0,
        })
    }

    /// Bytes one frame can carry (link-layer header included).
    pub(super) fn capacity(&self) -> usize {
        self.frame - DATA_AT
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < self.frames);
        // SAFETY: frame i lies inside the mapping (i < frames), starts 16-byte aligned, and its first 4 bytes
        // are the status word, only ever accessed atomically (see the module's invariants).
        unsafe { &*self.base.add(i * self.frame).cast::<AtomicU32>() }
    }

    /// The next frame's data area, `len` bytes (at most [`Ring::capacity`]), if the kernel is done with it;
    /// `None` if the ring is full (frames still in flight) or `len` does not fit.
    pub(super) fn frame(&mut self, len: usize) -> Option<&mut [u8]> {
        if len > self.capacity() {
            return None;
        }
        let s = self.status(self.next);
        match s.load(Ordering::Acquire) {
            TP_STATUS_AVAILABLE => {}
            // Skipped by the kernel (PACKET_LOSS): the frame is ours again.
            TP_STATUS_WRONG_FORMAT => s.store(TP_STATUS_AVAILABLE, Ordering::Relaxed),
            _ => return None,
        }
        // SAFETY: the frame is available, so the kernel does not access it; [DATA_AT, DATA_AT + len) lies inside
        // it (len <= capacity), and this &mut borrows self, so no other slice of the ring is alive.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.base.add(self.next * self.frame + DATA_AT), len)
        })
    }

    /// Hands the frame [`Ring::frame`] returned, filled with `len` bytes, to the kernel.
    pub(super) fn commit(&mut self, len: usize) {
        let at = self.next * self.frame;
        // SAFETY: tp_len is the u32 at offset 4 of the frame's header, inside the mapping and 4-byte aligned; the
        // frame is still ours (status AVAILABLE) until the store below.
        unsafe {
            self.base
                .add(at + TP_LEN_AT)
                .cast::<u32>()
                .write_volatile(len as u32)
        };
        self.status(self.next)
            .store(TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.next = (self.next + 1) % self.frames;
    }

    /// Asks the kernel to send every committed frame, on interface `ifindex` with link-layer protocol
    /// `ethertype`; does not wait for the frames to leave. The frames the kernel did not take (an error, or a
    /// full send buffer) are dropped (ours again) and counted in the error: none is left SEND_REQUEST.
    pub(super) fn flush(&mut self, ifindex: i32, ethertype: u16) -> Result<(), Unsent> {
        // SAFETY: sockaddr_ll is plain data; zeroes are valid.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ethertype.to_be();
        ll.sll_ifindex = ifindex;
        // SAFETY: no data buffer (the ring holds the frames); ll is valid for its size.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                (&ll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        let error = (r < 0).then(io::Error::last_os_error);
        // A full send buffer (SO_SNDBUF, charged until the NIC or qdisc frees each packet) stops the kernel at
        // the frame it cannot allocate for, and sendto then reports success for the bytes it did take
        // (`tpacket_snd`: "if (likely(len_sum > 0)) err = len_sum;"): the rest stays SEND_REQUEST, as after an
        // error, and is taken back the same way.
        let frames = self.reclaim();
        match error {
            Some(error) => Err(Unsent { error, frames }),
            // What sendto says when the send buffer is full at the first frame (and no allocation here).
            None if frames > 0 => Err(Unsent {
                error: io::Error::from_raw_os_error(libc::EAGAIN),
                frames,
            }),
            None => Ok(()),
        }
    }

    /// After a `sendto` that failed or stopped short: the last committed frames still SEND_REQUEST (the kernel
    /// did not take them) are ours again, and `next` goes back to the first of them, where the kernel's head stopped. Returns how many.
    fn reclaim(&mut self) -> usize {
        let mut n = 0;
        while n < self.frames {
            let i = (self.next + self.frames - 1) % self.frames;
            let s = self.status(i);
            if s.load(Ordering::Acquire) != TP_STATUS_SEND_REQUEST {
                break;
            }
            s.store(TP_STATUS_AVAILABLE, Ordering::Relaxed);
            self.next = i;
            n += 1;
        }
        n
    }
}

#[cfg(test)]
impl Ring {
    /// True when every frame is available (the kernel sent all committed ones).
    pub(super) fn idle(&self) -> bool {
        (0..self.frames).all(|i| self.status(i).load(Ordering::Acquire) == TP_STATUS_AVAILABLE)
    }

    /// How many frames are committed but not taken by the kernel (SEND_REQUEST).
    pub(super) fn requested(&self) -> usize {
        (0..self.frames)
            .filter(|&i| self.status(i).load(Ordering::Acquire) == TP_STATUS_SEND_REQUEST)
            .count()
    }

    /// Sets the socket's SO_SNDBUF (the kernel doubles it, and keeps a minimum).
    pub(super) fn set_sndbuf(&self, bytes: libc::c_int) {
        sol_socket(&self.fd, libc::SO_SNDBUFFORCE, bytes).expect("SO_SNDBUFFORCE");
    }
}

/// A failed [`Ring::flush`]: why, and how many committed frames were dropped.
#[derive(Debug)]
pub(super) struct Unsent {
    pub(super) error: io::Error,
    pub(super) frames: usize,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base and RING_BYTES are the mapping made in open; no slice of it outlives &mut self.
        unsafe { libc::munmap(self.base.cast(), RING_BYTES) };
    }
}

/// A `SOL_SOCKET` option of type int.
fn sol_socket(fd: &OwnedFd, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: v is valid for size_of::<c_int>() bytes for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v is valid for size_of::<T>() bytes for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
