//! An AF_XDP socket in copy mode, receive only: its UMEM (the frames the kernel copies packets into), the fill
//! ring (frames handed to the kernel) and the RX ring (frames it filled), on libc alone.
//!
//! Why not the `xdpilone` crate: receive in copy mode needs four setsockopts, one getsockopt, two mmaps, a
//! bind and two single-producer/single-consumer rings (the code below); libc already has the ABI structs
//! (`xdp_umem_reg`, `xdp_mmap_offsets`, `sockaddr_xdp`, `xdp_desc`). A dependency would add more surface (TX,
//! shared UMEM, zero copy) than it saves here.
//!
//! This file uses only std and libc: benches' `raw_esp_tx` example includes it as it is.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// The size of one UMEM frame (a page): the kernel puts a frame's data after its 256 bytes of XDP headroom,
/// so a frame holds up to [`MAX_FRAME`] bytes of Ethernet frame.
const CHUNK: usize = 4096;
/// `XDP_PACKET_HEADROOM`.
const KERNEL_HEADROOM: usize = 256;
/// The longest Ethernet frame a UMEM frame holds; the XDP program passes longer ones to the stack.
pub(crate) const MAX_FRAME: u32 = (CHUNK - KERNEL_HEADROOM) as u32;

/// A shared mapping, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(fd: Option<RawFd>, len: usize, offset: u64) -> io::Result<Mmap> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        // SAFETY: a new mapping chosen by the kernel; nothing else refers to that range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast())
            .map(|ptr| Mmap { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One mapped ring of `u64` (fill) or `xdp_desc` (RX) entries: the producer and consumer indexes are free
/// running u32 counters, the entry of index i is at `i & mask`.
struct Ring {
    map: Mmap,
    mask: u32,
    producer: usize,
    consumer: usize,
    desc: usize,
}

impl Ring {
    fn index(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is the producer or consumer offset the kernel gave (XDP_MMAP_OFFSETS), inside the
        // mapping and 4-aligned; the kernel accesses it concurrently, hence atomics.
        unsafe { &*self.map.ptr.as_ptr().add(at).cast::<AtomicU32>() }
    }
    fn producer(&self) -> &AtomicU32 {
        self.index(self.producer)
    }
    fn consumer(&self) -> &AtomicU32 {
        self.index(self.consumer)
    }
    /// The entry `i` (masked) of type `T`.
    fn entry<T>(&self, i: u32) -> *mut T {
        let slot = (i & self.mask) as usize;
        // SAFETY: the mapping is `desc + (mask + 1) * size_of::<T>()` bytes (see `Xsk::open`).
        unsafe { self.map.ptr.as_ptr().add(self.desc).cast::<T>().add(slot) }
    }
}

/// A receive-only AF_XDP socket bound to one queue of one interface, in copy mode.
pub(crate) struct Xsk {
    // Field order is drop order: the rings and the UMEM are unmapped before the socket closes.
    rx: Ring,
    fill: Ring,
    umem: Mmap,
    fd: OwnedFd,
}

// SAFETY: the mappings are owned by the Xsk and only touched through `&mut self`.
unsafe impl Send for Xsk {}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a plain struct of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Xsk {
    /// A socket on queue `queue` of interface `ifindex` with a UMEM of `frames` frames (a power of two), its
    /// fill ring full: frames arrive once the XDP program redirects to it (after `program::map_socket`).
    pub(crate) fn open(ifindex: u32, queue: u32, frames: u32) -> io::Result<Xsk> {
        if !frames.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: socket(2) returns a new descriptor or -1.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mmap::new(None, CHUNK * frames as usize, 0)?;
        // SAFETY: plain data.
        let mut reg: libc::xdp_umem_reg = unsafe { std::mem::zeroed() };
        reg.addr = umem.ptr.as_ptr() as u64;
        reg.len = umem.len as u64;
        reg.chunk_size = CHUNK as u32;
        setsockopt(raw, libc::XDP_UMEM_REG, &reg)?;
        setsockopt(raw, libc::XDP_UMEM_FILL_RING, &frames)?;
        // The kernel requires a completion ring to bind, even for a socket that never transmits.
        setsockopt(raw, libc::XDP_UMEM_COMPLETION_RING, &frames)?;
        setsockopt(raw, libc::XDP_RX_RING, &frames)?;
        // SAFETY: plain data, filled by the kernel.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` is as large as `len` says.
        let r = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let ring = |o: &libc::xdp_ring_offset, entry: usize, pgoff: u64| -> io::Result<Ring> {
            let map = Mmap::new(Some(raw), o.desc as usize + frames as usize * entry, pgoff)?;
            Ok(Ring {
                map,
                mask: frames - 1,
                producer: o.producer as usize,
                consumer: o.consumer as usize,
                desc: o.desc as usize,
            })
        };
        let fill = ring(&off.fr, 8, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let rx = ring(
            &off.rx,
            std::mem::size_of::<libc::xdp_desc>(),
            libc::XDP_PGOFF_RX_RING as u64,
        )?;
        // Every frame into the fill ring.
        for i in 0..frames {
            // SAFETY: an entry of the fill ring, which only we produce into.
            unsafe { fill.entry::<u64>(i).write(u64::from(i) * CHUNK as u64) };
        }
        fill.producer().store(frames, Ordering::Release);
        // SAFETY: plain data.
        let mut sa: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
        sa.sxdp_family = libc::AF_XDP as u16;
        sa.sxdp_flags = libc::XDP_COPY;
        sa.sxdp_ifindex = ifindex;
        sa.sxdp_queue_id = queue;
        // SAFETY: `sa` is a sockaddr_xdp of the size given.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Xsk { rx, fill, umem, fd })
    }

    /// Hands each received frame (Ethernet header first) to `f`, at most `max` of them, and gives the frames
    /// back to the kernel. Returns how many there were: 0 when the RX ring is empty.
    pub(crate) fn receive(&mut self, max: u32, mut f: impl FnMut(&mut [u8])) -> u32 {
        let cons = self.rx.consumer().load(Ordering::Relaxed);
        // Acquire: the descriptors and frame contents the kernel wrote before publishing the index.
        let prod = self.rx.producer().load(Ordering::Acquire);
        let n = prod.wrapping_sub(cons).min(max);
        if n == 0 {
            return 0;
        }
        let fill_prod = self.fill.producer().load(Ordering::Relaxed);
        for i in 0..n {
            let idx = cons.wrapping_add(i);
            // SAFETY: an RX entry the kernel published (between consumer and producer).
            let d = unsafe { self.rx.entry::<libc::xdp_desc>(idx).read() };
            // The address is the frame's data (its chunk plus headroom): check it against the UMEM and its own
            // chunk rather than trust it, since a wrong one would read out of bounds or into a frame the kernel
            // may be writing.
            let (addr, len) = (d.addr as usize, d.len as usize);
            if addr
                .checked_add(len)
                .is_some_and(|end| end <= self.umem.len)
                && addr % CHUNK + len <= CHUNK
            {
                // SAFETY: inside the UMEM (checked); the kernel does not write this frame until it is back in
                // the fill ring, below.
                let frame = unsafe {
                    std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(addr), len)
                };
                f(frame);
            }
            // The frame back to the kernel, by its chunk's start. Every frame taken off the RX ring goes back,
            // so the fill ring (as large as the UMEM) always has room.
            let chunk = (addr - addr % CHUNK) as u64;
            // SAFETY: an entry of the fill ring we own (the kernel consumed it: it returned the frame).
            unsafe {
                self.fill
                    .entry::<u64>(fill_prod.wrapping_add(i))
                    .write(chunk)
            };
        }
        // Release: the frames are done with before the kernel may reuse them, and the fill entries written.
        self.fill
            .producer()
            .store(fill_prod.wrapping_add(n), Ordering::Release);
        self.rx
            .consumer()
            .store(cons.wrapping_add(n), Ordering::Release);
        n
    }

    /// The frames the kernel dropped for this socket (no free frame in the fill ring, or too long).
    pub(crate) fn dropped(&self) -> io::Result<u64> {
        self.drops().map(|(_, _, d)| d)
    }

    /// The kernel's drop counters for this socket: (RX ring full, fill ring empty, dropped).
    pub(crate) fn drops(&self) -> io::Result<(u64, u64, u64)> {
        // SAFETY: plain data, filled by the kernel.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `s` is as large as `len` says.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((s.rx_ring_full, s.rx_fill_ring_empty_descs, s.rx_dropped))
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
