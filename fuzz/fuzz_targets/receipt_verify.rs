//! `receipt::PublicKey::verify` (a signed receipt, the JSON wrapper or a bare JWS) and
//! `PublicKey::parse` (a JWK or a base64url key) on arbitrary bytes, with RFC 8037's example
//! key (appendix A.1) as the server's: the seeds are receipts that key signed.
//!
//! Checked besides "no panic":
//! - a receipt that verifies names the key (`kid` is its fingerprint), is version 1 with a
//!   64-digit lowercase hex SHA-256, and signs again to a JWS that verifies to the same
//!   receipt; a wrapper that verifies has a `jws` that verifies alone, to the same receipt;
//! - input over `MAX_INPUT_LEN` is always refused as too large;
//! - a key that parses gives back the same key from its JWK and from its `x`.
#![no_main]

use ferry::receipt::{MAX_INPUT_LEN, PublicKey, ReceiptKey, VerifyError};
use libfuzzer_sys::fuzz_target;

/// RFC 8037 A.1's private key as PKCS#8 v1: the fixed prefix, then the 32-byte seed `d`.
const RFC8037_PKCS8: [u8; 48] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
    0x20, 0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
    0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c,
    0xae, 0x7f, 0x60,
];

fuzz_target!(|data: &[u8]| {
    let key = ReceiptKey::from_pkcs8(&RFC8037_PKCS8).expect("RFC 8037's key loads");
    let public = key.public_key();

    match public.verify(data) {
        Ok(v) => {
            assert!(data.len() <= MAX_INPUT_LEN);
            assert_eq!(v.kid, key.fingerprint());
            assert_eq!(v.receipt.v, 1);
            assert_eq!(v.receipt.sha256.len(), 64);
            assert!(v.receipt.sha256.bytes().all(|b| b.is_ascii_hexdigit()
                && !b.is_ascii_uppercase()));
            let again = public.verify(key.sign(&v.receipt).jws.as_bytes());
            assert_eq!(again.map(|a| a.receipt).as_ref(), Ok(&v.receipt));
            let text = std::str::from_utf8(data).expect("a verified receipt is text").trim();
            if text.starts_with('{') {
                let wrapper: serde_json::Value = serde_json::from_str(text).expect("JSON");
                let jws = wrapper["jws"].as_str().expect("a jws string");
                let alone = public.verify(jws.as_bytes()).map(|a| a.receipt);
                assert_eq!(alone.as_ref(), Ok(&v.receipt));
            }
        }
        Err(e) => {
            if data.len() > MAX_INPUT_LEN {
                assert_eq!(e, VerifyError::TooLarge);
            }
        }
    }

    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(parsed) = PublicKey::parse(text)
    {
        assert_eq!(PublicKey::parse(&parsed.jwk()).ok(), Some(parsed));
        assert_eq!(PublicKey::from_bytes(parsed.as_bytes()).ok(), Some(parsed));
    }
});
