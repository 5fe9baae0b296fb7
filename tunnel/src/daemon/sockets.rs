//! The daemon's sockets: UDP 500 (IKE), UDP 4500 (IKE behind the non-ESP marker, and ESP in UDP) and a raw
//! IP protocol 50 socket (ESP without UDP), all bound to the host's underlay address.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;

/// IP protocol number of ESP.
const IPPROTO_ESP: i32 = 50;

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
        s.bind(&SockAddr::from(SocketAddr::new(addr, 0)))?;
        // SAFETY: socket2's Socket owns its descriptor and never replaces it, so the descriptor AsyncFd registers
        // stays open and the same until the AsyncFd, which owns the Socket, is dropped.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)?;
        Ok(RawEsp { fd })
    }

    /// Receives one datagram (for IPv4: with its IP header).
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            // socket2's recv wants MaybeUninit; std's Read on a &Socket takes an initialised buffer.
            match guard.try_io(|s| {
                use std::io::Read;
                let mut r: &Socket = s.get_ref();
                r.read(buf)
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends an ESP packet (SPI first) to `to`; the kernel adds the IP header.
    pub(crate) fn send(&self, pkt: &[u8], to: IpAddr) -> io::Result<usize> {
        self.fd
            .get_ref()
            .send_to(pkt, &SockAddr::from(SocketAddr::new(to, 0)))
    }
}
