//! XSD 1.0 validation through libxml2, behind one type: [`Validator::validate`].
//!
//! Design note. libxml2's compiled schema and validation context are not thread-safe, and the
//! `libxml` crate gives no way to share one compiled schema between contexts (each
//! `SchemaValidationContext` compiles its own) nor to move a context across threads. So a
//! [`Validator`] owns a few worker threads; each keeps its own compiled contexts, built once per
//! schema (at start with [`ValidatorOptions::precompile`], else on first use). `validate` sends
//! the bytes to an idle worker and waits for the [`Verdict`]; the type is `Send + Sync` and meant
//! to be called from blocking threads (`spawn_blocking`). A schema is compiled at most once per
//! worker, never per request. With `workers: 0` there are no worker threads: each calling thread
//! keeps its own compiled schemas (thread-local), which saves the hand-off (two thread wake-ups)
//! at the price of one compile per calling thread.
//!
//! Untrusted input is parsed with recovery off and network off; a DOCTYPE is refused before
//! libxml2 sees the bytes. Schemas are compiled from staged local copies ([`Catalog::stage`]), so
//! libxml2 never resolves a remote location. The verdict agrees with
//! `xmllint --nonet --schema <staged entry>` (corpus test `adapters/tests/validate_corpus.rs`).

mod path;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;

use crate::catalog::Catalog;

/// One schema violation, as libxml2 reports it, with the element's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// 1-based line of the offending element's start tag (libxml2's line when the element
    /// could not be located).
    pub line: u32,
    /// 1-based column (in characters) of the start tag's `<`; 0 when unknown.
    pub column: u32,
    /// Element path, e.g. `/xbau:baugenehmigung.antrag.0200/nachrichtenkopf.g2g/leser`, with `[n]`
    /// for the n-th (n > 1) sibling of the same name; empty when unknown.
    pub path: String,
    /// libxml2's message, e.g. `Element 'x': This element is not expected. Expected is ( y ).`
    pub message: String,
}

/// The outcome of validating a well-formed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Valid against the catalog schema `schema` (its id).
    Valid { schema: String },
    /// Not valid against `schema`; at least one violation.
    Invalid { schema: String, violations: Vec<Violation> },
    /// No catalog entry applies: the root's namespace is unknown (or absent), or the standard
    /// pins versions and the document states one the catalog lacks (`version`).
    UnknownNamespace { namespace: Option<String>, version: Option<String> },
}

impl Verdict {
    /// True for [`Verdict::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid { .. })
    }
}

/// Why a document got no verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    /// Not well-formed XML: the sender's fault (400).
    #[error("malformed XML at line {line}, column {column}: {message}")]
    Malformed { line: u32, column: u32, message: String },
    /// A DOCTYPE (DTD, entity declarations): refused, the sender's fault (400).
    #[error("refused: {0}")]
    Forbidden(String),
    /// A catalog schema could not be staged or compiled: the operator's fault, retrying will not
    /// help until the schema files are fixed.
    #[error("schema `{schema}` is unusable: {message}")]
    Schema { schema: String, message: String },
    /// The validator's workers are gone (a bug or a panic in libxml2): Lotse's fault.
    #[error("validator unavailable: {0}")]
    Unavailable(String),
}

/// How a [`Validator`] runs.
#[derive(Debug, Clone)]
pub struct ValidatorOptions {
    /// Worker threads, each with its own compiled schemas. Default: available cores, at most 4.
    /// `0`: no workers; each calling thread validates itself with its own compiled schemas
    /// (thread-local, compiled on that thread's first use): no hand-off cost, but one compile per
    /// calling thread and schema, so only for a small, long-lived set of calling threads.
    pub workers: usize,
    /// Compile every catalog schema in every worker before [`Validator::new`] returns, so the
    /// first request pays nothing and a broken schema stops startup. Off: compile on first use.
    pub precompile: bool,
    /// Most violations reported per document (libxml2 reports every one).
    pub max_violations: usize,
}

impl Default for ValidatorOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ValidatorOptions { workers: cores.clamp(1, 4), precompile: false, max_violations: 100 }
    }
}

type Reply = Result<Verdict, ValidateError>;

struct Job {
    xml: Vec<u8>,
    reply: mpsc::SyncSender<Reply>,
}

/// Validates documents against the catalog's XSDs. Cheap to share (`Arc`), `Send + Sync`.
pub struct Validator {
    catalog: Arc<Catalog>,
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Key of this validator's thread-local workers (`workers: 0`).
    inline_id: Option<u64>,
    max_violations: usize,
}

thread_local! {
    /// Per calling thread: the inline worker of each validator (by `inline_id`).
    static INLINE: std::cell::RefCell<std::collections::HashMap<u64, worker::Worker>> = Default::default();
}

static NEXT_INLINE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").field("workers", &self.workers.len()).finish_non_exhaustive()
    }
}

