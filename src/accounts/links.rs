//! Drop links in a file: `links.toml` beside the users file, as a [`LinkStore`].
//!
//! ```toml
//! [links.3fa9c2d1]
//! owner = "alice"
//! folder = "/drop"                       # normal form; a file for a download link
//! kind = "upload"                        # or "download" (a file), "download-folder"
//! token_sha256 = "<64 hex digits>"       # of the whole token; the token itself is nowhere
//! created = "2026-12-07T02:14:01Z"
//! expires = "2026-12-14T02:14:01Z"       # absent: never
//! max_files = 10                         # absent: no limit (also max_bytes, max_downloads)
//! used_files = 2                         # counters, written back as uses commit
//! used_bytes = 1048576
//! password = "$argon2id$v=19$..."        # absent: no password
//! note = "Scans for the audit, please"   # shown as text, never as markup
//! ```
//!
//! Written like `tokens.toml` ([`crate::accounts::tokens`]): by `ferry link add|del`, `ferry
//! user del`, and by the server as each use commits (the `used_*` counters), always under the
//! lock on the directory, read and validated first (a broken file is refused, untouched),
//! written whole to an exclusive temp file (mode 0600, the old file's owner), fsynced and
//! renamed over it, then the directory fsynced. So a counter the server writes and a link the
//! command line adds at the same moment never lose each other.
//!
//! Read like `tokens.toml`: before each lookup the store compares the file's [`FileStamp`] and
//! reloads on a difference, so a link added or revoked by another process is in force at the
//! next request. A file that does not load fails closed: every lookup and use fails until it
//! is fixed, because keeping the previous links would keep a revoked one alive.
//!
//! Reservations ([`LinkStore::reserve_use`]) stay in this process's memory: only committed
//! uses are written, so an upload that never ends costs no write and leaves no trace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::accounts::table_file::{TableFile, TableFormat};
use crate::accounts::tokens::{format_time, parse_digest, parse_time};
use crate::domain::BoxFuture;
use crate::state::links::{
    Link, LinkError, LinkId, LinkKind, LinkRefused, LinkStore, LinkTable, LinkUseId, LinkUses,
};
use crate::users;

/// The links file's name beside the users file.
pub const LINKS_FILE_NAME: &str = "links.toml";

/// Largest links file read: [`crate::state::links::MAX_LINKS`] records with long notes and
/// folders take about 6 MB; typical ones a tenth of that.
pub const MAX_LINKS_FILE_LEN: u64 = 8 << 20;

/// The first lines of every links file written.
const HEADER: &str = "# ferry drop links, written by `ferry link add|del` and by the server as \
                      links are used. Only the SHA-256 of each token is kept here.\n\n";

/// Where the links of the users file at `users` live: `links.toml` in the same directory.
pub fn links_path_beside(users: &Path) -> PathBuf {
    users.with_file_name(LINKS_FILE_NAME)
}

/// Links kept in a file. Cheap to clone; clones share the cache and the reservations.
#[derive(Clone)]
pub struct TomlLinks {
    inner: Arc<Inner>,
}

struct Inner {
    file: TableFile<LinksFile>,
    /// This process's reservations. Held across a commit's file write, so a reservation is
    /// checked and a commit counted one at a time: no two uploads both take the last slot.
    uses: Mutex<LinkUses>,
}

/// The links file's format.
pub struct LinksFile;

impl TableFormat for LinksFile {
    type Table = LinkTable;
    type Error = LinkError;
    const WHAT: &'static str = "links";
    const MAX_LEN: u64 = MAX_LINKS_FILE_LEN;

    fn empty() -> LinkTable {
        LinkTable::new()
    }

    fn parse(text: &str) -> Result<LinkTable, LinkError> {
        parse_table(text)
    }

    fn render(table: &LinkTable) -> Result<String, LinkError> {
        render(table)
    }

    fn backend(reason: String) -> LinkError {
        LinkError::backend(reason)
    }

    fn full(reason: String) -> LinkError {
        LinkError::Full { reason }
    }
}

impl std::fmt::Debug for TomlLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TomlLinks")
            .field("path", &self.inner.file.path())
            .finish_non_exhaustive()
    }
}

