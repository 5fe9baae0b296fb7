//! Diffie-Hellman key exchange for the KE payload: MODP groups 14 and 15 (RFC 3526), ECP groups 19 and 20
//! (RFC 5903) and Curve25519 (RFC 8031).
//!
//! [`KeyShare`] is our ephemeral private key; its [`KeyShare::public`] is the Key Exchange Data of our KE
//! payload, and [`KeyShare::agree`] checks the peer's Key Exchange Data and yields the [`SharedSecret`] g^ir in
//! the octet form RFC 7296 2.14 feeds to the PRF.
//!
//! Backends: aws-lc-rs for ECDH and X25519; crypto-bigint's constant-time Montgomery exponentiation for MODP
//! (aws-lc's BIGNUM is not exposed safely, and this crate forbids `unsafe`).

use std::sync::LazyLock;

use aws_lc_rs::{agreement, rand};
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, Uint, U2048, U3072};
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// A Diffie-Hellman group (IANA transform type 4 id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DhGroup {
    /// 2048-bit MODP group (RFC 3526 section 3).
    Modp2048 = 14,
    /// 3072-bit MODP group (RFC 3526 section 4).
    Modp3072 = 15,
    /// 256-bit random ECP group, NIST P-256 (RFC 5903).
    Ecp256 = 19,
    /// 384-bit random ECP group, NIST P-384 (RFC 5903).
    Ecp384 = 20,
    /// Curve25519 (RFC 8031).
    Curve25519 = 31,
}

impl DhGroup {
    /// The group for an IANA id, if we implement it.
    pub fn from_id(id: u16) -> Option<DhGroup> {
        match id {
            14 => Some(DhGroup::Modp2048),
            15 => Some(DhGroup::Modp3072),
            19 => Some(DhGroup::Ecp256),
            20 => Some(DhGroup::Ecp384),
            31 => Some(DhGroup::Curve25519),
            _ => None,
        }
    }

    /// The IANA id, as it goes in the KE payload's Diffie-Hellman Group Num.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// Length of the KE payload's Key Exchange Data for this group: 256, 384, 64, 96, 32 bytes.
    pub fn key_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => 256,
            DhGroup::Modp3072 => 384,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }

    /// Length of the shared secret g^ir: the prime length for MODP, the x coordinate for ECP, 32 for X25519.
    pub fn shared_secret_len(self) -> usize {
        match self {
            DhGroup::Modp2048 | DhGroup::Modp3072 | DhGroup::Curve25519 => self.key_len(),
            DhGroup::Ecp256 | DhGroup::Ecp384 => self.key_len() / 2,
        }
    }

    fn ec_algorithm(self) -> Option<&'static agreement::Algorithm> {
        match self {
            DhGroup::Ecp256 => Some(&agreement::ECDH_P256),
            DhGroup::Ecp384 => Some(&agreement::ECDH_P384),
            DhGroup::Curve25519 => Some(&agreement::X25519),
            DhGroup::Modp2048 | DhGroup::Modp3072 => None,
        }
    }

    fn invalid(self, reason: &'static str) -> CryptoError {
        CryptoError::InvalidPublicKey {
            group: self,
            reason,
        }
    }
}

impl std::fmt::Display for DhGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DhGroup::Modp2048 => "MODP_2048",
            DhGroup::Modp3072 => "MODP_3072",
            DhGroup::Ecp256 => "ECP_256",
            DhGroup::Ecp384 => "ECP_384",
            DhGroup::Curve25519 => "CURVE_25519",
        })
    }
}

/// Our ephemeral private key for one key exchange, and the public value that goes in our KE payload.
///
/// The private part is zeroized when dropped (aws-lc cleanses its EVP_PKEY on free; the MODP exponent is
/// zeroized here) and never printed.
pub struct KeyShare {
    group: DhGroup,
    public: Vec<u8>,
    private: Private,
}

enum Private {
    /// ECP and Curve25519: an aws-lc key.
    Ec(agreement::PrivateKey),
    Modp2048(ModpExponent<{ U2048::LIMBS }>),
    Modp3072(ModpExponent<{ U3072::LIMBS }>),
}

