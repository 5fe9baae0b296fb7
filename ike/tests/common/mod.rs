//! Shared by the hostile-peer tests: the in-memory pair of endpoints of tests/pair.rs (trimmed to what these
//! tests use), and a scripted peer that speaks IKEv2 with the crate's public crypto and codec, so that a test can
//! send what no well-behaved endpoint would: answers choosing proposals we never offered, request storms.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::{
    id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit, DEFAULT_FRAGMENT_SIZE,
};
use ike::crypto::{self, DhGroup, IkeEncr, IkeKeys, KeyShare, Prf, SkCipher};
use ike::endpoint::Endpoint;
use ike::event::{ChildSaInfo, Event, Reason, Transmit};
use ike::message::{
    self, encode_chain, parse_chain, ExchangeType, Flags, Header, Id, Notify, Payload, PayloadType,
    Proposal, TrafficSelector, TransformType, HEADER_LEN, IKE_VERSION,
};
use ike::proposal::ProposalSpec;
use zeroize::Zeroizing;

pub const A: &str = "198.18.0.1";
pub const B: &str = "198.18.0.2";
pub const PSK: &[u8] = b"a shared secret of some length";

pub fn ts(s: &str) -> TrafficSelector {
    let (a, l) = s.split_once('/').unwrap();
    TrafficSelector::from_prefix(a.parse().unwrap(), l.parse().unwrap())
}

pub fn peer(
    name: &str,
    local: &str,
    remote: &str,
    local_net: &str,
    remote_net: &str,
) -> PeerConfig {
    let (l, r): (IpAddr, IpAddr) = (local.parse().unwrap(), remote.parse().unwrap());
    PeerConfig {
        name: name.into(),
        local_addr: l,
        remote_addr: r,
        remote_port: 500,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth: AuthMethod::Psk(Zeroizing::new(PSK.to_vec())),
        ike_proposals: vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![ts(local_net)],
        remote_ts: vec![ts(remote_net)],
        force_encap: false,
        udp_with_vmsecd: false,
        retransmit: Retransmit::default(),
        lifetimes: Lifetimes {
            ike_rekey: Duration::from_secs(100_000),
            ike_lifetime: Duration::ZERO,
            child_rekey: Duration::from_secs(3600),
            jitter: Duration::ZERO,
            dpd_delay: Duration::from_secs(30),
            nat_keepalive: Duration::from_secs(20),
        },
        replay_window: 1024,
        fragment_size: DEFAULT_FRAGMENT_SIZE,
    }
}

/// Config of A (towards B) and of B (towards A).
pub fn configs() -> (PeerConfig, PeerConfig) {
    (
        peer("b", A, B, "198.19.1.0/24", "198.19.2.0/24"),
        peer("a", B, A, "198.19.2.0/24", "198.19.1.0/24"),
    )
}

pub fn addr(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(s.parse().unwrap(), port)
}

type Filter = Box<dyn FnMut(bool, &Transmit) -> bool>;

/// Two endpoints A and B on an in-memory network with a virtual clock (see tests/pair.rs).
pub struct Pair {
    pub a: Endpoint,
    pub b: Endpoint,
    pub now: Instant,
    /// Return false to drop a datagram; the bool is true for A→B.
    pub filter: Filter,
    pub ev_a: Vec<Event>,
    pub ev_b: Vec<Event>,
    pub log: Vec<(bool, Transmit)>,
}

impl Pair {
    pub fn new(a: PeerConfig, b: PeerConfig) -> Pair {
        Pair::with(
            Endpoint::new(vec![Arc::new(a)]),
            Endpoint::new(vec![Arc::new(b)]),
        )
    }

