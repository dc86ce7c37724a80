//! API tokens: what lets curl and scripts use an account without a password, and so without
//! an argon2 run per request (issue 14, docs/design/web.md §1.4 and §4).
//!
//! A token is `fy_<id>_<secret>`: `id` is 8 lowercase hex digits, public (lists and audit
//! lines show it); `secret` is 32 random bytes in unpadded base64url (43 characters). A store
//! keeps only the SHA-256 of the secret's 43 characters, so a copy of the store lets nobody
//! in. The secret has 256 random bits: a slow hash would add nothing, so [`check`] costs one
//! lookup by id and one SHA-256. The `fy_` prefix lets secret scanners spot a leaked token.
//!
//! - [`ApiTokens`]: where token records live (the trait); [`MemoryTokens`] keeps them in
//!   memory (`accounts::tokens` keeps them in `tokens.toml` beside the users file).
//! - [`issue`] makes a new token and its record; [`check`] turns a presented token into a
//!   [`TokenGrant`] or one opaque [`TokenRefused`].
//!
//! Bounded: a store holds at most [`MAX_TOKENS_PER_USER`] live tokens per user and
//! [`MAX_TOKENS`] in all; a token that has expired is dropped by the next `add`.

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{BoxFuture, MAX_USER_LEN, Scope};

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "fy_";

/// Length of a token's id in hex digits.
pub const ID_LEN: usize = 8;

/// Length of a token's secret: 32 bytes in unpadded base64url.
pub const SECRET_LEN: usize = 43;

/// Length of a whole token: `fy_` + id + `_` + secret.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// Random bytes in a secret.
pub(crate) const SECRET_BYTES: usize = 32;

/// Longest label of a token, in characters.
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// Most live tokens one user may have.
pub const MAX_TOKENS_PER_USER: usize = 100;

/// Most tokens a store holds in all.
pub const MAX_TOKENS: usize = 10_000;

/// How often [`issue`] draws a new id when the one it drew is taken, before it gives up.
const ID_ATTEMPTS: usize = 8;

/// The unpadded base64url alphabet (RFC 4648 §5).
pub(crate) const B64URL: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A token's public id: 32 bits, written as 8 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(pub u32);

impl TokenId {
    /// A random id.
    pub fn random() -> TokenId {
        TokenId(rand::random())
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl FromStr for TokenId {
    type Err = TokenError;

    /// Exactly 8 lowercase hex digits: one id has one spelling.
    fn from_str(s: &str) -> Result<TokenId, TokenError> {
        if s.len() != ID_LEN || !s.bytes().all(is_lower_hex) {
            return Err(TokenError::invalid(format!(
                "`{}` is not a token id (8 lowercase hex digits)",
                s.escape_debug()
            )));
        }
        u32::from_str_radix(s, 16)
            .map(TokenId)
            .map_err(|_| TokenError::invalid("not a token id"))
    }
}

pub(crate) fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// What a token lets its holder do. A read-only user's token is read-only whatever it says:
/// the front-end narrows the grant with the account's own access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenScope {
    /// Everything the account may do.
    Full,
    /// Listing and reading only.
    ReadOnly,
}

impl TokenScope {
    /// The core's scope for a session opened with this token.
    pub fn scope(self) -> Scope {
        match self {
            TokenScope::Full => Scope::Full,
            TokenScope::ReadOnly => Scope::ReadOnly,
        }
    }

    /// The word files and lists use: `full` or `read-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Full => "full",
            TokenScope::ReadOnly => "read-only",
        }
    }
}

impl FromStr for TokenScope {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<TokenScope, TokenError> {
        match s {
            "full" => Ok(TokenScope::Full),
            "read-only" => Ok(TokenScope::ReadOnly),
            _ => Err(TokenError::invalid(format!(
                "`{}` is not a token scope (`full` or `read-only`)",
                s.escape_debug()
            ))),
        }
    }
}

