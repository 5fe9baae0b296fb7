//! Raw ESP (IP protocol 50) in through AF_XDP (`raw_rx = "xdp"`): an XDP program on the interface holding our
//! IPv4 address steers unfragmented ESP sent to that address into AF_XDP sockets (copy mode), one per receive
//! queue, whose frames the daemon decrypts in place, where the kernel copied them (the UMEM).
//!
//! Why: the raw socket's `recvmmsg` cost the receiving daemon 1.65-1.74 us of CPU per 1.4 KB packet, the AF_XDP
//! socket 1.07-1.13 us, and the frames skip `ip_rcv` and the raw socket's clone of each skb (benches/README.md,
//! "Run of 2026-12-06 (AF_XDP receive measured)").
//!
//! The raw socket stays open and read: fragments (the kernel reassembles them), IPv4 with options, IPv6, ESP
//! arriving on another interface, larger frames than a UMEM frame and a kernel without XDP all still arrive
//! there, and without a raw socket the kernel would answer ESP with ICMP protocol unreachable.
//!
//! Anything failing at setup (no XDP, another program already on the interface, no CAP_BPF) logs one line and
//! leaves the raw socket to receive everything: never fatal. The program is attached through a BPF link held
//! here: it is detached when the daemon exits, however it exits.

// Frames from the wire: nothing here may panic on them.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod program;
#[cfg(test)]
mod tests;
mod xsk;

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::task::Poll;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::config::RawRxPath;

/// The Ethernet header in front of each frame's IPv4 header.
pub(super) const ETH_HLEN: usize = 14;
/// The most receive queues served; an interface with more keeps the raw socket (each queue's socket has a
/// UMEM of its own).
const MAX_QUEUES: u32 = 64;

/// The receive path of raw ESP, as chosen at start-up.
pub(super) struct RawRx {
    /// The AF_XDP sockets and their program, when `raw_rx` asks for XDP and setting it up worked.
    active: Option<Active>,
    /// What `vmsecd status` says: "socket", or "xdp (generic) on eth0, 1 queue", or why XDP is not used.
    path: String,
    /// Frames received through AF_XDP.
    received: u64,
    /// A queue still had frames when its batch ended: the loop comes back without waiting.
    pending: bool,
}

/// The program, its link and the sockets. Field order is drop order: the link first, so the program is
/// detached before its sockets close.
pub(super) struct Active {
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    queues: Vec<AsyncFd<xsk::Xsk>>,
}

/// Why XDP could not be set up.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("our address {0} is IPv6; AF_XDP receive serves IPv4 only")]
    NotIpv4(IpAddr),
    #[error("no interface holds our address {0}")]
    NoInterface(Ipv4Addr),
    #[error(
        "{iface} is not an Ethernet interface (ARPHRD {hwtype}); the XDP program reads an Ethernet header"
    )]
    NotEthernet { iface: String, hwtype: u16 },
    #[error("{iface} has {queues} receive queues; at most {MAX_QUEUES} are served")]
    TooManyQueues { iface: String, queues: u32 },
    #[error("opening the AF_XDP socket for queue {queue} of {iface}: {err}")]
    Socket {
        iface: String,
        queue: u32,
        err: io::Error,
    },
    #[error(transparent)]
    Program(#[from] program::AttachError),
}

impl RawRx {
    /// Sets up what `setting` asks for on the interface holding `local`; on failure logs one line and returns
    /// the socket path.
    pub(super) fn open(setting: RawRxPath, local: IpAddr) -> RawRx {
        let mode = match setting {
            RawRxPath::Socket => return RawRx::socket("socket".to_owned()),
            RawRxPath::Xdp => program::Mode::Generic,
            RawRxPath::XdpNative => program::Mode::Native,
        };
        let key = if mode == program::Mode::Native {
            "xdp-native"
        } else {
            "xdp"
        };
        match Active::open(mode, local) {
            Ok((active, iface)) => {
                let n = active.queues.len();
                let path = format!(
                    "xdp ({}) on {iface}, {n} queue{}",
                    mode.name(),
                    if n == 1 { "" } else { "s" }
                );
                tracing::info!(
                    "raw_rx = \"{key}\": unfragmented ESP to {local} is received through AF_XDP: {path}; the raw \
                     socket receives the rest"
                );
                RawRx {
                    active: Some(active),
                    path,
                    received: 0,
                    pending: false,
                }
            }
            Err(e) => {
                tracing::warn!(
                    "raw_rx = \"{key}\": {e}; raw ESP is received through the raw socket instead (raw_rx = \
                     \"socket\" silences this)"
                );
                RawRx::socket(format!("socket (xdp unavailable: {e})"))
            }
        }
    }

    fn socket(path: String) -> RawRx {
        RawRx {
            active: None,
            path,
            received: 0,
            pending: false,
        }
    }

