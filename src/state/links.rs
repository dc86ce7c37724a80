//! Drop links: a URL with which anyone holding it can upload into one folder of a user's home
//! and do nothing else, or download one file or folder (issue 14 item 5, docs/design/web.md
//! §4).
//!
//! A link's token is `dl_<id>_<secret>`, the format of API tokens
//! ([`crate::state::tokens`]) with another prefix: `id` is 8 lowercase hex digits, public
//! (audit lines and receipts name it); `secret` is 32 random bytes in unpadded base64url. A
//! store keeps only the SHA-256 of the whole token text, so a copy of the store opens no link.
//! [`LinkStore::by_token`] parses strictly, looks the id up and compares the hash in constant
//! time (`subtle`).
//!
//! Usage is counted with leases, like the quota's reservations ([`super::UsageLedger`]): an
//! upload first reserves one file and its bytes ([`LinkStore::reserve_use`]), checked against
//! the link's `max_files`/`max_bytes` together with what is committed and every live
//! reservation, so uploads racing for the last slot cannot both win; then commits what it
//! really wrote ([`LinkStore::commit_use`]: never more than it reserved) or releases it. A
//! reservation never committed nor released expires with its lease. A link revoked or expired
//! while an upload runs refuses that upload's commit, and a link revoked and made again under
//! the same id never takes the old link's reservations.
//!
//! Bounded: at most [`MAX_LINKS_PER_OWNER`] live links per owner, [`MAX_LINKS`] in all, and
//! [`MAX_USES_IN_FLIGHT`] reservations at once per store, [`MAX_USES_PER_LINK`] per link.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{BoxFuture, MAX_NAME_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN, MAX_USER_LEN};
use crate::state::tokens::{
    ID_LEN, SECRET_BYTES, SECRET_LEN, base64url, is_invisible, is_lower_hex, split_prefixed,
    whole_seconds,
};

/// What every link token starts with.
pub const LINK_PREFIX: &str = "dl_";

/// Length of a whole link token: `dl_` + id + `_` + secret.
pub const LINK_TOKEN_LEN: usize = LINK_PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 200;

/// Most live links one owner may have.
pub const MAX_LINKS_PER_OWNER: usize = 256;

/// Most links a store holds in all.
pub const MAX_LINKS: usize = 4096;

/// Most uses (reservations) a store holds at once, over all links.
pub const MAX_USES_IN_FLIGHT: usize = 4096;

/// Most uses in flight through one link: one link's holder cannot take every slot of
/// [`MAX_USES_IN_FLIGHT`] from the other links.
pub const MAX_USES_PER_LINK: usize = 64;

/// Longest password hash a link may carry (an argon2id PHC string is about 100 bytes).
const MAX_PASSWORD_HASH_LEN: usize = 512;

/// How often [`issue`] draws a new id when the one it drew is taken, before it gives up.
const ID_ATTEMPTS: usize = 8;

/// A link's public id: 32 bits, written as 8 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u32);

impl LinkId {
    /// A random id.
    pub fn random() -> LinkId {
        LinkId(rand::random())
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkId({self})")
    }
}

impl FromStr for LinkId {
    type Err = LinkError;

    /// Exactly 8 lowercase hex digits: one id has one spelling.
    fn from_str(s: &str) -> Result<LinkId, LinkError> {
        if s.len() != ID_LEN || !s.bytes().all(is_lower_hex) {
            return Err(LinkError::invalid(format!(
                "`{}` is not a link id (8 lowercase hex digits)",
                s.escape_debug()
            )));
        }
        u32::from_str_radix(s, 16)
            .map(LinkId)
            .map_err(|_| LinkError::invalid("not a link id"))
    }
}

/// What a link lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    /// Upload into the folder, nothing else: no listing, no download, no overwrite.
    Upload,
    /// Download the one file it names.
    Download,
    /// Browse the folder it names and download any file below it (never above it). Made
    /// when `ferry link add --download` names a folder, and kept as its own kind so that a
    /// file link never serves a folder that later takes the file's name.
    DownloadFolder,
}

impl LinkKind {
    /// The word files and lists use: `upload` or `download`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Upload => "upload",
            LinkKind::Download => "download",
            LinkKind::DownloadFolder => "download-folder",
        }
    }

    /// Whether it is a download link (of a file or of a folder): it counts downloads.
    pub fn is_download(self) -> bool {
        matches!(self, LinkKind::Download | LinkKind::DownloadFolder)
    }
}

impl FromStr for LinkKind {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<LinkKind, LinkError> {
        match s {
            "upload" => Ok(LinkKind::Upload),
            "download" => Ok(LinkKind::Download),
            "download-folder" => Ok(LinkKind::DownloadFolder),
            _ => Err(LinkError::invalid(format!(
                "`{}` is not a link kind (`upload`, `download` or `download-folder`)",
                s.escape_debug()
            ))),
        }
    }
}

/// One link as a store keeps it: never the token, only its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct Link {
    /// Public id, unique in the store.
    pub id: LinkId,
    /// SHA-256 of the whole token text `dl_<id>_<secret>`.
    pub token_sha256: [u8; 32],
    /// The user whose home it opens.
    pub owner: String,
    /// A path in the owner's home in normal form (`/`, `/a/b`): see [`validate_folder`]. The
    /// folder an upload link drops into; the file or folder a download link serves.
    pub folder: String,
    /// Upload or download.
    pub kind: LinkKind,
    /// When it was made (whole seconds).
    pub created: SystemTime,
    /// From when on it is refused (whole seconds); `None`: never.
    pub expires: Option<SystemTime>,
    /// Most files uploaded through it (upload links).
    pub max_files: Option<u64>,
    /// Most bytes uploaded through it (upload links).
    pub max_bytes: Option<u64>,
    /// Most downloads through it (download links).
    pub max_downloads: Option<u64>,
    /// Files committed through it.
    pub used_files: u64,
    /// Bytes committed through it.
    pub used_bytes: u64,
    /// Downloads counted.
    pub used_downloads: u64,
    /// An argon2id PHC string the holder must also present, if set.
    pub password: Option<String>,
    /// Text for the people the link is given to: at most [`MAX_NOTE_CHARS`] characters, no
    /// control or invisible characters. Shown as text, never as markup.
    pub note: Option<String>,
}

