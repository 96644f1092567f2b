//! The index saved when a process stops (`Store::close`), so its next start reads only the
//! stream written since instead of all of it.
//!
//! Sound because the fold depends only on the records and their order: the index after offset
//! `n`, fed the stream from `n` on, is the index of the whole stream. The start checks that the
//! stream still holds the message the snapshot ended with (the same check as after a reconnect,
//! `tasks::check_resume`); if not (the stream was deleted, lost records, or is another broker's),
//! it reads the stream from its start as without a snapshot. A snapshot of another format, an
//! earlier or later version, another prefix, or one that does not parse is ignored (logged). A
//! process that crashed leaves its last snapshot, which is still a valid start: older, so more
//! of the stream is read.
//!
//! JSON, written to a temporary file, fsync'd and renamed over the last one: a crash while
//! writing leaves the previous snapshot or none, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::Index;

/// Bumped whenever [`Index`] changes shape: a snapshot of another format is not read.
const FORMAT: u32 = 1;

/// The file for a prefix in `data_dir`.
pub fn path(data_dir: &Path, prefix: &str) -> PathBuf {
    data_dir.join(format!("rabbitmq-{prefix}.index.json"))
}

#[derive(Serialize)]
struct Written<'a> {
    format: u32,
    version: &'a str,
    prefix: &'a str,
    /// The next stream offset to fold, and the digest of the message before it.
    next_offset: u64,
    last_digest: u64,
    index: &'a Index,
}

#[derive(Deserialize)]
struct Read {
    format: u32,
    version: String,
    prefix: String,
    next_offset: u64,
    last_digest: u64,
    index: Index,
}

/// A snapshot's index and where the stream goes on after it.
pub struct Loaded {
    pub index: Index,
    pub next_offset: u64,
    pub last_digest: u64,
}

/// Writes the snapshot; returns its size in bytes.
pub fn save(path: &Path, prefix: &str, index: &Index, next_offset: u64, last_digest: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    // Owner only, as the embedded store's files: the index holds what partners sent about
    // people (routing meta, and the bytes of dead letters).
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // Named per process: two processes of one prefix sharing a `data_dir` never write into the
    // same temporary file (each renames a whole snapshot of its own; either is a valid start).
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let written =
        Written { format: FORMAT, version: env!("CARGO_PKG_VERSION"), prefix, next_offset, last_digest, index };
    serde_json::to_writer(&mut out, &written)?;
    out.flush()?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the folder is.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(size)
}

/// Reads the snapshot at `path` for `prefix`: `None` when there is none, or when it is not one
/// this version can use (said in the log, with why).
pub fn load(path: &Path, prefix: &str) -> Option<Loaded> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "index snapshot unreadable; reading the event stream from its start");
            return None;
        }
    };
    let read: Read = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "index snapshot not usable; reading the event stream from its start");
            return None;
        }
    };
    let why = if read.format != FORMAT || read.version != env!("CARGO_PKG_VERSION") {
        Some(format!(
            "written by version {} (format {}), this is {} (format {FORMAT})",
            read.version,
            read.format,
            env!("CARGO_PKG_VERSION")
        ))
    } else if read.prefix != prefix {
        Some(format!("of prefix `{}`, not `{prefix}`", read.prefix))
    } else {
        None
    };
    if let Some(why) = why {
        tracing::warn!(path = %path.display(), why, "index snapshot not used; reading the event stream from its start");
        return None;
    }
    Some(Loaded { index: read.index, next_offset: read.next_offset, last_digest: read.last_digest })
}