impl KeyShare {
    /// Generates a fresh ephemeral key for `group`. Use it for one exchange only (RFC 7296 2.12, RFC 6989:
    /// the MODP range check below is only sufficient when exponents are never reused).
    pub fn generate(group: DhGroup) -> Result<KeyShare, CryptoError> {
        match group.ec_algorithm() {
            Some(alg) => {
                let key = agreement::PrivateKey::generate(alg)
                    .map_err(|_| CryptoError::Backend("EC key generation"))?;
                KeyShare::from_ec(group, key)
            }
            None => {
                let private = match group {
                    DhGroup::Modp2048 => Private::Modp2048(ModpExponent::random(&MODP2048)?),
                    _ => Private::Modp3072(ModpExponent::random(&MODP3072)?),
                };
                KeyShare::from_modp(group, private)
            }
        }
    }

    /// A key share from a fixed private key (big-endian scalar, or the MODP exponent): for known-answer tests.
    #[cfg(test)]
    pub(crate) fn from_private(group: DhGroup, private: &[u8]) -> Result<KeyShare, CryptoError> {
        match group.ec_algorithm() {
            Some(alg) => {
                let key = agreement::PrivateKey::from_private_key(alg, private).map_err(|_| {
                    CryptoError::BadLength {
                        what: "private key",
                        got: private.len(),
                    }
                })?;
                KeyShare::from_ec(group, key)
            }
            None => {
                let private = match group {
                    DhGroup::Modp2048 => Private::Modp2048(ModpExponent::from_be(private)),
                    _ => Private::Modp3072(ModpExponent::from_be(private)),
                };
                KeyShare::from_modp(group, private)
            }
        }
    }

    fn from_ec(group: DhGroup, key: agreement::PrivateKey) -> Result<KeyShare, CryptoError> {
        let public = key
            .compute_public_key()
            .map_err(|_| CryptoError::Backend("EC public key"))?;
        let public = match group {
            // aws-lc gives the SEC 1 uncompressed point 0x04 | x | y.
            //= https://www.rfc-editor.org/rfc/rfc5903#section-7
            //# The Diffie-Hellman public value is obtained by concatenating the x and y values.
            DhGroup::Ecp256 | DhGroup::Ecp384 => public
                .as_ref()
                .split_first()
                .map(|(_, xy)| xy.to_vec())
                .unwrap_or_default(),
            _ => public.as_ref().to_vec(),
        };
        debug_assert_eq!(public.len(), group.key_len());
        Ok(KeyShare {
            group,
            public,
            private: Private::Ec(key),
        })
    }

    fn from_modp(group: DhGroup, private: Private) -> Result<KeyShare, CryptoError> {
        let public = match &private {
            Private::Modp2048(x) => x.public(&MODP2048),
            Private::Modp3072(x) => x.public(&MODP3072),
            Private::Ec(_) => {
                return Err(CryptoError::Backend("MODP key share without an exponent"))
            }
        };
        Ok(KeyShare {
            group,
            public,
            private,
        })
    }

    /// The group.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Our public value: the Key Exchange Data of our KE payload, exactly [`DhGroup::key_len`] bytes.
    ///
    /// MODP: g^x mod p, big-endian, left-padded to the prime length. ECP: x | y, without the SEC 1 0x04
    /// prefix. Curve25519: the 32-byte u-coordinate.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// Checks the peer's Key Exchange Data and computes the shared secret g^ir.
    ///
    /// Takes `&self` so that a forged reply with a bad KE payload does not destroy the key we still need for
    /// the genuine one; drop the share once the exchange is done, and never use it in another exchange.
    pub fn agree(&self, peer_public: &[u8]) -> Result<SharedSecret, CryptoError> {
        let group = self.group;
        if peer_public.len() != group.key_len() {
            return Err(group.invalid("wrong length"));
        }
        let bytes = match &self.private {
            Private::Ec(key) => ec_agree(group, key, peer_public)?,
            Private::Modp2048(x) => x.agree(&MODP2048, group, peer_public)?,
            Private::Modp3072(x) => x.agree(&MODP3072, group, peer_public)?,
        };
        debug_assert_eq!(bytes.len(), group.shared_secret_len());
        Ok(SharedSecret { group, bytes })
    }
}