impl Link {
    /// Whether the link is expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// Why this link cannot be used for `kind` at `now` (expired, the other kind, or used
    /// up by what is committed), or `None` when it can. Reservations in flight are not seen
    /// here: [`LinkStore::reserve_use`] is the check that counts them.
    pub fn refusal(&self, kind: LinkKind, now: SystemTime) -> Option<LinkRefused> {
        if self.kind != kind {
            return Some(LinkRefused::WrongKind);
        }
        if self.is_expired(now) {
            return Some(LinkRefused::Expired);
        }
        match kind {
            LinkKind::Upload => {
                if self.max_files.is_some_and(|m| self.used_files >= m) {
                    return Some(LinkRefused::Files);
                }
                if self.max_bytes.is_some_and(|m| self.used_bytes > m) {
                    return Some(LinkRefused::Bytes);
                }
            }
            LinkKind::Download | LinkKind::DownloadFolder => {
                if self.max_downloads.is_some_and(|m| self.used_downloads >= m) {
                    return Some(LinkRefused::Downloads);
                }
            }
        }
        None
    }
}

impl fmt::Debug for Link {
    // The hashes are not secrets, but keep them out of logs all the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .field("token_sha256", &"<hidden>")
            .field("owner", &self.owner)
            .field("folder", &self.folder)
            .field("kind", &self.kind)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("max_files", &self.max_files)
            .field("max_bytes", &self.max_bytes)
            .field("max_downloads", &self.max_downloads)
            .field("used_files", &self.used_files)
            .field("used_bytes", &self.used_bytes)
            .field("used_downloads", &self.used_downloads)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("note", &self.note)
            .finish()
    }
}

/// What a store of links answers instead of a result. Messages are short, lowercase, and
/// never contain a token or a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No link has this id.
    #[error("no link {0}")]
    NotFound(LinkId),
    /// A link has this id already.
    #[error("link {0} already exists")]
    AlreadyExists(LinkId),
    /// The record or request is refused: a bad id, owner, folder, note, time or kind.
    #[error("{reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The store is full: for this owner or in all.
    #[error("{reason}")]
    Full {
        /// Which limit was reached.
        reason: String,
    },
    /// The store failed: the file or database could not be read or written, or what it holds
    /// is broken.
    #[error("{reason}")]
    Backend {
        /// What failed, and where.
        reason: String,
    },
}

impl LinkError {
    /// A [`LinkError::Invalid`] with this reason.
    pub fn invalid(reason: impl Into<String>) -> LinkError {
        LinkError::Invalid {
            reason: reason.into(),
        }
    }

    /// A [`LinkError::Backend`] with this reason.
    pub fn backend(reason: impl Into<String>) -> LinkError {
        LinkError::Backend {
            reason: reason.into(),
        }
    }
}

/// Why a use of a link was refused ([`LinkStore::reserve_use`], [`LinkStore::commit_use`]).
/// The texts may be shown to the link's holder: they name no path, owner or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkRefused {
    /// The link does not exist (revoked, or never made), or was made again since the
    /// reservation.
    #[error("this link does not exist")]
    Gone,
    /// The link has expired.
    #[error("this link has expired")]
    Expired,
    /// An upload through a download link or the reverse.
    #[error("this link does not allow that")]
    WrongKind,
    /// The link's `max_files` is reached (counting uploads in flight).
    #[error("this link takes no more files")]
    Files,
    /// The link's `max_bytes` would be passed (counting uploads in flight).
    #[error("this link takes no more bytes")]
    Bytes,
    /// The link's `max_downloads` is reached.
    #[error("this link has been used up")]
    Downloads,
    /// The reservation has expired, was released or committed, or never existed.
    #[error("the upload's reservation has expired")]
    LeaseGone,
    /// A commit of more bytes than were reserved; the reservation is kept.
    #[error("more bytes than were reserved")]
    OverReserved,
    /// Too many uploads through links at once; try again later.
    #[error("too many uploads at once")]
    Busy,
    /// The store failed; the text is for the server's log.
    #[error("link store unavailable: {0}")]
    Unavailable(String),
}

impl From<LinkError> for LinkRefused {
    fn from(e: LinkError) -> LinkRefused {
        match e {
            LinkError::NotFound(_) => LinkRefused::Gone,
            other => LinkRefused::Unavailable(other.to_string()),
        }
    }
}

/// A use of a link in flight (a lease of a [`LinkStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkUseId(pub u64);

/// Where links live. Dyn-compatible (`Arc<dyn LinkStore>`), async at the boundary. What every
/// store must do, and what `tests/link_contract.rs` checks:
///
/// - [`get`](LinkStore::get) and [`by_token`](LinkStore::by_token) see every write made before
///   they began, by this store or another on the same backing (`ferry link add` in another
///   process): a link added or revoked is in force at the next request.
/// - [`add`](LinkStore::add) of a taken id fails with [`LinkError::AlreadyExists`]; a record
///   that breaks [`validate_link`] with [`LinkError::Invalid`]; one over
///   [`MAX_LINKS_PER_OWNER`] or [`MAX_LINKS`] with [`LinkError::Full`]. Links already expired
///   at the new one's `created` are dropped first.
/// - [`list`](LinkStore::list) is sorted by owner, then created, then id.
/// - [`revoke`](LinkStore::revoke) of an unknown id fails with [`LinkError::NotFound`];
///   [`revoke_user`](LinkStore::revoke_user) removes every link of the owner and says how many.
/// - Uses: see the module documentation; [`count_download`](LinkStore::count_download) counts
///   one download atomically and answers `false`, counting nothing, when the link is used up
///   or expired.
pub trait LinkStore: Send + Sync + fmt::Debug {
    /// Adds `link`.
    fn add<'a>(&'a self, link: &'a Link) -> BoxFuture<'a, Result<(), LinkError>>;