impl Validator {
    /// Starts the workers. With `precompile`, fails if any catalog schema does not compile.
    pub fn new(catalog: Arc<Catalog>, options: ValidatorOptions) -> Result<Validator, ValidateError> {
        if options.workers == 0 {
            if options.precompile {
                // Proves every schema compiles; calling threads compile their own copies later.
                worker::Worker::new(Arc::clone(&catalog), options.max_violations).compile_all()?;
            }
            let id = NEXT_INLINE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Validator {
                catalog,
                jobs: None,
                workers: Vec::new(),
                inline_id: Some(id),
                max_violations: options.max_violations,
            });
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ValidateError>>();
        let mut workers = Vec::new();
        for n in 0..options.workers.max(1) {
            let rx = Arc::clone(&rx);
            let ready = ready_tx.clone();
            let catalog = Arc::clone(&catalog);
            let (precompile, max_violations) = (options.precompile, options.max_violations);
            let handle = std::thread::Builder::new()
                .name(format!("lotse-xsd-{n}"))
                .spawn(move || {
                    // libxml2 contexts never leave the thread that made them.
                    let mut worker = worker::Worker::new(catalog, max_violations);
                    // A panic while compiling becomes an answer: `new` waits for one from every
                    // worker.
                    let started = if precompile {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.compile_all())).unwrap_or_else(
                            |_| Err(ValidateError::Unavailable("a worker panicked while compiling schemas".into())),
                        )
                    } else {
                        Ok(())
                    };
                    let failed = started.is_err();
                    let _ = ready.send(started);
                    // Dropped before serving: a worker that kept its sender while it serves would
                    // keep `new` waiting forever for a worker that died without answering.
                    drop(ready);
                    if !failed {
                        worker.serve(&rx);
                    }
                })
                .map_err(|e| ValidateError::Unavailable(format!("cannot start worker: {e}")))?;
            workers.push(handle);
        }
        drop(ready_tx);
        let max_violations = options.max_violations;
        let validator = Validator { catalog, jobs: Some(tx), workers, inline_id: None, max_violations };
        for _ in 0..validator.workers.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ValidateError::Unavailable("a worker died while starting".into())),
            }
        }
        Ok(validator)
    }

    /// The catalog this validator uses.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Validates one document against the catalog schema its root namespace (and stated version)
    /// selects. Blocks until a worker answers.
    pub fn validate(&self, xml: &[u8]) -> Result<Verdict, ValidateError> {
        refuse_doctype(xml)?;
        if let Some(id) = self.inline_id {
            return INLINE.with(|workers| {
                let mut workers = workers.borrow_mut();
                let worker = workers
                    .entry(id)
                    .or_insert_with(|| worker::Worker::new(Arc::clone(&self.catalog), self.max_violations));
                worker.run(xml)
            });
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(ValidateError::Unavailable("validator is shut down".into()));
        };
        jobs.send(Job { xml: xml.to_vec(), reply })
            .map_err(|_| ValidateError::Unavailable("all workers are gone".into()))?;
        answer.recv().map_err(|_| ValidateError::Unavailable("worker died while validating".into()))?
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        // Closing the queue ends every worker's loop; then wait for them.
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Refuses a DOCTYPE in the prolog. libxml2 would parse an internal subset (and its entity
/// declarations); Lotse accepts none, like the reader. Scans only up to the root start tag.
///
/// The scan must read the bytes as libxml2 will, so only encodings it can read are let through:
/// UTF-8, and UTF-16 (which libxml2 reads too; transcoded for the scan). Anything else is
/// `Malformed`: libxml2 also reads EBCDIC, UCS-4 and whatever a declaration names through iconv
/// (`<?xml version="1.0" encoding="IBM037"?>` in cp037 bytes is no XML to the scan, and a DOCTYPE
/// in it would reach libxml2). So is a prolog the scan cannot read: it cannot vouch for it.
fn refuse_doctype(xml: &[u8]) -> Result<(), ValidateError> {
    use quick_xml::events::Event;
    let refused = |message: String| ValidateError::Malformed { line: 0, column: 0, message };
    let transcoded;
    let (text, utf16) = match utf16(xml) {
        Some(little_endian) => {
            if !xml.len().is_multiple_of(2) {
                return Err(refused("UTF-16 input with an odd number of bytes".into()));
            }
            let units = xml.chunks_exact(2).map(|c| {
                if little_endian { u16::from_le_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], c[1]]) }
            });
            transcoded = char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .map_err(|_| refused("invalid UTF-16 (an unpaired surrogate)".into()))?;
            (transcoded.as_str(), true)
        }
        None => match std::str::from_utf8(xml) {
            Ok(text) => (text, false),
            Err(e) => {
                let message = format!("invalid UTF-8 at byte {} (only UTF-8 and UTF-16 are accepted)", e.valid_up_to());
                return Err(refused(message));
            }
        },
    };
    // U+0000 is no XML character: text full of it is another encoding read as this one (UCS-4
    // looks like UTF-16 with every other unit zero).
    if text.contains('\0') {
        return Err(refused("NUL character (only UTF-8 and UTF-16 are accepted)".into()));
    }
    let mut reader = quick_xml::Reader::from_reader(text.as_bytes());
    loop {
        match reader.read_event() {
            Ok(Event::DocType(_)) => {
                return Err(ValidateError::Forbidden("DOCTYPE declarations are not accepted".into()));
            }
            Ok(Event::Decl(d)) => {
                let encoding = match d.encoding() {
                    None => continue,
                    Some(Ok(e)) => String::from_utf8_lossy(&e).to_ascii_lowercase(),
                    Some(Err(e)) => return Err(refused(format!("xml declaration: {e}"))),
                };
                let ok = if utf16 {
                    matches!(encoding.as_str(), "utf-16" | "utf-16le" | "utf-16be")
                } else {
                    encoding == "utf-8"
                };
                if !ok {
                    return Err(refused(format!(
                        "declared encoding `{encoding}` is not accepted (only UTF-8 and UTF-16)"
                    )));
                }
            }
            Ok(Event::Start(_) | Event::Empty(_) | Event::Eof) => return Ok(()),
            Err(e) => return Err(refused(format!("before the root element: {e}"))),
            Ok(_) => {}
        }
    }
}

/// `Some(little_endian)` when the bytes are UTF-16 (by BOM, or by a `<` next to a zero byte).
fn utf16(xml: &[u8]) -> Option<bool> {
    match xml {
        [0xFF, 0xFE, ..] | [b'<', 0, ..] => Some(true),
        [0xFE, 0xFF, ..] | [0, b'<', ..] => Some(false),
        _ => None,
    }
}