/// Checks the peer's Key Exchange Data for `group` without a key of ours: the same checks as
/// [`KeyShare::agree`] makes before its computation (length; MODP: 1 < y < p-1; ECP: a point on the curve), so
/// that a responder can refuse a bad value before it spends a key generation on the request. Curve25519 accepts
/// any 32 bytes here (its all-zero result is refused by `agree`).
pub fn check_public(group: DhGroup, peer: &[u8]) -> Result<(), CryptoError> {
    if peer.len() != group.key_len() {
        return Err(group.invalid("wrong length"));
    }
    let in_range = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(group.invalid("not in 1 < y < p-1"))
        }
    };
    match group {
        DhGroup::Modp2048 => in_range(modp_in_range(&MODP2048, peer)),
        DhGroup::Modp3072 => in_range(modp_in_range(&MODP3072, peer)),
        DhGroup::Ecp256 | DhGroup::Ecp384 => {
            let alg = group
                .ec_algorithm()
                .ok_or(group.invalid("not an EC group"))?;
            let mut point = Vec::with_capacity(1 + peer.len());
            point.push(0x04);
            point.extend_from_slice(peer);
            agreement::ParsedPublicKey::try_from(agreement::UnparsedPublicKey::new(alg, &point))
                .map(|_| ())
                .map_err(|_| group.invalid("not a valid point"))
        }
        DhGroup::Curve25519 => Ok(()),
    }
}

fn modp_in_range<const L: usize>(params: &FixedMontyParams<L>, peer: &[u8]) -> bool {
    let y = Uint::<L>::from_be_slice(peer);
    let p_minus_1 = params.modulus().as_ref().wrapping_sub(&Uint::ONE);
    y > Uint::ONE && y < p_minus_1
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyShare")
            .field("group", &self.group)
            .field("private", &"redacted")
            .finish()
    }
}

fn ec_agree(
    group: DhGroup,
    key: &agreement::PrivateKey,
    peer: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let alg = key.algorithm();
    let encoded;
    let peer = match group {
        DhGroup::Ecp256 | DhGroup::Ecp384 => {
            // Rebuild the SEC 1 uncompressed point; aws-lc checks that it is on the curve.
            let mut point = Vec::with_capacity(1 + peer.len());
            point.push(0x04);
            point.extend_from_slice(peer);
            encoded = point;
            &encoded[..]
        }
        _ => peer,
    };
    let secret = agreement::agree(
        key,
        agreement::UnparsedPublicKey::new(alg, peer),
        group.invalid("not a valid point"),
        |secret| Ok(Zeroizing::new(secret.to_vec())),
    )?;
    // aws-lc's X25519 already fails on an all-zero result; check again, in constant time, so that this
    // requirement (RFC 8031 places it on IKEv2 recipients) does not rest on a backend detail.
    //= https://www.rfc-editor.org/rfc/rfc7748#section-6.1
    //# Both MAY check, without leaking extra information about the value of K, whether K is the all-zero value
    //# and abort if so
    if group == DhGroup::Curve25519 && secret.iter().fold(0u8, |acc, b| acc | b) == 0 {
        return Err(group.invalid("all-zero shared secret"));
    }
    //= https://www.rfc-editor.org/rfc/rfc5903#section-7
    //# The Diffie-Hellman shared secret value consists of the x value of the Diffie-Hellman common value.
    Ok(secret)
}

/// The shared secret g^ir of one key exchange, zeroized on drop.
///
/// MODP: big-endian, left-padded to the prime length. ECP: the x coordinate of the common point. Curve25519:
/// the 32-byte X25519 output.
pub struct SharedSecret {
    group: DhGroup,
    bytes: Zeroizing<Vec<u8>>,
}

impl SharedSecret {
    /// The octets that go into SKEYSEED and KEYMAT.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The group it came from.
    pub fn group(&self) -> DhGroup {
        self.group
    }
}

impl AsRef<[u8]> for SharedSecret {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::redacted(f, "SharedSecret", self.bytes.len())
    }
}

// --- MODP ---------------------------------------------------------------------------------------------------

/// RFC 3526 section 3: p = 2^2048 - 2^1984 - 1 + 2^64 * { [2^1918 pi] + 124476 }, generator 2.
const MODP2048_P: &str = "\
    FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74\
    020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437\
    4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED\
    EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05\
    98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB\
    9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B\
    E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718\
    3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";

