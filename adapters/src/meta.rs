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
