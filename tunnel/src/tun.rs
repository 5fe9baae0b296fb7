//! The route-based TUN interface (`vmsec0`): IP packets the kernel routes into it are read here, encrypted and
//! sent to a peer; decrypted packets are written here and the kernel delivers them.
//!
//! A small implementation on `/dev/net/tun` (`TUNSETIFF` with `IFF_TUN | IFF_NO_PI`), not the `tun-rs` crate.
//! Measured on this project's 2-core machine in a fresh network namespace (an ICMP echo written into the TUN to
//! the TUN's own address, the kernel's reply read back; 500,000 packets a run, pinned to one core, medians of 5
//! runs), both cost the same, because on Linux both are one `write(2)` and one `read(2)`: raw ioctl 5.6 µs per
//! packet at 64 and at 1400 bytes, `tun-rs` 2.8.16 5.3 µs and 6.1 µs, every run of either between 5.1 and 6.5 µs.
//! What decides is the rest: `tun-rs` (even without its default address management) adds nix, ahash, getrandom,
//! zerocopy, bytes and log to the build, and a cross-platform API whose batch calls own their offload state;
//! here the whole thing is one file with a handful of `ioctl`s on libc, batch calls shaped like `esp`'s
//! caller-owned buffers (a headroom `offset` in front of each packet), and multi-queue and `IFF_VNET_HDR` are one
//! flag each. The kernel ABI under it has been stable since Linux 3.8. What `tun-rs` has and this file has not yet
//! is its GSO/GRO code (splitting TSO super-packets, coalescing writes); when offloads are wanted, that code (or
//! wireguard-go's, which it follows) is the reference.
//!
//! Offloads: with [`TunOptions::vnet_hdr`] every packet carries a virtio-net header, and [`Queue::set_offload`]
//! (`TUNSETOFFLOAD`) lets the kernel hand over TCP super-packets (TSO) and take them back (a GRO-like write);
//! [`Queue::read_vnet`] and [`Queue::write_vnet`] move them with the header untouched. The daemon cuts and merges
//! them (its `gso` module, following wireguard-go's approach).
//!
//! The interface lives as long as one of its [`Queue`]s is open: dropping the last one removes it, and with it
//! every route through it.

use std::ffi::c_char;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;

/// Bytes of `struct virtio_net_hdr` in front of every packet when [`TunOptions::vnet_hdr`] is set.
pub const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// How to create the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunOptions {
    /// Interface name, at most 15 bytes.
    pub name: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// Number of queues: one file descriptor each, for one reader per core (`IFF_MULTI_QUEUE` when above 1; 0
    /// counts as 1).
    pub queues: usize,
    /// Exchange a virtio-net header with each packet (`IFF_VNET_HDR`), the prerequisite for offloads.
    pub vnet_hdr: bool,
}

impl TunOptions {
    /// One queue, no virtio-net header.
    pub fn new(name: &str, mtu: u32) -> TunOptions {
        TunOptions {
            name: name.to_owned(),
            mtu,
            queues: 1,
            vnet_hdr: false,
        }
    }
}

/// Why the interface could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("TUN interface {name}: {step}: {error}{}", hint(.step, .name, .error))]
pub struct TunError {
    /// The interface name.
    pub name: String,
    /// What was being done.
    pub step: &'static str,
    /// The OS error (part of the message, not also `source()`).
    pub error: io::Error,
}

fn hint(step: &str, name: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => "; creating a TUN interface needs CAP_NET_ADMIN: run vmsecd as root".into(),
        Some(libc::ENOENT | libc::ENODEV) if step == STEP_OPEN => {
            "; the tun driver is missing: load it with modprobe tun".into()
        }
        Some(libc::EBUSY) => format!(
            "; an interface {name} already exists (ip link show {name}): another vmsecd, or a leftover; delete it \
             with ip link del {name}, or choose another mesh.interface"
        ),
        Some(libc::EINVAL) if step == STEP_CREATE => format!(
            "; an interface {name} of another kind exists: delete it, or choose another mesh.interface"
        ),
        _ => String::new(),
    }
}

const STEP_OPEN: &str = "open /dev/net/tun";
const STEP_CREATE: &str = "create (TUNSETIFF)";

/// A TUN interface and its queues.
#[derive(Debug)]
pub struct Tun {
    name: String,
    ifindex: u32,
    mtu: u32,
    queues: Vec<Queue>,
}