/// One token as a store keeps it: never the secret, only its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Public id, unique in the store.
    pub id: TokenId,
    /// The account it acts for.
    pub user: String,
    /// A label for people (`ci`, `backup laptop`): see [`validate_token_name`].
    pub name: String,
    /// What it may do.
    pub scope: TokenScope,
    /// SHA-256 of the secret's 43 characters.
    pub sha256: [u8; 32],
    /// When it was made (whole seconds).
    pub created: SystemTime,
    /// From when on it is refused (whole seconds); `None`: never.
    pub expires: Option<SystemTime>,
}

impl ApiToken {
    /// Whether the token is expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

impl fmt::Debug for ApiToken {
    // The hash is not the secret, but keep it out of logs all the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("sha256", &"<hidden>")
            .field("created", &self.created)
            .field("expires", &self.expires)
            .finish()
    }
}

/// What a store of tokens answers instead of a result. Messages are short, lowercase, and
/// never contain a secret or a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token has this id.
    #[error("no token {0}")]
    NotFound(TokenId),
    /// A token has this id already.
    #[error("token {0} already exists")]
    AlreadyExists(TokenId),
    /// The record is refused: a bad id, user, name or time.
    #[error("{reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The store is full: for this user or in all.
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

impl TokenError {
    /// A [`TokenError::Invalid`] with this reason.
    pub fn invalid(reason: impl Into<String>) -> TokenError {
        TokenError::Invalid {
            reason: reason.into(),
        }
    }

    /// A [`TokenError::Backend`] with this reason.
    pub fn backend(reason: impl Into<String>) -> TokenError {
        TokenError::Backend {
            reason: reason.into(),
        }
    }
}

/// Where token records live. Dyn-compatible (`Arc<dyn ApiTokens>`), async at the boundary (a
/// database answers over the network). What every store must do, and what
/// `tests/token_contract.rs` checks:
///
/// - [`get`](ApiTokens::get) sees every write made before it began, by this store or another
///   one on the same backing (`ferry token add` in another process): a token added or revoked
///   is in force at the next request.
/// - [`add`](ApiTokens::add) of a taken id fails with [`TokenError::AlreadyExists`] and
///   changes nothing; of concurrent adds, none is lost. A record that breaks
///   [`validate_token`] fails with [`TokenError::Invalid`]; one over [`MAX_TOKENS_PER_USER`]
///   or [`MAX_TOKENS`] with [`TokenError::Full`]. Tokens already expired at the new one's
///   `created` are dropped first.
/// - [`list`](ApiTokens::list) is sorted by user, then created, then id.
/// - [`revoke`](ApiTokens::revoke) of an unknown id fails with [`TokenError::NotFound`].
/// - [`revoke_user`](ApiTokens::revoke_user) removes every token of the user and says how
///   many; a user with none is not an error.
pub trait ApiTokens: Send + Sync + fmt::Debug {
    /// Adds `token`.
    fn add<'a>(&'a self, token: &'a ApiToken) -> BoxFuture<'a, Result<(), TokenError>>;

    /// The token with this id, expired or not, or `None`.
    fn get(&self, id: TokenId) -> BoxFuture<'_, Result<Option<ApiToken>, TokenError>>;

    /// The tokens of `user`, or every token for `None`.
    fn list<'a>(
        &'a self,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ApiToken>, TokenError>>;

    /// Removes the token with this id.
    fn revoke(&self, id: TokenId) -> BoxFuture<'_, Result<(), TokenError>>;

    /// Removes every token of `user` (when the user is deleted or created), returning how many.
    fn revoke_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<usize, TokenError>>;
}

