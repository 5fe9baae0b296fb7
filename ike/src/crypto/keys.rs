//! Key derivation: the IKE SA keys (RFC 7296 2.14), IKE SA rekey (2.18), Child SA keying material (2.17).

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::prf::Prf;
use super::sk::{IkeEncr, Integ, SkCipher};
use super::CryptoError;

/// The seven keys of an IKE SA, zeroized on drop and redacted in `Debug`.
///
/// For the AEADs SK_ai and SK_ar are empty, and SK_ei / SK_er carry the 4-byte salt after the cipher key
/// (RFC 5282, RFC 7634), the layout [`SkCipher::new`] takes.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct IkeKeys {
    /// The key Child SA keying material and the next IKE SA's SKEYSEED derive from.
    pub sk_d: Vec<u8>,
    /// Integrity key for messages from the original initiator (empty for the AEADs).
    pub sk_ai: Vec<u8>,
    /// Integrity key for messages from the original responder (empty for the AEADs).
    pub sk_ar: Vec<u8>,
    /// Encryption key (and salt) for messages from the original initiator.
    pub sk_ei: Vec<u8>,
    /// Encryption key (and salt) for messages from the original responder.
    pub sk_er: Vec<u8>,
    /// The key the initiator's AUTH MACs its ID payload with.
    pub sk_pi: Vec<u8>,
    /// The key the responder's AUTH MACs its ID payload with.
    pub sk_pr: Vec<u8>,
    #[zeroize(skip)]
    suite: Suite,
}

/// The algorithms the keys are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suite {
    prf: Prf,
    encr: IkeEncr,
    integ: Option<Integ>,
}

impl Suite {
    fn new(prf: Prf, encr: IkeEncr, integ: Option<Integ>) -> Result<Suite, CryptoError> {
        match (encr.is_aead(), integ) {
            // RFC 5282: an AEAD is negotiated without an integrity transform (or with NONE).
            (true, Some(_)) => Err(CryptoError::InvalidSuite(
                "an AEAD takes no integrity transform",
            )),
            (false, None) => Err(CryptoError::InvalidSuite(
                "AES-CBC needs an integrity transform",
            )),
            _ => Ok(Suite { prf, encr, integ }),
        }
    }

    fn integ_key_len(&self) -> usize {
        self.integ.map_or(0, |i| i.key_len())
    }

    fn keymat_len(&self) -> usize {
        ike_keymat_len(self.prf, self.encr, self.integ)
    }
}

/// Bytes of prf+ output the seven IKE SA keys take for these algorithms: SK_d, SK_pi and SK_pr the PRF's
/// preferred key length, SK_a* the integrity key length, SK_e* the cipher key and salt.
pub fn ike_keymat_len(prf: Prf, encr: IkeEncr, integ: Option<Integ>) -> usize {
    3 * prf.key_len() + 2 * integ.map_or(0, |i| i.key_len()) + 2 * encr.key_len()
}

impl IkeKeys {
    /// Derives the keys of a new IKE SA after IKE_SA_INIT.
    ///
    /// `shared_secret` is g^ir ([`super::SharedSecret::as_bytes`]); `ni` and `nr` are the nonce values (the
    /// Nonce payload bodies); the SPIs are those of the IKE header. `integ` is `None` exactly for the AEADs.
    #[allow(clippy::too_many_arguments)] // the inputs of the RFC 7296 2.14 formula, in its order
    pub fn derive(
        prf: Prf,
        shared_secret: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
        encr: IkeEncr,
        integ: Option<Integ>,
    ) -> Result<IkeKeys, CryptoError> {
        let suite = Suite::new(prf, encr, integ)?;
        let skeyseed = skeyseed(&prf, shared_secret, ni, nr);
        Ok(IkeKeys::expand(
            suite, &prf, &skeyseed, ni, nr, spi_i, spi_r,
        ))
    }

    /// Derives the keys of the IKE SA that replaces an old one in a CREATE_CHILD_SA rekey.
    ///
    /// `old_sk_d` is the old SA's SK_d; `new_shared_secret` is the g^ir of the rekey exchange's KE payloads (a
    /// rekey always has them); `ni`/`nr` are its nonces and the SPIs the new SA's (from its SA payloads).
    ///
    /// `prf` must be both the old and the new SA's PRF: the rekey proposal has to keep the PRF. RFC 7296 2.18
    /// has the old PRF compute SKEYSEED but does not say which PRF then runs prf+; strongSwan uses the old one
    /// and Libreswan the new one, so a PRF change cannot interoperate with both.
    #[allow(clippy::too_many_arguments)] // the inputs of the RFC 7296 2.18 formula
    pub fn derive_rekey(
        prf: Prf,
        old_sk_d: &[u8],
        new_shared_secret: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
        encr: IkeEncr,
        integ: Option<Integ>,
    ) -> Result<IkeKeys, CryptoError> {
        let suite = Suite::new(prf, encr, integ)?;
        let skeyseed = rekey_skeyseed(&prf, old_sk_d, new_shared_secret, ni, nr);
        Ok(IkeKeys::expand(
            suite, &prf, &skeyseed, ni, nr, spi_i, spi_r,
        ))
    }

