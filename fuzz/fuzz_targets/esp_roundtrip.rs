//! Fuzzer-chosen inner packets must round-trip exactly through `OutboundSa::encap` and `Sad::decap`.
//!
//! Input: one byte choosing the SA (transform, ESN, replay window; see `vmsecd_fuzz::params`), then a sequence of
//! packets, each `flags len_hi len_lo head tail bytes...`:
//! * the inner packet is `len % 2048 + 1` bytes of input (padded with a counter if the input runs out), with the
//!   version nibble forced to 6 if `flags & 1`, else 4;
//! * it is placed in a buffer with `head % 48` bytes of headroom and `tail % 48` of tailroom, which may be too
//!   little: then `encap` must fail with `NoRoom` and leave the buffer, the window and the SA unchanged.
//!
//! For each packet that fits, the ESP packet must have the RFC 4303 layout (SPI, low sequence number,
//! 4-byte-aligned or block-aligned encrypted part, 16-byte ICV), decapsulate to exactly the inner packet with the
//! right next header and sequence number, stay inside the buffer, and be refused as a replay when delivered a
//! second time. Both ends' counters must agree at the end.
#![no_main]

use esp::{DropReason, EncapError, PacketBuf, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use libfuzzer_sys::fuzz_target;
use vmsecd_fuzz::{checked_decap, ip_payload, outbound, params, Bytes, CANARY, N_SAS};

/// Most packets per input.
const MAX_PACKETS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::new(data);
    let sa = input.u8() as usize % N_SAS;
    let p = params(sa);
    let t = p.transform;
    let out = outbound(sa);
    let mut sad = vmsecd_fuzz::new_sad();
    let mut sent_bytes = 0u64;
    let mut sent = 0u64;

    for _ in 0..MAX_PACKETS {
        if input.is_empty() {
            break;
        }
        let flags = input.u8();
        let len = input.u16() as usize % 2048 + 1;
        let head = input.u8() as usize % 48;
        let tail = input.u8() as usize % 48;
        let v6 = flags & 1 != 0;
        let payload = ip_payload(input.take(len), len, v6);

        let mut buf = vec![CANARY; head + payload.len() + tail];
        buf[head..head + payload.len()].copy_from_slice(&payload);
        let snapshot = buf.clone();
        let seq_before = out.seq();
        let counters_before = out.counters();
        let mut pkt = PacketBuf::new(&mut buf, head, head + payload.len());

        let pad = (t.block_len() - (payload.len() + 2) % t.block_len()) % t.block_len();
        let back = pad + 2 + t.icv_len();
        let fits = head >= t.header_overhead() && tail >= back;
        match out.encap(&mut pkt) {
            Err(EncapError::NoRoom(_)) => {
                assert!(
                    !fits,
                    "NoRoom with {head} head / {tail} tail room for {t:?}, len {}",
                    payload.len()
                );
                assert_eq!(
                    (pkt.start(), pkt.end()),
                    (head, head + payload.len()),
                    "failed encap moved the window"
                );
                assert_eq!(buf, snapshot, "failed encap changed the buffer");
                assert_eq!(out.seq(), seq_before, "failed encap used a sequence number");
                assert_eq!(
                    out.counters(),
                    counters_before,
                    "failed encap moved counters"
                );
                continue;
            }
            Err(e) => panic!("encap of an IP packet failed: {e:?}"),
            Ok(()) => assert!(
                fits,
                "encap succeeded without room: {head}/{tail} for {t:?}"
            ),
        }
        let seq = out.seq();
        assert_eq!(seq, seq_before + 1, "sequence numbers must go up by one");
        let (start, end) = (pkt.start(), pkt.end());
        assert_eq!(start, head - t.header_overhead());
        assert_eq!(end, head + payload.len() + back);
        let wire = pkt.as_slice().to_vec();
        assert!(
            buf[..start].iter().all(|&b| b == CANARY),
            "encap wrote before its window"
        );
        assert!(
            buf[end..].iter().all(|&b| b == CANARY),
            "encap wrote after its window"
        );

        // RFC 4303 2: SPI, sequence number (low 32 bits), IV, encrypted part, ICV.
        assert_eq!(wire[..4], p.spi.to_be_bytes());
        assert_eq!(wire[4..8], (seq as u32).to_be_bytes());
        let encrypted = wire.len() - t.header_overhead() - t.icv_len();
        assert_eq!(encrypted % t.block_len(), 0, "encrypted part not aligned");
        assert_eq!(encrypted, payload.len() + pad + 2);
        sent += 1;
        sent_bytes += payload.len() as u64;

        let o = checked_decap(&mut sad, &wire, start, buf.len() - end);
        let (spi, inner) = o.result.unwrap_or_else(|e| {
            panic!(
                "round trip failed: {e:?} for {t:?} esn {} seq {seq}, len {}",
                p.esn,
                payload.len()
            )
        });
        assert_eq!(spi, p.spi);
        assert_eq!(inner.seq, seq);
        assert_eq!(
            inner.next_header,
            if v6 {
                NEXT_HEADER_IPV6
            } else {
                NEXT_HEADER_IPV4
            }
        );
        assert_eq!(o.inner, payload, "round trip changed the packet");

        // The same packet again is a replay, and is dropped without moving anything else.
        let again = checked_decap(&mut sad, &wire, 0, 0);
        assert_eq!(
            again.result,
            Err(DropReason::Replay),
            "replayed packet seq {seq}"
        );
    }

    let sent_c = out.counters();
    let recv_c = sad.get(p.spi).expect("SA").counters();
    assert_eq!((sent_c.packets, sent_c.bytes), (sent, sent_bytes));
    assert_eq!((recv_c.packets, recv_c.bytes), (sent, sent_bytes));
    assert_eq!(recv_c.drop_replay, sent);
    assert_eq!(
        recv_c.drop_auth + recv_c.drop_malformed + recv_c.drop_dummy,
        0
    );
});
