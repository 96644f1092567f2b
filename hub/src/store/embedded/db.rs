//! The redb database behind a handle the store writer can replace.
//!
//! After any I/O error (a full disk, a failing device), redb refuses every later operation of
//! that `Database` with `PreviousIo` until it is opened again. Without a reopen the hub would
//! answer 503 to every intake and settle until someone restarted it, even after the disk had room
//! again. So the writer, when a batch fails and the database reports `PreviousIo`, reopens it
//! ([`Db::reopen`]): it takes the handle out (requests meanwhile get 503), waits for the last
//! reader to let go of the file, and opens it again, which runs redb's recovery to the last
//! committed transaction. Nothing committed is lost: a failed commit is not acknowledged, and
//! what it may have left behind is rolled back by the recovery.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::Database;

use crate::store::StoreError;

/// redb's page cache; the default (1 GiB) is far more than a queue needs.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How long a reopen waits for readers that still hold the old database.
const READERS_GONE: Duration = Duration::from_secs(5);

/// Opens the database (the file, or in tests a backend that fails on demand).
pub type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

pub struct Db {
    path: PathBuf,
    open: Opener,
    current: RwLock<Option<Arc<Database>>>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, redb::DatabaseError> {
        let file = path.to_owned();
        Db::with_opener(path, Box::new(move || Database::builder().set_cache_size(CACHE_BYTES).create(&file)))
    }

    /// `path` only names the database in messages.
    pub fn with_opener(path: &Path, open: Opener) -> Result<Db, redb::DatabaseError> {
        let database = open()?;
        Ok(Db { path: path.to_owned(), open, current: RwLock::new(Some(Arc::new(database))) })
    }

    /// The database, unless a reopen is under way or failed.
    pub fn get(&self) -> Result<Arc<Database>, StoreError> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.clone().ok_or_else(|| {
            StoreError::Unavailable("the store is being reopened after an I/O error (is the disk full?)".into())
        })
    }

    /// Whether `database` refuses everything after an I/O error and must be opened again.
    pub fn is_broken(database: &Database) -> bool {
        match database.begin_write() {
            Ok(txn) => {
                drop(txn.abort());
                false
            }
            Err(e) => matches!(e, redb::TransactionError::Storage(redb::StorageError::PreviousIo)),
        }
    }

    /// Drops the current database (the caller must hold no other handle to it) and opens the
    /// file again. On failure the store stays without a database (every operation answers 503)
    /// until a later reopen succeeds.
    pub fn reopen(&self) -> Result<Arc<Database>, String> {
        let old = self.current.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
        let deadline = Instant::now() + READERS_GONE;
        loop {
            match (self.open)() {
                Ok(database) => {
                    let database = Arc::new(database);
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(database.clone());
                    return Ok(database);
                }
                // A reader still holds the old one (its file lock): they are short.
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("cannot reopen `{}`: {e}", self.path.display())),
            }
        }
    }
}
