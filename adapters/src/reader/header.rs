//! Header extraction: turns the token stream of one document into [`Meta`].
//!
//! Every header is matched by LOCAL names along a path below the root element, so the
//! qualified and the unqualified G2G flavours (and any prefix a sender picked) read the same.
//! One table covers the XÖV family (G2G `nachrichtenkopf.g2g`, xdomea 4.0 and XGewerbeanzeige
//! `nachrichtenkopf`, XJustiz `nachrichtenkopf`, xdomea 2.x/3.0 `Kopf`); a second one the
//! e-invoice syntaxes (UBL, CII). Values are taken from leaf elements only.
//!
//! Every value kept (root name, namespace, root attributes, header fields) is checked by
//! [`check_field`]: at most [`crate::meta::MAX_FIELD_CHARS`] characters, no control character.
//! A bad one is an error naming the field, which the caller positions at the current token.
//! The message id alone has its own, softer rule (left out with a warning, see `finish`).

use super::guard::Attr;
use crate::Meta;
use crate::meta::check_field;

/// Longest path (below the root) any pattern needs.
const MAX_PATH: usize = 5;
/// The longest `nachrichtenUUID` used as the message id (a UUID has 36 characters). The id is a
/// dedup key and travels to receivers as the `Lotse-Message-Id` header: a longer one, or one with
/// a control character (which no HTTP header can carry), is left out with a warning.
const MAX_MESSAGE_ID_CHARS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MessageId,
    MessageType,
    CreatedAt,
    Reader,
    ReaderPrefix,
    Author,
    AuthorPrefix,
    ProcessId,
    ReferenceId,
    DvdvService,
    Version,
    ReaderKind(&'static str),
    AuthorKind(&'static str),
}

impl Field {
    /// The [`Meta`] field this one fills, as errors name it.
    fn name(self) -> &'static str {
        match self {
            Field::MessageId => "message_id",
            Field::MessageType => "message_type",
            Field::CreatedAt => "created_at",
            Field::Reader | Field::ReaderPrefix | Field::ReaderKind(_) => "reader",
            Field::Author | Field::AuthorPrefix | Field::AuthorKind(_) => "author",
            Field::ProcessId => "process_id",
            Field::ReferenceId => "reference_id",
            Field::DvdvService => "dvdv_service",
            Field::Version => "version",
        }
    }
}

/// `(path below the root, field)`; a path segment may list two alternatives with `|`.
type Pattern = (&'static [&'static str], Field);

const G2G: &str = "nachrichtenkopf.g2g|nachrichtenkopf";
const IDENT: &str = "identifikation.nachricht";

/// The XÖV family. The first segment is the header element; when it closes, the header is read.
const XOEV: &[Pattern] = &[
    (&[G2G, IDENT, "nachrichtenUUID"], Field::MessageId),
    (&[G2G, IDENT, "nachrichtentyp", "code"], Field::MessageType),
    (&[G2G, IDENT, "erstellungszeitpunkt"], Field::CreatedAt),
    (&[G2G, "leser", "kennung"], Field::Reader),
    (&[G2G, "autor", "kennung"], Field::Author),
    // XGewerbeanzeige: behoerdenkennung = praefix + kennung (both codes)
    (&[G2G, "leser", "behoerdenkennung", "praefix", "code"], Field::ReaderPrefix),
    (&[G2G, "leser", "behoerdenkennung", "kennung", "code"], Field::Reader),
    (&[G2G, "autor", "behoerdenkennung", "praefix", "code"], Field::AuthorPrefix),
    (&[G2G, "autor", "behoerdenkennung", "kennung", "code"], Field::Author),
    // XWasser extensions of the G2G header
    (&[G2G, "referenzUUID"], Field::ReferenceId),
    (&[G2G, "dvdvDienstkennung"], Field::DvdvService),
    // xdomea 4.0
    (&[G2G, "ProzessID"], Field::ProcessId),
    // XJustiz 3.x and 2.x
    (&[G2G, "eigeneNachrichtenID|eigene_Nachrichten_ID"], Field::MessageId),
    (&[G2G, "erstellungszeitpunkt"], Field::CreatedAt),
    (&[G2G, "auswahl_empfaenger", "empfaenger.gericht", "code"], Field::Reader),
    (&[G2G, "empfaenger_Gericht", "code"], Field::Reader),
    (&[G2G, "auswahl_empfaenger", "empfaenger.rvTraeger", "code"], Field::ReaderKind("rvTraeger")),
    (&[G2G, "empfaenger_RVTraeger|empfaenger_rvTraeger", "code"], Field::ReaderKind("rvTraeger")),
    (&[G2G, "auswahl_absender", "absender.gericht", "code"], Field::Author),
    (&[G2G, "absender_Gericht", "code"], Field::Author),
    (&[G2G, "auswahl_absender", "absender.rvTraeger", "code"], Field::AuthorKind("rvTraeger")),
    (&[G2G, "absender_RVTraeger|absender_rvTraeger", "code"], Field::AuthorKind("rvTraeger")),
    // xdomea 2.x / 3.0 Kopf
    (&["Kopf", "ProzessID"], Field::ProcessId),
    (&["Kopf", "Nachrichtentyp", "code"], Field::MessageType),
    (&["Kopf", "Erstellungszeitpunkt"], Field::CreatedAt),
    (&["Kopf", "Empfaenger", "Behoerdenkennung", "Kennung|Behoerdenschluessel", "code"], Field::Reader),
    (&["Kopf", "Empfaenger", "Behoerdenkennung", "Praefix", "code"], Field::ReaderPrefix),
    (&["Kopf", "Absender", "Behoerdenkennung", "Kennung|Behoerdenschluessel", "code"], Field::Author),
    (&["Kopf", "Absender", "Behoerdenkennung", "Praefix", "code"], Field::AuthorPrefix),
];