/// Checks a token's label: 1 to [`MAX_TOKEN_NAME_LEN`] characters, printable: no control or
/// invisible formatting characters, no leading or trailing white space.
pub fn validate_token_name(name: &str) -> Result<(), TokenError> {
    let bad = |why: &str| {
        Err(TokenError::invalid(format!(
            "token name `{}` {why}",
            name.escape_debug()
        )))
    };
    if name.is_empty() {
        return Err(TokenError::invalid("a token name must not be empty"));
    }
    if name.chars().count() > MAX_TOKEN_NAME_LEN {
        return bad(&format!("is longer than {MAX_TOKEN_NAME_LEN} characters"));
    }
    if name.chars().any(|c| c.is_control() || is_invisible(c)) {
        return bad("contains a control or invisible character");
    }
    if name.trim() != name {
        return bad("starts or ends with white space");
    }
    Ok(())
}

/// Formatting characters that print as nothing or reorder text (zero-width, bidi controls, BOM,
/// soft hyphen): a name with one could look like another in a list.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// Checks what every store checks of a record: the user name (1 to [`MAX_USER_LEN`] bytes, no
/// control characters; a store of accounts may check more), the label, and that it does not
/// expire before it was made.
pub fn validate_token(t: &ApiToken) -> Result<(), TokenError> {
    if t.user.is_empty()
        || t.user.len() > MAX_USER_LEN
        || t.user.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(TokenError::invalid(format!(
            "token {}: `{}` is not a user name",
            t.id,
            t.user.escape_debug()
        )));
    }
    validate_token_name(&t.name)?;
    if t.expires.is_some_and(|e| e <= t.created) {
        return Err(TokenError::invalid(format!(
            "token {}: expires before it was made",
            t.id
        )));
    }
    Ok(())
}

/// A set of token records with the rules every store applies on a write: what the in-memory
/// store holds, and what the file store reads, changes and writes back.
pub type TokenTable = crate::state::table::RecordTable<ApiToken>;

impl crate::state::table::Record for ApiToken {
    type Id = TokenId;
    type Error = TokenError;
    const NOUN: &'static str = "token";
    const MAX: usize = MAX_TOKENS;
    const MAX_PER_OWNER: usize = MAX_TOKENS_PER_USER;

    fn id(&self) -> TokenId {
        self.id
    }

    fn owner(&self) -> &str {
        &self.user
    }

    fn created(&self) -> SystemTime {
        self.created
    }

    fn is_expired(&self, now: SystemTime) -> bool {
        ApiToken::is_expired(self, now)
    }

    fn validate(&self) -> Result<(), TokenError> {
        validate_token(self)
    }

    fn invalid(reason: String) -> TokenError {
        TokenError::invalid(reason)
    }

    fn already_exists(id: TokenId) -> TokenError {
        TokenError::AlreadyExists(id)
    }

    fn not_found(id: TokenId) -> TokenError {
        TokenError::NotFound(id)
    }

    fn full(reason: String) -> TokenError {
        TokenError::Full { reason }
    }
}

/// Tokens in memory: one server's own, gone at restart. Every method does its work at once.
#[derive(Debug, Default)]
pub struct MemoryTokens {
    table: Mutex<TokenTable>,
}

impl MemoryTokens {
    /// An empty store.
    pub fn new() -> MemoryTokens {
        MemoryTokens::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut TokenTable) -> T) -> T {
        // Every change to the table is one call that cannot panic half-way.
        f(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ApiTokens for MemoryTokens {
    fn add<'a>(&'a self, token: &'a ApiToken) -> BoxFuture<'a, Result<(), TokenError>> {
        let r = self.with(|t| t.insert(token.clone()));
        Box::pin(std::future::ready(r))
    }

    fn get(&self, id: TokenId) -> BoxFuture<'_, Result<Option<ApiToken>, TokenError>> {
        let r = self.with(|t| t.get(id).cloned());
        Box::pin(std::future::ready(Ok(r)))
    }

    fn list<'a>(
        &'a self,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ApiToken>, TokenError>> {
        let r = self.with(|t| t.list(user));
        Box::pin(std::future::ready(Ok(r)))
    }

    fn revoke(&self, id: TokenId) -> BoxFuture<'_, Result<(), TokenError>> {
        let r = self.with(|t| t.remove(id).map(drop));
        Box::pin(std::future::ready(r))
    }

    fn revoke_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<usize, TokenError>> {
        let r = self.with(|t| t.remove_user(user));
        Box::pin(std::future::ready(Ok(r)))
    }
}