impl TomlLinks {
    /// The links file at `path`, read at the first lookup; a missing file holds no links and
    /// the first `add` creates it (mode 0600).
    pub fn new(path: PathBuf) -> TomlLinks {
        TomlLinks {
            inner: Arc::new(Inner {
                file: TableFile::new(path),
                uses: Mutex::new(LinkUses::new()),
            }),
        }
    }

    /// The links file beside the users file at `users` ([`links_path_beside`]).
    pub fn beside_users(users: &Path) -> TomlLinks {
        TomlLinks::new(links_path_beside(users))
    }

    /// The file this store reads and writes.
    pub fn path(&self) -> &Path {
        self.inner.file.path()
    }

    /// The links in force: the cached table if the file's stamp is unchanged, else the file
    /// read again. Blocking (a `stat`, and a read on a change).
    pub fn table(&self) -> Result<Arc<LinkTable>, LinkError> {
        self.inner.file.table()
    }

    /// Reads the file under the directory's lock, lets `change` edit the links, and writes
    /// them back if they changed; `change`'s answer is returned. On an error nothing is
    /// written. Blocking. What `ferry link add` uses to check the user and pick a free id
    /// while no other edit can run.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut LinkTable) -> Result<T, LinkError>,
    ) -> Result<T, LinkError> {
        self.inner.file.update(change)
    }

    fn uses(&self) -> std::sync::MutexGuard<'_, LinkUses> {
        // A panic while held leaves the reservations consistent: each change is one call.
        self.inner
            .uses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn blocking<T: Send + 'static, E: Send + 'static>(
        &self,
        on_join_error: fn(String) -> E,
        f: impl FnOnce(&TomlLinks) -> Result<T, E> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, E>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(|e| on_join_error(format!("links file task failed: {e}")))?
        })
    }
}

fn backend(reason: String) -> LinkError {
    LinkError::backend(reason)
}

impl LinkStore for TomlLinks {
    fn add<'a>(&'a self, link: &'a Link) -> BoxFuture<'a, Result<(), LinkError>> {
        let link = link.clone();
        self.blocking(backend, move |s| {
            check_account_fields(&link).map_err(LinkError::invalid)?;
            s.update(|t| t.insert(link))
        })
    }

    fn get(&self, id: LinkId) -> BoxFuture<'_, Result<Option<Link>, LinkError>> {
        self.blocking(backend, move |s| Ok(s.table()?.get(id).cloned()))
    }

    fn list<'a>(&'a self, owner: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Link>, LinkError>> {
        let owner = owner.map(str::to_owned);
        self.blocking(backend, move |s| Ok(s.table()?.list(owner.as_deref())))
    }

    fn revoke(&self, id: LinkId) -> BoxFuture<'_, Result<(), LinkError>> {
        self.blocking(backend, move |s| s.update(|t| t.remove(id).map(drop)))
    }

    fn revoke_user<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<usize, LinkError>> {
        let owner = owner.to_owned();
        self.blocking(backend, move |s| s.update(|t| Ok(t.remove_user(&owner))))
    }

    fn reserve_use(
        &self,
        id: LinkId,
        bytes: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<LinkUseId, LinkRefused>> {
        self.blocking(LinkRefused::Unavailable, move |s| {
            let mut uses = s.uses();
            let table = s.table()?;
            uses.reserve(table.get(id), bytes, ttl, SystemTime::now(), Instant::now())
        })
    }

    fn renew_use(
        &self,
        use_id: LinkUseId,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), LinkRefused>> {
        // Blocking: a commit holds the reservations across its file write.
        self.blocking(LinkRefused::Unavailable, move |s| {
            s.uses().renew(use_id, ttl, Instant::now())
        })
    }

    fn commit_use(&self, use_id: LinkUseId, bytes: u64) -> BoxFuture<'_, Result<(), LinkRefused>> {
        self.blocking(LinkRefused::Unavailable, move |s| {
            let mut uses = s.uses();
            let held = uses.for_commit(use_id, bytes, Instant::now())?;
            let now = SystemTime::now();
            // Counted in the file as it is now: another process's commit or revocation since
            // the reservation is seen here.
            let counted = s.update(|t| Ok(t.commit(&held, bytes, now)));
            uses.end(use_id);
            counted?
        })
    }

    fn release_use(&self, use_id: LinkUseId) -> BoxFuture<'_, Result<(), LinkError>> {
        self.blocking(backend, move |s| {
            s.uses().end(use_id);
            Ok(())
        })
    }

    fn release_use_soon(&self, use_id: LinkUseId) {
        // Never wait in `Drop` for a commit's file write: hand the release to the blocking
        // pool when there is one, else (no runtime: nothing else can hold the lock for
        // long) do it here.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let this = self.clone();
                drop(rt.spawn_blocking(move || this.uses().end(use_id)));
            }
            Err(_) => self.uses().end(use_id),
        }
    }

    fn count_download(&self, id: LinkId) -> BoxFuture<'_, Result<bool, LinkError>> {
        self.blocking(backend, move |s| {
            let now = SystemTime::now();
            s.update(|t| t.count_download(id, now))
        })
    }
}

