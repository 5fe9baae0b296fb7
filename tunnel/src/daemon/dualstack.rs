//! A dual-stack host (`address = [IPv4, IPv6]`) has a second set of sockets on its other family's address
//! (`sockets::Second`): what the event loop does when one of them is readable. Each peer talks over one family
//! (`config::underlay_pair`), so its IKE and ESP arrive on one set; the datapath and the IKE endpoint are the
//! same for both.

use std::time::Instant;

use esp::framing::{self, UdpPayload};

use super::{rx, Daemon, BATCH};

impl Daemon {
    /// The second address's UDP 4500 is readable: ESP and IKE as on the first.
    pub(super) fn on_second_udp4500_readable(
        &mut self,
        bufs: &mut rx::Buffers,
    ) -> anyhow::Result<()> {
        self.udp4500_batch(bufs, true)
    }

    /// The second address's raw ESP socket is readable.
    pub(super) fn on_second_raw_readable(&mut self, bufs: &mut rx::Buffers) -> anyhow::Result<()> {
        self.raw_batch(bufs, true)
    }

    /// The second address's UDP 500 is readable: every queued IKE datagram (up to a batch) to the endpoint.
    pub(super) fn on_second_udp500_readable(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        for _ in 0..BATCH {
            let Some(s) = &self.second else {
                return Ok(());
            };
            match s.udp500.try_recv_from(buf) {
                Ok((len, from)) => {
                    if let Some(msg) = buf.get(..len) {
                        self.cp.handle(Instant::now(), msg, from, ike::sa::IKE_PORT);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => self.on_recv_error("UDP 500", e)?,
            }
        }
        Ok(())
    }

    /// While shutting down: the IKE datagrams queued on the second address's UDP 4500 (ESP is dropped).
    pub(super) fn drain_second_ike_4500(&mut self, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let Some(s) = &self.second else {
                return;
            };
            let Ok((len, from)) = s.udp4500.try_recv_from(buf) else {
                return;
            };
            let Some(d) = buf.get(..len) else {
                continue;
            };
            if let UdpPayload::Ike { offset } = framing::classify_udp(d) {
                if let Some(msg) = d.get(offset..) {
                    self.cp
                        .handle(Instant::now(), msg, from, ike::sa::NAT_T_PORT);
                }
            }
        }
    }
}
