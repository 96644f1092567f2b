//! What Lotse reads from a message for routing and status, and the limits it reads under.

use serde::Serialize;

/// Bounds applied to every untrusted document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum element nesting depth.
    pub max_depth: usize,
    /// Maximum attributes on one element.
    pub max_attributes: usize,
    /// Maximum number of elements in one document.
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 128, max_attributes: 64, max_elements: 1_000_000 }
    }
}

/// The longest value a header field may have (characters), other than the message id (256,
/// see the reader). Header fields are keys, codes, dates and URIs: the corpus's longest is a
/// 126-character XRechnung `CustomizationID`. They reach log lines and problem details (a
/// refused submission names its message type, reader, author, root and namespace), so they are
/// bounded, and a control character is refused: a line break would forge a log line.
pub const MAX_FIELD_CHARS: usize = 1024;

/// `Err` naming `field` when `value` is longer than [`MAX_FIELD_CHARS`] or holds a control
/// character (C0, DEL, C1: line breaks and tabs included) or a line or paragraph separator
/// (U+2028, U+2029, which some log viewers break lines at).
pub(crate) fn check_field(field: &str, value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(format!(
            "header field `{field}` holds the control character U+{:04X} (line breaks, tabs and other control characters are not allowed)",
            c as u32
        ));
    }
    if value.chars().nth(MAX_FIELD_CHARS).is_some() {
        return Err(format!("header field `{field}` is longer than {MAX_FIELD_CHARS} characters"));
    }
    Ok(())
}

/// Routing meta of one message. Every field but `root` is optional: a message without a
/// known header yields namespace and root name only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// Standard name, e.g. `XBau`, `xdomea`, `XJustiz` (from the root's `standard` attribute or
    /// recognised from the namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Namespace URI of the root element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Local name of the root element.
    pub root: String,
    /// Message type code, e.g. `0200`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// The message's own id (`nachrichtenUUID`, `eigeneNachrichtenID`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Reader (recipient) key, e.g. `bab:09162000`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
    /// Author (sender) key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Public service (LeiKa) key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Trust level (Vertrauensniveau) the message states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_level: Option<String>,
    /// Case or process id (xdomea `ProzessID`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_id: Option<String>,
    /// Product that wrote the message (root attribute `produkt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The message this one refers to (XWasser `referenzUUID` in the G2G header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
    /// DVDV service key the message is for (XWasser `dvdvDienstkennung` in the G2G header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dvdv_service: Option<String>,
    /// Things that are odd but not fatal, e.g. root name and header type disagree.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
