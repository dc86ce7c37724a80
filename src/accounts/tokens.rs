//! API tokens in a file: `tokens.toml` beside the users file, as an [`ApiTokens`] store.
//!
//! ```toml
//! [tokens.3fa9c2d1]
//! user = "alice"
//! name = "ci"
//! scope = "full"                    # or "read-only"
//! sha256 = "<64 hex digits>"        # of the secret; the secret itself is nowhere
//! created = "2026-12-07T02:14:01Z"
//! expires = "2027-03-07T02:14:01Z"  # absent: never
//! ```
//!
//! Written by `ferry token add|del` and `ferry user del`, as the users file is: under a lock on
//! the directory (the same lock `ferry user` takes, when the files share a directory), read and
//! validated first (a broken file is refused, untouched), written whole to an exclusive temp
//! file (mode 0600, the old file's owner) that is fsynced and renamed over it, then the
//! directory is fsynced. Two edits at once never lose one.
//!
//! Read like the users file: before each lookup the store compares the file's [`FileStamp`]
//! (one `stat`) with the one it loaded and reloads on a difference, so a token added or revoked
//! by another process is in force at the next request, with no signal. Unlike the users file,
//! a file that does not load fails closed: every lookup fails (so every token is refused) until
//! it is fixed, because keeping the previous tokens would keep a revoked one alive. The error
//! is logged once per version of the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::accounts::table_file::{TableFile, TableFormat};
use crate::domain::BoxFuture;
use crate::state::tokens::{
    ApiToken, ApiTokens, TokenError, TokenId, TokenScope, TokenTable, whole_seconds,
};
use crate::users;

/// The tokens file's name beside the users file.
pub const TOKENS_FILE_NAME: &str = "tokens.toml";

/// Largest tokens file read: [`crate::state::tokens::MAX_TOKENS`] records take about 2.5 MB.
pub const MAX_TOKENS_FILE_LEN: u64 = 4 << 20;

/// The first lines of every tokens file written.
const HEADER: &str = "# ferry API tokens, written by `ferry token add|del`. Only the SHA-256 of each \
                      secret is kept here.\n\n";

/// Where the tokens of the users file at `users` live: `tokens.toml` in the same directory.
pub fn tokens_path_beside(users: &Path) -> PathBuf {
    users.with_file_name(TOKENS_FILE_NAME)
}

/// Tokens kept in a file. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct TomlTokens {
    file: Arc<TableFile<TokensFile>>,
}

/// The tokens file's format.
pub struct TokensFile;

impl TableFormat for TokensFile {
    type Table = TokenTable;
    type Error = TokenError;
    const WHAT: &'static str = "tokens";
    const MAX_LEN: u64 = MAX_TOKENS_FILE_LEN;

    fn empty() -> TokenTable {
        TokenTable::new()
    }

    fn parse(text: &str) -> Result<TokenTable, TokenError> {
        parse_table(text)
    }

    fn render(table: &TokenTable) -> Result<String, TokenError> {
        render(table)
    }

    fn backend(reason: String) -> TokenError {
        TokenError::backend(reason)
    }

    fn full(reason: String) -> TokenError {
        TokenError::Full { reason }
    }
}

impl std::fmt::Debug for TomlTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TomlTokens")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

impl TomlTokens {
    /// The tokens file at `path`, read at the first lookup; a missing file holds no tokens and
    /// the first `add` creates it (mode 0600).
    pub fn new(path: PathBuf) -> TomlTokens {
        TomlTokens {
            file: Arc::new(TableFile::new(path)),
        }
    }

    /// The tokens file beside the users file at `users` ([`tokens_path_beside`]).
    pub fn beside_users(users: &Path) -> TomlTokens {
        TomlTokens::new(tokens_path_beside(users))
    }

    /// The file this store reads and writes.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The tokens in force: the cached table if the file's stamp is unchanged, else the file
    /// read again. Blocking (a `stat`, and a read on a change).
    pub fn table(&self) -> Result<Arc<TokenTable>, TokenError> {
        self.file.table()
    }