/// UBL 2.1 Invoice / CreditNote (children of the root).
const UBL: &[Pattern] = &[
    (&["CustomizationID"], Field::Version),
    (&["ID"], Field::MessageId),
    (&["IssueDate"], Field::CreatedAt),
    (&["InvoiceTypeCode|CreditNoteTypeCode"], Field::MessageType),
    (&["BuyerReference"], Field::Reader),
];

/// UN/CEFACT CII D16B.
const CII: &[Pattern] = &[
    (&["ExchangedDocumentContext", "GuidelineSpecifiedDocumentContextParameter", "ID"], Field::Version),
    (&["ExchangedDocument", "ID"], Field::MessageId),
    (&["ExchangedDocument", "TypeCode"], Field::MessageType),
    (&["ExchangedDocument", "IssueDateTime", "DateTimeString"], Field::CreatedAt),
    (&["SupplyChainTradeTransaction", "ApplicableHeaderTradeAgreement", "BuyerReference"], Field::Reader),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// XÖV family: header is the first child of the root.
    Xoev,
    Ubl,
    Cii,
}

/// Collects the header while the document streams past.
#[derive(Debug)]
pub(crate) struct HeaderSink<'a> {
    meta: Meta,
    flavour: Flavour,
    patterns: &'static [Pattern],
    /// Local names below the root, up to `MAX_PATH` deep.
    path: Vec<&'a str>,
    /// The field the current element's text goes to.
    want: Option<Field>,
    text: String,
    /// The header has been read completely; nothing more to look at.
    done: bool,
    /// Number of fields the flavour can fill that are still missing (UBL/CII early stop).
    missing: usize,
    reader_prefix: Option<String>,
    author_prefix: Option<String>,
    /// Root attribute `standard` was present.
    standard_from_root: bool,
}

