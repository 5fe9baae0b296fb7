//! The daemon's sockets: UDP 500 (IKE), UDP 4500 (IKE behind the non-ESP marker, and ESP in UDP) and a raw
//! IP protocol 50 socket (ESP without UDP), all bound to the host's underlay address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;

/// IP protocol number of ESP.
const IPPROTO_ESP: i32 = 50;
/// Socket buffers: a burst of a few thousand full-size packets must not overflow while the task is busy
/// encrypting the other direction (the 208 KiB default drops under a single TCP stream).
const SOCKET_BUFFER: usize = 4 << 20;

fn size_buffers(s: &Socket) {
    // Best effort: the kernel caps these at net.core.[rw]mem_max unless we may force them (root).
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let v = SOCKET_BUFFER as libc::c_int;
        // SAFETY: a valid socket descriptor, a c_int option value and its exact size.
        let _ = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(s),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Opens a UDP socket on `addr:port`, with a sysadmin-readable error.
pub(crate) fn udp(addr: IpAddr, port: u16) -> anyhow::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    size_buffers(&s);
    s.bind(&SockAddr::from(SocketAddr::new(addr, port))).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on UDP {addr}:{port}: {e}; is another IKE daemon (charon, pluto) running here, or is \
             {addr} not configured on this host?"
        )
    })?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// The sockets of a dual-stack host's second underlay address (the other family's): UDP 500, UDP 4500 and raw
/// ESP, as for the first. Each peer talks over one family (`config::underlay_pair`), so over one set.
pub(crate) struct Second {
    pub(crate) udp500: UdpSocket,
    pub(crate) udp4500: UdpSocket,
    pub(crate) raw: RawEsp,
}

impl Second {
    /// Opens the three on `addr`.
    pub(crate) fn open(addr: IpAddr) -> anyhow::Result<Second> {
        let udp4500 = udp(addr, ike::sa::NAT_T_PORT)?;
        if !enable_gro(&udp4500) {
            tracing::warn!("UDP GRO unavailable on {addr}: one ESP datagram per receive");
        }
        Ok(Second {
            udp500: udp(addr, ike::sa::IKE_PORT)?,
            udp4500,
            raw: RawEsp::open(addr)?,
        })
    }

    /// True for the IPv6 set.
    pub(crate) fn is_ipv6(&self) -> bool {
        self.raw.family() == esp::framing::RawFamily::V6
    }
}

/// Waits until the second set's socket `which` may be readable; never when there is no second set.
pub(crate) async fn second_readable(
    second: &Option<Second>,
    which: fn(&Second) -> &UdpSocket,
) -> io::Result<()> {
    match second {
        Some(s) => which(s).readable().await,
        None => std::future::pending().await,
    }
}

/// [`second_readable`] for the raw ESP socket.
pub(crate) async fn second_raw_readable(second: &Option<Second>) -> io::Result<()> {
    match second {
        Some(s) => s.raw.readable().await,
        None => std::future::pending().await,
    }
}

/// A raw socket for ESP (IP protocol 50).
pub(crate) struct RawEsp {
    fd: AsyncFd<Socket>,
    family: esp::framing::RawFamily,
}

impl RawEsp {
    /// Opens it, bound to our underlay address so only ESP sent to us arrives.
    pub(crate) fn open(addr: IpAddr) -> anyhow::Result<RawEsp> {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_ESP))).map_err(|e| {
            anyhow::anyhow!("cannot open a raw ESP socket (needs CAP_NET_RAW): {e}")
        })?;
        s.set_nonblocking(true)?;
        size_buffers(&s);
        s.bind(&SockAddr::from(SocketAddr::new(addr, 0)))?;
        // SAFETY: socket2's Socket owns its descriptor and never replaces it, so the descriptor AsyncFd registers
        // stays open and the same until the AsyncFd, which owns the Socket, is dropped.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)?;
        let family = if addr.is_ipv4() {
            esp::framing::RawFamily::V4
        } else {
            esp::framing::RawFamily::V6
        };
        Ok(RawEsp { fd, family })
    }

    /// Its address family: an IPv4 raw socket's datagrams start with the IPv4 header, an IPv6 one's with ESP.
    pub(crate) fn family(&self) -> esp::framing::RawFamily {
        self.family
    }

    /// Waits until a datagram may be there.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.fd.readable().await.map(|mut g| g.clear_ready())
    }
}