/// What only the accounts layer can check of a record: the owner is a valid user name and the
/// password a usable argon2id PHC string.
fn check_account_fields(l: &Link) -> Result<(), String> {
    users::validate_name(&l.owner).map_err(|e| format!("link {}: {e}", l.id))?;
    if let Some(p) = &l.password {
        users::check_hash(p).map_err(|e| format!("link {}: password: {e}", l.id))?;
    }
    Ok(())
}

/// The file's form.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    links: BTreeMap<String, Record>,
}

/// One link in the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    owner: String,
    folder: String,
    kind: String,
    token_sha256: String,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_downloads: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    used_files: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    used_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    used_downloads: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The links in a file's text, each checked; errors name the link and field.
fn parse_table(text: &str) -> Result<LinkTable, LinkError> {
    let form: FileForm = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map_or(0, |before| before.matches('\n').count() + 1);
        let what = e.message().trim_end();
        LinkError::backend(if line > 0 {
            format!("line {line}: {what}")
        } else {
            what.to_owned()
        })
    })?;
    let mut records = Vec::with_capacity(form.links.len());
    for (id, r) in form.links {
        let at = |what: String| LinkError::invalid(format!("link `{}`: {what}", id.escape_debug()));
        let id_parsed: LinkId = id.parse().map_err(|e: LinkError| at(e.to_string()))?;
        let kind: LinkKind = r.kind.parse().map_err(|e: LinkError| at(e.to_string()))?;
        let token_sha256 = parse_digest(&r.token_sha256)
            .ok_or_else(|| at("`token_sha256` is not 64 lowercase hex digits".into()))?;
        let created =
            parse_time(&r.created).ok_or_else(|| at("`created` is not an RFC 3339 time".into()))?;
        let expires = match &r.expires {
            None => None,
            Some(e) => {
                Some(parse_time(e).ok_or_else(|| at("`expires` is not an RFC 3339 time".into()))?)
            }
        };
        let link = Link {
            id: id_parsed,
            token_sha256,
            owner: r.owner,
            folder: r.folder,
            kind,
            created,
            expires,
            max_files: r.max_files,
            max_bytes: r.max_bytes,
            max_downloads: r.max_downloads,
            used_files: r.used_files,
            used_bytes: r.used_bytes,
            used_downloads: r.used_downloads,
            password: r.password,
            note: r.note,
        };
        check_account_fields(&link).map_err(LinkError::invalid)?;
        records.push(link);
    }
    LinkTable::from_records(records)
}