    /// The link with this id, expired or not, or `None`.
    fn get(&self, id: LinkId) -> BoxFuture<'_, Result<Option<Link>, LinkError>>;

    /// The link a presented token opens, expired or used up or not (see [`Link::refusal`]),
    /// or `None`: malformed (refused without a lookup), unknown id, or wrong secret (compared
    /// in constant time). The front-end penalises `None` like a failed login.
    fn by_token<'a>(
        &'a self,
        presented: &'a str,
    ) -> BoxFuture<'a, Result<Option<Link>, LinkError>> {
        Box::pin(async move {
            let Some(id) = parse(presented) else {
                return Ok(None);
            };
            let Some(link) = self.get(id).await? else {
                return Ok(None);
            };
            let presented_hash = token_sha256(presented);
            Ok(bool::from(presented_hash.ct_eq(&link.token_sha256)).then_some(link))
        })
    }

    /// The links of `owner`, or every link for `None`.
    fn list<'a>(&'a self, owner: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Link>, LinkError>>;

    /// Removes the link with this id. Uploads in flight through it cannot commit.
    fn revoke(&self, id: LinkId) -> BoxFuture<'_, Result<(), LinkError>>;

    /// Removes every link of `owner` (when the user is deleted), returning how many.
    fn revoke_user<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<usize, LinkError>>;

    /// Reserves one file of `bytes` through the upload link `id` for `ttl`: refused when the
    /// link is gone, expired, a download link, or when what is committed plus every live
    /// reservation plus this one would pass `max_files` or `max_bytes`.
    fn reserve_use(
        &self,
        id: LinkId,
        bytes: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<LinkUseId, LinkRefused>>;

    /// Extends a live reservation to `ttl` from now ([`LinkRefused::LeaseGone`] if it expired).
    fn renew_use(&self, use_id: LinkUseId, ttl: Duration)
    -> BoxFuture<'_, Result<(), LinkRefused>>;

    /// Counts one file of `bytes` (at most what was reserved) and ends the reservation. Refused
    /// if the lease is gone, if the link was revoked, made again or expired since the
    /// reservation (the reservation ends too), or for more bytes than reserved (it is kept).
    /// On a refusal the upload must not commit.
    fn commit_use(&self, use_id: LinkUseId, bytes: u64) -> BoxFuture<'_, Result<(), LinkRefused>>;

    /// Ends a reservation without counting anything; an unknown or expired one is no error.
    fn release_use(&self, use_id: LinkUseId) -> BoxFuture<'_, Result<(), LinkError>>;

    /// Ends a reservation without waiting (for `Drop`; see [`LinkUse`]): it may end a moment
    /// later; the lease's expiry is the backstop.
    fn release_use_soon(&self, use_id: LinkUseId);

    /// Counts one download through the download link `id`: `false` (nothing counted) when it
    /// is expired or `max_downloads` is used up; [`LinkError::NotFound`] when it is gone,
    /// [`LinkError::Invalid`] for an upload link.
    fn count_download(&self, id: LinkId) -> BoxFuture<'_, Result<bool, LinkError>>;
}

/// One upload through a link: a reservation that is given back when dropped uncommitted, so
/// no path of an upload can forget it. Renew it as the upload makes progress.
pub struct LinkUse {
    store: Arc<dyn LinkStore>,
    link: LinkId,
    id: Option<LinkUseId>,
    ttl: Duration,
    renewed: Instant,
}

impl fmt::Debug for LinkUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkUse")
            .field("link", &self.link)
            .field("id", &self.id)
            .finish()
    }
}

impl LinkUse {
    /// Reserves one file of `bytes` through the upload link `link` for a lease of `ttl`
    /// ([`LinkStore::reserve_use`]).
    pub async fn reserve(
        store: &Arc<dyn LinkStore>,
        link: LinkId,
        bytes: u64,
        ttl: Duration,
    ) -> Result<LinkUse, LinkRefused> {
        let id = store.reserve_use(link, bytes, ttl).await?;
        Ok(LinkUse {
            store: Arc::clone(store),
            link,
            id: Some(id),
            ttl,
            renewed: Instant::now(),
        })
    }

    /// The link this use goes through (for the audit line).
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// Renews the lease if a third of it has passed since the last renewal (a clock read when
    /// nothing is due). A lease that expired is [`LinkRefused::LeaseGone`]: stop the upload.
    pub async fn renew_if_due(&mut self) -> Result<(), LinkRefused> {
        if self.renewed.elapsed() < self.ttl / 3 {
            return Ok(());
        }
        let id = self.id.ok_or(LinkRefused::LeaseGone)?;
        self.store.renew_use(id, self.ttl).await?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Counts the file of `bytes` ([`LinkStore::commit_use`]). Call it right before the
    /// upload's own commit, and commit the upload only if it succeeds.
    pub async fn commit(mut self, bytes: u64) -> Result<(), LinkRefused> {
        let id = self.id.ok_or(LinkRefused::LeaseGone)?;
        let r = self.store.commit_use(id, bytes).await;
        // Over-reserved keeps the reservation in the store: `Drop` gives it back then.
        if r != Err(LinkRefused::OverReserved) {
            self.id = None;
        }
        r
    }

    /// Gives the reservation back and waits until it is.
    pub async fn release(mut self) -> Result<(), LinkError> {
        match self.id.take() {
            Some(id) => self.store.release_use(id).await,
            None => Ok(()),
        }
    }
}

impl Drop for LinkUse {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.store.release_use_soon(id);
        }
    }
}

