//! Adapters: reading and writing the documents Lotse carries.
//!
//! Pure (no network, no tokio). Modules:
//! - [`meta`]: [`Meta`], what routing needs from a message, and [`Limits`].
//! - [`reader`]: the hardened streaming reader: refuses DTDs and entity references, bounds
//!   depth, attribute and element count, and extracts the header meta of every XÖV standard
//!   Lotse knows ([`read_meta`] checks the whole document, [`read_header`] stops after the header).
//! - [`catalog`]: the schema catalog (namespace -> XSD set, remote URL -> local file).
//! - [`validate`]: XSD validation through libxml2 ([`validate::Validator`]).
//! - [`json`]: the JSON form of a message and back.
//! - [`fitconnect`]: FIT-Connect metadata (JSON) read into [`Meta`].

pub mod catalog;
pub mod fitconnect;
pub mod json;
pub mod meta;
pub mod reader;
pub mod validate;

#[cfg(test)]
mod test_corpus;

pub use meta::{Limits, Meta};
pub use reader::{ReadError, read_header, read_meta};