/// `UDP_SEGMENT` (include/uapi/linux/udp.h): the cmsg and socket option of UDP GSO.
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO`: the socket option that lets the kernel coalesce datagrams of one flow, and its cmsg.
const UDP_GRO: libc::c_int = 104;
/// Most datagrams one UDP GSO send may carry (`UDP_MAX_SEGMENTS` in include/linux/udp.h).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one UDP send may carry: udp_sendmsg refuses `len > 0xFFFF` (less the UDP and IPv4 headers).
pub(crate) const GSO_MAX_BYTES: usize = 65535 - 8 - 20;

/// Asks the kernel to hand over coalesced batches of datagrams (UDP GRO, Linux 5.0); false if it cannot.
pub(crate) fn enable_gro(s: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, a c_int option value and its exact size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Sends `data` to `to` as datagrams of `seg` bytes each, the last one possibly shorter, with one `sendmsg`
/// (UDP GSO). `seg == data.len()` sends one plain datagram. `WouldBlock` if the socket buffer is full.
///
/// Documentation/networking/segmentation-offloads.rst, "UDP Fragmentation Offload" / udp(7) `UDP_SEGMENT`:
/// "the payload is split into segments of gso_size bytes, each sent as a separate datagram; the last may be
/// shorter"; at most 64 segments and 64 KiB per call.
pub(crate) fn send_gso(
    s: &impl AsRawFd,
    data: &[u8],
    seg: usize,
    to: SocketAddr,
) -> io::Result<usize> {
    let addr = SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one cmsghdr with a u16, aligned as cmsghdr wants (CMSG_SPACE(2) is 24 on 64-bit Linux).
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; all zeroes is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if seg < data.len() {
        // SAFETY: CMSG_SPACE is a pure computation on a length.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&cbuf));
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, enough for one cmsghdr with a u16, so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA points inside cbuf.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
        }
    }
    // Nothing waits for the socket to become writable (a full buffer drops, as a router would), so this calls
    // sendmsg directly rather than through tokio's readiness, and works on any thread.
    // SAFETY: msg points at a live address, iovec (over `data`, only read) and control buffer for the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Receives one datagram, or with [`enable_gro`] a batch of datagrams of one flow coalesced by the kernel:
/// returns (bytes, sender, segment size): the batch is `buf[..bytes]` cut every `segment size` bytes, the last
/// piece possibly shorter. `WouldBlock` if nothing is queued.
pub(crate) fn recv_gro(s: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    s.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: sockaddr_storage is plain data; zeroes are valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 8];
        // SAFETY: as in send_gso.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: every pointer in msg is to a live buffer of the stated length for the duration of the call.
        let n = unsafe { libc::recvmsg(std::os::fd::AsRawFd::as_raw_fd(s), &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut seg = n;
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs; CMSG_FIRSTHDR/NXTHDR stay
        // inside it, and a UDP_GRO cmsg carries an int (udp_cmsg_recv puts gso_size as int).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    if v > 0 {
                        seg = v as usize;
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let from = match i32::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the kernel wrote a sockaddr_in, which fits in sockaddr_storage.
                let a = unsafe {
                    &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                SocketAddr::from((
                    u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, a sockaddr_in6.
                let a = unsafe {
                    &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port)))
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "UDP sender is not IP",
                ))
            }
        };
        Ok((n, from, seg))
    })
}

/// Most messages one [`send_mmsg`] or [`recv_mmsg`] call moves.
pub(crate) const MMSG_MAX: usize = 64;

/// Sends the datagrams `data[i * stride..]` (each `stride` bytes, the last possibly shorter) to `to` with one
/// `sendmmsg`; returns how many went out. For raw ESP, where there is no GSO.
fn send_mmsg(fd: RawFd, data: &[u8], stride: usize, to: &SockAddr) -> io::Result<usize> {
    // SAFETY: iovec is plain data; zeroes are valid (null pointer, zero length).
    let mut iov: [libc::iovec; MMSG_MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: mmsghdr is plain data; zeroes are valid (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MMSG_MAX] = unsafe { std::mem::zeroed() };
    let mut n = 0;
    for (d, (v, h)) in data
        .chunks(stride.max(1))
        .zip(iov.iter_mut().zip(hdrs.iter_mut()))
    {
        v.iov_base = d.as_ptr() as *mut libc::c_void;
        v.iov_len = d.len();
        h.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = to.len();
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
        n += 1;
    }
    // SAFETY: the first n headers point at live iovecs over `data` (only read) and at `to`, for the call.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Receives up to `lens.len()` (at most [`MMSG_MAX`]) datagrams with one `recvmmsg`, datagram `i` into
/// `buf[i * slot..(i + 1) * slot]`, its length into `lens[i]`; returns how many arrived.
fn recv_mmsg(fd: RawFd, buf: &mut [u8], slot: usize, lens: &mut [usize]) -> io::Result<usize> {
    // SAFETY: iovec is plain data; zeroes are valid (null pointer, zero length).
    let mut iov: [libc::iovec; MMSG_MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: mmsghdr is plain data; zeroes are valid (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MMSG_MAX] = unsafe { std::mem::zeroed() };
    let mut n = 0;
    for (d, (v, h)) in buf
        .chunks_exact_mut(slot)
        .zip(iov.iter_mut().zip(hdrs.iter_mut()))
        .take(lens.len())
    {
        v.iov_base = d.as_mut_ptr().cast();
        v.iov_len = d.len();
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
        n += 1;
    }
    // SAFETY: the first n headers point at live, disjoint iovecs inside `buf`, for the call; no timeout.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    for (l, h) in lens.iter_mut().zip(&hdrs[..r as usize]) {
        *l = h.msg_len as usize;
    }
    Ok(r as usize)
}

/// Sends back-to-back ESP packets of `stride` bytes (the last may be shorter) to `to` on the raw ESP socket `s`,
/// [`MMSG_MAX`] per `sendmmsg`. A full socket buffer drops the rest (as a router would).
pub(crate) fn send_many(
    s: &impl AsRawFd,
    data: &[u8],
    stride: usize,
    to: IpAddr,
) -> io::Result<()> {
    let addr = SockAddr::from(SocketAddr::new(to, 0));
    let mut rest = data;
    while !rest.is_empty() {
        let sent = send_mmsg(
            s.as_raw_fd(),
            &rest[..rest.len().min(MMSG_MAX * stride)],
            stride,
            &addr,
        )?;
        rest = &rest[(sent * stride).min(rest.len())..];
    }
    Ok(())
}

impl RawEsp {
    /// A second descriptor for the socket, for sending from a transmit worker.
    pub(crate) fn try_clone_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.fd.get_ref().as_fd().try_clone_to_owned()
    }

    /// Receives up to `lens.len()` datagrams without waiting, one per `slot` bytes of `buf` (for IPv4 each
    /// with its IP header); `WouldBlock` if none was queued.
    pub(crate) fn try_recv_many(
        &self,
        buf: &mut [u8],
        slot: usize,
        lens: &mut [usize],
    ) -> io::Result<usize> {
        recv_mmsg(
            std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref()),
            buf,
            slot,
            lens,
        )
    }
}