/// SHA-256 of a token's whole text.
fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The id in a presented link token, checked strictly (the rules of
/// [`crate::state::tokens::parse`] with the `dl_` prefix); `None` for anything malformed.
pub fn parse(presented: &str) -> Option<LinkId> {
    split_prefixed(presented, LINK_PREFIX).map(|(id, _)| LinkId(id))
}

/// Checks a folder (or file) path as links keep it: the normal form of a path in a home,
/// `/` or `/a/b`: no empty, `.` or `..` component, no trailing `/`, no NUL, backslash,
/// control or bidi control character, no component starting with `.ferry-`, within
/// [`MAX_PATH_LEN`], [`MAX_NAME_LEN`] and [`MAX_PATH_DEPTH`]. The rules of
/// `jail::RemotePath::parse` for a path already in its display form (the command line
/// parses with `RemotePath` and stores that form; this keeps a hand-edited file honest).
pub fn validate_folder(folder: &str) -> Result<(), LinkError> {
    let bad = |why: &str| {
        Err(LinkError::invalid(format!(
            "folder `{}` {why}",
            folder.escape_debug()
        )))
    };
    if folder.len() > MAX_PATH_LEN {
        return bad("is too long");
    }
    let Some(rest) = folder.strip_prefix('/') else {
        return bad("does not start with `/`");
    };
    if rest.is_empty() {
        return Ok(());
    }
    if folder.chars().any(|c| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }) {
        return bad("contains a control character or backslash");
    }
    let mut depth = 0;
    for c in rest.split('/') {
        depth += 1;
        if c.is_empty() || c == "." || c == ".." {
            return bad("is not in normal form (`/a/b`)");
        }
        if c.len() > MAX_NAME_LEN {
            return bad("has a name that is too long");
        }
        if c.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(".ferry-"))
        {
            return bad("names a reserved `.ferry-` file");
        }
    }
    if depth > MAX_PATH_DEPTH {
        return bad("is too deep");
    }
    Ok(())
}

/// Checks a note: at most [`MAX_NOTE_CHARS`] characters, none of them control or invisible
/// formatting characters (a bidi override could make a note look like something else).
pub fn validate_note(note: &str) -> Result<(), LinkError> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(LinkError::invalid(format!(
            "a note is at most {MAX_NOTE_CHARS} characters"
        )));
    }
    if note.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(LinkError::invalid(
            "a note must not contain control or invisible characters",
        ));
    }
    Ok(())
}

/// Checks what every store checks of a record: the owner name (as API tokens do), the folder,
/// the note, the password's shape (an argon2id PHC string; the file store checks it fully),
/// that it does not expire before it was made, and that its limits and counters fit its kind.
pub fn validate_link(l: &Link) -> Result<(), LinkError> {
    let at = |why: String| Err(LinkError::invalid(format!("link {}: {why}", l.id)));
    if l.owner.is_empty()
        || l.owner.len() > MAX_USER_LEN
        || l.owner.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return at(format!("`{}` is not a user name", l.owner.escape_debug()));
    }
    validate_folder(&l.folder).or_else(|e| at(e.to_string()))?;
    if let Some(note) = &l.note {
        validate_note(note).or_else(|e| at(e.to_string()))?;
    }
    if let Some(p) = &l.password
        && (!p.starts_with("$argon2id$")
            || p.len() > MAX_PASSWORD_HASH_LEN
            || p.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return at("the password is not an argon2id PHC string".into());
    }
    if l.expires.is_some_and(|e| e <= l.created) {
        return at("expires before it was made".into());
    }
    // Stores that keep signed 64-bit integers (TOML, SQL) must hold every number.
    let numbers = [l.max_files, l.max_bytes, l.max_downloads];
    if numbers
        .iter()
        .flatten()
        .chain([&l.used_files, &l.used_bytes, &l.used_downloads])
        .any(|n| *n > i64::MAX as u64)
    {
        return at("a limit or counter is too large".into());
    }
    match l.kind {
        LinkKind::Upload if l.max_downloads.is_some() || l.used_downloads != 0 => {
            at("an upload link counts no downloads".into())
        }
        LinkKind::Download | LinkKind::DownloadFolder
            if l.max_files.is_some()
                || l.max_bytes.is_some()
                || l.used_files != 0
                || l.used_bytes != 0 =>
        {
            at("a download link counts no uploads".into())
        }
        _ => Ok(()),
    }
}

/// A set of link records with the rules every store applies on a write: what the in-memory
/// store holds, and what the file store reads, changes and writes back.
pub type LinkTable = crate::state::table::RecordTable<Link>;

impl crate::state::table::Record for Link {
    type Id = LinkId;
    type Error = LinkError;
    const NOUN: &'static str = "link";
    const MAX: usize = MAX_LINKS;
    const MAX_PER_OWNER: usize = MAX_LINKS_PER_OWNER;

    fn id(&self) -> LinkId {
        self.id
    }

    fn owner(&self) -> &str {
        &self.owner
    }

    fn created(&self) -> SystemTime {
        self.created
    }

    fn is_expired(&self, now: SystemTime) -> bool {
        Link::is_expired(self, now)
    }

    fn validate(&self) -> Result<(), LinkError> {
        validate_link(self)
    }

    fn invalid(reason: String) -> LinkError {
        LinkError::invalid(reason)
    }

    fn already_exists(id: LinkId) -> LinkError {
        LinkError::AlreadyExists(id)
    }