impl<'a> HeaderSink<'a> {
    /// Starts with the root element: qualified name, namespace URI, attributes. `Err` names a
    /// value [`check_field`] refuses.
    pub(crate) fn new(qname: &str, namespace: Option<&str>, attrs: &[Attr<'_>]) -> Result<Self, String> {
        let root = local(qname);
        check_field("root", root)?;
        if let Some(ns) = namespace {
            check_field("namespace", ns)?;
        }
        let namespace = namespace.map(str::to_owned);
        let mut meta = Meta { root: root.to_owned(), namespace, ..Meta::default() };
        for a in attrs {
            let (field, slot) = match local(a.name) {
                "standard" if !a.name.contains(':') => ("standard", &mut meta.standard),
                "version" if !a.name.contains(':') => ("version", &mut meta.version),
                "produkt" if !a.name.contains(':') => ("product", &mut meta.product),
                _ => continue,
            };
            check_field(field, &a.value)?;
            *slot = Some(a.value.to_string());
        }
        let ns = meta.namespace.as_deref().unwrap_or("");
        let (flavour, patterns) = match ns {
            "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
            | "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2" => (Flavour::Ubl, UBL),
            "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100" => (Flavour::Cii, CII),
            _ => (Flavour::Xoev, XOEV),
        };
        let standard_from_root = meta.standard.is_some();
        Ok(HeaderSink {
            meta,
            flavour,
            patterns,
            path: Vec::with_capacity(MAX_PATH),
            want: None,
            text: String::new(),
            done: false,
            missing: patterns.len(),
            reader_prefix: None,
            author_prefix: None,
            standard_from_root,
        })
    }

    /// True once nothing more can be learnt from the rest of the document.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// A start tag at `depth` (root = 1). `Err` names a value [`check_field`] refuses.
    pub(crate) fn start(&mut self, qname: &'a str, depth: usize, attrs: &[Attr<'_>]) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        self.want = None;
        let rel = depth - 1;
        if rel > MAX_PATH {
            return Ok(());
        }
        let name = local(qname);
        if rel == 1 && self.flavour == Flavour::Xoev {
            if !is_header_element(name) {
                // The header is the first child of the root in every XÖV message.
                self.done = true;
                return Ok(());
            }
            if name == "nachrichtenkopf"
                && let Some(v) = attrs.iter().find(|a| a.name == "xjustizVersion")
            {
                check_field("version", &v.value)?;
                self.meta.version = Some(v.value.to_string());
            }
        }
        self.path.truncate(rel - 1);
        self.path.push(name);
        self.want = self.patterns.iter().find(|(p, _)| path_matches(p, &self.path)).map(|(_, f)| *f);
        self.text.clear();
        Ok(())
    }

    /// Character data inside the current element.
    pub(crate) fn text(&mut self, text: &str) {
        if self.want.is_some() {
            self.text.push_str(text);
        }
    }

    /// An end tag; `depth` is the depth of the element that closes (root = 1). `Err` names a
    /// value [`check_field`] refuses.
    pub(crate) fn end(&mut self, depth: usize) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        if let Some(field) = self.want.take() {
            let value = self.text.trim().to_owned();
            // The message id has its own rule (a warning, in `finish`).
            if field != Field::MessageId {
                check_field(field.name(), &value)?;
            }
            self.set(field, value);
        }
        if depth == 2 && self.flavour == Flavour::Xoev {
            // the header element closed
            self.done = true;
        }
        if self.missing == 0 {
            self.done = true;
        }
        Ok(())
    }

    fn set(&mut self, field: Field, value: String) {
        if value.is_empty() {
            return;
        }
        let meta = &mut self.meta;
        let slot = match field {
            Field::MessageId => &mut meta.message_id,
            Field::MessageType => &mut meta.message_type,
            Field::CreatedAt => &mut meta.created_at,
            Field::Reader => &mut meta.reader,
            Field::ReaderPrefix => &mut self.reader_prefix,
            Field::Author => &mut meta.author,
            Field::AuthorPrefix => &mut self.author_prefix,
            Field::ProcessId => &mut meta.process_id,
            Field::ReferenceId => &mut meta.reference_id,
            Field::DvdvService => &mut meta.dvdv_service,
            Field::Version => &mut meta.version,
            Field::ReaderKind(kind) => {
                meta.reader.get_or_insert_with(|| format!("{kind}:{value}"));
                self.missing = self.missing.saturating_sub(1);
                return;
            }
            Field::AuthorKind(kind) => {
                meta.author.get_or_insert_with(|| format!("{kind}:{value}"));
                self.missing = self.missing.saturating_sub(1);
                return;
            }
        };
        if slot.is_none() {
            *slot = Some(value);
            self.missing = self.missing.saturating_sub(1);
        }
    }

    /// The meta read, with derived fields and warnings filled in.
    pub(crate) fn finish(mut self) -> Meta {
        let mut meta = std::mem::take(&mut self.meta);
        if let (Some(prefix), Some(key)) = (self.reader_prefix.take(), meta.reader.as_mut()) {
            *key = format!("{prefix}:{key}");
        }
        if let (Some(prefix), Some(key)) = (self.author_prefix.take(), meta.author.as_mut()) {
            *key = format!("{prefix}:{key}");
        }
        let ns = meta.namespace.clone().unwrap_or_default();
        if !self.standard_from_root {
            meta.standard = recognise_standard(&ns, meta.version.as_deref()).map(str::to_owned);
        }
        if meta.version.is_none() {
            meta.version = version_from_namespace(&ns).map(str::to_owned);
        }
        if let Some(id) = &meta.message_id
            && (id.chars().count() > MAX_MESSAGE_ID_CHARS || id.chars().any(char::is_control))
        {
            meta.warnings.push(format!(
                "nachrichtenUUID is not usable as a message id (more than {MAX_MESSAGE_ID_CHARS} characters, or a control character such as a line break): it is ignored"
            ));
            meta.message_id = None;
        }
        let root_type = root_type_code(&meta.root);
        match (&meta.message_type, root_type) {
            (None, Some(code)) => meta.message_type = Some(code.to_owned()),
            (Some(header), Some(code)) if header != code => meta
                .warnings
                .push(format!("root element `{}` names message type {code} but the header says {header}", meta.root)),
            _ => {}
        }
        meta
    }
}