/// RFC 3526 section 4: p = 2^3072 - 2^3008 - 1 + 2^64 * { [2^2942 pi] + 1690314 }, generator 2.
const MODP3072_P: &str = "\
    FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74\
    020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437\
    4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED\
    EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05\
    98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB\
    9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B\
    E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718\
    3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33\
    A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7\
    ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864\
    D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2\
    08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF";

static MODP2048: LazyLock<FixedMontyParams<{ U2048::LIMBS }>> =
    LazyLock::new(|| FixedMontyParams::new_vartime(Odd::<U2048>::from_be_hex(MODP2048_P)));
static MODP3072: LazyLock<FixedMontyParams<{ U3072::LIMBS }>> =
    LazyLock::new(|| FixedMontyParams::new_vartime(Odd::<U3072>::from_be_hex(MODP3072_P)));

/// A MODP private exponent x, 1 < x < 2^(bits-1), zeroized on drop.
struct ModpExponent<const L: usize> {
    x: Uint<L>,
}

impl<const L: usize> ModpExponent<L> {
    /// A full-length random exponent. Its top bit is cleared so that it stays below p (whose top 64 bits are
    /// all ones); the loss of one bit out of 2047 or 3071 is immaterial.
    fn random(params: &FixedMontyParams<L>) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new(vec![0u8; Uint::<L>::BYTES]);
        loop {
            rand::fill(&mut bytes).map_err(|_| CryptoError::Backend("random exponent"))?;
            if let Some(top) = bytes.first_mut() {
                *top &= 0x7f;
            }
            let x = ModpExponent::from_be(&bytes);
            if x.x > Uint::ONE && x.x < *params.modulus().as_ref() {
                return Ok(x);
            }
        }
    }

    /// An exponent from big-endian bytes, left-padded to the prime length.
    fn from_be(bytes: &[u8]) -> Self {
        let mut padded = Zeroizing::new(vec![0u8; Uint::<L>::BYTES]);
        let n = bytes.len().min(padded.len());
        let start = padded.len() - n;
        if let (Some(dst), Some(src)) = (padded.get_mut(start..), bytes.get(bytes.len() - n..)) {
            dst.copy_from_slice(src);
        }
        ModpExponent {
            x: Uint::from_be_slice(&padded),
        }
    }

    /// base^x mod p, constant time in x.
    fn pow(&self, base: &Uint<L>, params: &FixedMontyParams<L>) -> Zeroizing<Vec<u8>> {
        let mut result = FixedMontyForm::new(base, params).pow(&self.x);
        let mut value = result.retrieve();
        result.zeroize();
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.14
        //# g^ir is represented as a string of octets in big endian order padded
        //# with zeros if necessary to make it the length of the modulus.
        let mut encoded = value.to_be_bytes();
        let out = Zeroizing::new(encoded.as_ref().to_vec());
        encoded.zeroize();
        value.zeroize();
        out
    }

    /// Our public value g^x mod p, g = 2.
    fn public(&self, params: &FixedMontyParams<L>) -> Vec<u8> {
        self.pow(&Uint::from_u8(2), params).to_vec()
    }

    /// Checks the peer's public value y and computes y^x mod p.
    fn agree(
        &self,
        params: &FixedMontyParams<L>,
        group: DhGroup,
        peer: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let y = Uint::<L>::from_be_slice(peer);
        let p_minus_1 = params.modulus().as_ref().wrapping_sub(&Uint::ONE);
        // RFC 6989 section 2.1: for the safe-prime MODP groups, checking 1 < y < p-1 is sufficient, as
        // long as exponents are never reused.
        if y <= Uint::ONE || y >= p_minus_1 {
            return Err(group.invalid("not in 1 < y < p-1"));
        }
        let shared = self.pow(&y, params);
        // With 1 < y < p-1 in a safe-prime group this is unreachable; refuse a degenerate secret regardless.
        if Uint::<L>::from_be_slice(&shared) == Uint::ONE {
            return Err(group.invalid("degenerate shared secret"));
        }
        Ok(shared)
    }
}

