//! The daemon's sockets: UDP 500 (IKE), UDP 4500 (IKE behind the non-ESP marker, and ESP in UDP) and a raw
//! IP protocol 50 socket (ESP without UDP), all bound to the host's underlay address.

use std::io;
use std::net::{IpAddr, SocketAddr};

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

/// A raw socket for ESP (IP protocol 50).
pub(crate) struct RawEsp {
    fd: AsyncFd<Socket>,
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
        Ok(RawEsp { fd })
    }

    /// Waits until a datagram may be there.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.fd.readable().await.map(|mut g| g.clear_ready())
    }

    /// Receives one datagram without waiting (for IPv4: with its IP header).
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        // socket2's recv wants MaybeUninit; std's Read on a &Socket takes an initialised buffer.
        let mut r: &Socket = self.fd.get_ref();
        r.read(buf)
    }

    /// Sends an ESP packet (SPI first) to `to`; the kernel adds the IP header.
    pub(crate) fn send(&self, pkt: &[u8], to: IpAddr) -> io::Result<usize> {
        self.fd
            .get_ref()
            .send_to(pkt, &SockAddr::from(SocketAddr::new(to, 0)))
    }
}