    fn not_found(id: LinkId) -> LinkError {
        LinkError::NotFound(id)
    }

    fn full(reason: String) -> LinkError {
        LinkError::Full { reason }
    }
}

impl LinkTable {
    /// Counts one committed file of `bytes` through the link a reservation `held` was made
    /// for, at `now`: refused when that link is gone or was made again, has expired, or would
    /// pass its limits (another process may have committed since the reservation).
    pub fn commit(
        &mut self,
        held: &HeldUse,
        bytes: u64,
        now: SystemTime,
    ) -> Result<(), LinkRefused> {
        let link = match self.by_id.get_mut(&held.link) {
            Some(l) if bool::from(l.token_sha256.ct_eq(&held.token_sha256)) => l,
            _ => return Err(LinkRefused::Gone),
        };
        if let Some(why) = link.refusal(LinkKind::Upload, now) {
            return Err(why);
        }
        // Kept within what every store can write (see `validate_link`).
        let bytes_after = link.used_bytes.saturating_add(bytes).min(i64::MAX as u64);
        if link.max_bytes.is_some_and(|m| bytes_after > m) {
            return Err(LinkRefused::Bytes);
        }
        link.used_files = link.used_files.saturating_add(1).min(i64::MAX as u64);
        link.used_bytes = bytes_after;
        Ok(())
    }

    /// Counts one download through `id` at `now`; see [`LinkStore::count_download`].
    pub fn count_download(&mut self, id: LinkId, now: SystemTime) -> Result<bool, LinkError> {
        let link = self.by_id.get_mut(&id).ok_or(LinkError::NotFound(id))?;
        if !link.kind.is_download() {
            return Err(LinkError::invalid(format!(
                "link {id} is not a download link"
            )));
        }
        if link.refusal(link.kind, now).is_some() {
            return Ok(false);
        }
        link.used_downloads = link.used_downloads.saturating_add(1).min(i64::MAX as u64);
        Ok(true)
    }
}

/// What a reservation holds: the link it was made for (by id and token hash, so a link made
/// again under the same id never takes it) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldUse {
    /// The link's id.
    pub link: LinkId,
    /// The link's token hash when the reservation was made.
    pub token_sha256: [u8; 32],
    /// Bytes reserved.
    pub bytes: u64,
    /// When the lease ends unless renewed.
    expires: Instant,
}

/// The reservations of one process, kept in memory (a database backend keeps them in a table
/// with the same rules). Every method takes `now` and first drops the leases that ended.
#[derive(Debug, Default)]
pub struct LinkUses {
    next: u64,
    held: HashMap<u64, HeldUse>,
}

/// `now + ttl`, saturating (a ten-year lease is as good as forever).
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(10 * 365 * 86_400)))
        .unwrap_or(now)
}

impl LinkUses {
    /// No reservations.
    pub fn new() -> LinkUses {
        LinkUses::default()
    }

    /// How many live reservations there are (after dropping those that ended at `now`).
    pub fn live(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.held.len()
    }

    fn expire(&mut self, now: Instant) {
        self.held.retain(|_, h| h.expires > now);
    }

    /// Reserves one file of `bytes` through `link` (as the store holds it at this moment) for
    /// `ttl`; see [`LinkStore::reserve_use`].
    pub fn reserve(
        &mut self,
        link: Option<&Link>,
        bytes: u64,
        ttl: Duration,
        now: SystemTime,
        now_instant: Instant,
    ) -> Result<LinkUseId, LinkRefused> {
        self.expire(now_instant);
        let link = link.ok_or(LinkRefused::Gone)?;
        if let Some(why) = link.refusal(LinkKind::Upload, now) {
            return Err(why);
        }
        if self.held.len() >= MAX_USES_IN_FLIGHT {
            return Err(LinkRefused::Busy);
        }
        let (mut files, mut reserved) = (0u64, 0u64);
        for h in self.held.values().filter(|h| h.link == link.id) {
            files += 1;
            reserved = reserved.saturating_add(h.bytes);
        }
        if files >= MAX_USES_PER_LINK as u64 {
            return Err(LinkRefused::Busy);
        }
        let files_after = link.used_files.saturating_add(files).saturating_add(1);
        if link.max_files.is_some_and(|m| files_after > m) {
            return Err(LinkRefused::Files);
        }
        let bytes_after = link
            .used_bytes
            .saturating_add(reserved)
            .saturating_add(bytes);
        if link.max_bytes.is_some_and(|m| bytes_after > m) {
            return Err(LinkRefused::Bytes);
        }
        self.next += 1;
        let id = self.next;
        self.held.insert(
            id,
            HeldUse {
                link: link.id,
                token_sha256: link.token_sha256,
                bytes,
                expires: deadline(now_instant, ttl),
            },
        );
        Ok(LinkUseId(id))
    }

    /// Extends a live reservation.
    pub fn renew(&mut self, id: LinkUseId, ttl: Duration, now: Instant) -> Result<(), LinkRefused> {
        self.expire(now);
        let h = self.held.get_mut(&id.0).ok_or(LinkRefused::LeaseGone)?;
        h.expires = deadline(now, ttl);
        Ok(())
    }

    /// The live reservation `id`, checked for a commit of `bytes`: [`LinkRefused::LeaseGone`]
    /// or [`LinkRefused::OverReserved`] (the reservation is kept).
    pub fn for_commit(
        &mut self,
        id: LinkUseId,
        bytes: u64,
        now: Instant,
    ) -> Result<HeldUse, LinkRefused> {
        self.expire(now);
        let h = self.held.get(&id.0).ok_or(LinkRefused::LeaseGone)?;
        if bytes > h.bytes {
            return Err(LinkRefused::OverReserved);
        }
        Ok(h.clone())
    }