impl<const L: usize> Drop for ModpExponent<L> {
    fn drop(&mut self) {
        self.x.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    const ALL: [DhGroup; 5] = [
        DhGroup::Modp2048,
        DhGroup::Modp3072,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ];

    #[test]
    fn ids_and_lengths() {
        for g in ALL {
            assert_eq!(DhGroup::from_id(g.id()), Some(g));
        }
        assert_eq!(DhGroup::from_id(2), None);
        let lens: Vec<usize> = ALL.iter().map(|g| g.key_len()).collect();
        assert_eq!(lens, [256, 384, 64, 96, 32]);
    }

    /// Two fresh shares in every group agree, and produce public values and secrets of the RFC lengths.
    #[test]
    fn round_trip_every_group() {
        for g in ALL {
            let a = KeyShare::generate(g).unwrap();
            let b = KeyShare::generate(g).unwrap();
            assert_eq!(a.public().len(), g.key_len(), "{g}");
            assert_ne!(a.public(), b.public(), "{g}");
            let s1 = a.agree(b.public()).unwrap();
            let s2 = b.agree(a.public()).unwrap();
            assert_eq!(s1.as_bytes(), s2.as_bytes(), "{g}");
            assert_eq!(s1.as_bytes().len(), g.shared_secret_len(), "{g}");
            assert_eq!(s1.group(), g);
            assert!(!format!("{s1:?}{a:?}").contains(&format!("{:?}", &s1.as_bytes()[..4])));
        }
    }

    #[test]
    fn wrong_length_rejected() {
        for g in ALL {
            let a = KeyShare::generate(g).unwrap();
            let b = KeyShare::generate(g).unwrap();
            let mut long = b.public().to_vec();
            long.push(0);
            for bad in [&b.public()[1..], &long[..], &[][..]] {
                assert!(
                    matches!(a.agree(bad), Err(CryptoError::InvalidPublicKey { group, .. }) if group == g)
                );
            }
        }
    }

    /// RFC 7748 section 6.1: Alice and Bob.
    #[test]
    fn x25519_rfc7748() {
        let alice = KeyShare::from_private(
            DhGroup::Curve25519,
            &hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        )
        .unwrap();
        let bob = KeyShare::from_private(
            DhGroup::Curve25519,
            &hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
        )
        .unwrap();
        assert_eq!(
            alice.public(),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public(),
            hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let k = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(alice.agree(bob.public()).unwrap().as_bytes(), k);
        assert_eq!(bob.agree(alice.public()).unwrap().as_bytes(), k);
    }

    /// Low-order points give the all-zero shared secret, which must be refused.
    #[test]
    fn x25519_all_zero_rejected() {
        let a = KeyShare::generate(DhGroup::Curve25519).unwrap();
        let mut one = [0u8; 32];
        one[0] = 1;
        for low_order in [[0u8; 32], one] {
            assert!(matches!(
                a.agree(&low_order),
                Err(CryptoError::InvalidPublicKey {
                    group: DhGroup::Curve25519,
                    ..
                })
            ));
        }
    }

    /// RFC 5903 section 8.1 (256-bit) and 8.2 (384-bit): i, g^i, r, g^r and the x coordinate girx.
    #[test]
    fn ecp_rfc5903() {
        struct Vector {
            group: DhGroup,
            i: &'static str,
            gix_giy: &'static str,
            r: &'static str,
            grx_gry: &'static str,
            girx: &'static str,
        }
        let vectors = [
            Vector {
                group: DhGroup::Ecp256,
                i: "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
                gix_giy: "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180
                          5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
                r: "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
                grx_gry: "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63
                          56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
                girx: "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
            },
            Vector {
                group: DhGroup::Ecp384,
                i: "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655
                    E35B538041E649EE3FAEF896783AB194",
                gix_giy: "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6
                          DE3AC808ACB4BDB4C88732AEE95F41AA9482ED1FC0EEB9CAFC4984625CCFC23F
                          65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
                r: "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942
                    E0308312916B8ED2960E4BD55A7448FC",
                grx_gry: "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D
                          0D1AC43A0336DEF96FDA41D0774A3571DCFBEC7AACF3196472169E838430367F
                          66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
                girx: "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4
                       D603135569B9E9D09CF5D4A270F59746",
            },
        ];
        for v in vectors {
            let g = v.group;
            let i = KeyShare::from_private(g, &hex(v.i)).unwrap();
            let r = KeyShare::from_private(g, &hex(v.r)).unwrap();
            assert_eq!(i.public(), hex(v.gix_giy), "{g} g^i");
            assert_eq!(r.public(), hex(v.grx_gry), "{g} g^r");
            assert_eq!(
                i.agree(&hex(v.grx_gry)).unwrap().as_bytes(),
                hex(v.girx),
                "{g} initiator"
            );
            assert_eq!(
                r.agree(&hex(v.gix_giy)).unwrap().as_bytes(),
                hex(v.girx),
                "{g} responder"
            );
        }
    }

    /// Points that are not on the curve (and the all-zero "point") are refused.
    #[test]
    fn ecp_off_curve_rejected() {
        for g in [DhGroup::Ecp256, DhGroup::Ecp384] {
            let a = KeyShare::generate(g).unwrap();
            let mut bad = KeyShare::generate(g).unwrap().public().to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(
                matches!(a.agree(&bad), Err(CryptoError::InvalidPublicKey { .. })),
                "{g}"
            );
            assert!(a.agree(&vec![0u8; g.key_len()]).is_err(), "{g}");
        }
    }

    fn be(group: DhGroup, hex_p: &str, delta: i8) -> Vec<u8> {
        // p + delta, big-endian, for small |delta| (p ends in 64 one bits, so no carries past the last byte
        // for delta in -1..=0 and a carry chain we handle for +1).
        let mut p = hex(hex_p);
        assert_eq!(p.len(), group.key_len());
        match delta {
            0 => {}
            -1 => *p.last_mut().unwrap() -= 1,
            1 => {
                // p + 1: 0xFF..FF + 1 carries through the low 8 bytes.
                for b in p.iter_mut().rev() {
                    let (v, carry) = b.overflowing_add(1);
                    *b = v;
                    if !carry {
                        break;
                    }
                }
            }
            _ => unreachable!(),
        }
        p
    }

    /// RFC 6989 / RFC 7296: peer values 0, 1, p-1, p and p+1 are refused; 2 and p-2 are accepted.
    #[test]
    fn modp_range_checks() {
        for (g, p) in [
            (DhGroup::Modp2048, MODP2048_P),
            (DhGroup::Modp3072, MODP3072_P),
        ] {
            let a = KeyShare::generate(g).unwrap();
            let small = |v: u8| {
                let mut x = vec![0u8; g.key_len()];
                *x.last_mut().unwrap() = v;
                x
            };
            for bad in [small(0), small(1), be(g, p, -1), be(g, p, 0), be(g, p, 1)] {
                assert!(
                    matches!(a.agree(&bad), Err(CryptoError::InvalidPublicKey { group, .. }) if group == g),
                    "{g}"
                );
            }
            let mut p_minus_2 = be(g, p, -1);
            *p_minus_2.last_mut().unwrap() -= 1;
            assert!(a.agree(&small(2)).is_ok(), "{g}");
            assert!(a.agree(&p_minus_2).is_ok(), "{g}");
        }
    }

    /// A known exponent: 2^5 mod p = 32, and (2^5)^3 = 2^15 from the other side.
    #[test]
    fn modp_known_exponents() {
        let a = KeyShare::from_private(DhGroup::Modp2048, &[5]).unwrap();
        let mut want = vec![0u8; 256];
        want[255] = 32;
        assert_eq!(a.public(), &want[..]);
        let b = KeyShare::from_private(DhGroup::Modp2048, &[3]).unwrap();
        let mut secret = vec![0u8; 256];
        secret[254] = 0x80; // 2^15
        assert_eq!(a.agree(b.public()).unwrap().as_bytes(), secret);
        assert_eq!(b.agree(a.public()).unwrap().as_bytes(), secret);
    }

    /// Time one full-length modexp per MODP group (run with `--ignored --nocapture`, ideally `--release`).
    #[test]
    #[ignore = "timing report, not a check"]
    fn modp_timing() {
        for g in [DhGroup::Modp2048, DhGroup::Modp3072] {
            let peer = KeyShare::generate(g).unwrap();
            let n = 10;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let a = KeyShare::generate(g).unwrap(); // one modexp
                std::hint::black_box(a.agree(peer.public()).unwrap()); // and a second
            }
            let per = start.elapsed() / (2 * n);
            println!("{g}: {per:?} per modexp");
        }
    }
}
