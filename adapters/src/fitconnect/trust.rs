//! The public keys of the identity providers whose `identificationReport`s Lotse trusts, and the
//! check of a report's signature against them.
//!
//! The operator names key files (`[trust] keys` in `lotse.toml`): a JWK set (`{"keys": [...]}`)
//! or a single JWK, or PEM public keys (`PUBLIC KEY`, `RSA PUBLIC KEY`; several blocks may
//! follow each other). Asymmetric signatures only: RS256/384/512, PS256/384/512, ES256/384 and
//! EdDSA. Refused, at load and when verifying:
//!
//! - `alg: none`: an unsigned report proves nothing;
//! - HMAC (`HS256`, …, a JWK of `kty: oct`): with a symmetric algorithm the verification key is
//!   the signing key, so whoever holds the "public" key could forge reports (the classic
//!   algorithm-confusion attack, where an RSA public key is used as an HMAC secret);
//! - private keys in a key file: they do not belong on the hub.
//!
//! A report verifies when its header's `alg` is allowed, a configured key of that family (and of
//! that `alg`, when the JWK names one) verifies its signature, and its `exp` and `nbf`, when
//! present, hold with [`LEEWAY_SECS`] of leeway. A report with a `kid` is checked against the
//! keys with that `kid` and the keys that have none (PEM keys). `aud` and `iss` are not checked:
//! a key is trusted for what it signs, and the hub is no audience a report names.
//!
//! Signatures are checked by the `jsonwebtoken` crate on aws-lc-rs (the library rustls uses here).

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::jwt::base64url_decode;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// Signature algorithms accepted (asymmetric only; see the module documentation).
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A key file that cannot be used. Raised at start, so the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read trust key file `{path}`: {message}")]
    Unreadable { path: String, message: String },
    #[error("trust key file `{path}`: {message}")]
    Unsupported { path: String, message: String },
}

/// One trusted public key.
struct TrustKey {
    /// Where it came from, for messages: the file, and the `kid` or position in it.
    source: String,
    kid: Option<String>,
    /// The one algorithm the JWK allows (`alg`), if it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The configured trusted keys. Empty: no report can be verified (levels are read unverified).
#[derive(Default)]
pub struct TrustKeys {
    keys: Vec<TrustKey>,
}

impl std::fmt::Debug for TrustKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sources: Vec<&str> = self.keys.iter().map(|k| k.source.as_str()).collect();
        f.debug_struct("TrustKeys").field("keys", &sources).finish()
    }
}

impl TrustKeys {
    /// No keys: every level read stays unverified.
    pub fn none() -> TrustKeys {
        TrustKeys::default()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds the keys of one file (a JWK set, a JWK, or PEM public keys); fails on anything in
    /// it that is not a usable public signature key.
    pub fn add_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| KeyError::Unreadable { path: name.clone(), message: e.to_string() })?;
        self.add_bytes(&bytes, &name)
    }

    /// [`TrustKeys::add_file`] on bytes already read; `name` is used in messages.
    pub fn add_bytes(&mut self, bytes: &[u8], name: &str) -> Result<(), KeyError> {
        let unsupported = |message: String| KeyError::Unsupported { path: name.to_owned(), message };
        let text = std::str::from_utf8(bytes).map_err(|_| unsupported("not UTF-8 text (JWK or PEM)".into()))?;
        let mut added = if text.trim_start().starts_with('{') {
            jwk_keys(text, name).map_err(unsupported)?
        } else if text.contains("-----BEGIN ") {
            pem_keys(text, name).map_err(unsupported)?
        } else {
            return Err(unsupported("neither a JWK (JSON) nor PEM".into()));
        };
        if added.is_empty() {
            return Err(unsupported("holds no key".into()));
        }
        self.keys.append(&mut added);
        Ok(())
    }

    /// Checks a compact JWS against the configured keys: `Ok` when one of them verifies its
    /// signature and its `exp`/`nbf` hold. `Err` says why not, in words fit for a warning.
    pub fn verify(&self, token: &str) -> Result<(), String> {
        let (alg, kid) = header(token)?;
        let candidates: Vec<&TrustKey> = self
            .keys
            .iter()
            .filter(|k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg))
            .filter(|k| match (&kid, &k.kid) {
                (Some(wanted), Some(has)) => wanted == has,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            let kid = kid.map(|k| format!(", kid `{}`", k.escape_debug())).unwrap_or_default();
            return Err(format!("no configured trust key for this report (alg `{alg:?}`{kid})"));
        }
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        for key in &candidates {
            match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, &validation) {
                Ok(_) => return Ok(()),
                // Another key may be the right one.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm) => {}
                // The signature was checked before the claims: these are the right key's verdicts.
                Err(e) => {
                    return Err(match e.kind() {
                        ErrorKind::ExpiredSignature => format!("expired (`exp`), signed by `{}`", key.source),
                        ErrorKind::ImmatureSignature => format!("not valid yet (`nbf`), signed by `{}`", key.source),
                        _ => format!("not verified: {e}"),
                    });
                }
            }
        }
        Err(format!("signature does not verify against the {} configured trust key(s) for it", candidates.len()))
    }
}