    /// Ends a reservation (committed, refused for good, or released).
    pub fn end(&mut self, id: LinkUseId) {
        self.held.remove(&id.0);
    }
}

/// Most resume allowances one server keeps (see [`ResumeAllowances`]); about 100 bytes each.
pub const MAX_RESUME_ALLOWANCES: usize = 16_384;

/// How long a resume allowance lasts after the download that granted it.
pub const RESUME_ALLOWANCE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Whom a resume allowance is for: one download link (by id and token hash, so a link made
/// again under the same id starts afresh), one file in one version, one client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowanceKey {
    link: LinkId,
    /// SHA-256 of the link's token hash, the file's path and its version (its ETag).
    file: [u8; 32],
    client: std::net::IpAddr,
}

impl AllowanceKey {
    /// The key for `client` downloading the version `version` (an ETag) of `path` (as the
    /// link names it) through `link`.
    pub fn new(link: &Link, path: &str, version: &str, client: std::net::IpAddr) -> AllowanceKey {
        let mut h = Sha256::new();
        h.update(link.token_sha256);
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update(version.as_bytes());
        AllowanceKey {
            link: link.id,
            file: h.finalize().into(),
            client,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Allowance {
    bytes: u64,
    /// The file's size: a give-back never raises the allowance above it.
    cap: u64,
    expires: Instant,
}

/// How a download link counts a file that arrives in pieces (a resumed or segmented
/// download) without letting pieces be free for everyone.
///
/// Every answer that carries a file's first byte counts one download
/// ([`LinkStore::count_download`]) and grants the client that asked a *resume allowance* of
/// the file's size: answers to that client that start later draw their length from it and
/// count nothing. An answer that starts later and finds no allowance large enough (another
/// client, another file, another version of the file, or an allowance used up) counts one
/// download too and grants a fresh allowance. Bytes a client did not take (it went away)
/// are given back. So each counted download lets at most twice the file's size out to one
/// address, and no one gets any byte of a file through the link without a counted download
/// of it from their address.
///
/// Kept in one server's memory, bounded by [`MAX_RESUME_ALLOWANCES`] (the oldest go first)
/// and [`RESUME_ALLOWANCE_TTL`]: an allowance lost (evicted, a restart, another node) only
/// makes a later piece count again; the count can run high, never low.
#[derive(Debug, Default)]
pub struct ResumeAllowances {
    held: HashMap<AllowanceKey, Allowance>,
}

impl ResumeAllowances {
    /// None held.
    pub fn new() -> ResumeAllowances {
        ResumeAllowances::default()
    }

    /// How many are held (after dropping those expired at `now`).
    pub fn len(&mut self, now: Instant) -> usize {
        self.held.retain(|_, a| a.expires > now);
        self.held.len()
    }

    /// Whether none are held at `now`.
    pub fn is_empty(&mut self, now: Instant) -> bool {
        self.len(now) == 0
    }

    /// Takes `len` bytes from `key`'s allowance if it holds that many: `true` (the answer is
    /// free), else `false` and nothing is taken (the answer must count).
    pub fn draw(&mut self, key: &AllowanceKey, len: u64, now: Instant) -> bool {
        match self.held.get_mut(key) {
            Some(a) if a.expires > now && a.bytes >= len => {
                a.bytes -= len;
                true
            }
            _ => false,
        }
    }

    /// After a counted download of a file of `size` bytes: `key`'s allowance is `size`
    /// bytes, for [`RESUME_ALLOWANCE_TTL`].
    pub fn grant(&mut self, key: AllowanceKey, size: u64, now: Instant) {
        if !self.held.contains_key(&key) && self.held.len() >= MAX_RESUME_ALLOWANCES {
            self.held.retain(|_, a| a.expires > now);
            if self.held.len() >= MAX_RESUME_ALLOWANCES {
                let oldest = self
                    .held
                    .iter()
                    .min_by_key(|(_, a)| a.expires)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.held.remove(&k);
                }
            }
        }
        self.held.insert(
            key,
            Allowance {
                bytes: size,
                cap: size,
                expires: deadline(now, RESUME_ALLOWANCE_TTL),
            },
        );
    }

    /// Gives back `bytes` drawn for an answer that was not sent whole; never above the
    /// file's size. An allowance gone meanwhile stays gone.
    pub fn give_back(&mut self, key: &AllowanceKey, bytes: u64) {
        if let Some(a) = self.held.get_mut(key) {
            a.bytes = a.bytes.saturating_add(bytes).min(a.cap);
        }
    }
}

/// Links in memory: one server's own, gone at restart. Every method does its work at once.
#[derive(Debug, Default)]
pub struct MemoryLinks {
    inner: Mutex<(LinkTable, LinkUses)>,
}

impl MemoryLinks {
    /// An empty store.
    pub fn new() -> MemoryLinks {
        MemoryLinks::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut LinkTable, &mut LinkUses) -> T) -> T {
        // Every change is one call that cannot panic half-way.
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (table, uses) = &mut *g;
        f(table, uses)
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl LinkStore for MemoryLinks {
    fn add<'a>(&'a self, link: &'a Link) -> BoxFuture<'a, Result<(), LinkError>> {
        ready(self.with(|t, _| t.insert(link.clone())))
    }

    fn get(&self, id: LinkId) -> BoxFuture<'_, Result<Option<Link>, LinkError>> {
        ready(Ok(self.with(|t, _| t.get(id).cloned())))
    }

    fn list<'a>(&'a self, owner: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Link>, LinkError>> {
        ready(Ok(self.with(|t, _| t.list(owner))))
    }

    fn revoke(&self, id: LinkId) -> BoxFuture<'_, Result<(), LinkError>> {
        ready(self.with(|t, _| t.remove(id).map(drop)))
    }

    fn revoke_user<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<usize, LinkError>> {
        ready(Ok(self.with(|t, _| t.remove_user(owner))))
    }

    fn reserve_use(
        &self,
        id: LinkId,
        bytes: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<LinkUseId, LinkRefused>> {
        let (now, instant) = (SystemTime::now(), Instant::now());
        ready(self.with(|t, u| u.reserve(t.get(id), bytes, ttl, now, instant)))
    }

    fn renew_use(
        &self,
        use_id: LinkUseId,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), LinkRefused>> {
        let now = Instant::now();
        ready(self.with(|_, u| u.renew(use_id, ttl, now)))
    }

    fn commit_use(&self, use_id: LinkUseId, bytes: u64) -> BoxFuture<'_, Result<(), LinkRefused>> {
        let (now, instant) = (SystemTime::now(), Instant::now());
        ready(self.with(|t, u| {
            let held = u.for_commit(use_id, bytes, instant)?;
            let r = t.commit(&held, bytes, now);
            u.end(use_id);
            r
        }))
    }

    fn release_use(&self, use_id: LinkUseId) -> BoxFuture<'_, Result<(), LinkError>> {
        self.with(|_, u| u.end(use_id));
        ready(Ok(()))
    }

