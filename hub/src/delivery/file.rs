//! The file-drop transport (`kind = "file"`): for agency software that polls a folder.
//!
//! Each delivery becomes two files in the endpoint's `path`, both named by the delivery id:
//! `<id>.meta.json` (ids, attempt, content type) first, then the payload `<id>.xml`, `.json` or
//! `.bin`. Each is written to a hidden temporary name (`.<name>.tmp`), `fsync`ed and renamed
//! into place, and the folder is `fsync`ed after: a poller never sees a half-written file, and
//! the payload's appearance means both are complete and on disk. A delivery sent again (a
//! retry after a crash, a replay) replaces its files under the same names, so a poller that
//! keys by name sees it once.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::retry::AttemptResult;
use crate::store::{Handover, Lease};

pub struct FileTransport {
    dir: PathBuf,
}

impl FileTransport {
    pub fn new(dir: PathBuf) -> FileTransport {
        FileTransport { dir }
    }

    pub async fn send(&self, lease: &Lease) -> AttemptResult {
        let dir = self.dir.clone();
        let lease = lease.clone();
        match tokio::task::spawn_blocking(move || write_delivery(&dir, &lease)).await {
            Ok(Ok(())) => AttemptResult::Delivered { via: Handover::File },
            // A missing folder, no permission, a full disk: the operator can fix each, so retry.
            // The message names the file, not the folder (the event log is read by partners).
            Ok(Err((file, e))) => AttemptResult::Transient { error: format!("file `{file}`: {e}"), retry_after: None },
            Err(e) => AttemptResult::Transient { error: format!("file write task failed: {e}"), retry_after: None },
        }
    }
}

/// The payload's file name: the delivery id and an extension for its content type.
fn payload_name(lease: &Lease) -> String {
    let media = lease.content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let ext = if media.ends_with("xml") {
        "xml"
    } else if media.ends_with("json") {
        "json"
    } else {
        "bin"
    };
    format!("{}.{ext}", lease.delivery_id)
}

fn write_delivery(dir: &Path, lease: &Lease) -> Result<(), (String, std::io::Error)> {
    let meta = serde_json::json!({
        "delivery_id": lease.delivery_id,
        "submission_id": lease.submission_id,
        "message_id": lease.message_id,
        "attempt": lease.attempt,
        "content_type": lease.content_type,
        "endpoint": lease.endpoint,
    });
    let meta_name = format!("{}.meta.json", lease.delivery_id);
    let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(|e| (meta_name.clone(), std::io::Error::other(e)))?;
    write_atomic(dir, &meta_name, &meta_bytes).map_err(|e| (meta_name, e))?;
    let name = payload_name(lease);
    write_atomic(dir, &name, &lease.payload).map_err(|e| (name.clone(), e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| (name, e))
}

/// Writes `bytes` to `dir/.name.tmp`, syncs it, and renames it to `dir/name`.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(content_type: &str, payload: &str) -> Lease {
        crate::delivery::sample_lease(content_type, payload, Some("8fa6a8ae-6a53-4980-bbd1-58d3abe540e0"))
    }

    /// The payload lands under the delivery id with its metadata beside it, nothing temporary
    /// is left, and sending the same delivery again replaces the files.
    #[tokio::test]
    async fn a_delivery_is_dropped_whole_under_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let transport = FileTransport::new(dir.path().to_owned());
        let mut l = lease("application/xml; charset=utf-8", "<antrag/>");
        assert_eq!(transport.send(&l).await, AttemptResult::Delivered { via: Handover::File });
        l.attempt = 2;
        assert_eq!(transport.send(&l).await, AttemptResult::Delivered { via: Handover::File });
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let id = l.delivery_id;
        assert_eq!(names, [format!("{id}.meta.json"), format!("{id}.xml")]);
        assert_eq!(std::fs::read_to_string(dir.path().join(format!("{id}.xml"))).expect("payload"), "<antrag/>");
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("{id}.meta.json"))).expect("meta"))
                .expect("meta is JSON");
        assert_eq!(meta["attempt"], 2);
        assert_eq!(meta["submission_id"], l.submission_id.to_string());
        assert_eq!(meta["message_id"], "8fa6a8ae-6a53-4980-bbd1-58d3abe540e0");
        assert_eq!(payload_name(&lease("application/json", "{}")).rsplit('.').next(), Some("json"));
        assert_eq!(payload_name(&lease("application/octet-stream", "")).rsplit('.').next(), Some("bin"));
    }

    /// A folder that is not there is a transient failure naming the file, not the folder.
    #[tokio::test]
    async fn a_missing_folder_is_retried_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let transport = FileTransport::new(dir.path().join("not-yet-created"));
        match transport.send(&lease("application/xml", "<a/>")).await {
            AttemptResult::Transient { error, .. } => {
                assert!(error.contains(".meta.json") && !error.contains("not-yet-created"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