    fn expand(
        suite: Suite,
        prf: &impl PrfFn,
        skeyseed: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> IkeKeys {
        let keymat = ike_keymat(prf, skeyseed, ni, nr, spi_i, spi_r, suite.keymat_len());
        let mut rest = &keymat[..];
        let mut take = |n: usize| {
            let (key, tail) = rest.split_at(n);
            rest = tail;
            key.to_vec()
        };
        let (p, a, e) = (
            suite.prf.key_len(),
            suite.integ_key_len(),
            suite.encr.key_len(),
        );
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.14
        //# {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
        //#                 = prf+ (SKEYSEED, Ni | Nr | SPIi | SPIr)
        IkeKeys {
            sk_d: take(p),
            sk_ai: take(a),
            sk_ar: take(a),
            sk_ei: take(e),
            sk_er: take(e),
            sk_pi: take(p),
            sk_pr: take(p),
            suite,
        }
    }

    /// The PRF the keys were derived for.
    pub fn prf(&self) -> Prf {
        self.suite.prf
    }

    /// The encryption algorithm the keys were derived for.
    pub fn encr(&self) -> IkeEncr {
        self.suite.encr
    }

    /// The integrity algorithm the keys were derived for (`None` for the AEADs).
    pub fn integ(&self) -> Option<Integ> {
        self.suite.integ
    }

    /// The SK payload ciphers `(outbound, inbound)` for our side. `original_initiator` is whether we
    /// initiated this IKE SA (not the current exchange): the I/R of the keys never swap during the SA's life.
    pub fn ciphers(&self, original_initiator: bool) -> Result<(SkCipher, SkCipher), CryptoError> {
        let (encr, integ) = (self.suite.encr, self.suite.integ);
        let i = SkCipher::new(encr, integ, &self.sk_ei, &self.sk_ai)?;
        let r = SkCipher::new(encr, integ, &self.sk_er, &self.sk_ar)?;
        Ok(if original_initiator { (i, r) } else { (r, i) })
    }

    /// The keys of the IKE SA that replaces this one in a rekey: [`IkeKeys::derive_rekey`] with our PRF and
    /// SK_d.
    #[allow(clippy::too_many_arguments)]
    pub fn rekey(
        &self,
        new_shared_secret: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
        encr: IkeEncr,
        integ: Option<Integ>,
    ) -> Result<IkeKeys, CryptoError> {
        IkeKeys::derive_rekey(
            self.suite.prf,
            &self.sk_d,
            new_shared_secret,
            ni,
            nr,
            spi_i,
            spi_r,
            encr,
            integ,
        )
    }

    /// KEYMAT for a Child SA created under this IKE SA: [`child_keymat`] with our PRF and SK_d.
    pub fn child_keymat(
        &self,
        shared_secret: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        len: usize,
    ) -> Zeroizing<Vec<u8>> {
        child_keymat(self.suite.prf, &self.sk_d, shared_secret, ni, nr, len)
    }
}

impl std::fmt::Debug for IkeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeKeys")
            .field("suite", &self.suite)
            .field("keys", &"redacted")
            .finish()
    }
}

/// KEYMAT for a Child SA: `len` bytes of prf+(SK_d, [g^ir (new) |] Ni | Nr).
///
/// `shared_secret` is the g^ir of a CREATE_CHILD_SA exchange with KE payloads (PFS), `None` for the Child SA
/// of IKE_AUTH or one created without PFS. Split the result with [`split_child_keymat`].
///
/// # Panics
/// If `len` is beyond what prf+ can produce (see [`Prf::prf_plus`]).
pub fn child_keymat(
    prf: Prf,
    sk_d: &[u8],
    shared_secret: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    child_keymat_with(&prf, sk_d, shared_secret, ni, nr, len)
}