/// The file's text for `table`.
fn render(table: &LinkTable) -> Result<String, LinkError> {
    let form = FileForm {
        links: table
            .records()
            .map(|l| {
                (
                    l.id.to_string(),
                    Record {
                        owner: l.owner.clone(),
                        folder: l.folder.clone(),
                        kind: l.kind.as_str().to_owned(),
                        token_sha256: hex::encode(l.token_sha256),
                        created: format_time(l.created),
                        expires: l.expires.map(format_time),
                        max_files: l.max_files,
                        max_bytes: l.max_bytes,
                        max_downloads: l.max_downloads,
                        used_files: l.used_files,
                        used_bytes: l.used_bytes,
                        used_downloads: l.used_downloads,
                        password: l.password.clone(),
                        note: l.note.clone(),
                    },
                )
            })
            .collect(),
    };
    let body = toml::to_string(&form)
        .map_err(|e| LinkError::backend(format!("links file not written: {e}")))?;
    Ok(format!("{HEADER}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use std::os::unix::fs::PermissionsExt;

    use crate::state::links::{LinkSpec, issue};

    fn spec() -> LinkSpec {
        LinkSpec {
            owner: "alice".into(),
            folder: "/in box".into(),
            kind: LinkKind::Upload,
            ttl: Some(Duration::from_secs(60)),
            max_files: Some(3),
            max_bytes: Some(1 << 20),
            max_downloads: None,
            password: None,
            note: Some("<b>\"quoted\"</b> ✓".into()),
        }
    }

    #[test]
    fn links_live_beside_the_users_file() {
        assert_eq!(
            links_path_beside(Path::new("/etc/ferry/users.toml")),
            Path::new("/etc/ferry/links.toml")
        );
    }

    #[test]
    fn a_written_file_reads_back_the_same_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = TomlLinks::new(dir.path().join("links.toml"));
        let (_, a) = issue(spec(), SystemTime::now(), |_| false).unwrap();
        let (_, b) = issue(
            LinkSpec {
                kind: LinkKind::Download,
                folder: "/a/report.pdf".into(),
                ttl: None,
                max_files: None,
                max_bytes: None,
                max_downloads: Some(5),
                note: None,
                ..spec()
            },
            SystemTime::now(),
            |_| false,
        )
        .unwrap();
        store
            .update(|t| {
                t.insert(a.clone())?;
                t.insert(b.clone())
            })
            .unwrap();
        let table = store.table().unwrap();
        assert_eq!(table.get(a.id), Some(&a));
        assert_eq!(table.get(b.id), Some(&b));
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn broken_files_are_refused_with_the_link_and_field_named() {
        let h = "0".repeat(64);
        let rec = |extra: &str| {
            format!(
                "[links.00000001]\nowner=\"a\"\nfolder=\"/d\"\nkind=\"upload\"\n\
                 token_sha256=\"{h}\"\ncreated=\"2026-01-01T00:00:00Z\"\n{extra}"
            )
        };
        parse_table(&rec("")).unwrap();
        let cases = [
            (rec("").replace("00000001", "0000000G"), "not a link id"),
            (rec("").replace("\"/d\"", "\"/../etc\""), "normal form"),
            (rec("").replace("\"/d\"", "\"d\""), "start with"),
            (rec("").replace("upload", "both"), "not a link kind"),
            (
                rec("").replace("owner=\"a\"", "owner=\"a/b\""),
                "path separator",
            ),
            (rec("max_downloads = 3\n"), "counts no downloads"),
            (rec("password = \"plain\"\n"), "password"),
            (rec("note = \"a\\u0007\"\n"), "control"),
            (rec("max_files = -1\n"), "line 7"),
            (rec("colour = 1\n"), "unknown field"),
        ];
        for (text, needle) in cases {
            let e = parse_table(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    /// Reservations are a process's own: two servers on one file may both reserve the last
    /// slot, but the file is the judge at the commit, so only one file is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_reserving_the_last_slot_commit_only_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("links.toml");
        let (one, two) = (TomlLinks::new(path.clone()), TomlLinks::new(path));
        let (_, l) = issue(
            LinkSpec {
                max_files: Some(1),
                max_bytes: Some(10),
                ..spec()
            },
            SystemTime::now(),
            |_| false,
        )
        .unwrap();
        one.add(&l).await.unwrap();
        let ttl = Duration::from_secs(60);
        let a = one.reserve_use(l.id, 6, ttl).await.unwrap();
        let b = two.reserve_use(l.id, 6, ttl).await.unwrap();
        one.commit_use(a, 6).await.unwrap();
        assert_eq!(two.commit_use(b, 6).await, Err(LinkRefused::Files));
        let l = two.get(l.id).await.unwrap().unwrap();
        assert_eq!((l.used_files, l.used_bytes), (1, 6));
        assert_eq!(two.reserve_use(l.id, 0, ttl).await, Err(LinkRefused::Files));
    }

    #[test]
    fn a_broken_file_fails_closed_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("links.toml");
        let store = TomlLinks::new(path.clone());
        let (_, a) = issue(spec(), SystemTime::now(), |_| false).unwrap();
        store.update(|t| t.insert(a.clone())).unwrap();
        assert!(store.table().unwrap().get(a.id).is_some());
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("garbage = [\n");
        fs::write(&path, &text).unwrap();
        assert!(store.table().is_err());
        assert!(store.update(|t| Ok(t.remove_user("alice"))).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "left untouched");
    }
}
