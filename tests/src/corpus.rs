//! The staged XÖV corpus (`../shared/corpus` from the repo root): where it is, the
//! skip-or-fail rule, which messages carry a G2G header, and an independent header scan.
//!
//! The scan is deliberately not the hub's reader (`adapters`): routes built from it check the
//! hub's reading against a second, simpler reading of the same bytes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use quick_xml::events::Event;

/// `$LOTSE_CORPUS`, else `<repo>/../shared/corpus`, if that folder exists.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("LOTSE_CORPUS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::repo_root().join("..").join("shared").join("corpus"),
    };
    dir.is_dir().then_some(dir)
}

/// The corpus folder, or `None` after printing why the calling test is skipped.
/// Panics under `CI=true`: there the corpus must be present.
pub fn require_corpus(test: &str) -> Option<PathBuf> {
    match corpus_dir() {
        Some(dir) => Some(dir),
        None if crate::in_ci() => {
            panic!("{test}: the corpus (../shared/corpus from the repo root, or $LOTSE_CORPUS) is missing and CI=true")
        }
        None => {
            eprintln!("SKIPPED {test}: no corpus at ../shared/corpus (set LOTSE_CORPUS to run it)");
            None
        }
    }
}

/// The corpus XBau 2.6 application (7.5 KB) used by the benchmark.
pub fn xbau_0200(corpus: &Path) -> PathBuf {
    corpus.join(
        "xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/baugenehmigung.antrag.0200_f180ba27-4549-4752-ab01-a7513866faa6.xml",
    )
}

/// XWasser test messages that fail XSD validation (MANIFEST.md: a code-list version only).
const XWASSER_INVALID: [&str; 2] = ["monitoring_plan_minimal.xml", "monitoring_plan_maximal.xml"];

/// Every valid corpus message with an XÖV G2G header (XBau 2.6, XBeteiligung 1.2, XWasser 1.0,
/// xdomea 4.0), per MANIFEST.md. Sorted, so runs are reproducible.
pub fn g2g_messages(corpus: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    files.extend(xml_files(&corpus.join("xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6"), false)?);
    files.extend(xml_files(&corpus.join("xbeteiligung-demosplan/tests/res"), true)?);
    let xwasser = xml_files(&corpus.join("xwasser-hd-gmbh/tests"), false)?;
    files.extend(xwasser.into_iter().filter(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !XWASSER_INVALID.contains(&name)
    }));
    files.extend(xml_files(&corpus.join("xdomea-examples-lavnrw/v4.0.0"), false)?);
    Ok(files)
}

fn xml_files(dir: &Path, recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list `{}`", dir.display()))?;
    for entry in entries {
        let path = entry.context("cannot read a folder entry")?.path();
        if path.is_dir() {
            if recursive {
                out.extend(xml_files(&path, true)?);
            }
        } else if path.extension().is_some_and(|e| e == "xml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// What the scan finds in a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderKeys {
    /// Local name of the document element.
    pub root: String,
    pub namespace: Option<String>,
    /// `nachrichtenUUID` text.
    pub message_uuid: Option<String>,
    /// Text of `kennung` directly under the header's `leser`, when not empty.
    pub reader: Option<String>,
}

/// Reads root name, namespace, `nachrichtenUUID` and the reader key by local names, as both
/// the qualified and the unqualified header flavour need.
pub fn scan_header(bytes: &[u8]) -> anyhow::Result<HeaderKeys> {
    let mut reader = quick_xml::NsReader::from_reader(bytes);
    let mut keys = HeaderKeys::default();
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_resolved_event().context("not well-formed XML")? {
            (ns, Event::Start(e)) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    keys.root = local.clone();
                    if let quick_xml::name::ResolveResult::Bound(n) = ns {
                        keys.namespace = Some(String::from_utf8_lossy(n.as_ref()).into_owned());
                    }
                }
                path.push(local);
                text.clear();
            }
            (_, Event::Empty(e)) if path.is_empty() => {
                keys.root = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                break;
            }
            (_, Event::Text(t)) => text.push_str(&t.decode().context("bad text")?),
            (_, Event::End(_)) => {
                let in_header = path.len() >= 2 && path[1].starts_with("nachrichtenkopf");
                let last = path.last().map(String::as_str);
                let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
                if in_header && last == Some("nachrichtenUUID") && keys.message_uuid.is_none() {
                    keys.message_uuid = Some(text.trim().to_owned());
                }
                if in_header && last == Some("kennung") && parent == Some("leser") && keys.reader.is_none() {
                    let key = text.trim();
                    if !key.is_empty() {
                        keys.reader = Some(key.to_owned());
                    }
                }
                path.pop();
                text.clear();
                if path.is_empty() {
                    break;
                }
            }
            (_, Event::Eof) => break,
            _ => {}
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_the_unqualified_flavour() {
        let xml = br#"<?xml version="1.0"?><x:m.0200 xmlns:x="urn:x"><nachrichtenkopf.g2g xmlns="">
            <identifikation.nachricht><nachrichtenUUID> 11111111-2222-4333-8444-555555555555 </nachrichtenUUID></identifikation.nachricht>
            <leser><verzeichnisdienst><code>DVDV</code></verzeichnisdienst><kennung>bab:09162000</kennung></leser>
            <autor><kennung>bab:1</kennung></autor></nachrichtenkopf.g2g><x:body/></x:m.0200>"#;
        let keys = scan_header(xml).expect("scan");
        assert_eq!(keys.root, "m.0200");
        assert_eq!(keys.namespace.as_deref(), Some("urn:x"));
        assert_eq!(keys.message_uuid.as_deref(), Some("11111111-2222-4333-8444-555555555555"));
        assert_eq!(keys.reader.as_deref(), Some("bab:09162000"));
    }

    #[test]
    fn scans_the_qualified_flavour_and_ignores_contact_kennung() {
        let xml = br#"<a:r.0401 xmlns:a="urn:a" xmlns:g="urn:g" xmlns:b="urn:b" xmlns:k="urn:k"><g:nachrichtenkopf.g2g>
            <g:leser><b:kennung></b:kennung><k:erreichbarkeit><k:kennung>+49 30</k:kennung></k:erreichbarkeit></g:leser>
            </g:nachrichtenkopf.g2g></a:r.0401>"#;
        let keys = scan_header(xml).expect("scan");
        assert_eq!(keys.root, "r.0401");
        assert_eq!(keys.reader, None, "an empty kennung is no key, and a contact kennung is not the reader's");
    }
}