/// The keying material of a Child SA's two directions. "Initiator" is the initiator of the exchange that
/// created the Child SA (IKE_AUTH or CREATE_CHILD_SA), not necessarily of the IKE SA.
///
/// Within a direction the encryption key (and salt) comes first, then the integrity key: the layout
/// [`esp::KeyMaterial::new`] takes. Zeroized on drop, redacted in `Debug`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ChildKeys {
    /// Keys for the SA carrying traffic from the initiator to the responder.
    pub i_to_r: Vec<u8>,
    /// Keys for the SA carrying traffic from the responder to the initiator.
    pub r_to_i: Vec<u8>,
}

impl std::fmt::Debug for ChildKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::redacted(f, "ChildKeys", self.i_to_r.len() + self.r_to_i.len())
    }
}

/// Splits a Child SA's KEYMAT into the keys of its two directions, `len_each` bytes each.
pub fn split_child_keymat(keymat: &[u8], len_each: usize) -> Result<ChildKeys, CryptoError> {
    if len_each.checked_mul(2) != Some(keymat.len()) {
        return Err(CryptoError::BadLength {
            what: "Child SA KEYMAT",
            got: keymat.len(),
        });
    }
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.17
    //# All keys for SAs carrying data from the initiator to the responder
    //# are taken before SAs going from the responder to the initiator.
    let (i_to_r, r_to_i) = keymat.split_at(len_each);
    Ok(ChildKeys {
        i_to_r: i_to_r.to_vec(),
        r_to_i: r_to_i.to_vec(),
    })
}

/// The PRF operations the derivations need: implemented by [`Prf`], and in tests by HMAC-SHA-1, for which the
/// published IKEv2 KDF vectors exist.
trait PrfFn {
    fn prf_parts(&self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>>;
    fn prf_plus_parts(&self, key: &[u8], seed: &[&[u8]], len: usize) -> Zeroizing<Vec<u8>>;
}

impl PrfFn for Prf {
    fn prf_parts(&self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        Prf::prf_parts(*self, key, parts)
    }

