//! The IKE PRFs (transform type 2) and prf+ (RFC 7296 2.13).

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

/// A pseudorandom function, by its IANA transform type 2 id. Only the HMAC-SHA2 family (RFC 4868).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256.
    HmacSha256 = 5,
    /// PRF_HMAC_SHA2_384.
    HmacSha384 = 6,
    /// PRF_HMAC_SHA2_512.
    HmacSha512 = 7,
}

impl Prf {
    /// The PRF for an IANA transform id, if we implement it.
    pub fn from_id(id: u16) -> Option<Prf> {
        match id {
            5 => Some(Prf::HmacSha256),
            6 => Some(Prf::HmacSha384),
            7 => Some(Prf::HmacSha512),
            _ => None,
        }
    }

    /// The IANA transform id.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// Length of one PRF output in bytes (32, 48, 64).
    pub fn output_len(self) -> usize {
        match self {
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    /// The preferred key length: the length of SK_d, SK_pi and SK_pr. For HMAC-SHA2 it is the output length
    /// (RFC 4868).
    pub fn key_len(self) -> usize {
        self.output_len()
    }

    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Prf::HmacSha256 => hmac::HMAC_SHA256,
            Prf::HmacSha384 => hmac::HMAC_SHA384,
            Prf::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// `prf(key, data)`. HMAC takes keys of any length.
    ///
    /// The output is zeroized on drop because it is often a key itself (SKEYSEED, the PSK pad).
    pub fn prf(self, key: &[u8], data: &[u8]) -> Zeroizing<Vec<u8>> {
        self.prf_parts(key, &[data])
    }

    /// `prf(key, part0 | part1 | ...)`, without building the concatenation.
    pub fn prf_parts(self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let key = hmac::Key::new(self.algorithm(), key);
        let mut ctx = hmac::Context::with_key(&key);
        for part in parts {
            ctx.update(part);
        }
        Zeroizing::new(ctx.sign().as_ref().to_vec())
    }

    /// The most bytes prf+ can produce with this PRF.
    pub fn prf_plus_max(self) -> usize {
        255 * self.output_len()
    }

    /// `prf+ (key, seed)`, the first `len` bytes.
    ///
    /// # Panics
    /// If `len` exceeds [`Prf::prf_plus_max`] (255 PRF outputs, at least 8160 bytes): every length IKE asks
    /// for is a small constant fixed by the negotiated algorithms, so this is a programming error.
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.13
    //# prf+ (K,S) = T1 | T2 | T3 | T4 | ...
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
        self.prf_plus_parts(key, &[seed], len)
    }

    /// `prf+ (key, part0 | part1 | ...)`, the first `len` bytes, without building the seed.
    ///
    /// # Panics
    /// As [`Prf::prf_plus`].
    pub fn prf_plus_parts(self, key: &[u8], seed: &[&[u8]], len: usize) -> Zeroizing<Vec<u8>> {
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.13
        //# The prf+ function is not defined beyond 255 times the size of the prf function output.
        assert!(
            len <= self.prf_plus_max(),
            "prf+ cannot produce {len} bytes with {self} (maximum {})",
            self.prf_plus_max()
        );
        let key = hmac::Key::new(self.algorithm(), key);
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.output_len()));
        let mut counter = 1u8;
        while out.len() < len {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.13
            //# T1 = prf (K, S | 0x01)
            //# T2 = prf (K, T1 | S | 0x02)
            let mut ctx = hmac::Context::with_key(&key);
            if counter > 1 {
                let last = out.len().saturating_sub(self.output_len());
                ctx.update(out.get(last..).unwrap_or_default());
            }
            for part in seed {
                ctx.update(part);
            }
            ctx.update(&[counter]);
            out.extend_from_slice(ctx.sign().as_ref());
            // Cannot wrap: len <= 255 * output_len, so at most 255 rounds.
            counter = counter.wrapping_add(1);
        }
        out.truncate(len);
        out
    }
}

impl std::fmt::Display for Prf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prf::HmacSha256 => "PRF_HMAC_SHA2_256",
            Prf::HmacSha384 => "PRF_HMAC_SHA2_384",
            Prf::HmacSha512 => "PRF_HMAC_SHA2_512",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    const ALL: [Prf; 3] = [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512];

    /// RFC 4231 section 4.2 (test case 1), 4.3 (test case 2) and 4.7 (test case 6).
    #[test]
    fn rfc4231_vectors() {
        let tc1 = ([0x0bu8; 20].to_vec(), b"Hi There".to_vec());
        let tc2 = (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec());
        let tc6 = (
            [0xaau8; 131].to_vec(),
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
        );
        type KeyAndData = (Vec<u8>, Vec<u8>);
        let cases: [(&KeyAndData, Prf, &str); 7] = [
            (
                &tc1,
                Prf::HmacSha256,
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                &tc1,
                Prf::HmacSha384,
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c\
                 faea9ea9076ede7f4af152e8b2fa9cb6",
            ),
            (
                &tc1,
                Prf::HmacSha512,
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde\
                 daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
            ),
            (
                &tc2,
                Prf::HmacSha256,
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &tc2,
                Prf::HmacSha384,
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
                 8e2240ca5e69e2c78b3239ecfab21649",
            ),
            (
                &tc2,
                Prf::HmacSha512,
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
                 9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ),
            (
                &tc6,
                Prf::HmacSha256,
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for ((key, data), prf, want) in cases {
            assert_eq!(*prf.prf(key, data), hex(want), "{prf}");
            assert_eq!(prf.prf(key, data).len(), prf.output_len());
        }
    }

    #[test]
    fn prf_parts_is_prf_of_the_concatenation() {
        for prf in ALL {
            assert_eq!(
                prf.prf_parts(b"k", &[b"ab", b"", b"cd"]),
                prf.prf(b"k", b"abcd")
            );
        }
    }

    /// prf+ against a T1 | T2 | ... chain built by hand from the (RFC 4231-checked) PRF.
    #[test]
    fn prf_plus_is_the_rfc_chain() {
        let key = b"SKEYSEED-ish key";
        let seed = b"Ni | Nr | SPIi | SPIr";
        for prf in ALL {
            let mut expected = Vec::new();
            let mut t: Vec<u8> = Vec::new();
            for i in 1..=5u8 {
                let mut input = t.clone();
                input.extend_from_slice(seed);
                input.push(i);
                t = prf.prf(key, &input).to_vec();
                expected.extend_from_slice(&t);
            }
            for len in [
                0,
                1,
                prf.output_len() - 1,
                prf.output_len(),
                prf.output_len() + 1,
                5 * prf.output_len(),
            ] {
                let got = prf.prf_plus(key, seed, len);
                assert_eq!(&got[..], &expected[..len], "{prf} len {len}");
            }
            let parts = prf.prf_plus_parts(key, &[b"Ni | Nr", b" | SPIi | SPIr"], 100);
            assert_eq!(parts, prf.prf_plus(key, seed, 100));
        }
    }

    #[test]
    fn prf_plus_limit() {
        for prf in ALL {
            let max = prf.prf_plus_max();
            assert_eq!(prf.prf_plus(b"k", b"s", max).len(), max);
            let over = std::panic::catch_unwind(|| prf.prf_plus(b"k", b"s", max + 1));
            assert!(over.is_err(), "{prf}");
        }
    }

    #[test]
    fn ids() {
        for prf in ALL {
            assert_eq!(Prf::from_id(prf.id()), Some(prf));
        }
        assert_eq!(Prf::from_id(2), None);
    }
}