fn is_header_element(local: &str) -> bool {
    matches!(local, "nachrichtenkopf.g2g" | "nachrichtenkopf" | "Kopf")
}

/// The local part of a qualified name.
pub(crate) fn local(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, l)| l)
}

fn path_matches(pattern: &[&str], path: &[&str]) -> bool {
    // last segment first: it is the one that differs between the patterns of a header
    pattern.len() == path.len() && pattern.iter().zip(path).rev().all(|(p, n)| segment_matches(p, n))
}

/// `p` is a name or two alternatives `a|b` (no pattern needs more).
fn segment_matches(p: &str, n: &str) -> bool {
    if p.len() <= n.len() {
        return p == n;
    }
    let (pb, nb) = (p.as_bytes(), n.as_bytes());
    (pb.starts_with(nb) && pb[nb.len()] == b'|') || (pb.ends_with(nb) && pb[pb.len() - nb.len() - 1] == b'|')
}

/// The message type code a root name ends in: `kommunal.Initiieren.0401` -> `0401`,
/// `nachricht.eeb.zuruecklaufend.2200007` -> `2200007`.
fn root_type_code(root: &str) -> Option<&str> {
    let (_, code) = root.rsplit_once('.')?;
    (code.len() >= 4 && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

/// The standard a namespace belongs to, for roots without a `standard` attribute.
fn recognise_standard(ns: &str, version: Option<&str>) -> Option<&'static str> {
    let table: &[(&str, &str)] = &[
        ("http://www.xleitstelle.de/xbau/", "XBau"),
        ("https://www.xleitstelle.de/xbeteiligung/", "XBeteiligung"),
        ("https://gitlab.opencode.de/akdb/xoev/xwasser/", "XWasser"),
        ("urn:xoev-de:xdomea:schema:", "xdomea"),
        ("http://www.xgewerbeanzeige.de/spezifikation/", "XGewerbeanzeige"),
        ("http://www.xjustiz.de", "XJustiz"),
        ("http://www.osci.de/xmeld", "XMeld"),
        ("http://xpsw.domap.de/", "XPersonenstand"),
        ("http://www.osci.de/xauslaender", "XAusländer"),
        ("http://www.destatis.de/schema/datml-raw/", "DatML-RAW"),
        ("http://xoev.de/transport/xta/", "XTA"),
    ];
    if let Some((_, name)) = table.iter().find(|(prefix, _)| ns.starts_with(prefix)) {
        return Some(name);
    }
    let invoice = matches!(
        ns,
        "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
            | "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
            | "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
    );
    if !invoice {
        return None;
    }
    let customization = version.map(str::to_ascii_lowercase).unwrap_or_default();
    Some(if customization.contains("xrechnung") {
        "XRechnung"
    } else if customization.contains("en16931") {
        "EN16931"
    } else if ns.contains("uncefact") {
        "CII"
    } else {
        "UBL"
    })
}

/// Versions that only the namespace carries (xdomea, XGewerbeanzeige).
fn version_from_namespace(ns: &str) -> Option<&str> {
    ns.strip_prefix("urn:xoev-de:xdomea:schema:")
        .or_else(|| ns.strip_prefix("http://www.xgewerbeanzeige.de/spezifikation/"))
        .filter(|v| !v.is_empty())
}