    fn prf_plus_parts(&self, key: &[u8], seed: &[&[u8]], len: usize) -> Zeroizing<Vec<u8>> {
        Prf::prf_plus_parts(*self, key, seed, len)
    }
}

fn skeyseed(prf: &impl PrfFn, shared_secret: &[u8], ni: &[u8], nr: &[u8]) -> Zeroizing<Vec<u8>> {
    // The PRF key is Ni | Nr whole: only the fixed-key PRFs (AES-XCBC, AES-CMAC), which we do not implement,
    // would take just the first half of each nonce.
    let mut key = Vec::with_capacity(ni.len() + nr.len());
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.14
    //# SKEYSEED = prf(Ni | Nr, g^ir)
    prf.prf_parts(&key, &[shared_secret])
}

fn rekey_skeyseed(
    old_prf: &impl PrfFn,
    old_sk_d: &[u8],
    new_shared_secret: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> Zeroizing<Vec<u8>> {
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.18
    //# SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
    old_prf.prf_parts(old_sk_d, &[new_shared_secret, ni, nr])
}

fn ike_keymat(
    prf: &impl PrfFn,
    skeyseed: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
    len: usize,
) -> Zeroizing<Vec<u8>> {
    prf.prf_plus_parts(
        skeyseed,
        &[ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()],
        len,
    )
}

fn child_keymat_with(
    prf: &impl PrfFn,
    sk_d: &[u8],
    shared_secret: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    match shared_secret {
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.17
        //# KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr)
        Some(g_ir) => prf.prf_plus_parts(sk_d, &[g_ir, ni, nr], len),
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.17
        //# KEYMAT = prf+(SK_d, Ni | Nr)
        None => prf.prf_plus_parts(sk_d, &[ni, nr], len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;
    use aws_lc_rs::hmac;

    /// HMAC-SHA-1, PRF id 2: only here, to run the published vector below.
    struct HmacSha1;

    impl PrfFn for HmacSha1 {
        fn prf_parts(&self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
            let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
            let mut ctx = hmac::Context::with_key(&key);
            for p in parts {
                ctx.update(p);
            }
            Zeroizing::new(ctx.sign().as_ref().to_vec())
        }

        fn prf_plus_parts(&self, key: &[u8], seed: &[&[u8]], len: usize) -> Zeroizing<Vec<u8>> {
            let mut out = Vec::new();
            let mut t = Vec::new();
            for i in 1..=255u8 {
                if out.len() >= len {
                    break;
                }
                let mut parts: Vec<&[u8]> = vec![&t];
                parts.extend_from_slice(seed);
                let counter = [i];
                parts.push(&counter);
                t = self.prf_parts(key, &parts).to_vec();
                out.extend_from_slice(&t);
            }
            out.truncate(len);
            Zeroizing::new(out)
        }
    }

    /// The NIST CAVS IKEv2 KDF (SP 800-135) HMAC-SHA-1 vector that Libreswan's `ikev2kdf` CAVS driver prints:
    /// SKEYSEED, DKM, DKM(Child SA), DKM(Child SA D-H) and SKEYSEED(Rekey), with SK_d the first 20 DKM bytes.
    #[test]
    fn cavs_ikev2_kdf_sha1() {
        let gir = hex("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52");
        let gir_new = hex("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330");
        let ni = hex("32b50d5f4a3763f3");
        let nr = hex("9206a04b26564cb1");
        let (spi_i, spi_r) = (0x34c9e7c188868785, 0x3ff77d760d2b2199);
        let len = 132;
        let prf = HmacSha1;

        let seed = skeyseed(&prf, &gir, &ni, &nr);
        assert_eq!(*seed, hex("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7"));
        let dkm = ike_keymat(&prf, &seed, &ni, &nr, spi_i, spi_r, len);
        assert_eq!(
            *dkm,
            hex("a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b76606f9fa5e9
                 92204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119
                 8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4")
        );
        let sk_d = &dkm[..20];
        assert_eq!(
            *child_keymat_with(&prf, sk_d, None, &ni, &nr, len),
            hex("8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd9560b2d5e092d1f24e
                 2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf
                 285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4")
        );
        assert_eq!(
            *child_keymat_with(&prf, sk_d, Some(&gir_new), &ni, &nr, len),
            hex("bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232eab4b3ab14c400a519
                 7dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a
                 05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c")
        );
        assert_eq!(
            *rekey_skeyseed(&prf, sk_d, &gir_new, &ni, &nr),
            hex("63e81194946ebd05df7df5ebf5d8750056bf1f1d")
        );
    }

    /// All suites we implement, as (prf, encr, integ).
    fn suites() -> Vec<(Prf, IkeEncr, Option<Integ>)> {
        let mut v = Vec::new();
        for prf in [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512] {
            for encr in [
                IkeEncr::AesGcm16_128,
                IkeEncr::AesGcm16_256,
                IkeEncr::ChaCha20Poly1305,
            ] {
                v.push((prf, encr, None));
            }
            for encr in [IkeEncr::AesCbc128, IkeEncr::AesCbc256] {
                for integ in [
                    Integ::HmacSha256_128,
                    Integ::HmacSha384_192,
                    Integ::HmacSha512_256,
                ] {
                    v.push((prf, encr, Some(integ)));
                }
            }
        }
        v
    }

    /// The production path (Prf, IkeKeys) computes the same formulas, and splits in the 2.14 order.
    #[test]
    fn derive_splits_prf_plus_in_order() {
        let (ni, nr, gir) = ([1u8; 32], [2u8; 32], [3u8; 256]);
        let (spi_i, spi_r) = (0x0102030405060708u64, 0x1112131415161718u64);
        for (prf, encr, integ) in suites() {
            let keys = IkeKeys::derive(prf, &gir, &ni, &nr, spi_i, spi_r, encr, integ).unwrap();
            let nonces = [ni, nr].concat();
            let seed = prf.prf(&nonces, &gir);
            let s = [&nonces[..], &spi_i.to_be_bytes(), &spi_r.to_be_bytes()].concat();
            let all = prf.prf_plus(&seed, &s, ike_keymat_len(prf, encr, integ));
            let joined = [
                &keys.sk_d[..],
                &keys.sk_ai,
                &keys.sk_ar,
                &keys.sk_ei,
                &keys.sk_er,
                &keys.sk_pi,
                &keys.sk_pr,
            ]
            .concat();
            assert_eq!(joined, *all, "{prf} {encr:?} {integ:?}");
            assert_eq!(keys.sk_d.len(), prf.output_len());
            assert_eq!(keys.sk_pr.len(), prf.output_len());
            assert_eq!(keys.sk_ei.len(), encr.key_len());
            assert_eq!(keys.sk_ai.len(), integ.map_or(0, |i| i.key_len()));
            assert_eq!((keys.prf(), keys.encr(), keys.integ()), (prf, encr, integ));
            let shown = format!("{keys:?}");
            assert!(
                shown.contains("redacted") && !shown.contains("sk_d"),
                "{shown}"
            );
        }
    }

    /// AEAD keys: SK_a empty, SK_e = key | 4-byte salt (strongSwan's keymat_v2.c does the same).
    #[test]
    fn key_lengths() {
        assert_eq!(
            ike_keymat_len(Prf::HmacSha256, IkeEncr::AesGcm16_256, None),
            3 * 32 + 2 * 36
        );
        assert_eq!(
            ike_keymat_len(
                Prf::HmacSha384,
                IkeEncr::AesCbc128,
                Some(Integ::HmacSha256_128)
            ),
            3 * 48 + 2 * 32 + 2 * 16
        );
        let no_integ = IkeKeys::derive(
            Prf::HmacSha256,
            &[0],
            &[1],
            &[2],
            1,
            2,
            IkeEncr::AesCbc128,
            None,
        );
        assert!(matches!(no_integ, Err(CryptoError::InvalidSuite(_))));
        let gcm_integ = IkeKeys::derive(
            Prf::HmacSha256,
            &[0],
            &[1],
            &[2],
            1,
            2,
            IkeEncr::AesGcm16_128,
            Some(Integ::HmacSha256_128),
        );
        assert!(matches!(gcm_integ, Err(CryptoError::InvalidSuite(_))));
    }

    /// Both ends of an IKE SA derive the same keys, and each side's outbound cipher is the other's inbound.
    #[test]
    fn both_sides_talk() {
        for (prf, encr, integ) in suites() {
            let derive = || {
                IkeKeys::derive(prf, b"g^ir", b"Ni-nonce", b"Nr-nonce", 7, 9, encr, integ).unwrap()
            };
            let (i, r) = (derive(), derive());
            let (i_out, i_in) = i.ciphers(true).unwrap();
            let (r_out, r_in) = r.ciphers(false).unwrap();
            let msg = i_out.encrypt(b"hdr", b"IDi AUTH SA TSi TSr");
            assert_eq!(*r_in.decrypt(b"hdr", &msg).unwrap(), b"IDi AUTH SA TSi TSr");
            let msg = r_out.encrypt(b"hdr", b"IDr AUTH");
            assert_eq!(*i_in.decrypt(b"hdr", &msg).unwrap(), b"IDr AUTH");
            // A message is not accepted back by its sender's inbound cipher (distinct directional keys).
            assert!(i_in.decrypt(b"hdr", &i_out.encrypt(b"hdr", b"x")).is_err());
        }
    }

    #[test]
    fn rekey_uses_old_sk_d_and_new_nonces() {
        let (prf, encr, integ) = suites()[0];
        let old = IkeKeys::derive(prf, b"g^ir", b"ni", b"nr", 1, 2, encr, integ).unwrap();
        let new = old
            .rekey(b"g^ir new", b"ni2", b"nr2", 3, 4, encr, integ)
            .unwrap();
        let seed = prf.prf_parts(&old.sk_d, &[b"g^ir new", b"ni2", b"nr2"]);
        let s = [&b"ni2nr2"[..], &3u64.to_be_bytes(), &4u64.to_be_bytes()].concat();
        let all = prf.prf_plus(&seed, &s, ike_keymat_len(prf, encr, integ));
        assert_eq!(new.sk_d, all[..32]);
        assert_ne!(new.sk_d, old.sk_d);
        let again = IkeKeys::derive_rekey(
            prf,
            &old.sk_d,
            b"g^ir new",
            b"ni2",
            b"nr2",
            3,
            4,
            encr,
            integ,
        )
        .unwrap();
        assert_eq!(again.sk_pr, new.sk_pr);
    }

    #[test]
    fn child_keymat_and_split() {
        let (prf, encr, integ) = suites()[0];
        let keys = IkeKeys::derive(prf, b"g^ir", b"ni", b"nr", 1, 2, encr, integ).unwrap();
        let no_pfs = keys.child_keymat(None, b"ni", b"nr", 72);
        assert_eq!(*no_pfs, *prf.prf_plus(&keys.sk_d, b"ninr", 72));
        let pfs = keys.child_keymat(Some(b"gir"), b"ni", b"nr", 72);
        assert_eq!(*pfs, *prf.prf_plus(&keys.sk_d, b"girninr", 72));
        assert_eq!(
            pfs,
            child_keymat(prf, &keys.sk_d, Some(b"gir"), b"ni", b"nr", 72)
        );
        let halves = split_child_keymat(&pfs, 36).unwrap();
        assert_eq!(halves.i_to_r, pfs[..36]);
        assert_eq!(halves.r_to_i, pfs[36..]);
        assert_eq!(format!("{halves:?}"), "ChildKeys(72 bytes, redacted)");
        // The halves fit the ESP crate's key layout for the same transform.
        let t = esp::Transform::AesGcm256;
        assert_eq!(t.keymat_len(), 36);
        assert!(esp::KeyMaterial::new(t, &halves.i_to_r).is_ok());
        assert!(split_child_keymat(&pfs, 35).is_err());
    }
}