impl Tun {
    /// Creates the interface in the calling thread's network namespace, sets its MTU and brings it up.
    ///
    /// Fails if an interface of that name already exists (`IFF_TUN_EXCL`): the daemon owns its interface. The
    /// queues are non-blocking; hand them to [`AsyncQueue::new`] inside a tokio runtime, or poll them yourself.
    pub fn create(opts: &TunOptions) -> Result<Tun, TunError> {
        let err = |step, error| TunError {
            name: opts.name.clone(),
            step,
            error,
        };
        let ifname = ifname(&opts.name).map_err(|e| err("name", e))?;
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if opts.queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        let mut queues = Vec::with_capacity(opts.queues.max(1));
        for q in 0..opts.queues.max(1) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(|e| err(STEP_OPEN, e))?;
            // The first queue creates the interface and must not attach to an existing one.
            let f = if q == 0 {
                flags | libc::IFF_TUN_EXCL
            } else {
                flags
            };
            let mut req = IfReq::new(ifname);
            req.0.ifr_ifru.ifru_flags = f as libc::c_short;
            // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is, on a /dev/net/tun descriptor.
            unsafe { req.ioctl(file.as_raw_fd(), libc::TUNSETIFF) }
                .map_err(|e| err(STEP_CREATE, e))?;
            queues.push(Queue {
                file,
                vnet_hdr: opts.vnet_hdr,
            });
        }

