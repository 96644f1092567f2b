//! The project's own synthetic messages (`tests/fixtures/`, see its README).

use anyhow::Context;

/// Unqualified header, reader `bab:09999001`, type `0200`.
pub const ANTRAG: &str = "synthetic-antrag.0200.xml";
/// Qualified header, reader `bab:09999002`, type `0300`.
pub const MITTEILUNG: &str = "synthetic-mitteilung.0300.xml";

pub fn load(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    std::fs::read(&path).with_context(|| format!("cannot read fixture `{}`", path.display()))
}

/// The message with the text of its (first) `nachrichtenUUID` element replaced by `uuid`.
pub fn with_uuid(xml: &[u8], uuid: &str) -> anyhow::Result<Vec<u8>> {
    let find =
        |needle: &[u8], from: usize| xml[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from);
    let open = find(b"nachrichtenUUID>", 0).context("no nachrichtenUUID element")? + b"nachrichtenUUID>".len();
    let close = find(b"</", open).context("nachrichtenUUID is not closed")?;
    let mut out = Vec::with_capacity(xml.len() + uuid.len());
    out.extend_from_slice(&xml[..open]);
    out.extend_from_slice(uuid.as_bytes());
    out.extend_from_slice(&xml[close..]);
    Ok(out)
}

/// A fresh random message UUID.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_uuid_in_both_flavours() {
        for name in [ANTRAG, MITTEILUNG] {
            let xml = load(name).expect("fixture");
            let out = with_uuid(&xml, "abcdef01-2345-4678-89ab-cdef01234567").expect("replace");
            let keys = crate::corpus::scan_header(&out).expect("scan");
            assert_eq!(keys.message_uuid.as_deref(), Some("abcdef01-2345-4678-89ab-cdef01234567"), "{name}");
            assert_eq!(out.len(), xml.len(), "same-length uuid keeps the length");
        }
    }
}