    fn release_use_soon(&self, use_id: LinkUseId) {
        self.with(|_, u| u.end(use_id));
    }

    fn count_download(&self, id: LinkId) -> BoxFuture<'_, Result<bool, LinkError>> {
        let now = SystemTime::now();
        ready(self.with(|t, _| t.count_download(id, now)))
    }
}

/// A link's token as its holder gets it, once: `dl_<id>_<secret>`. Prints as `dl_<id>_…` in
/// `Debug`; [`NewLink::expose`] gives the whole text.
pub struct NewLink(String);

impl NewLink {
    /// The whole token, to show once (in the link's URL).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.0.get(..LINK_PREFIX.len() + ID_LEN + 1).unwrap_or("");
        write!(f, "NewLink({head}…)")
    }
}

/// What a new link is to be: everything but its id, token, times and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// The user whose home it opens.
    pub owner: String,
    /// The folder (or file) in normal form: see [`validate_folder`].
    pub folder: String,
    /// Upload or download.
    pub kind: LinkKind,
    /// How long it lives; `None`: never expires.
    pub ttl: Option<Duration>,
    /// Most files (upload links).
    pub max_files: Option<u64>,
    /// Most bytes (upload links).
    pub max_bytes: Option<u64>,
    /// Most downloads (download links).
    pub max_downloads: Option<u64>,
    /// An argon2id PHC string, if the link needs a password.
    pub password: Option<String>,
    /// A note for the people it is given to.
    pub note: Option<String>,
}

