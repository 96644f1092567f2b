//! Adapters: reading and writing the documents Lotse carries.
//!
//! Pure (no network, no tokio). Modules:
//! - [`meta`]: [`Meta`], what routing needs from a message, and [`Limits`].
//! - [`reader`]: the hardened streaming reader: refuses DTDs and entity declarations, bounds
//!   depth and attribute count, and extracts the header meta of every XÖV standard Lotse knows.
//! - [`json`]: the JSON form of a message and back.

pub mod json;
pub mod meta;
pub mod reader;

pub use meta::{Limits, Meta};
pub use reader::{ReadError, read_meta};