        let sock = control_socket().map_err(|e| err("control socket", e))?;
        let mut req = IfReq::new(ifname);
        req.0.ifr_ifru.ifru_mtu = opts.mtu as libc::c_int;
        // SAFETY: SIOCSIFMTU reads a `struct ifreq` with the name and `ifru_mtu` set.
        unsafe { req.ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU) }
            .map_err(|e| err("set MTU (SIOCSIFMTU)", e))?;

        let mut req = IfReq::new(ifname);
        // SAFETY: SIOCGIFFLAGS fills `ifru_flags` of a `struct ifreq` with the name set.
        unsafe { req.ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS) }
            .map_err(|e| err("get flags", e))?;
        // SAFETY: the kernel has just written `ifru_flags`, the variant SIOCGIFFLAGS fills.
        let up = unsafe { req.0.ifr_ifru.ifru_flags } | libc::IFF_UP as libc::c_short;
        req.0.ifr_ifru.ifru_flags = up;
        // SAFETY: SIOCSIFFLAGS reads `ifru_flags` of a `struct ifreq` with the name set.
        unsafe { req.ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS) }
            .map_err(|e| err("bring up", e))?;

        let mut req = IfReq::new(ifname);
        // SAFETY: SIOCGIFINDEX fills `ifru_ifindex` of a `struct ifreq` with the name set.
        unsafe { req.ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX) }
            .map_err(|e| err("get index", e))?;
        // SAFETY: the kernel has just written `ifru_ifindex`, the variant SIOCGIFINDEX fills.
        let ifindex = unsafe { req.0.ifr_ifru.ifru_ifindex } as u32;

        Ok(Tun {
            name: opts.name.clone(),
            ifindex,
            mtu: opts.mtu,
            queues,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index, for routes ([`crate::route`]).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The MTU it was given.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The queues, one file descriptor each.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Takes the queues, to give one to each task; the interface lives until the last one is dropped.
    pub fn into_queues(self) -> Vec<Queue> {
        self.queues
    }
}

/// `struct ifreq`, zeroed, with a name.
struct IfReq(libc::ifreq);

impl IfReq {
    fn new(name: [c_char; libc::IFNAMSIZ]) -> IfReq {
        // SAFETY: ifreq is plain data (a name array and a union of integers, sockaddrs and a pointer); all zeroes
        // is a valid value of each.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        r.ifr_name = name;
        IfReq(r)
    }

    /// # Safety
    /// `request` must be an ioctl that takes a `struct ifreq *`, on a descriptor that accepts it.
    unsafe fn ioctl(&mut self, fd: RawFd, request: libc::Ioctl) -> io::Result<()> {
        // SAFETY: the caller vouches for the request; the pointer is to a live, exclusively borrowed ifreq.
        if unsafe { libc::ioctl(fd, request, &mut self.0 as *mut libc::ifreq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn ifname(name: &str) -> io::Result<[c_char; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "an interface name has 1 to {} bytes and no '/'",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    let mut out = [0 as c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as c_char;
    }
    Ok(out)
}

/// A datagram socket for the SIOCxIFx ioctls.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One queue of the interface: a non-blocking file descriptor on which each read returns one packet and each
/// write sends one.
///
/// Every call returns [`io::ErrorKind::WouldBlock`] when nothing can be done now; [`AsyncQueue`] waits for
/// readiness instead.
#[derive(Debug)]
pub struct Queue {
    file: File,
    vnet_hdr: bool,
}

impl Queue {
    /// Reads one packet into `buf`; returns its length. A packet longer than `buf` is truncated by the kernel.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.vnet_hdr {
            return (&self.file).read(buf);
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        let n =
            (&self.file).read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])?;
        let len = n.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "TUN read shorter than its virtio-net header",
            )
        })?;
        finish_vnet_read(&hdr, &mut buf[..len])?;
        Ok(len)
    }

    /// Switches on the offloads (`TUNSETOFFLOAD`): `TUN_F_CSUM` always, and with `tso` also `TUN_F_TSO4 |
    /// TUN_F_TSO6`, so that the kernel hands over TCP packets of up to 64 KiB unsegmented and with partial
    /// checksums, and accepts the same from us. Needs a queue opened with [`TunOptions::vnet_hdr`]; the
    /// setting is the interface's, for all its queues. After it, read with [`Queue::read_vnet`]: [`Queue::read`]
    /// refuses GSO packets.
    pub fn set_offload(&self, tso: bool) -> io::Result<()> {
        if !self.vnet_hdr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TUN offloads need IFF_VNET_HDR",
            ));
        }
        let mut flags = libc::TUN_F_CSUM;
        if tso {
            flags |= libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        }
        // SAFETY: TUNSETOFFLOAD takes its argument (an unsigned int of TUN_F_* flags) by value, on a TUN
        // descriptor this Queue owns.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one packet with its virtio-net header into `buf` (header first, [`VNET_HDR_LEN`] bytes, then the
    /// packet, possibly a GSO super-packet of up to 64 KiB); returns the total length. Nothing is checked or
    /// completed: that is the caller's job (see the daemon's `gso` module).
    pub fn read_vnet(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&self.file).read(buf)?;
        if n < VNET_HDR_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TUN read shorter than its virtio-net header",
            ));
        }
        Ok(n)
    }

    /// Writes one packet that starts with its virtio-net header (a GSO super-packet, for example).
    pub fn write_vnet(&self, data: &[u8]) -> io::Result<usize> {
        (&self.file).write(data)
    }

    /// Writes one IP packet; returns its length.
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        if !self.vnet_hdr {
            return (&self.file).write(pkt);
        }
        // flags 0, gso_type GSO_NONE: a complete packet with its checksums done.
        let hdr = [0u8; VNET_HDR_LEN];
        let n = (&self.file).write_vectored(&[IoSlice::new(&hdr), IoSlice::new(pkt)])?;
        Ok(n.saturating_sub(VNET_HDR_LEN))
    }

    /// Reads up to `bufs.len()` packets, each at `offset` in its buffer (the headroom ESP needs in front, see
    /// `esp::HEADROOM`), and their lengths into `sizes`. Returns how many were read, at least one; `WouldBlock`
    /// if none was waiting.
    ///
    /// Call it when the descriptor is readable, with as many buffers as a batch should hold.
    pub fn read_batch(
        &self,
        bufs: &mut [&mut [u8]],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        self.read_batch_inner(bufs, sizes, offset).map(|(n, _)| n)
    }

    /// As [`Queue::read_batch`], and whether the queue is known to be drained.
    fn read_batch_inner(
        &self,
        bufs: &mut [&mut [u8]],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<(usize, bool)> {
        let n = bufs.len().min(sizes.len());
        let mut count = 0;
        while count < n {
            let buf = bufs[count].get_mut(offset..).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "read_batch: offset is past the end of a buffer",
                )
            })?;
            match self.read(buf) {
                Ok(len) => {
                    sizes[count] = len;
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && count > 0 => {
                    return Ok((count, true))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if count > 0 && e.kind() != io::ErrorKind::WouldBlock => {
                    // Deliver what was read; the error comes back on the next call.
                    return Ok((count, false));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((count, false))
    }

    /// Writes the packets in order; returns how many were written, at least one; `WouldBlock` if none could be.
    pub fn write_batch<B: AsRef<[u8]>>(&self, pkts: &[B]) -> io::Result<usize> {
        let mut count = 0;
        while count < pkts.len() {
            match self.write(pkts[count].as_ref()) {
                Ok(_) => count += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if count > 0 => return Ok(count),
                Err(e) => return Err(e),
            }
        }
        Ok(count)
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Checks a received virtio-net header and completes a checksum the kernel left partial (`NEEDS_CSUM`).
fn finish_vnet_read(hdr: &[u8; VNET_HDR_LEN], pkt: &mut [u8]) -> io::Result<()> {
    // struct virtio_net_hdr { u8 flags; u8 gso_type; le16 hdr_len; le16 gso_size; le16 csum_start;
    // le16 csum_offset; } (little-endian: the TUN device is set up in the host's order, which is LE on x86/arm).
    let (flags, gso_type) = (hdr[0], hdr[1]);
    if gso_type & 0x7f != VIRTIO_NET_HDR_GSO_NONE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TUN handed over a GSO packet, but no offload was switched on",
        ));
    }
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let at = start + usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        if at + 2 > pkt.len() || start > pkt.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "virtio-net checksum offsets out of range",
            ));
        }
        // The field holds the pseudo-header sum; the checksum covers it and everything from csum_start.
        let sum = !fold(sum16(&pkt[start..]));
        pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    Ok(())
}