    pub fn with(a: Endpoint, b: Endpoint) -> Pair {
        Pair {
            a,
            b,
            now: Instant::now(),
            filter: Box::new(|_, _| true),
            ev_a: Vec::new(),
            ev_b: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Delivers queued datagrams until both sides are quiet.
    pub fn drive(&mut self) {
        loop {
            let mut moved = false;
            for from_a in [true, false] {
                let side = if from_a { &mut self.a } else { &mut self.b };
                let queued: Vec<Transmit> = std::iter::from_fn(|| side.poll_transmit()).collect();
                for t in queued {
                    moved = true;
                    self.deliver(from_a, t);
                }
            }
            while let Some(e) = self.a.poll_event() {
                self.ev_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.ev_b.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    pub fn deliver(&mut self, from_a: bool, t: Transmit) {
        self.log.push((from_a, t.clone()));
        if !(self.filter)(from_a, &t) || t.data == [0xff] {
            return;
        }
        let src: IpAddr = if from_a { A } else { B }.parse().unwrap();
        let from = SocketAddr::new(src, t.local_port);
        let mut data = &t.data[..];
        if t.remote.port() == 4500 {
            data = &data[4..];
        }
        let to = if from_a { &mut self.b } else { &mut self.a };
        to.handle(self.now, data, from, t.remote.port());
    }

    /// Moves the clock to the next timer of either side (at most `limit` ahead) and runs it.
    pub fn advance(&mut self, limit: Duration) -> bool {
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= self.now + limit => {
                self.now = self.now.max(t);
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
                self.drive();
                true
            }
            _ => false,
        }
    }

    /// Runs until quiet for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        self.drive();
        while self.now < end && self.advance(end - self.now) {}
        self.now = self.now.max(end);
    }

    pub fn connect(&mut self) {
        self.a.connect(self.now, "b").unwrap();
        self.drive();
    }
}

pub fn child_ups(ev: &[Event]) -> Vec<ChildSaInfo> {
    ev.iter()
        .filter_map(|e| match e {
            Event::ChildUp(c) => Some((**c).clone()),
            _ => None,
        })
        .collect()
}

pub fn downs(ev: &[Event]) -> Vec<Reason> {
    ev.iter()
        .filter_map(|e| match e {
            Event::IkeDown { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// The notify types of a plain (IKE_SA_INIT) message.
pub fn plain_notifies(data: &[u8]) -> Vec<u16> {
    message::parse(data)
        .map(|p| {
            p.payloads
                .iter()
                .filter_map(|x| match x {
                    Payload::Notify(n) => Some(n.ntype),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The IKE proposal every test config uses, on the wire.
pub fn ike_wire(spi: Vec<u8>) -> Proposal {
    ProposalSpec::ike("aes128gcm16-prfsha256-x25519")
        .unwrap()
        .to_wire(1, spi)
}

/// A peer played by the test: the keys of one IKE SA and the means to seal and open its messages.
pub struct Fake {
    /// Our role in the IKE SA.
    pub initiator: bool,
    pub spi_i: u64,
    pub spi_r: u64,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub init_req: Vec<u8>,
    pub init_resp: Vec<u8>,
    keys: Option<IkeKeys>,
    ciphers: Option<(SkCipher, SkCipher)>,
    ks: Option<KeyShare>,
    /// Our next request's message ID.
    pub next_id: u32,
    /// The IKE SA's PRF (HMAC-SHA2-256 unless the proposal given to [`Fake::respond`] chose another).
    pub prf: Prf,
}

fn random_nonce() -> Vec<u8> {
    // Not secret: a test's nonce only has to differ between exchanges.
    let ks = KeyShare::generate(DhGroup::Curve25519).unwrap();
    ks.public().to_vec()
}

impl Fake {
    /// An IKE_SA_INIT request as an initiator with SPI `spi_i` (proposal aes128gcm16-prfsha256-x25519).
    pub fn initiate(spi_i: u64) -> (Fake, Vec<u8>) {
        Fake::initiate_with(spi_i, ike_wire(vec![]))
    }

    /// [`Fake::initiate`] offering `proposal` (its group must be Curve25519; its PRF is the SA's).
    pub fn initiate_with(spi_i: u64, proposal: Proposal) -> (Fake, Vec<u8>) {
        let prf = proposal
            .transforms
            .iter()
            .find(|t| t.ttype == TransformType::PRF)
            .and_then(|t| Prf::from_id(t.id))
            .unwrap_or(Prf::HmacSha256);
        let ks = KeyShare::generate(DhGroup::Curve25519).unwrap();
        let ni = random_nonce();
        let header = header(spi_i, 0, ExchangeType::IKE_SA_INIT, Flags::INITIATOR, 0);
        let req = message::encode_plain(
            header,
            &[
                Payload::Sa(vec![proposal]),
                Payload::Ke {
                    group: 31,
                    data: ks.public().to_vec(),
                },
                Payload::Nonce(ni.clone()),
            ],
        );
        let fake = Fake {
            initiator: true,
            spi_i,
            spi_r: 0,
            ni,
            nr: Vec::new(),
            init_req: req.clone(),
            init_resp: Vec::new(),
            keys: None,
            ciphers: None,
            ks: Some(ks),
            next_id: 1,
            prf,
        };
        (fake, req)
    }

    /// Takes the responder's IKE_SA_INIT answer; false if it is not one (a COOKIE, a refusal).
    pub fn take_init_response(&mut self, data: &[u8]) -> bool {
        let p = message::parse(data).unwrap();
        let ke = p.payloads.iter().find_map(|x| match x {
            Payload::Ke { data, .. } => Some(data.clone()),
            _ => None,
        });
        let nr = p.payloads.iter().find_map(|x| match x {
            Payload::Nonce(n) => Some(n.clone()),
            _ => None,
        });
        let (Some(ke), Some(nr)) = (ke, nr) else {
            return false;
        };
        self.spi_r = p.header.spi_r;
        self.nr = nr;
        self.init_resp = data.to_vec();
        let shared = self.ks.take().unwrap().agree(&ke).unwrap();
        self.derive(shared.as_bytes());
        true
    }

    /// Answers an IKE_SA_INIT request as responder with SPI `spi_r`: the proposal and group of the tests'
    /// configs, or `sa` instead of that proposal.
    pub fn respond(req: &[u8], spi_r: u64, sa: Option<Proposal>) -> (Fake, Vec<u8>) {
        let p = message::parse(req).unwrap();
        let ke = p
            .payloads
            .iter()
            .find_map(|x| match x {
                Payload::Ke { data, .. } => Some(data.clone()),
                _ => None,
            })
            .unwrap();
        let ni = p
            .payloads
            .iter()
            .find_map(|x| match x {
                Payload::Nonce(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap();
        let ks = KeyShare::generate(DhGroup::Curve25519).unwrap();
        let nr = random_nonce();
        let prf = sa
            .as_ref()
            .and_then(|p| p.transforms.iter().find(|t| t.ttype == TransformType::PRF))
            .and_then(|t| Prf::from_id(t.id))
            .unwrap_or(Prf::HmacSha256);
        let resp = message::encode_plain(
            header(
                p.header.spi_i,
                spi_r,
                ExchangeType::IKE_SA_INIT,
                Flags::RESPONSE,
                0,
            ),
            &[
                Payload::Sa(vec![sa.unwrap_or_else(|| ike_wire(vec![]))]),
                Payload::Ke {
                    group: 31,
                    data: ks.public().to_vec(),
                },
                Payload::Nonce(nr.clone()),
            ],
        );
        let mut fake = Fake {
            initiator: false,
            spi_i: p.header.spi_i,
            spi_r,
            ni,
            nr,
            init_req: req.to_vec(),
            init_resp: resp.clone(),
            keys: None,
            ciphers: None,
            ks: None,
            next_id: 0,
            prf,
        };
        let shared = ks.agree(&ke).unwrap();
        fake.derive(shared.as_bytes());
        (fake, resp)
    }

    fn derive(&mut self, shared: &[u8]) {
        let keys = IkeKeys::derive(
            self.prf,
            shared,
            &self.ni,
            &self.nr,
            self.spi_i,
            self.spi_r,
            IkeEncr::AesGcm16_128,
            None,
        )
        .unwrap();
        self.ciphers = Some(keys.ciphers(self.initiator).unwrap());
        self.keys = Some(keys);
    }

    /// Rekeys this IKE SA as the rekey's initiator: the request (on this SA) and a function that takes the
    /// answer and returns the new SA (we are its initiator, with SPI `spi`).
    pub fn rekey_request(
        &mut self,
        spi: u64,
    ) -> (Vec<u8>, impl FnOnce(&Fake, &[Payload]) -> Option<Fake>) {
        let ks = KeyShare::generate(DhGroup::Curve25519).unwrap();
        let ni = random_nonce();
        let req = self.request(
            ExchangeType::CREATE_CHILD_SA,
            &[
                Payload::Sa(vec![ike_wire(spi.to_be_bytes().to_vec())]),
                Payload::Nonce(ni.clone()),
                Payload::Ke {
                    group: 31,
                    data: ks.public().to_vec(),
                },
            ],
        );
        let finish = move |old: &Fake, answer: &[Payload]| {
            let spi_r = answer.iter().find_map(|p| match p {
                Payload::Sa(props) => props
                    .first()
                    .and_then(|x| <[u8; 8]>::try_from(&x.spi[..]).ok())
                    .map(u64::from_be_bytes),
                _ => None,
            })?;
            let nr = answer.iter().find_map(|p| match p {
                Payload::Nonce(n) => Some(n.clone()),
                _ => None,
            })?;
            let ke = answer.iter().find_map(|p| match p {
                Payload::Ke { data, .. } => Some(data.clone()),
                _ => None,
            })?;
            let shared = ks.agree(&ke).ok()?;
            let keys = old
                .keys
                .as_ref()?
                .rekey(
                    shared.as_bytes(),
                    &ni,
                    &nr,
                    spi,
                    spi_r,
                    IkeEncr::AesGcm16_128,
                    None,
                )
                .ok()?;
            Some(Fake {
                initiator: true,
                spi_i: spi,
                spi_r,
                ni: ni.clone(),
                nr,
                init_req: Vec::new(),
                init_resp: Vec::new(),
                ciphers: Some(keys.ciphers(true).ok()?),
                keys: Some(keys),
                ks: None,
                next_id: 0,
                prf: old.prf,
            })
        };
        (req, finish)
    }

    /// Our AUTH payload for identity `id` with the tests' PSK.
    pub fn auth(&self, id: &Id) -> Payload {
        let keys = self.keys.as_ref().unwrap();
        let (first, nonce, sk_p) = if self.initiator {
            (&self.init_req, &self.nr, &keys.sk_pi)
        } else {
            (&self.init_resp, &self.ni, &keys.sk_pr)
        };
        let octets = crypto::signed_octets(first, nonce, self.prf, sk_p, &id.body());
        Payload::Auth {
            method: 2,
            data: crypto::psk_auth(self.prf, PSK, &octets),
        }
    }

    /// A protected message of this SA.
    pub fn seal(
        &self,
        exchange: ExchangeType,
        response: bool,
        id: u32,
        payloads: &[Payload],
    ) -> Vec<u8> {
        let out = &self.ciphers.as_ref().unwrap().0;
        let mut flags = if self.initiator { Flags::INITIATOR } else { 0 };
        if response {
            flags |= Flags::RESPONSE;
        }
        let mut h = header(self.spi_i, self.spi_r, exchange, flags, id);
        let (first, plain) = encode_chain(payloads);
        let sk_len = 4 + out.encrypted_len(plain.len());
        h.next_payload = PayloadType::SK;
        h.length = (HEADER_LEN + sk_len) as u32;
        let mut msg = Vec::new();
        h.encode(&mut msg);
        msg.push(first);
        msg.push(0);
        msg.extend_from_slice(&(sk_len as u16).to_be_bytes());
        let body = out.encrypt(&msg, &plain);
        msg.extend_from_slice(&body);
        msg
    }

    /// A protected request with the next message ID.
    pub fn request(&mut self, exchange: ExchangeType, payloads: &[Payload]) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        self.seal(exchange, false, id, payloads)
    }

    /// Opens a protected message of this SA: its header and payloads.
    pub fn open(&self, data: &[u8]) -> (Header, Vec<Payload>) {
        let inp = &self.ciphers.as_ref().unwrap().1;
        let p = message::parse(data).unwrap();
        let enc = p.encrypted.expect("an SK payload");
        let plain = inp.decrypt(&data[..enc.offset + 4], enc.body).unwrap();
        let (payloads, _) = parse_chain(enc.inner_next, &plain, 0).unwrap();
        (p.header, payloads)
    }
}

pub fn header(spi_i: u64, spi_r: u64, exchange: ExchangeType, flags: u8, id: u32) -> Header {
    Header {
        spi_i,
        spi_r,
        next_payload: 0,
        version: IKE_VERSION,
        exchange,
        flags: Flags(flags),
        message_id: id,
        length: 0,
    }
}

/// The first notify type of a list of payloads, if any.
pub fn notify_of(payloads: &[Payload]) -> Option<u16> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(Notify { ntype, .. }) => Some(*ntype),
        _ => None,
    })
}
