//! Standard Webhooks signing of a forwarded body: the `webhook-signature` header, one
//! `v1,<base64 HMAC-SHA256>` per configured secret over `<webhook-id>.<timestamp>.<body>`.
//! `http` puts it on each POST; the consumer builds one `Signer` per secret at start-up.

use crate::error::ConfigError;
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest signing key accepted (Standard Webhooks secrets are 24 to 64 bytes).
pub const MIN_SIGNING_KEY_BYTES: usize = 24;

/// Signs outgoing requests with one or more `whsec_` secrets (several during rotation: the
/// receiver accepts the request if any signature matches).
#[derive(Clone)]
pub struct Signer {
    /// One MAC per secret, keyed once at start-up; each signature works on a clone.
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} key(s), redacted)", self.keys.len())
    }
}

impl Signer {
    /// `secrets`: `whsec_<base64>` values separated by spaces. The prefix is optional, as in
    /// the reference libraries; an empty list or a value that is not base64 is a config error.
    /// Each space-separated `whsec_<base64>` must decode to at least
    /// [`MIN_SIGNING_KEY_BYTES`]: a short key is guessable offline from one signed request.
    pub fn from_secret(secrets: &Secret) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for item in secrets.expose().split_whitespace() {
            let encoded = item.strip_prefix("whsec_").unwrap_or(item);
            let key = BASE64.decode(encoded).map_err(|_| ConfigError::Invalid {
                name: "RELAY_SIGNING_SECRET",
                reason: "each secret must be whsec_ followed by base64".into(),
            })?;
            if key.len() < MIN_SIGNING_KEY_BYTES {
                return Err(ConfigError::Invalid {
                    name: "RELAY_SIGNING_SECRET",
                    reason: format!(
                        "a secret decodes to {} bytes; at least {MIN_SIGNING_KEY_BYTES} are needed",
                        key.len()
                    ),
                });
            }
            // HMAC takes a key of any length, so this fails for no key that got this far.
            let mac = <Hmac<Sha256>>::new_from_slice(&key).map_err(|_| ConfigError::Invalid {
                name: "RELAY_SIGNING_SECRET",
                reason: "a secret is not a usable HMAC key".into(),
            })?;
            keys.push(mac);
        }
        if keys.is_empty() {
            return Err(ConfigError::Missing("RELAY_SIGNING_SECRET"));
        }
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value: `v1,<base64>` per key, space-separated.
    pub fn signature_header(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        self.keys
            .iter()
            .map(|key| format!("v1,{}", sign_one(key, msg_id, timestamp, body)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn sign_one(key: &Hmac<Sha256>, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = key.clone();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example in the Standard Webhooks specification (and its reference libraries' tests).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_spec_example() {
        let signer = Signer::from_secret(&Secret::new(SPEC_SECRET)).unwrap();
        assert_eq!(
            signer.signature_header(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
        // The reference libraries take the secret without its prefix too.
        let bare = Signer::from_secret(&Secret::new(&SPEC_SECRET["whsec_".len()..])).unwrap();
        assert_eq!(
            bare.signature_header(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
        // Every signed part counts: another id, second or body byte is another signature.
        for (id, ts, body) in [
            ("msg_p5jXN8AQM9LWM0D4loKWxJeK", SPEC_TS, SPEC_BODY),
            (SPEC_ID, SPEC_TS + 1, SPEC_BODY),
            (SPEC_ID, SPEC_TS, r#"{"test": 2432232315}"#),
        ] {
            assert_ne!(
                signer.signature_header(id, ts, body.as_bytes()),
                SPEC_SIGNATURE
            );
        }
    }

    #[test]
    fn keys_shorter_than_the_minimum_are_refused() {
        let encoded = |len: usize| format!("whsec_{}", BASE64.encode(vec![7u8; len]));
        let short = encoded(MIN_SIGNING_KEY_BYTES - 1);
        assert!(Signer::from_secret(&Secret::new(short)).is_err());
        let enough = encoded(MIN_SIGNING_KEY_BYTES);
        assert!(Signer::from_secret(&Secret::new(enough)).is_ok());
    }

    #[test]
    fn rotation_gives_one_signature_per_secret() {
        // "test-secret-two-0123456789" (26 bytes).
        let other = "whsec_dGVzdC1zZWNyZXQtdHdvLTAxMjM0NTY3ODk=";
        let signer = Signer::from_secret(&Secret::new(format!("{SPEC_SECRET}  {other}"))).unwrap();
        let header = signer.signature_header(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes());
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIGNATURE);
        assert!(parts[1].starts_with("v1,") && parts[1] != SPEC_SIGNATURE);
    }

    #[test]
    fn refuses_secrets_that_are_not_base64() {
        assert!(Signer::from_secret(&Secret::new("whsec_not base64!")).is_err());
        assert!(Signer::from_secret(&Secret::new("whsec_%%%")).is_err());
        assert!(Signer::from_secret(&Secret::new("   ")).is_err());
    }

    #[test]
    fn debug_does_not_print_keys() {
        let signer = Signer::from_secret(&Secret::new(SPEC_SECRET)).unwrap();
        assert!(!format!("{signer:?}").contains("MfKQ9"));
    }
}
