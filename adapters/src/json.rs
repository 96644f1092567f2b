//! The JSON form of a message. (Placeholder until the adapters work lands.)

use crate::Limits;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Read(#[from] crate::ReadError),
    #[error("invalid JSON form: {0}")]
    InvalidJson(String),
}

/// XML -> JSON form.
pub fn xml_to_json(_xml: &[u8], _limits: &Limits) -> Result<serde_json::Value, ConvertError> {
    Err(ConvertError::InvalidJson("not built yet".into()))
}

/// JSON form -> XML bytes (UTF-8).
pub fn json_to_xml(_json: &serde_json::Value) -> Result<Vec<u8>, ConvertError> {
    Err(ConvertError::InvalidJson("not built yet".into()))
}