    /// Waits until a socket has frames; never resolves on the socket path.
    pub(super) async fn readable(&self) -> io::Result<()> {
        let Some(a) = &self.active else {
            return std::future::pending().await;
        };
        if self.pending {
            return Ok(());
        }
        poll_fn(|cx| {
            let mut ready = false;
            for q in &a.queues {
                match q.poll_read_ready(cx) {
                    // Cleared before the frames are taken: frames arriving after that make it ready again.
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        ready = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if ready {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Takes the sockets out (to receive while the daemon is borrowed for decryption); put them back with
    /// [`RawRx::put`].
    pub(super) fn take(&mut self) -> Option<Active> {
        self.active.take()
    }

    /// Puts the sockets back after [`Active::receive`] returned `received` frames, `more` if a queue was left
    /// with frames.
    pub(super) fn put(&mut self, a: Active, received: u64, more: bool) {
        self.active = Some(a);
        self.received += received;
        self.pending = more;
    }

    /// What `vmsecd status` shows.
    pub(super) fn status(&self) -> super::control::RawEspIn {
        let drops = self.active.as_ref().map_or(0, |a| {
            a.queues
                .iter()
                .filter_map(|q| q.get_ref().dropped().ok())
                .sum()
        });
        super::control::RawEspIn {
            path: self.path.clone(),
            xdp: self.received,
            xdp_dropped: drops,
        }
    }
}

impl Active {
    /// Hands up to `budget` frames in all, shared by the queues, to `f` (the IPv4 packet, Ethernet header removed). Returns how
    /// many, and whether a queue may have more.
    pub(super) fn receive(&mut self, budget: u32, mut f: impl FnMut(&mut [u8])) -> (u64, bool) {
        let (mut total, mut more) = (0, false);
        // The budget is for the whole turn, shared by the queues: 64 queues each taking all of it decrypted up to
        // 32 times as many frames in one turn as the raw socket's, with the loop (IKE timers, the TUN) blocked
        // for tens of milliseconds under a flood. A queue that had more says so, and the loop comes back at once.
        let n_queues = u32::try_from(self.queues.len()).unwrap_or(u32::MAX).max(1);
        let budget = (budget / n_queues).max(32);
        for q in &mut self.queues {
            let n = q.get_mut().receive(budget, |frame| {
                if let Some(ip) = frame.get_mut(ETH_HLEN..) {
                    f(ip);
                }
            });
            total += u64::from(n);
            more |= n == budget;
        }
        (total, more)
    }

    fn open(mode: program::Mode, local: IpAddr) -> Result<(Active, String), SetupError> {
        let IpAddr::V4(local) = local else {
            return Err(SetupError::NotIpv4(local));
        };
        let (iface, ifindex) = interface_of(local).ok_or(SetupError::NoInterface(local))?;
        // On an interface without a link-layer header (TUN, PPP, GRE, IPIP, WireGuard) generic XDP hands the
        // program the IPv4 header at offset 0: the program would read the source address as the EtherType and
        // the payload as the destination, and steer (to be dropped) packets of any protocol, to any address.
        match hardware_type(&iface) {
            Some(libc::ARPHRD_ETHER) => {}
            other => {
                return Err(SetupError::NotEthernet {
                    iface,
                    hwtype: other.unwrap_or(0),
                })
            }
        }
        let n = rx_queues(&iface);
        if n > MAX_QUEUES {
            return Err(SetupError::TooManyQueues { iface, queues: n });
        }
        let map = program::create_map(n)?;
        let prog = program::load(local, &map, xsk::MAX_FRAME, program::XDP_PASS)?;
        // Fewer frames per queue on a many-queue NIC: 8 MiB of UMEM for up to 4 queues each, 2 MiB beyond.
        let frames = if n <= 4 { 2048 } else { 512 };
        let mut queues = Vec::new();
        for queue in 0..n {
            let err = |err| SetupError::Socket {
                iface: iface.clone(),
                queue,
                err,
            };
            let x = xsk::Xsk::open(ifindex, queue, frames).map_err(err)?;
            program::map_socket(&map, queue, std::os::fd::AsRawFd::as_raw_fd(&x))?;
            // SAFETY: the Xsk owns its descriptor and never replaces it, so the descriptor AsyncFd registers stays
            // open and the same until the AsyncFd, which owns the Xsk, is dropped.
            let fd = unsafe { AsyncFd::register_with_interest(x, Interest::READABLE) }
                .map_err(|e| err(e.into_parts().1))?;
            queues.push(fd);
        }
        // Attached last: from here on frames are steered, and every queue has its socket.
        let link = program::attach(&prog, &iface, ifindex, mode)?;
        Ok((
            Active {
                _link: link,
                _prog: prog,
                _map: map,
                queues,
            },
            iface,
        ))
    }
}

/// The interface holding `addr`, and its index.
fn interface_of(addr: Ipv4Addr) -> Option<(String, u32)> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut p = list;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs made, not yet freed.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a sockaddr the kernel filled; its family says which one.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == addr {
            // SAFETY: the interface's name, NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index != 0 {
                found = Some((name.to_string_lossy().into_owned(), index));
            }
            break;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The interface's hardware type (`ARPHRD_*`, `SIOCGIFHWADDR`), asked of the calling thread's namespace.
fn hardware_type(iface: &str) -> Option<u16> {
    // SAFETY: plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: a datagram socket for the ioctl, closed when `sock` drops.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a new descriptor, owned here.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: `req` names the interface; the kernel writes its hardware address into it.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR filled the union's `ifru_hwaddr`.
    Some(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// The interface's receive queues (`ethtool -l`: rx plus combined channels); 1 if the driver does not say.
fn rx_queues(iface: &str) -> u32 {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    // struct ethtool_channels: cmd, then max_rx, max_tx, max_other, max_combined, rx_count, tx_count,
    // other_count, combined_count.
    let mut ch = [0u32; 9];
    ch[0] = ETHTOOL_GCHANNELS;
    // SAFETY: plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = ch.as_mut_ptr().cast();
    // SAFETY: a datagram socket for the ioctl, closed when `sock` drops.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return 1;
    }
    // SAFETY: a new descriptor, owned here.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: `req` names the interface and points at `ch`, as large as the ioctl writes.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            SIOCETHTOOL,
            &mut req,
        )
    };
    let [_, _, _, _, _, rx, _, _, combined] = ch;
    if r < 0 {
        1
    } else {
        (rx + combined).max(1)
    }
}