/// The header's `alg` (refusing `none` and HMAC with their reasons) and `kid`.
fn header(token: &str) -> Result<(Algorithm, Option<String>), String> {
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = base64url_decode(encoded).ok_or("JWT header is not base64url")?;
    // A header is a flat object: serde_json's own recursion limit bounds a hostile one.
    let header: Value = serde_json::from_slice(&bytes).map_err(|e| format!("JWT header is not JSON: {e}"))?;
    let Some(alg) = header.get("alg").and_then(Value::as_str) else {
        return Err("JWT header has no `alg`".into());
    };
    let alg = allowed_alg(alg)?;
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok((alg, kid))
}

/// `alg` as an [`ALLOWED`] algorithm, or why not.
fn allowed_alg(alg: &str) -> Result<Algorithm, String> {
    if alg.eq_ignore_ascii_case("none") {
        return Err("alg `none` is refused: the report is not signed".into());
    }
    if alg.to_ascii_uppercase().starts_with("HS") {
        return Err(format!(
            "alg `{}` is refused: with HMAC whoever holds the verification key could forge reports",
            alg.escape_debug()
        ));
    }
    match alg.parse::<Algorithm>() {
        Ok(a) if ALLOWED.contains(&a) => Ok(a),
        _ => Err(format!("alg `{}` is not supported", alg.escape_debug())),
    }
}

/// The keys of a JWK set, or of a single JWK.
fn jwk_keys(text: &str, name: &str) -> Result<Vec<TrustKey>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let raw: Vec<Value> = match value.get("keys") {
        Some(Value::Array(keys)) => keys.clone(),
        Some(_) => return Err("`keys` is not an array".into()),
        None => vec![value],
    };
    let mut keys = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let kid = raw.get("kid").and_then(Value::as_str).map(str::to_owned);
        let label = match &kid {
            Some(kid) => format!("key `{}`", kid.escape_debug()),
            None => format!("key {i}"),
        };
        // The private parts of RSA (`d`, `p`, `q`, …), EC and OKP keys all include `d`.
        if raw.get("d").is_some() {
            return Err(format!("{label} is a private key; give the public key only"));
        }
        let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("{label} is not a JWK: {e}"))?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(format!("{label} is for encryption (`use: enc`), not signatures"));
        }
        match &jwk.algorithm {
            AlgorithmParameters::RSA(_)
            | AlgorithmParameters::EllipticCurve(_)
            | AlgorithmParameters::OctetKeyPair(_) => {}
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "{label} is a symmetric key (`kty: oct`): HMAC would let whoever holds it forge reports"
                ));
            }
            _ => return Err(format!("{label} has an unsupported key type")),
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(allowed_alg(&a.to_string()).map_err(|e| format!("{label}: {e}"))?),
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{label}: {e}"))?;
        keys.push(TrustKey { source: format!("{name} {label}"), kid, alg, key });
    }
    Ok(keys)
}

/// The PEM public keys of a file, in order.
fn pem_keys(text: &str, name: &str) -> Result<Vec<TrustKey>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not readable as PEM: {e}"))?;
    let mut keys = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let (n, label) = (i + 1, block.tag());
        if label.contains("PRIVATE") {
            return Err(format!("PEM block {n} is a private key; give the public key only"));
        }
        if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
            return Err(format!(
                "PEM block {n} is `{label}`, not `PUBLIC KEY` (for a certificate: `openssl x509 -pubkey -noout`)"
            ));
        }
        let pem = pem::encode(block);
        let key = DecodingKey::from_rsa_pem(pem.as_bytes())
            .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
            .or_else(|_| DecodingKey::from_ed_pem(pem.as_bytes()))
            .map_err(|_| format!("PEM block {n} is not an RSA, EC or Ed25519 public key"))?;
        keys.push(TrustKey { source: format!("{name} PEM key {n}"), kid: None, alg: None, key });
    }
    Ok(keys)
}
