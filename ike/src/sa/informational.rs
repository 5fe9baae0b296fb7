//! INFORMATIONAL requests from the peer: Delete payloads, liveness checks and notifies.

use super::*;

impl IkeSa {
    // ---- INFORMATIONAL ----------------------------------------------------------------------------------------

    pub(super) fn respond_informational(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
        let mut resp = Vec::new();
        let mut delete_ike = false;
        let mut our_spis = Vec::new();
        for p in &payloads {
            if let Payload::Delete(d) = p {
                if d.protocol == ProtocolId::IKE {
                    delete_ike = true;
                } else if d.protocol == ProtocolId::ESP {
                    for spi in &d.spis {
                        let Ok(b) = <[u8; 4]>::try_from(&spi[..]) else {
                            continue;
                        };
                        let spi_out = u32::from_be_bytes(b);
                        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.4.1
                        //# the recipient MUST close the designated SAs ... each endpoint MUST send a Delete
                        //# payload for the SAs it has as the inbound part of the pair
                        if let Some(i) = self.children.iter().position(|c| c.spi_out == spi_out) {
                            let c = self.children.remove(i);
                            our_spis.push(c.spi_in.to_be_bytes().to_vec());
                            let reason = if c.rekeyed {
                                Reason::Rekeyed
                            } else {
                                Reason::DeletedByPeer
                            };
                            self.child_down(&c, reason);
                        }
                    }
                }
            }
        }
        if !our_spis.is_empty() {
            resp.push(Payload::Delete(Delete {
                protocol: ProtocolId::ESP,
                spis: our_spis,
            }));
        }
        self.send_response(ExchangeType::INFORMATIONAL, id, resp);
        if delete_ike {
            // Our own rekey of this SA collided with the peer's, whose exchange won and which now deletes the old
            // SA before our exchange's response arrived: the Child SAs go to the peer's new SA.
            if let Some(Outstanding {
                what:
                    Request::RekeyIke(IkeRekey {
                        collision: Some(c), ..
                    }),
                ..
            }) = self.outstanding.take()
            {
                self.hand_over(now, c.local_spi, c.spis);
            }
            self.close(Reason::DeletedByPeer);
        }
    }
}