/// A token as its holder gets it, once: `fy_<id>_<secret>`. Prints as `fy_<id>_…` in `Debug`,
/// so it never reaches a log by accident; [`NewToken::expose`] gives the whole text.
pub struct NewToken(String);

impl NewToken {
    /// The whole token, to show its holder once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.0.get(..TOKEN_PREFIX.len() + ID_LEN + 1).unwrap_or("");
        write!(f, "NewToken({head}…)")
    }
}

/// Makes a new token for `user`: a fresh random secret and an id that `taken` says is free,
/// and the record to add to a store. `now` is truncated to whole seconds; `ttl` `None` never
/// expires. The id is checked again by the store's `add`, which refuses a taken one.
pub fn issue(
    user: &str,
    name: &str,
    scope: TokenScope,
    ttl: Option<Duration>,
    now: SystemTime,
    taken: impl Fn(TokenId) -> bool,
) -> Result<(NewToken, ApiToken), TokenError> {
    let id = (0..ID_ATTEMPTS)
        .map(|_| TokenId::random())
        .find(|id| !taken(*id))
        .ok_or_else(|| TokenError::backend("no free token id found"))?;
    let created = whole_seconds(now);
    let expires = match ttl {
        None => None,
        Some(ttl) => Some(
            created
                .checked_add(ttl)
                .ok_or_else(|| TokenError::invalid("the expiry is too far away"))?,
        ),
    };
    let secret = base64url(&rand::random::<[u8; SECRET_BYTES]>());
    let token = ApiToken {
        id,
        user: user.to_owned(),
        name: name.to_owned(),
        scope,
        sha256: Sha256::digest(secret.as_bytes()).into(),
        created,
        expires,
    };
    validate_token(&token)?;
    Ok((NewToken(format!("{TOKEN_PREFIX}{id}_{secret}")), token))
}

/// `t` without its fraction of a second (stores keep whole seconds).
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

/// Unpadded base64url of 32 bytes (RFC 4648 §5): 43 characters.
pub(crate) fn base64url(bytes: &[u8; SECRET_BYTES]) -> String {
    let mut out = String::with_capacity(SECRET_LEN);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// A presented token split into its parts, checked strictly: the prefix, exactly 8 lowercase
/// hex digits, `_`, exactly 43 base64url characters whose last one carries no stray bits (so
/// one secret has one spelling). `None` for anything else.
pub fn parse(presented: &str) -> Option<(TokenId, &str)> {
    let (id, secret) = split_prefixed(presented, TOKEN_PREFIX)?;
    Some((TokenId(id), secret))
}

/// [`parse`] for any prefix: `<prefix><8 lowercase hex>_<43 base64url, no stray bits>`, split
/// into the id's value and the secret. Drop links (`dl_`) share the format.
pub(crate) fn split_prefixed<'a>(presented: &'a str, prefix: &str) -> Option<(u32, &'a str)> {
    if presented.len() != prefix.len() + ID_LEN + 1 + SECRET_LEN {
        return None;
    }
    let rest = presented.strip_prefix(prefix)?;
    let (id, secret) = (rest.get(..ID_LEN)?, rest.get(ID_LEN + 1..)?);
    if rest.as_bytes()[ID_LEN] != b'_' || secret.len() != SECRET_LEN {
        return None;
    }
    let id = id.parse::<TokenId>().ok()?.0;
    let value = |c: u8| B64URL.iter().position(|&a| a == c);
    if !secret.bytes().all(|c| value(c).is_some()) {
        return None;
    }
    // 43 characters carry 258 bits for 256: the last character's low 2 bits must be 0.
    let last = value(secret.as_bytes()[SECRET_LEN - 1])?;
    if last & 0b11 != 0 {
        return None;
    }
    Some((id, secret))
}

