//! Identification reports verified against `[trust]` keys: a report signed by a configured key
//! gives a verified level; any other (another key, `alg: none`, HMAC, expired, unknown `kid`)
//! gives no level and a warning naming why. Keys are generated here (rcgen on aws-lc-rs).

use adapters::fitconnect::trust::{KeyError, TrustKeys};
use adapters::fitconnect::{Assurance, Level, read_metadata_with};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn rsa() -> KeyPair {
    KeyPair::generate_for(&PKCS_RSA_SHA256).expect("rsa key")
}

fn ec() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("ec key")
}

fn encoding_key(key: &KeyPair, alg: Algorithm) -> EncodingKey {
    let pem = key.serialize_pem();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec pem"),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa pem"),
    }
}

/// A report claiming `level`, signed by `key` with `alg` (and `kid`, if given).
fn report(key: &KeyPair, alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &encoding_key(key, alg)).expect("sign")
}

fn claims(level: &str) -> Value {
    json!({"iss": "https://idp.example.invalid", "sub": "synthetic-1", "iat": now(), "exp": now() + 600, "levelOfAssurance": level})
}

/// FIT-Connect metadata carrying the given reports.
fn metadata(reports: &[String]) -> Vec<u8> {
    let info: Vec<Value> =
        reports.iter().map(|c| json!({"type": "identificationReport", "version": "1.0.0", "content": c})).collect();
    serde_json::to_vec(&json!({
        "$schema": "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json",
        "contentStructure": {"attachments": []},
        "publicServiceType": {"identifier": "urn:de:fim:leika:leistung:99001004000000"},
        "authenticationInformation": info,
    }))
    .expect("json")
}

fn keys_from_pem(key: &KeyPair) -> TrustKeys {
    let mut keys = TrustKeys::none();
    keys.add_bytes(key.public_key_pem().as_bytes(), "issuer.pem").expect("pem key loads");
    keys
}

fn read(keys: &TrustKeys, reports: &[String]) -> (Option<Assurance>, Option<String>, Vec<String>) {
    let m = read_metadata_with(&metadata(reports), keys).expect("metadata reads");
    (m.assurance, m.meta.trust_level, m.meta.warnings)
}

#[test]
fn a_report_signed_by_a_trusted_rsa_key_gives_a_verified_level_without_warning() {
    let key = rsa();
    let keys = keys_from_pem(&key);
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let (assurance, level, warnings) = read(&keys, &[report(&key, alg, None, claims("high"))]);
        assert_eq!(assurance, Some(Assurance { level: Level::High, verified: true }), "{alg:?}: {warnings:?}");
        assert_eq!(level.as_deref(), Some("high"));
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

#[test]
fn a_report_signed_by_a_trusted_ec_key_of_a_jwk_set_is_found_by_its_kid() {
    let (other, key) = (ec(), ec());
    let jwk = |k: &KeyPair, kid: &str| {
        let mut jwk = Jwk::from_encoding_key(&encoding_key(k, Algorithm::ES256), Algorithm::ES256).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let set = JwkSet { keys: vec![jwk(&other, "a"), jwk(&key, "b")] };
    let mut keys = TrustKeys::none();
    keys.add_bytes(&serde_json::to_vec(&set).expect("json"), "issuers.jwks.json").expect("jwk set loads");
    assert_eq!(keys.len(), 2);
    let (assurance, _, warnings) = read(&keys, &[report(&key, Algorithm::ES256, Some("b"), claims("substantial"))]);
    assert_eq!(assurance, Some(Assurance { level: Level::Substantial, verified: true }), "{warnings:?}");
    // The right key under the wrong kid is not tried: `a` is another key.
    let (assurance, level, warnings) = read(&keys, &[report(&key, Algorithm::ES256, Some("a"), claims("high"))]);
    assert_eq!((assurance, level), (None, None));
    assert!(warnings.iter().any(|w| w.contains("does not verify")), "{warnings:?}");
    // An unknown kid: no key to try.
    let (assurance, _, warnings) = read(&keys, &[report(&key, Algorithm::ES256, Some("zz"), claims("high"))]);
    assert_eq!(assurance, None);
    assert!(warnings.iter().any(|w| w.contains("no configured trust key") && w.contains("zz")), "{warnings:?}");
}

#[test]
fn a_report_signed_by_another_key_gives_no_level_and_a_warning() {
    let keys = keys_from_pem(&rsa());
    let (assurance, level, warnings) = read(&keys, &[report(&rsa(), Algorithm::RS256, None, claims("high"))]);
    assert_eq!((assurance, level), (None, None));
    assert!(
        warnings.iter().any(|w| w.contains("signature does not verify") && w.contains("no trust level read")),
        "{warnings:?}"
    );
}

/// A forged report: someone edits the payload of a genuine one.
#[test]
fn a_report_whose_payload_was_changed_after_signing_gives_no_level() {
    let key = rsa();
    let keys = keys_from_pem(&key);
    let genuine = report(&key, Algorithm::RS256, None, claims("low"));
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged_payload = report(&key, Algorithm::RS256, None, claims("high"));
    let forged = format!("{}.{}.{}", parts[0], forged_payload.split('.').nth(1).unwrap_or_default(), parts[2]);
    let (assurance, _, warnings) = read(&keys, &[forged]);
    assert_eq!(assurance, None, "{warnings:?}");
}

#[test]
fn alg_none_is_refused() {
    let keys = keys_from_pem(&rsa());
    let b64 = |v: Value| base64url(&serde_json::to_vec(&v).expect("json"));
    let unsigned = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims("high")));
    let (assurance, level, warnings) = read(&keys, &[unsigned]);
    assert_eq!((assurance, level), (None, None));
    assert!(warnings.iter().any(|w| w.contains("alg `none` is refused")), "{warnings:?}");
}