    /// Reads the file under the directory's lock, lets `change` edit the tokens, and writes
    /// them back if they changed; `change`'s answer is returned. On an error nothing is
    /// written. Blocking. What `ferry token add` uses to check that the user exists and pick
    /// a free id while no other edit can run.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut TokenTable) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        self.file.update(change)
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TomlTokens) -> Result<T, TokenError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, TokenError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(|e| TokenError::backend(format!("tokens file task failed: {e}")))?
        })
    }
}

impl ApiTokens for TomlTokens {
    fn add<'a>(&'a self, token: &'a ApiToken) -> BoxFuture<'a, Result<(), TokenError>> {
        let token = token.clone();
        self.blocking(move |s| {
            users::validate_name(&token.user).map_err(|e| TokenError::invalid(e.to_string()))?;
            s.update(|t| t.insert(token))
        })
    }

    fn get(&self, id: TokenId) -> BoxFuture<'_, Result<Option<ApiToken>, TokenError>> {
        self.blocking(move |s| Ok(s.table()?.get(id).cloned()))
    }

    fn list<'a>(
        &'a self,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ApiToken>, TokenError>> {
        let user = user.map(str::to_owned);
        self.blocking(move |s| Ok(s.table()?.list(user.as_deref())))
    }

    fn revoke(&self, id: TokenId) -> BoxFuture<'_, Result<(), TokenError>> {
        self.blocking(move |s| s.update(|t| t.remove(id).map(drop)))
    }

    fn revoke_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<usize, TokenError>> {
        let user = user.to_owned();
        self.blocking(move |s| s.update(|t| Ok(t.remove_user(&user))))
    }
}

/// The file's form.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    tokens: std::collections::BTreeMap<String, Record>,
}

/// One token in the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    user: String,
    name: String,
    scope: String,
    sha256: String,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
}

/// The tokens in a file's text, each checked; errors name the token and field.
fn parse_table(text: &str) -> Result<TokenTable, TokenError> {
    let form: FileForm = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map_or(0, |before| before.matches('\n').count() + 1);
        let what = e.message().trim_end();
        TokenError::backend(if line > 0 {
            format!("line {line}: {what}")
        } else {
            what.to_owned()
        })
    })?;
    let mut records = Vec::with_capacity(form.tokens.len());
    for (id, r) in form.tokens {
        let at =
            |what: String| TokenError::invalid(format!("token `{}`: {what}", id.escape_debug()));
        let id_parsed: TokenId = id.parse().map_err(|e: TokenError| at(e.to_string()))?;
        users::validate_name(&r.user).map_err(|e| at(e.to_string()))?;
        let scope: TokenScope = r.scope.parse().map_err(|e: TokenError| at(e.to_string()))?;
        let sha256 = parse_digest(&r.sha256)
            .ok_or_else(|| at("`sha256` is not 64 lowercase hex digits".into()))?;
        let created =
            parse_time(&r.created).ok_or_else(|| at("`created` is not an RFC 3339 time".into()))?;
        let expires = match &r.expires {
            None => None,
            Some(e) => {
                Some(parse_time(e).ok_or_else(|| at("`expires` is not an RFC 3339 time".into()))?)
            }
        };
        records.push(ApiToken {
            id: id_parsed,
            user: r.user,
            name: r.name,
            scope,
            sha256,
            created,
            expires,
        });
    }
    TokenTable::from_records(records)
}

pub(crate) fn parse_digest(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    Some(whole_seconds(SystemTime::from(t.with_timezone(&Utc))))
}

