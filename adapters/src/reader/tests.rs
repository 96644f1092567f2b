//! Tests of the reader: header meta of real corpus messages, and hostile input.

use std::path::PathBuf;

use crate::test_corpus::corpus;
use crate::{Limits, Meta, ReadError, read_header, read_meta};

fn meta_of(rel: &str) -> Option<Meta> {
    let bytes = std::fs::read(corpus()?.join(rel)).expect("corpus file readable");
    let meta = read_meta(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let fast = read_header(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(meta, fast, "{rel}: read_header disagrees with read_meta");
    Some(meta)
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn xbau_0200_unqualified_g2g_header() {
    let Some(m) = meta_of(
        "xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/baugenehmigung.antrag.0200_f180ba27-4549-4752-ab01-a7513866faa6.xml",
    ) else {
        return;
    };
    assert_eq!(m.root, "baugenehmigung.antrag.0200");
    assert_eq!(m.namespace, s("http://www.xleitstelle.de/xbau/2/6"));
    assert_eq!(m.standard, s("XBau-Hochbau"));
    assert_eq!(m.version, s("2.6"));
    assert_eq!(m.product, s("ECA"));
    assert_eq!(m.message_id, s("8fa6a8ae-6a53-4980-bbd1-58d3abe540e0"));
    assert_eq!(m.message_type, s("0200"));
    assert_eq!(m.created_at, s("2026-03-15T10:30:00Z"));
    assert_eq!(m.reader, s("05315000-bauaufsicht"));
    assert_eq!(m.author, s("eca-antragsservice"));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}

#[test]
fn xbeteiligung_0401_qualified_g2g_header() {
    let Some(m) = meta_of("xbeteiligung-demosplan/tests/res/xmlv14/xbeteiligung-test-kommunal.Initiieren.0401.xml")
    else {
        return;
    };
    assert_eq!(m.root, "kommunal.Initiieren.0401");
    assert_eq!(m.namespace, s("https://www.xleitstelle.de/xbeteiligung/12"));
    assert_eq!(m.standard, s("XBeteiligung"));
    assert_eq!(m.message_id, s("60f6667b-fa45-4bd7-b717-f4d6c65e5edb"));
    assert_eq!(m.message_type, s("0401"));
    assert_eq!(m.created_at, s("2025-02-20T16:41:19.880Z"));
    assert_eq!(m.reader, s("xyz:0002"));
    assert_eq!(m.author, s("xyz:0001"));
    assert!(m.warnings.is_empty());
}

/// A `nachrichtenUUID` that could not travel as an HTTP header (a line break inside) or is
/// absurdly long is not used as the message id; the reader says why.
#[test]
fn an_unusable_nachrichten_uuid_is_left_out_with_a_warning() {
    let message = |id: &str| {
        format!(
            r#"<baugenehmigung.antrag.0200 xmlns="http://www.xleitstelle.de/xbau/2/6"><nachrichtenkopf.g2g><identifikation.nachricht><nachrichtenUUID>{id}</nachrichtenUUID></identifikation.nachricht></nachrichtenkopf.g2g></baugenehmigung.antrag.0200>"#
        )
    };
    for id in ["8fa6a8ae-6a53\n-4980-bbd1", "8fa6a8ae-6a53&#10;4980", &"a".repeat(257)] {
        let m = read_meta(message(id).as_bytes(), &Limits::default()).expect("well-formed");
        assert_eq!(m.message_id, None, "{id}");
        assert_eq!(m.warnings.len(), 1, "{id}: {:?}", m.warnings);
        assert!(m.warnings[0].contains("nachrichtenUUID"), "{}", m.warnings[0]);
    }
    let m = read_meta(message(&"a".repeat(256)).as_bytes(), &Limits::default()).expect("well-formed");
    assert_eq!(m.message_id, Some("a".repeat(256)));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}

/// Regression: header fields other than the message id were taken at any length and with any
/// character, and they reach log lines (a refusal names message type, reader, author, root and
/// namespace): a line break in `leser/kennung` forged a log line. A control character (or
/// U+2028/U+2029) is refused, and so is a value past `MAX_FIELD_CHARS`, naming the field.
#[test]
fn header_fields_with_a_line_break_or_over_long_are_refused_by_name() {
    let message = |ns: &str, standard: &str, code: &str, reader: &str| {
        format!(
            r#"<t:antrag.0200 xmlns:t="{ns}" standard="{standard}"><nachrichtenkopf.g2g><identifikation.nachricht><nachrichtentyp><code>{code}</code></nachrichtentyp></identifikation.nachricht><leser><kennung>{reader}</kennung></leser></nachrichtenkopf.g2g><inhalt/></t:antrag.0200>"#
        )
    };
    let max = crate::meta::MAX_FIELD_CHARS;
    let long = "b".repeat(max + 1);
    let cases = [
        (message("urn:t", "T", "0200", "bab:1\n2026-01-01T00:00:00Z INFO forged"), "reader"),
        (message("urn:t", "T", "0200", "bab:1&#10;2026-01-01T00:00:00Z INFO forged"), "reader"),
        (message("urn:t", "T", "0200", "bab:1&#13;x"), "reader"),
        (message("urn:t", "T", "02&#9;00", "bab:1"), "message_type"),
        (message("urn:t", "T", "0200", "bab:1\u{2028}x"), "reader"),
        (message("urn:t", "T", "0200", &long), "reader"),
        (message("urn:t", "T&#10;x", "0200", "bab:1"), "standard"),
        (message("urn:t&#10;x", "T", "0200", "bab:1"), "namespace"),
        (message(&format!("urn:{long}"), "T", "0200", "bab:1"), "namespace"),
    ];
    for (xml, field) in cases {
        for result in [
            read_meta(xml.as_bytes(), &Limits::default()),
            read_header(xml.as_bytes(), &Limits::default()),
            crate::json::xml_to_json_with_meta(xml.as_bytes(), &Limits::default()).map(|(m, _)| m).map_err(
                |e| match e {
                    crate::json::ConvertError::Read(e) => e,
                    other => panic!("{other}"),
                },
            ),
        ] {
            match result {
                Err(ReadError::Malformed { message, .. }) => {
                    assert!(message.contains(&format!("header field `{field}`")), "{field}: {message}")
                }
                other => panic!("{field} in {xml}: {other:?}"),
            }
        }
    }
    // At the limit, and with the indentation around a value (trimmed), a field is fine.
    let ok = message(&format!("urn:{}", "n".repeat(max - 4)), "T", "0200", &format!("\n    {}\n  ", "b".repeat(max)));
    let m = read_meta(ok.as_bytes(), &Limits::default()).expect("at the limit");
    assert_eq!(m.reader, Some("b".repeat(max)));
}

#[test]
fn root_and_header_type_disagree_gives_a_warning() {
    let Some(m) = meta_of("xbeteiligung-demosplan/tests/res/example402FromCockpit.xml") else {
        return;
    };
    assert_eq!(m.root, "kommunal.Aktualisieren.0402");
    assert_eq!(m.message_type, s("0401"), "the header's code is the message type");
    assert_eq!(m.warnings.len(), 1);
    assert!(m.warnings[0].contains("0402") && m.warnings[0].contains("0401"), "{}", m.warnings[0]);
}

#[test]
fn xwasser_header_extensions() {
    let Some(m) = meta_of("xwasser-hd-gmbh/tests/administration_receipt.xml") else {
        return;
    };
    assert_eq!(m.standard, s("XWasser"));
    assert_eq!(m.version, s("1.0.0"));
    assert_eq!(m.message_id, s("693c64d6-456f-4d14-abe7-fe9681c74aaf"));
    assert_eq!(m.message_type, s("0010"));
    assert_eq!(m.reader, s("psw:01003110"));
    assert_eq!(m.author, s("psw:11113110"));
    assert_eq!(m.reference_id, s("693c64d6-456f-4d14-abe7-fe9681c74aae"));
    assert_eq!(m.dvdv_service, s("s"));
    // root says 0020 (quittung), the header 0010
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
}

#[test]
fn xwasser_empty_keys_stay_empty() {
    let Some(m) = meta_of("xwasser-hd-gmbh/tests/monitoring_plan_maximal.xml") else {
        return;
    };
    assert_eq!(m.reader, None);
    assert_eq!(m.author, None);
    assert_eq!(m.message_id, s("a2d0b0ed-8ea8-4084-a04a-8e611b4eb0c0"));
}

#[test]
fn xdomea_2_3_kopf_keys_are_praefix_colon_kennung() {
    let Some(m) = meta_of(
        "xdomea-landesarchiv-thueringen/message_generation/pattern/xdomea_2.3.0/xx_Aussonderung.Anbieteverzeichnis.0501.xml",
    ) else {
        return;
    };
    assert_eq!(m.standard, s("xdomea"));
    assert_eq!(m.version, s("2.3.0"));
    assert_eq!(m.process_id, s("242f44e8-bebf-4503-a086-db252c6a4277"));
    assert_eq!(m.message_type, s("0501"));
    assert_eq!(m.created_at, s("2018-07-24T17:21:25"));
    assert_eq!(m.reader, s("EmpBehoerdenkennungPraefixCode:LATh"));
    assert_eq!(m.author, s("AbsBehoerdenkennungPraefixCode:LATh"));
    assert_eq!(m.message_id, None);
}

#[test]
fn xdomea_3_0_kopf_behoerdenschluessel() {
    let Some(m) = meta_of(
        "xdomea-landesarchiv-thueringen/message_generation/pattern/xdomea_3.0.0/xx_Aussonderung.Anbieteverzeichnis.0501.xml",
    ) else {
        return;
    };
    assert_eq!(m.version, s("3.0.0"));
    assert_eq!(m.reader, s("EmpBehoerdenkennungPraefixCode:LATh"));
    assert_eq!(m.author, s("AbsBehoerdenkennungPraefixCode:LATh"));
    assert_eq!(m.created_at, s("2020-07-24T17:21:25"));
}

#[test]
fn xdomea_4_0_nachrichtenkopf() {
    let Some(m) = meta_of("xdomea-examples-lavnrw/v4.0.0/518c7c31-d1a0-11ef-accb-005056871b7c_0503_1.xml") else {
        return;
    };
    assert_eq!(m.standard, s("xdomea"));
    assert_eq!(m.version, s("4.0.0"));
    assert_eq!(m.message_id, s("95b80307-d19c-11ef-a43a-005056871b7c"));
    assert_eq!(m.message_type, s("0503"));
    assert_eq!(m.process_id, s("518c7c31-d1a0-11ef-accb-005056871b7c"));
    assert_eq!(m.created_at, s("2025-01-15T12:00:00.000Z"));
    // leser/autor carry only a NameInstitution: no key to route on
    assert_eq!(m.reader, None);
}

#[test]
fn xgewerbeanzeige_behoerdenkennung() {
    let Some(m) = meta_of("kosit-xgewerbeanzeige/beispiele/xgwa2.2-valid.xml") else {
        return;
    };
    assert_eq!(m.standard, s("XGewerbeanzeige"));
    assert_eq!(m.version, s("2.2"));
    assert_eq!(m.message_id, s("00000000-0000-0000-0000-000000000001"));
    assert_eq!(m.message_type, s("0500"));
    assert_eq!(m.reader, s("azr:000100"));
    assert_eq!(m.author, s("MELDID:12052000"));
}

#[test]
fn xjustiz_headers() {
    let Some(m) = meta_of("fit-connect-adapter-zechmeister/src/test/resources/test/xjustiz_nachricht.xml") else {
        return;
    };
    assert_eq!(m.standard, s("XJustiz"));
    assert_eq!(m.version, s("3.4.1"));
    assert_eq!(m.message_type, s("0005005"));
    assert_eq!(m.message_id, s("4f28f648-5bd7-22b5-7c14-fba1cee8e5de"));
    assert_eq!(m.reader, None, "empfaenger.sonstige is free text, not a key");

    let m = meta_of("xjustiz-testdaten-xjv/code/XJustiz-Testdaten/xjustiz_nachricht_v3_2.xml").expect("corpus");
    assert_eq!(m.version, s("3.2.1"));
    assert_eq!(m.reader, s("9D0000"));
    assert_eq!(m.message_id, s("5558aeab-4b75-44db-80e5-7219da4751a2"));

    let m = meta_of("xjustiz-testdaten-xjv/code/XJustiz-Testdaten/eeb3_v3_2.xml").expect("corpus");
    assert_eq!(m.root, "nachricht.eeb.zuruecklaufend.2200007");
    assert_eq!(m.message_type, s("2200007"));

    let m = meta_of("xjustiz-testdaten-xjv/code/XJustiz-Testdaten/xjustiz_nachricht_eeb3_v3_2.xml").expect("corpus");
    assert_eq!(m.reader, s("rvTraeger:15"));
    assert_eq!(m.author, s("A1001S"));

    // XJustiz 2.2.1: underscore names
    let m = meta_of("xjustiz-testdaten-xjv/code/XJustiz-Testdaten/xjustiz_nachricht_v2_2_1.xml").expect("corpus");
    assert_eq!(m.author, s("B6234"));
    assert_eq!(m.message_id, s("8E417086-0264-5F8F-E053-05BC7F0AB0C8"));
}

#[test]
fn xrechnung_ubl_and_cii() {
    let Some(ubl) = meta_of("kosit-xrechnung-testsuite/src/test/business-cases/standard/01.01a-INVOICE_ubl.xml") else {
        return;
    };
    let cii = meta_of("kosit-xrechnung-testsuite/src/test/business-cases/standard/01.01a-INVOICE_uncefact.xml")
        .expect("corpus");
    for m in [&ubl, &cii] {
        assert_eq!(m.standard, s("XRechnung"));
        assert_eq!(m.version, s("urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0"));
        assert_eq!(m.reader, s("04011000-12345-03"));
        assert_eq!(m.message_id, s("123456XX"));
        assert_eq!(m.message_type, s("380"));
    }
    assert_eq!(ubl.root, "Invoice");
    assert_eq!(cii.root, "CrossIndustryInvoice");
    assert_eq!(ubl.created_at, s("2016-04-04"));
}

#[test]
fn every_corpus_message_reads_and_fast_path_agrees() {
    let Some(dir) = corpus() else {
        return;
    };
    let sources = [
        "xbau-testfiles-arecklies",
        "xbeteiligung-demosplan/tests",
        "xwasser-hd-gmbh/tests",
        "xdomea-examples-lavnrw",
        "xdomea-landesarchiv-thueringen/message_generation/pattern",
        "kosit-xgewerbeanzeige",
        "xjustiz-testdaten-xjv",
        "fit-connect-adapter-zechmeister",
        "kosit-xrechnung-testsuite",
        "kosit-validator-configuration-xrechnung",
    ];
    // Known broken on purpose (MANIFEST): a BMP named .xml, a truncated invoice.
    let broken = ["bin001.xml", "ubl007.xml"];
    let mut files = 0;
    for source in sources {
        for path in xml_files(&dir.join(source)) {
            let bytes = std::fs::read(&path).expect("readable");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let full = read_meta(&bytes, &Limits::default());
            if broken.contains(&name) {
                assert!(matches!(full, Err(ReadError::Malformed { .. })), "{}: {full:?}", path.display());
                continue;
            }
            let full = full.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let fast = read_header(&bytes, &Limits::default()).expect("fast path reads what the full path reads");
            assert_eq!(full, fast, "{}", path.display());
            files += 1;
        }
    }
    assert!(files > 200, "only {files} corpus files found");
}

pub(crate) fn xml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "xml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// ---- hostile input -------------------------------------------------------------------------

fn read(xml: &str) -> Result<Meta, ReadError> {
    read_meta(xml.as_bytes(), &Limits::default())
}

#[test]
fn billion_laughs_is_forbidden() {
    let xml = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<lolz>&lol3;</lolz>"#;
    assert!(matches!(read(xml), Err(ReadError::Forbidden(m)) if m.contains("DOCTYPE")));
}

#[test]
fn xxe_is_forbidden() {
    let xml = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><r>&xxe;</r>"#;
    assert!(matches!(read(xml), Err(ReadError::Forbidden(_))));
}

#[test]
fn undeclared_entity_reference_is_forbidden_in_text_and_attributes() {
    assert!(matches!(read("<r>&xxe;</r>"), Err(ReadError::Forbidden(m)) if m.contains("&xxe;")));
    assert!(matches!(read(r#"<r a="x&xxe;"/>"#), Err(ReadError::Forbidden(m)) if m.contains("&xxe;")));
}

#[test]
fn predefined_and_character_references_are_fine() {
    let m = read(r#"<r standard="a&amp;b&#x21;&#33;"/>"#).expect("well-formed");
    assert_eq!(m.standard, s("a&b!!"));
    assert!(matches!(read("<r>&#0;</r>"), Err(ReadError::Malformed { .. })));
    assert!(matches!(read("<r>&#xD800;</r>"), Err(ReadError::Malformed { .. })));
}

#[test]
fn hundred_thousand_nested_elements_hit_the_depth_limit() {
    let xml = "<a>".repeat(100_000) + &"</a>".repeat(100_000);
    let err = read(&xml).expect_err("too deep");
    assert!(matches!(err, ReadError::LimitExceeded(ref m) if m.contains("depth")), "{err}");
    // with the limit lifted, the reader is iterative: no stack overflow, and it reads fine
    let lifted = Limits { max_depth: 50_000, ..Limits::default() };
    let half = "<a>".repeat(50_000) + &"</a>".repeat(50_000);
    let m = read_meta(half.as_bytes(), &lifted).expect("deep but well-formed");
    assert_eq!(m.root, "a");
    // Regression: quick-xml's NsReader counts namespace scopes in a u16 and panicked past
    // 65,535 levels; the guard tracks namespaces itself, so no limit at all is fine too.
    let unlimited = Limits { max_depth: usize::MAX, ..Limits::default() };
    let m = read_meta(xml.as_bytes(), &unlimited).expect("100,000 levels, no limit");
    assert_eq!(m.root, "a");
    // the JSON form caps depth on its own (its writers recurse)
    let err = crate::json::xml_to_json(xml.as_bytes(), &unlimited).expect_err("too deep for JSON");
    assert!(matches!(err, crate::json::ConvertError::Read(ReadError::LimitExceeded(_))), "{err}");
}

#[test]
fn attribute_and_element_limits() {
    let limits = Limits { max_attributes: 3, max_elements: 5, max_depth: 10 };
    let many_attrs = r#"<r a="1" b="2" c="3" d="4"/>"#;
    assert!(
        matches!(read_meta(many_attrs.as_bytes(), &limits), Err(ReadError::LimitExceeded(m)) if m.contains("attributes"))
    );
    let many_elems = format!("<r>{}</r>", "<x/>".repeat(5));
    assert!(
        matches!(read_meta(many_elems.as_bytes(), &limits), Err(ReadError::LimitExceeded(m)) if m.contains("elements"))
    );
    let fine = format!("<r>{}</r>", "<x/>".repeat(4));
    assert!(read_meta(fine.as_bytes(), &limits).is_ok());
}

#[test]
fn malformed_documents() {
    let cases = [
        ("", "no document element"),
        ("   ", "no document element"),
        ("<a><b></a></b>", "expected `</b>`"),
        ("<a>", "ends inside"),
        ("<a></a>text", "after"),
        ("<a></a><b/>", "second root"),
        ("text<a/>", "before"),
        ("<a b='1' b='2'/>", "duplicat"),
        ("<p:a/>", "unbound"),
        ("<a p:b='1'/>", "unbound"),
        ("<1a/>", "name"),
        ("<a>\u{1}</a>", "control"),
        ("<a/><?xml version='1.0'?>", "declaration"),
        (r#"<a b="<"/>"#, ""),
        ("<a>x]]>y</a>", "]]>"),
    ];
    for (xml, needle) in cases {
        match read(xml) {
            Err(ReadError::Malformed { message, .. }) => {
                assert!(message.to_lowercase().contains(needle), "{xml:?}: {message}");
            }
            other => panic!("{xml:?}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn binary_junk_and_truncation_are_malformed() {
    let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert!(matches!(read_meta(&junk, &Limits::default()), Err(ReadError::Malformed { .. })));
    let xml = br#"<?xml version="1.0"?><a><b c="d">text</b></a>"#;
    for cut in 1..xml.len() {
        let r = read_meta(&xml[..cut], &Limits::default());
        assert!(matches!(r, Err(ReadError::Malformed { .. })), "cut at {cut}: {r:?}");
    }
}

#[test]
fn encoding_rules() {
    assert!(read("<?xml version=\"1.0\" encoding=\"utf-8\"?><a/>").is_ok());
    let bom = [&[0xEF, 0xBB, 0xBF][..], b"<?xml version=\"1.0\"?><a/>"].concat();
    assert!(read_meta(&bom, &Limits::default()).is_ok());
    let latin = "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>";
    assert!(matches!(read(latin), Err(ReadError::Malformed { message, .. }) if message.contains("ISO-8859-1")));
    let bad_utf8 = b"<a>\xff\xfe</a>";
    assert!(matches!(read_meta(bad_utf8, &Limits::default()), Err(ReadError::Malformed { .. })));
}

#[test]
fn malformed_error_names_line_and_column() {
    let Err(ReadError::Malformed { message, .. }) = read("<a>\n  <b>\n  </c>\n</a>") else {
        panic!("expected malformed");
    };
    assert!(message.starts_with("line 3, column"), "{message}");
}

#[test]
fn fast_path_stops_after_the_header_full_path_does_not() {
    let xml = r#"<x:m.0001 xmlns:x="urn:t"><nachrichtenkopf.g2g><identifikation.nachricht>
        <nachrichtenUUID>u-1</nachrichtenUUID></identifikation.nachricht></nachrichtenkopf.g2g>
        <x:body>&undeclared;</x:body></x:m.0001>"#;
    let fast = read_header(xml.as_bytes(), &Limits::default()).expect("header is fine");
    assert_eq!(fast.message_id, s("u-1"));
    assert_eq!(fast.message_type, s("0001"), "type falls back to the root name suffix");
    assert!(matches!(read(xml), Err(ReadError::Forbidden(_))));
}

#[test]
fn document_without_header_gives_namespace_and_root_only() {
    let m = read(r#"<p:thing xmlns:p="urn:example:x"><p:a>1</p:a></p:thing>"#).expect("fine");
    assert_eq!(m, Meta { namespace: s("urn:example:x"), root: "thing".into(), ..Meta::default() });
}

#[test]
fn default_namespace_is_not_inherited_by_xmlns_empty() {
    let xml = r#"<m.0200 xmlns="urn:a"><nachrichtenkopf.g2g xmlns=""><leser><kennung>bab:1</kennung></leser>
        </nachrichtenkopf.g2g></m.0200>"#;
    let m = read(xml).expect("fine");
    assert_eq!(m.namespace, s("urn:a"));
    assert_eq!(m.reader, s("bab:1"));
}

#[test]
fn full_path_checks_every_token_after_the_header() {
    // once the header is read, `scan` only drives the guard: every kind of error still comes
    let head = r#"<x:m.0001 xmlns:x="urn:t"><nachrichtenkopf.g2g><identifikation.nachricht>
        <nachrichtenUUID>u-1</nachrichtenUUID></identifikation.nachricht></nachrichtenkopf.g2g>"#;
    let doc = |body: &str| format!("{head}{body}");
    assert_eq!(read(&doc("<x:b a='1'>t</x:b></x:m.0001>")).map(|m| m.message_id), Ok(s("u-1")));
    for body in [
        "<x:b></x:c></x:m.0001>",
        "<y:b/></x:m.0001>",
        "<b a='1' a='2'/></x:m.0001>",
        "<b>]]></b></x:m.0001>",
        "<b>\u{1}</b></x:m.0001>",
        "</x:m.0001><second/>",
        "</x:m.0001>text",
        "<b>",
    ] {
        assert!(matches!(read(&doc(body)), Err(ReadError::Malformed { .. })), "{body:?} accepted");
    }
    assert!(matches!(read(&doc("<b>&lt;&ent;</b></x:m.0001>")), Err(ReadError::Forbidden(_))));
    let limits = Limits { max_elements: 8, ..Limits::default() };
    let many = doc(&format!("{}</x:m.0001>", "<b/>".repeat(8)));
    assert!(matches!(read_meta(many.as_bytes(), &limits), Err(ReadError::LimitExceeded(_))));
}

/// Regression: the duplicate-attribute check compared each attribute with every earlier one
/// (quadratic: the JSON form's check reads with no attribute limit, and 16 MiB of JSON held
/// 1.8M attributes on one element). Past a few attributes a set finds the duplicate.
#[test]
fn two_hundred_thousand_attributes_on_one_element_are_checked_for_duplicates_quickly() {
    let unlimited = Limits { max_attributes: usize::MAX, ..Limits::default() };
    let mut xml = String::from("<r");
    for i in 0..200_000 {
        xml.push_str(&format!(" a{i}=\"\""));
    }
    let fine = format!("{xml}/>");
    let dup = format!("{xml} a0=\"\"/>");
    let started = std::time::Instant::now();
    assert_eq!(read_meta(fine.as_bytes(), &unlimited).map(|m| m.root), Ok("r".to_owned()));
    let err = read_meta(dup.as_bytes(), &unlimited).expect_err("duplicate");
    assert!(matches!(err, ReadError::Malformed { ref message, .. } if message.contains("duplicated attribute `a0`")));
    // Generous: a few hundred milliseconds now; the pairwise scan took minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
}

/// Regression: a prefix was looked up by scanning every namespace declaration in scope; within
/// the default limits that is 127 levels × 64 declarations for each prefixed name. Here a million
/// prefixed attributes resolve `a`, declared on the root under 8,000 other declarations.
#[test]
fn prefix_lookups_do_not_scan_every_declaration_in_scope() {
    let limits = Limits::default();
    let mut xml = String::from("<a:r xmlns:a=\"urn:a\">");
    let levels = limits.max_depth - 2;
    for level in 0..levels {
        xml.push_str("<a:n");
        for i in 0..limits.max_attributes {
            xml.push_str(&format!(" xmlns:p{level}_{i}=\"urn:p\""));
        }
        xml.push('>');
    }
    for _ in 0..16_000 {
        xml.push_str("<a:c");
        for i in 0..limits.max_attributes {
            xml.push_str(&format!(" a:k{i}=\"\""));
        }
        xml.push_str("/>");
    }
    xml.push_str(&"</a:n>".repeat(levels));
    xml.push_str("</a:r>");
    let started = std::time::Instant::now();
    let meta = read_meta(xml.as_bytes(), &limits).expect("within the limits");
    assert_eq!(meta.namespace.as_deref(), Some("urn:a"));
    // A shadowed prefix still resolves to the innermost declaration, and one goes out of scope
    // with its element, past the number of declarations a scan handles.
    let mut shadow = String::from("<r xmlns:a=\"urn:outer\">");
    for i in 0..20 {
        shadow.push_str(&format!("<a:x xmlns:q{i}=\"urn:q\" xmlns:a=\"urn:inner{i}\">"));
    }
    shadow.push_str("<a:z/>");
    shadow.push_str(&"</a:x>".repeat(10));
    shadow.push_str("<a:w/>");
    shadow.push_str(&"</a:x>".repeat(10));
    shadow.push_str("<a:y/></r>");
    let mut guard = crate::reader::Guard::new(shadow.as_bytes(), &limits);
    let mut seen = Vec::new();
    loop {
        match guard.next().expect("well-formed") {
            crate::reader::Tok::Start { name } => {
                seen.push((name, guard.element_namespace(name).map(str::to_owned)));
            }
            crate::reader::Tok::Eof => break,
            _ => {}
        }
    }
    let ns = |name: &str| seen.iter().find(|(n, _)| *n == name).and_then(|(_, ns)| ns.clone());
    assert_eq!(ns("a:z").as_deref(), Some("urn:inner19"));
    assert_eq!(ns("a:w").as_deref(), Some("urn:inner9"));
    assert_eq!(ns("a:y").as_deref(), Some("urn:outer"));
    // Generous: about a second now in a debug build; the scans took far longer.
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
}