/// Makes a new link: a fresh random token and an id that `taken` says is free, and the record
/// to add to a store. `now` is truncated to whole seconds. The id is checked again by the
/// store's `add`, which refuses a taken one.
pub fn issue(
    spec: LinkSpec,
    now: SystemTime,
    taken: impl Fn(LinkId) -> bool,
) -> Result<(NewLink, Link), LinkError> {
    let id = (0..ID_ATTEMPTS)
        .map(|_| LinkId::random())
        .find(|id| !taken(*id))
        .ok_or_else(|| LinkError::backend("no free link id found"))?;
    let created = whole_seconds(now);
    let expires = match spec.ttl {
        None => None,
        Some(ttl) => Some(
            created
                .checked_add(ttl)
                .ok_or_else(|| LinkError::invalid("the expiry is too far away"))?,
        ),
    };
    let secret = base64url(&rand::random::<[u8; SECRET_BYTES]>());
    let token = format!("{LINK_PREFIX}{id}_{secret}");
    let link = Link {
        id,
        token_sha256: token_sha256(&token),
        owner: spec.owner,
        folder: spec.folder,
        kind: spec.kind,
        created,
        expires,
        max_files: spec.max_files,
        max_bytes: spec.max_bytes,
        max_downloads: spec.max_downloads,
        used_files: 0,
        used_bytes: 0,
        used_downloads: 0,
        password: spec.password,
        note: spec.note,
    };
    validate_link(&link)?;
    Ok((NewLink(token), link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: BoxFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn spec(kind: LinkKind) -> LinkSpec {
        LinkSpec {
            owner: "alice".into(),
            folder: "/drop".into(),
            kind,
            ttl: Some(Duration::from_secs(3600)),
            max_files: None,
            max_bytes: None,
            max_downloads: None,
            password: None,
            note: None,
        }
    }

    #[test]
    fn issued_tokens_have_the_format_and_open_their_link() {
        let store = MemoryLinks::new();
        let (new, link) = issue(spec(LinkKind::Upload), SystemTime::now(), |_| false).unwrap();
        let s = new.expose();
        assert_eq!(s.len(), LINK_TOKEN_LEN);
        assert!(s.starts_with(&format!("dl_{}_", link.id)), "{s}");
        assert_eq!(parse(s), Some(link.id));
        assert!(!format!("{new:?}").contains(&s[12..]));
        assert!(!format!("{link:?}").contains(&hex::encode(link.token_sha256)));
        block(store.add(&link)).unwrap();
        assert_eq!(block(store.by_token(s)).unwrap(), Some(link.clone()));
        // An API token's text with the same id and secret opens nothing.
        let as_api = s.replacen("dl_", "fy_", 1);
        assert_eq!(block(store.by_token(&as_api)).unwrap(), None);
        // One character of the secret changed: same id, wrong hash.
        let mut wrong = s.as_bytes().to_vec();
        let i = wrong.len() - 2;
        wrong[i] = if wrong[i] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(block(store.by_token(&wrong)).unwrap(), None);
        for bad in [
            "",
            "dl_",
            &s[..s.len() - 1],
            &format!("{s}A"),
            &s.to_uppercase(),
        ] {
            assert_eq!(block(store.by_token(bad)).unwrap(), None, "{bad:?}");
        }
    }

    #[test]
    fn folders_must_be_in_normal_form() {
        for good in ["/", "/drop", "/a/b c/d", "/ünïcode", "/.hidden"] {
            validate_folder(good).unwrap();
        }
        let long_name = format!("/{}", "x".repeat(256));
        let deep = "/a".repeat(257);
        for bad in [
            "",
            "drop",
            "/drop/",
            "//drop",
            "/a//b",
            "/./a",
            "/a/..",
            "/../etc",
            "/a\\b",
            "/a\nb",
            "/a\0b",
            "/\u{202e}fdp",
            "/.ferry-tmp",
            "/a/.FERRY-x",
            &long_name,
            &deep,
        ] {
            assert!(validate_folder(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn notes_are_bounded_text() {
        validate_note("<script>alert(1)</script> & \"quotes\" — é").unwrap();
        validate_note(&"é".repeat(200)).unwrap();
        for bad in [
            &*"x".repeat(201),
            "a\nb",
            "a\u{1b}[2J",
            "a\u{202e}b",
            "a\u{200b}b",
        ] {
            assert!(validate_note(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_must_fit_their_kind() {
        let now = SystemTime::now();
        let (_, up) = issue(spec(LinkKind::Upload), now, |_| false).unwrap();
        let (_, down) = issue(spec(LinkKind::Download), now, |_| false).unwrap();
        for bad in [
            Link {
                max_downloads: Some(1),
                ..up.clone()
            },
            Link {
                used_downloads: 1,
                ..up.clone()
            },
            Link {
                max_files: Some(1),
                ..down.clone()
            },
            Link {
                used_bytes: 1,
                ..down.clone()
            },
            Link {
                password: Some("hunter2".into()),
                ..up.clone()
            },
            Link {
                owner: "al ice".into(),
                ..up.clone()
            },
            Link {
                expires: Some(up.created),
                ..up.clone()
            },
        ] {
            assert!(validate_link(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_link_cannot_take_every_reservation() {
        let mut uses = LinkUses::new();
        let (_, link) = issue(spec(LinkKind::Upload), SystemTime::now(), |_| false).unwrap();
        let (_, other) = issue(spec(LinkKind::Upload), SystemTime::now(), |_| false).unwrap();
        let (now, t0, ttl) = (SystemTime::now(), Instant::now(), Duration::from_secs(60));
        for _ in 0..MAX_USES_PER_LINK {
            uses.reserve(Some(&link), 1, ttl, now, t0).unwrap();
        }
        assert_eq!(
            uses.reserve(Some(&link), 1, ttl, now, t0),
            Err(LinkRefused::Busy)
        );
        uses.reserve(Some(&other), 1, ttl, now, t0).unwrap();
        assert_eq!(uses.live(t0), MAX_USES_PER_LINK + 1);
    }

    #[test]
    fn expired_leases_free_their_slot() {
        let mut uses = LinkUses::new();
        let (_, link) = issue(
            LinkSpec {
                max_files: Some(1),
                ..spec(LinkKind::Upload)
            },
            SystemTime::now(),
            |_| false,
        )
        .unwrap();
        let t0 = Instant::now();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(60);
        let first = uses.reserve(Some(&link), 10, ttl, now, t0).unwrap();
        assert_eq!(
            uses.reserve(Some(&link), 10, ttl, now, t0),
            Err(LinkRefused::Files)
        );
        let later = t0 + ttl;
        uses.reserve(Some(&link), 10, ttl, now, later).unwrap();
        assert_eq!(
            uses.for_commit(first, 10, later),
            Err(LinkRefused::LeaseGone),
            "the expired lease cannot commit"
        );
    }
    #[test]
    fn resume_allowances_are_per_client_and_never_free_without_a_count() {
        let (_, link) =
            issue(spec(LinkKind::DownloadFolder), SystemTime::now(), |_| false).unwrap();
        let (a, b) = (
            std::net::IpAddr::from([10, 0, 0, 1]),
            std::net::IpAddr::from([10, 0, 0, 2]),
        );
        let t0 = Instant::now();
        let mut al = ResumeAllowances::new();
        let ka = AllowanceKey::new(&link, "/x", "\"v1\"", a);
        // Nothing granted: nothing is free.
        assert!(!al.draw(&ka, 1, t0));
        al.grant(ka, 100, t0);
        // Another client, another version, another file: not this allowance.
        assert!(!al.draw(&AllowanceKey::new(&link, "/x", "\"v1\"", b), 1, t0));
        assert!(!al.draw(&AllowanceKey::new(&link, "/x", "\"v2\"", a), 1, t0));
        assert!(!al.draw(&AllowanceKey::new(&link, "/y", "\"v1\"", a), 1, t0));
        assert!(al.draw(&ka, 60, t0));
        assert!(!al.draw(&ka, 41, t0), "only 40 left");
        assert!(al.draw(&ka, 40, t0));
        al.give_back(&ka, 1000);
        assert!(al.draw(&ka, 100, t0), "given back up to the size");
        assert!(!al.draw(&ka, 1, t0));
        al.grant(ka, 100, t0);
        assert!(!al.draw(&ka, 1, t0 + RESUME_ALLOWANCE_TTL), "expired");
        // Bounded: the oldest goes.
        let mut al = ResumeAllowances::new();
        for i in 0..=MAX_RESUME_ALLOWANCES {
            let k = AllowanceKey::new(&link, &format!("/f{i}"), "", a);
            al.grant(k, 1, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(al.len(t0), MAX_RESUME_ALLOWANCES);
        assert!(!al.draw(&AllowanceKey::new(&link, "/f0", "", a), 1, t0));
    }
}