/// The algorithm-confusion attack: the public key's bytes used as an HMAC secret.
#[test]
fn a_report_signed_with_hmac_over_the_public_key_is_refused() {
    let key = rsa();
    let keys = keys_from_pem(&key);
    let secret = EncodingKey::from_secret(key.public_key_pem().as_bytes()).expect("secret");
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("high"), &secret).expect("sign");
    let (assurance, _, warnings) = read(&keys, &[token]);
    assert_eq!(assurance, None);
    assert!(warnings.iter().any(|w| w.contains("alg `HS256` is refused")), "{warnings:?}");
}

#[test]
fn an_expired_report_is_refused_and_one_not_yet_valid_too() {
    let key = rsa();
    let keys = keys_from_pem(&key);
    let mut expired = claims("high");
    expired["exp"] = json!(now() - 3600);
    let (assurance, _, warnings) = read(&keys, &[report(&key, Algorithm::RS256, None, expired)]);
    assert_eq!(assurance, None);
    assert!(warnings.iter().any(|w| w.contains("expired")), "{warnings:?}");
    let mut early = claims("high");
    early["nbf"] = json!(now() + 3600);
    let (assurance, _, warnings) = read(&keys, &[report(&key, Algorithm::RS256, None, early)]);
    assert_eq!(assurance, None);
    assert!(warnings.iter().any(|w| w.contains("not valid yet")), "{warnings:?}");
    // Within the leeway (a few seconds of clock skew): accepted.
    let mut skewed = claims("high");
    skewed["exp"] = json!(now() - 5);
    let (assurance, _, _) = read(&keys, &[report(&key, Algorithm::RS256, None, skewed)]);
    assert_eq!(assurance.map(|a| a.verified), Some(true));
}

#[test]
fn only_verified_reports_count_when_several_are_given() {
    let key = rsa();
    let keys = keys_from_pem(&key);
    let good = report(&key, Algorithm::RS256, None, claims("substantial"));
    let bad = report(&rsa(), Algorithm::RS256, None, claims("low"));
    let (assurance, level, warnings) = read(&keys, &[good, bad]);
    assert_eq!(assurance, Some(Assurance { level: Level::Substantial, verified: true }));
    assert_eq!(level.as_deref(), Some("substantial"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn without_trust_keys_the_level_is_read_but_marked_unverified() {
    let (assurance, level, warnings) =
        read(&TrustKeys::none(), &[report(&rsa(), Algorithm::RS256, None, claims("high"))]);
    assert_eq!(assurance, Some(Assurance { level: Level::High, verified: false }));
    assert_eq!(level.as_deref(), Some("high"));
    assert!(warnings.iter().any(|w| w.contains("NOT verified")), "{warnings:?}");
}

#[test]
fn key_files_that_cannot_be_trusted_are_refused_with_a_plain_message() {
    let key = rsa();
    let refused = |bytes: &[u8]| match TrustKeys::none().add_bytes(bytes, "k") {
        Err(e @ KeyError::Unsupported { .. }) => e.to_string(),
        other => panic!("expected Unsupported, got {other:?}"),
    };
    assert!(refused(key.serialize_pem().as_bytes()).contains("private key"));
    let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "h"}]});
    assert!(refused(&serde_json::to_vec(&oct).expect("json")).contains("symmetric"));
    let hs = json!({"kty": "RSA", "alg": "HS256", "n": "AQAB", "e": "AQAB"});
    assert!(refused(&serde_json::to_vec(&hs).expect("json")).contains("HS256"));
    let private_jwk = json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"});
    assert!(refused(&serde_json::to_vec(&private_jwk).expect("json")).contains("private key"));
    assert!(refused(b"hello").contains("neither a JWK"));
    assert!(refused(br#"{"keys": []}"#).contains("no key"));
    let missing = TrustKeys::none().add_file(std::path::Path::new("/nonexistent/issuer.pem"));
    assert!(matches!(missing, Err(KeyError::Unreadable { .. })), "{missing:?}");
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
