//! The trust level an `identificationReport` claims, read from its JWT payload, and verified
//! against the configured trust keys when there are any ([`super::trust`]).
//!
//! **Without trust keys nothing here is verified.** An `identificationReport` is a JWT signed by
//! an identity provider; with no keys configured Lotse cannot check that signature, so the
//! payload is decoded as plain base64url JSON and anyone who can write the metadata can claim
//! any level. Such a level comes with a `warnings` entry that says so, and [`Assurance::verified`]
//! is false: intake never lets it satisfy a route's `min_trust_level`.
//!
//! With trust keys, only reports whose signature verifies (and whose `exp`/`nbf` hold) give a
//! level; every other report gives a warning naming why, and no level.
//!
//! Claims looked for, anywhere in the payload (names compared without case, `_` and `-`):
//! `trustLevel`, `levelOfAssurance`, `loa`, `vertrauensniveau`, `acr`. Values mapped to the
//! eIDAS words `low`, `substantial`, `high`: the words themselves, eIDAS URIs such as
//! `http://eidas.europa.eu/LoA/substantial` (the last segment counts), and the German levels
//! of BSI TR-03107-1 (`normal` = low, `substantiell`/`substanziell` = substantial, `hoch` = high).
//! When several reports or claims disagree, the lowest level wins and a warning names the rest.

use serde_json::Value;

use super::trust::TrustKeys;
use super::{MAX_DEPTH, check_depth};

/// An eIDAS level of assurance, ordered low < substantial < high.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Low,
    Substantial,
    High,
}

impl Level {
    /// The eIDAS word: `low`, `substantial`, `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Substantial => "substantial",
            Level::High => "high",
        }
    }

    /// Maps a claim value to a level (see the module documentation); `None` when unknown.
    pub fn parse(value: &str) -> Option<Level> {
        let value = value.trim().to_ascii_lowercase();
        let last = value.rsplit(['/', '#', ':']).next().unwrap_or_default();
        let word = ["loa", "eidas"]
            .iter()
            .find_map(|p| last.strip_prefix(p))
            .map_or(last, |w| w.trim_start_matches(['-', '_', ' ']));
        match word {
            "low" | "normal" => Some(Level::Low),
            "substantial" | "substantiell" | "substanziell" => Some(Level::Substantial),
            "high" | "hoch" => Some(Level::High),
            _ => None,
        }
    }
}

/// Claim names (lowercase, without `_` and `-`) that may hold a level.
const LEVEL_CLAIMS: &[&str] = &["trustlevel", "levelofassurance", "loa", "vertrauensniveau", "acr"];

/// The level of the identification reports, and whether their signatures were verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assurance {
    pub level: Level,
    /// True when every report this level comes from verified against a trust key; false when
    /// no trust keys are configured and the level was read unverified.
    pub verified: bool,
}

/// The lowest level claimed by the `identificationReport`s of `authenticationInformation`,
/// with warnings for everything unverified, unreadable or contradictory. With `keys`, only
/// reports that verify against them count.
pub fn trust_level(reports: &[Value], keys: &TrustKeys, warnings: &mut Vec<String>) -> Option<Assurance> {
    let mut levels: Vec<Level> = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        let kind = report.get("type").and_then(Value::as_str);
        if kind != Some("identificationReport") {
            warnings.push(format!("authenticationInformation {i} is not an identificationReport; ignored"));
            continue;
        }
        let Some(content) = report.get("content").and_then(Value::as_str) else {
            warnings.push(format!("identificationReport {i} has no content"));
            continue;
        };
        let payload = match unverified_payload(content) {
            Ok(payload) => payload,
            Err(why) => {
                warnings.push(format!("identificationReport {i}: {why}; no trust level read"));
                continue;
            }
        };
        if !keys.is_empty()
            && let Err(why) = keys.verify(content)
        {
            warnings.push(format!("identificationReport {i}: {why}; no trust level read"));
            continue;
        }
        let mut found = Vec::new();
        collect_claims(&payload, &mut found);
        if found.is_empty() {
            warnings.push(format!("identificationReport {i} has no level claim"));
        }
        for value in found {
            match value.as_str().and_then(Level::parse) {
                Some(level) => levels.push(level),
                None => warnings.push(format!("identificationReport {i}: unknown level `{value}`")),
            }
        }
    }
    let lowest = levels.iter().copied().min()?;
    if levels.iter().any(|&l| l != lowest) {
        let all: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
        warnings.push(format!("identificationReports claim different levels ({}); kept the lowest", all.join(", ")));
    }
    if keys.is_empty() {
        warnings.push(format!(
            "trust level `{}` read from an identificationReport JWT whose signature was NOT verified",
            lowest.as_str()
        ));
    }
    Some(Assurance { level: lowest, verified: !keys.is_empty() })
}

/// The payload of a compact JWS (`header.payload.signature`) as JSON, signature ignored.
/// `Err` says why it cannot be read.
pub fn unverified_payload(token: &str) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err("content is encrypted (JWE), cannot be read".into()),
        n => return Err(format!("content is not a JWT ({n} dot-separated parts, expected 3)")),
    }
    let bytes = base64url_decode(parts[1]).ok_or("JWT payload is not base64url")?;
    if check_depth(&bytes, MAX_DEPTH).is_err() {
        return Err(format!("JWT payload nested deeper than {MAX_DEPTH} levels"));
    }
    let payload: Value = serde_json::from_slice(&bytes).map_err(|e| format!("JWT payload is not JSON: {e}"))?;
    if !payload.is_object() {
        return Err("JWT payload is not a JSON object".into());
    }
    Ok(payload)
}

/// Every value whose key is one of [`LEVEL_CLAIMS`], depth-first. Depth is bounded by the
/// [`check_depth`] done before parsing.
fn collect_claims<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let key: String = key.chars().filter(|c| !matches!(c, '_' | '-')).collect();
                if LEVEL_CLAIMS.contains(&key.to_ascii_lowercase().as_str()) && !v.is_object() && !v.is_array() {
                    found.push(v);
                } else {
                    collect_claims(v, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_claims(v, found)),
        _ => {}
    }
}

/// Decodes base64url (RFC 4648 §5), padding optional; `None` on any other character or a
/// length no encoder produces.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}