fn sum16(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut s: u32 = 0;
    for c in &mut chunks {
        s = s.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        if s > 0xffff_0000 {
            s = (s & 0xffff) + (s >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        s = s.wrapping_add(u32::from(*last) << 8);
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A [`Queue`] driven by tokio: waits for readiness instead of returning `WouldBlock`.
#[derive(Debug)]
pub struct AsyncQueue {
    inner: AsyncFd<Queue>,
}

impl AsyncQueue {
    /// Registers the queue with the current tokio runtime; call it inside one.
    pub fn new(queue: Queue) -> io::Result<AsyncQueue> {
        // SAFETY: a Queue owns its descriptor (a File in a private field that no method replaces), so as_raw_fd
        // returns the same open descriptor until the Queue, and with it the AsyncFd, is dropped.
        let inner = unsafe {
            AsyncFd::register_with_interest(queue, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(AsyncQueue { inner })
    }

    /// The queue, for its synchronous calls.
    pub fn get_ref(&self) -> &Queue {
        self.inner.get_ref()
    }

    /// Waits for packets and reads a batch: see [`Queue::read_batch`]. Returns at least one packet.
    pub async fn read_batch(
        &self,
        bufs: &mut [&mut [u8]],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.get_inner().read_batch_inner(bufs, sizes, offset) {
                Ok((n, drained)) => {
                    if drained {
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the queue is readable. Read through [`AsyncQueue::get_ref`] without waiting, and clear the
    /// guard's readiness ([`AsyncFdReadyGuard::clear_ready`]) once a read finds nothing: then the next wait
    /// sleeps in epoll instead of trying one more read that fails with `WouldBlock` (issue 15: a system call
    /// saved per wake-up).
    pub async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, Queue>> {
        self.inner.readable().await
    }

    /// Waits for a packet and reads it with its virtio-net header: see [`Queue::read_vnet`].
    pub async fn read_vnet(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::READABLE, |q| q.read_vnet(buf))
            .await
    }

    /// Waits for one packet and reads it into `buf`.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::READABLE, |q| q.read(buf))
            .await
    }

    /// Writes every packet, in order, waiting whenever the queue is full.
    pub async fn write_batch<B: AsRef<[u8]>>(&self, pkts: &[B]) -> io::Result<()> {
        let mut done = 0;
        while done < pkts.len() {
            done += self
                .inner
                .async_io(Interest::WRITABLE, |q| q.write_batch(&pkts[done..]))
                .await?;
        }
        Ok(())
    }

    /// Writes one packet, waiting if the queue is full.
    pub async fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::WRITABLE, |q| q.write(pkt))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ifname("vmsec0").is_ok());
        assert!(ifname("").is_err());
        assert!(ifname("a-very-long-name").is_err());
        assert!(ifname("a/b").is_err());
    }

    #[test]
    fn partial_checksum_is_completed() {
        // UDP over IPv4 198.19.2.10 -> 198.19.1.1, 4-byte payload; the kernel leaves the pseudo-header sum in the
        // checksum field and asks for the rest (csum_start 20, csum_offset 6).
        let mut pkt = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 198, 19, 2, 10, 198, 19, 1, 1, // IPv4
            0x30, 0x39, 0x30, 0x3a, 0, 12, 0, 0, b'p', b'i', b'n', b'g', // UDP
        ];
        let pseudo = sum16(&pkt[12..20]) + 17 + 12;
        pkt[26..28].copy_from_slice(&fold(pseudo).to_be_bytes());
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&20u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
        finish_vnet_read(&hdr, &mut pkt).unwrap();
        // A correct UDP checksum sums, with the pseudo-header, to 0xffff.
        assert_eq!(
            fold(sum16(&pkt[12..20]) + 17 + 12 + sum16(&pkt[20..])),
            0xffff
        );

        hdr[1] = 1; // GSO_TCPV4
        assert!(finish_vnet_read(&hdr, &mut pkt).is_err());
    }
}