/// A time as the file writes it: RFC 3339 in UTC, whole seconds.
pub fn format_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The file's text for `table`.
fn render(table: &TokenTable) -> Result<String, TokenError> {
    let form = FileForm {
        tokens: table
            .records()
            .map(|t| {
                (
                    t.id.to_string(),
                    Record {
                        user: t.user.clone(),
                        name: t.name.clone(),
                        scope: t.scope.as_str().to_owned(),
                        sha256: hex::encode(t.sha256),
                        created: format_time(t.created),
                        expires: t.expires.map(format_time),
                    },
                )
            })
            .collect(),
    };
    let body = toml::to_string(&form)
        .map_err(|e| TokenError::backend(format!("tokens file not written: {e}")))?;
    Ok(format!("{HEADER}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    use crate::state::tokens::issue;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn tokens_live_beside_the_users_file() {
        assert_eq!(
            tokens_path_beside(Path::new("/etc/ferry/users.toml")),
            Path::new("/etc/ferry/tokens.toml")
        );
        assert_eq!(
            tokens_path_beside(Path::new("users.toml")),
            Path::new("tokens.toml")
        );
    }

    #[test]
    fn a_written_file_reads_back_the_same_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = TomlTokens::new(dir.path().join("tokens.toml"));
        let (_, a) = issue(
            "alice",
            "ci \"quoted\" ✓",
            TokenScope::Full,
            None,
            at(1_800_000_000),
            |_| false,
        )
        .unwrap();
        let (_, b) = issue(
            "bob",
            "ro",
            TokenScope::ReadOnly,
            Some(Duration::from_secs(60)),
            at(1_800_000_000),
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
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(
            text.contains("expires = \"2027-01-15T08:01:00Z\""),
            "{text}"
        );
    }

    #[test]
    fn broken_files_are_refused_with_the_token_and_field_named() {
        let good_hash = "0".repeat(64);
        let cases = [
            (
                &*format!(
                    "[tokens.0000000g]\nuser=\"a\"\nname=\"n\"\nscope=\"full\"\nsha256=\"{good_hash}\"\ncreated=\"2026-01-01T00:00:00Z\"\n"
                ),
                "is not a token id",
            ),
            (
                "\n\n[tokens.00000001]\nuser = \"a\"\n",
                "line 3: missing field `name`",
            ),
            ("[tokens.00000001]\nuser = \"a\"\n", "missing field"),
            ("nonsense = 1\n", "unknown field"),
            (
                &*format!(
                    "[tokens.00000001]\nuser=\"a/b\"\nname=\"n\"\nscope=\"full\"\nsha256=\"{good_hash}\"\ncreated=\"2026-01-01T00:00:00Z\"\n"
                ),
                "path separator",
            ),
            (
                &*format!(
                    "[tokens.00000001]\nuser=\"a\"\nname=\"n\"\nscope=\"all\"\nsha256=\"{good_hash}\"\ncreated=\"2026-01-01T00:00:00Z\"\n"
                ),
                "not a token scope",
            ),
            (
                "[tokens.00000001]\nuser=\"a\"\nname=\"n\"\nscope=\"full\"\nsha256=\"AB\"\ncreated=\"2026-01-01T00:00:00Z\"\n",
                "`sha256`",
            ),
            (
                &*format!(
                    "[tokens.00000001]\nuser=\"a\"\nname=\"n\"\nscope=\"full\"\nsha256=\"{good_hash}\"\ncreated=\"yesterday\"\n"
                ),
                "`created`",
            ),
            (
                &*format!(
                    "[tokens.00000001]\nuser=\"a\"\nname=\"a\\u001b[2J\"\nscope=\"full\"\nsha256=\"{good_hash}\"\ncreated=\"2026-01-01T00:00:00Z\"\n"
                ),
                "control",
            ),
        ];
        for (text, needle) in cases {
            let e = parse_table(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn an_oversized_file_is_refused_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let store = TomlTokens::new(path.clone());
        let (_, a) = issue(
            "alice",
            "ci",
            TokenScope::Full,
            None,
            at(1_800_000_000),
            |_| false,
        )
        .unwrap();
        store.update(|t| t.insert(a.clone())).unwrap();
        assert!(store.table().unwrap().get(a.id).is_some());
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(&"#".repeat(MAX_TOKENS_FILE_LEN as usize));
        fs::write(&path, text).unwrap();
        let e = store.table().unwrap_err().to_string();
        assert!(e.contains("larger than 4 MiB"), "{e}");
        // And an edit refuses to touch it.
        assert!(store.update(|t| Ok(t.remove_user("alice"))).is_err());
    }
}
