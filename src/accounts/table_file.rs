//! A table of records kept in one TOML file beside the users file (`tokens.toml`,
//! `links.toml`): read like the users file, written like it, and failing closed.
//!
//! - **Read**: before each lookup the file's [`FileStamp`] (one `stat`) is compared with the one
//!   loaded, and the file read again on a difference, so a record added or revoked by another
//!   process (`ferry token add`, `ferry link del`) is in force at the next request, with no
//!   signal. A file that does not load fails closed: every lookup fails until it is fixed,
//!   because keeping the previous records would keep a revoked one alive. The error is logged
//!   once per version of the file. A file over the format's size cap is refused unread.
//! - **Write**: under a lock on the directory (the lock `ferry user` takes, when the files
//!   share a directory), the file is read and validated first (a broken file is refused,
//!   untouched), changed, checked to load again, written whole to an exclusive temp file
//!   (mode 0600, the old file's owner) that is fsynced and renamed over it, and the directory
//!   fsynced. Two edits at once never lose one. A symlink's target is edited, not replaced.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::users::{FileStamp, write_new_file};

/// What a table file holds and how its text reads and writes.
pub trait TableFormat: 'static {
    /// The records, validated.
    type Table: Clone + PartialEq + Send + Sync + 'static;
    /// What the store answers instead.
    type Error: Clone + std::fmt::Display + Send + Sync + 'static;
    /// What the file holds, plural, for messages: `tokens`, `links`.
    const WHAT: &'static str;
    /// The largest file read or written.
    const MAX_LEN: u64;
    /// The table of a file that does not exist.
    fn empty() -> Self::Table;
    /// The records in a file's text, each checked; errors name the record and field.
    fn parse(text: &str) -> Result<Self::Table, Self::Error>;
    /// The file's text for a table.
    fn render(table: &Self::Table) -> Result<String, Self::Error>;
    /// The store failed: the text says why (for the log).
    fn backend(reason: String) -> Self::Error;
    /// The table would not fit the file's size cap.
    fn full(reason: String) -> Self::Error;
}

/// One table file and its cache of the version last loaded.
pub struct TableFile<F: TableFormat> {
    path: PathBuf,
    /// The version of the file last loaded (`None` inside: there was no file) and what it
    /// gave. Held while a reload reads the file, so one reload runs at a time. `None`: not
    /// loaded yet, or this store wrote the file since.
    cache: Mutex<Option<Loaded<F>>>,
}

type Loaded<F> = (
    Option<FileStamp>,
    Result<Arc<<F as TableFormat>::Table>, <F as TableFormat>::Error>,
);

impl<F: TableFormat> TableFile<F> {
    /// The file at `path`, read at the first lookup; a missing file holds an empty table and
    /// the first change creates it (mode 0600).
    pub fn new(path: PathBuf) -> TableFile<F> {
        TableFile {
            path,
            cache: Mutex::new(None),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records in force: the cached table if the file's stamp is unchanged, else the file
    /// read again. Blocking (a `stat`, and a read on a change).
    pub fn table(&self) -> Result<Arc<F::Table>, F::Error> {
        let path = &self.path;
        let stamp = match FileStamp::of(path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error::<F>(path, &e)),
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, table)) = cache.as_ref()
            && *seen == stamp
        {
            return table.clone();
        }
        // The stamp was taken before the read: a change during the read is seen next time.
        let loaded = read_table::<F>(path).map(Arc::new);
        if let Err(e) = &loaded {
            tracing::error!(
                error = %e,
                file = F::WHAT,
                "file not loaded: every one of its records is refused until it is fixed"
            );
        }
        *cache = Some((stamp, loaded.clone()));
        loaded
    }

    /// Reads the file under the directory's lock, lets `change` edit the table, and writes it
    /// back if it changed; `change`'s answer is returned. On an error nothing is written.
    /// Blocking.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut F::Table) -> Result<T, F::Error>,
    ) -> Result<T, F::Error> {
        let result = edit::<F, T>(&self.path, change);
        // Whatever happened, the next read looks at the file again.
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
        result
    }
}

fn io_error<F: TableFormat>(path: &Path, e: &io::Error) -> F::Error {
    F::backend(format!("{} file {}: {e}", F::WHAT, path.display()))
}

/// Reads and validates the file; a missing file holds an empty table.
fn read_table<F: TableFormat>(path: &Path) -> Result<F::Table, F::Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(F::empty()),
        Err(e) => return Err(io_error::<F>(path, &e)),
    };
    let mut text = String::new();
    file.take(F::MAX_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_error::<F>(path, &e))?;
    if text.len() as u64 > F::MAX_LEN {
        return Err(F::backend(format!(
            "{} file {} is larger than {} MiB: refused (is it the right file?)",
            F::WHAT,
            path.display(),
            F::MAX_LEN >> 20
        )));
    }
    F::parse(&text).map_err(|e| F::backend(format!("{} file {}: {e}", F::WHAT, path.display())))
}

/// Read-change-write of the file under the directory's lock; see [`TableFile::update`].
fn edit<F: TableFormat, T>(
    path: &Path,
    change: impl FnOnce(&mut F::Table) -> Result<T, F::Error>,
) -> Result<T, F::Error> {
    // Edit a symlink's target rather than replace the link with a regular file.
    let path = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|e| io_error::<F>(path, &e))?
        }
        _ => path.to_path_buf(),
    };
    let path = path.as_path();
    let file_name = path
        .file_name()
        .ok_or_else(|| F::backend(format!("{}: not a file name", path.display())))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir_file = File::open(dir).map_err(|e| io_error::<F>(dir, &e))?;
    // The file is replaced by rename, so the lock is on the directory (as `ferry user` takes
    // it): two edits at once never lose one. Released when `dir_file` is dropped.
    rustix::fs::flock(&dir_file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_error::<F>(dir, &e.into()))?;

    let old_meta = fs::metadata(path).ok();
    let mut table = read_table::<F>(path)?;
    let before = table.clone();
    let answer = change(&mut table)?;
    if table == before {
        return Ok(answer);
    }
    let text = F::render(&table)?;
    // Never write a file that would not load.
    F::parse(&text).map_err(|e| F::backend(format!("{} file not written: {e}", F::WHAT)))?;
    if text.len() as u64 > F::MAX_LEN {
        return Err(F::full(format!(
            "the {} file would be larger than {} MiB",
            F::WHAT,
            F::MAX_LEN >> 20
        )));
    }

    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{:016x}", rand::random::<u64>()));
    let tmp_path = dir.join(tmp_name);
    write_new_file(&tmp_path, text.as_bytes(), old_meta.as_ref())
        .map_err(|e| io_error::<F>(path, &e))?;
    if let Err(e) = fs::rename(&tmp_path, path) {
        // Best effort: the temp file is ours and must not linger.
        let _ = fs::remove_file(&tmp_path);
        return Err(io_error::<F>(path, &e));
    }
    dir_file.sync_all().map_err(|e| io_error::<F>(dir, &e))?;
    Ok(answer)
}