/// What a valid token grants: the account and the scope. The front-end narrows the scope with
/// the account's own access (a read-only user stays read-only) and refuses the grant if the
/// account is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The token's id, for the audit line.
    pub id: TokenId,
    /// The account it acts for.
    pub user: String,
    /// What it may do.
    pub scope: Scope,
}

impl TokenGrant {
    /// The scope of a session opened with this grant for an account that is `read_only` or
    /// not: the narrower of the token's and the account's.
    pub fn scope_for(&self, account_read_only: bool) -> Scope {
        if account_read_only {
            Scope::ReadOnly
        } else {
            self.scope.clone()
        }
    }
}

/// Why a token was refused. Callers treat every refusal alike (a failed login, penalised the
/// same); the reason is for the server's log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRefused {
    reason: &'static str,
}

impl TokenRefused {
    /// Why, in a few words, for the log: never for the peer.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for TokenRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("token refused")
    }
}

impl std::error::Error for TokenRefused {}

/// Checks a presented token (the text after `Bearer `) at `now`: strictly parsed (anything
/// malformed is refused without a lookup), looked up by id, its secret's SHA-256 compared with
/// the stored one in constant time (`subtle`), refused when expired. A store that fails is a
/// refusal too (reason "token store unavailable"): tokens fail closed.
pub async fn check(
    store: &dyn ApiTokens,
    presented: &str,
    now: SystemTime,
) -> Result<TokenGrant, TokenRefused> {
    let refuse = |reason| Err(TokenRefused { reason });
    let Some((id, secret)) = parse(presented) else {
        return refuse("malformed token");
    };
    let token = match store.get(id).await {
        Ok(Some(t)) => t,
        Ok(None) => return refuse("unknown token id"),
        Err(_) => return refuse("token store unavailable"),
    };
    let presented_hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if !bool::from(presented_hash.ct_eq(&token.sha256)) {
        return refuse("wrong secret");
    }
    if token.is_expired(now) {
        return refuse("expired token");
    }
    Ok(TokenGrant {
        id: token.id,
        user: token.user,
        scope: token.scope.scope(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn issued(store: &MemoryTokens, ttl: Option<Duration>, now: SystemTime) -> NewToken {
        let (new, rec) = issue("alice", "ci", TokenScope::Full, ttl, now, |_| false).unwrap();
        futures_ready(store.add(&rec)).unwrap();
        new
    }

    /// Memory futures are ready at once.
    fn futures_ready<T>(f: BoxFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        // The encoder handles 32 bytes; check it against a known vector of that length.
        let bytes: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            base64url(&bytes),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
        );
        assert_eq!(
            base64url(&[0xff; 32]),
            "__________________________________________8"
        );
    }

    #[test]
    fn issued_tokens_have_the_format_and_parse() {
        let now = at(1_800_000_000);
        let (new, rec) = issue("alice", "ci", TokenScope::Full, None, now, |_| false).unwrap();
        let s = new.expose();
        assert_eq!(s.len(), TOKEN_LEN);
        assert!(s.starts_with(&format!("fy_{}_", rec.id)), "{s}");
        let (id, secret) = parse(s).unwrap();
        assert_eq!(id, rec.id);
        assert_eq!(
            <[u8; 32]>::from(Sha256::digest(secret.as_bytes())),
            rec.sha256
        );
        assert!(!format!("{new:?}").contains(secret), "{new:?}");
        assert!(!format!("{rec:?}").contains(&hex::encode(rec.sha256)));
        let (other, _) = issue("alice", "ci", TokenScope::Full, None, now, |_| false).unwrap();
        assert_ne!(other.expose(), s, "secrets are random");
    }

    #[test]
    fn parse_refuses_everything_malformed() {
        let good = format!("fy_0123abcd_{}", "A".repeat(43));
        assert!(parse(&good).is_some());
        let bad = [
            String::new(),
            good[..good.len() - 1].to_owned(),
            format!("{good}A"),
            good.replace("fy_", "FY_"),
            good.replace("fy_", "fz_"),
            good.replace("0123abcd", "0123ABCD"),
            good.replace("0123abcd", "0123abcg"),
            good.replace("0123abcd_", "0123abcd-"),
            format!("fy_0123abcd_{}+", "A".repeat(42)),
            format!("fy_0123abcd_{}=", "A".repeat(42)),
            format!("fy_0123abcd_{} ", "A".repeat(42)),
            // The last character carries stray low bits.
            format!("fy_0123abcd_{}B", "A".repeat(42)),
            // Multi-byte characters with the right byte length.
            format!("fy_0123abcd_{}é", "A".repeat(41)),
            format!("fy_0123abcé_{}", "A".repeat(43)),
            format!(" fy_0123abcd_{}", "A".repeat(42)),
        ];
        for b in &bad {
            assert_eq!(parse(b), None, "{b:?}");
        }
        assert!(parse(&format!("fy_0123abcd_{}E", "A".repeat(42))).is_some());
    }

    #[test]
    fn check_accepts_the_token_and_refuses_every_variant() {
        let store = MemoryTokens::new();
        let now = at(1_800_000_000);
        let t = issued(&store, Some(Duration::from_secs(3600)), now);
        let grant = futures_ready(Box::pin(check(&store, t.expose(), now))).unwrap();
        assert_eq!(grant.user, "alice");
        assert_eq!(grant.scope, Scope::Full);
        assert_eq!(grant.scope_for(false), Scope::Full);
        assert_eq!(
            grant.scope_for(true),
            Scope::ReadOnly,
            "a read-only account stays so"
        );
        let s = t.expose();
        // Flip one character of the secret: same id, wrong secret.
        let mut wrong = s.as_bytes().to_vec();
        let i = wrong.len() - 2;
        wrong[i] = if wrong[i] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).unwrap();
        let refused = |p: &str, now| futures_ready(Box::pin(check(&store, p, now))).unwrap_err();
        assert_eq!(refused(&wrong, now).reason(), "wrong secret");
        assert_eq!(refused("fy_x", now).reason(), "malformed token");
        let other_id = format!("fy_{}_{}", TokenId(grant.id.0 ^ 1), &s[12..]);
        assert_eq!(refused(&other_id, now).reason(), "unknown token id");
        assert_eq!(
            refused(s, now + Duration::from_secs(3600)).reason(),
            "expired token"
        );
        assert_eq!(
            refused(&wrong, now).to_string(),
            "token refused",
            "one opaque text"
        );
    }

    #[test]
    fn names_are_bounded_and_printable() {
        for good in ["ci", "backup laptop", "déploiement", &"x".repeat(64)] {
            validate_token_name(good).unwrap();
        }
        for bad in [
            "",
            " ci",
            "ci ",
            "a\nb",
            "a\u{1b}[31m",
            "a\u{202e}b",
            "a\u{200b}",
            &"x".repeat(65),
        ] {
            assert!(validate_token_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_ids_have_one_spelling() {
        assert_eq!("00c0ffee".parse::<TokenId>().unwrap(), TokenId(0xc0ffee));
        assert_eq!(TokenId(0xc0ffee).to_string(), "00c0ffee");
        for bad in ["c0ffee", "00C0FFEE", "+0c0ffee", "00c0ffee0", "0x0c0ffe"] {
            assert!(bad.parse::<TokenId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn issue_skips_taken_ids_and_gives_up_when_all_are() {
        let now = at(1_800_000_000);
        let first = TokenId::random();
        let (_, rec) = issue("a", "n", TokenScope::ReadOnly, None, now, |id| id == first).unwrap();
        assert_ne!(rec.id, first);
        assert!(issue("a", "n", TokenScope::Full, None, now, |_| true).is_err());
    }
}
