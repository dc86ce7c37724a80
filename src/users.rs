//! The users file, argon2id password hashing, and the [`Password`] type that never prints.
//!
//! The users file is TOML, written by the admin or by `ferry user ...` (see `users.example.toml`):
//!
//! ```toml
//! [users.alice]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$...$..."   # required
//! home = "/srv/ferry/alice"                            # optional, default <root>/<name>
//! read_only = false                                    # optional
//! ```
//!
//! Reading ([`UserDb::load`]) validates everything up front: names, field types, unknown fields
//! (a typo like `readonly` is an error, not a silently writable account), and every hash. Editing
//! ([`add_user`], [`set_password`], [`remove_user`]) goes through `toml_edit`, so the admin's
//! comments and layout survive, and replaces the file atomically only after the new text has
//! passed the same validation.
//!
//! The server and `ferry user` reach the file through [`crate::accounts::toml::TomlAccounts`],
//! the users file as an [`AccountStore`](crate::accounts::AccountStore); the [`User`] record and
//! [`UserChange`] live in [`crate::accounts`] and are re-exported here.
//!
//! Hashes are argon2id PHC strings. Each string carries its own parameters, so test fixtures can
//! use cheap ones and still exercise the production code path.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::Block;
use argon2::password_hash::try_generate_salt;
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Params, PasswordHash, PasswordHasher, Version};
use rand::RngExt;
use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

pub use crate::accounts::{User, UserChange};
use crate::domain::{MAX_PASSWORD_LEN, MAX_USER_LEN};

/// Argon2id parameters for new hashes: (memory in KiB, iterations, parallelism).
///
/// OWASP's recommendation (m = 19 MiB, t = 2, p = 1), which is also the argon2 crate's default.
pub const DEFAULT_PARAMS: (u32, u32, u32) = (19456, 2, 1);

/// Largest argon2 memory cost (KiB) accepted in a hash: 1 GiB. A typo in the users file must not
/// make every login allocate gigabytes.
pub const MAX_M_KIB: u32 = 1024 * 1024;

/// Largest argon2 iteration count accepted in a hash.
pub const MAX_T_COST: u32 = 100;

/// Largest argon2 parallelism accepted in a hash.
pub const MAX_P_COST: u32 = 64;

/// Fewest characters of a password set by `ferry user` unless weak ones are allowed.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// How often an interactive `ferry user` asks again after two entries differ or a password is
/// refused, before it gives up.
const PASSWORD_PROMPT_TRIES: usize = 3;

/// Length of [`random_password`]'s output.
const RANDOM_PASSWORD_LEN: usize = 20;

/// Alphabet of [`random_password`]: no `0 O o 1 l I`, nothing a shell or TOML would mangle.
/// 56 symbols, so 20 characters carry 20 * log2(56) ≈ 116 bits.
const RANDOM_PASSWORD_ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";

/// Fields a user table may have; anything else is an error.
const USER_FIELDS: &str =
    "`password`, `home`, `read_only`, `quota_bytes`, `quota_files` or `max_file_size`";

/// What [`UserDb::parse`] calls the text in its error messages.
const UNNAMED_SOURCE: &str = "users file";

/// Used by [`UserDb::dummy_hash`] only if hashing a fresh one fails (the system RNG failed).
/// An argon2id hash with [`DEFAULT_PARAMS`] of a random secret that was thrown away.
const FALLBACK_DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$\
    h5PthLjqZQ1hiThLJpHG/Q$3d8My6jdAjxxrm3JhKrit39TrFOMotaKY2NZteHdnd4";

/// Errors of the users module. Messages are short, lowercase, and name the file or user; they
/// never contain a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// Reading or writing a file failed.
    ///
    /// The OS error is part of the message and deliberately not a `source()`: a reporter that
    /// prints the chain (`ferry: {e:#}`) would show it twice.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The users file is not valid: TOML syntax, a wrong type, an unknown field, a bad name or
    /// hash. `msg` names the line, user and field where known.
    #[error("{}: {msg}", path.display())]
    Parse {
        /// The file (or "users file" for [`UserDb::parse`]).
        path: PathBuf,
        /// What is wrong, and where.
        msg: String,
    },
    /// A user name breaks the rules of [`validate_name`].
    #[error("invalid user name `{}`: {reason}", name.escape_debug())]
    InvalidName {
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The user is not in the file.
    #[error("no user `{}`", .0.escape_debug())]
    NotFound(String),
    /// The user is already in the file.
    #[error("user `{}` already exists", .0.escape_debug())]
    AlreadyExists(String),
    /// A hash given to an editing function, or parameters given to [`hash_password_with`], are
    /// not acceptable.
    #[error("invalid password hash: {0}")]
    InvalidHash(&'static str),
    /// A home directory that cannot be written to the users file.
    #[error("invalid home directory for `{}`: {reason}", name.escape_debug())]
    InvalidHome {
        /// The user.
        name: String,
        /// Why the path is refused.
        reason: &'static str,
    },
    /// Hashing failed (the system RNG failed, or argon2 refused its input).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// An empty password was given.
    #[error("empty password refused")]
    EmptyPassword,
    /// The password is longer than the protocol allows, so it could never log in.
    #[error("password longer than {max} bytes refused")]
    PasswordTooLong {
        /// The limit, [`MAX_PASSWORD_LEN`].
        max: usize,
    },
    /// The password read from stdin is not UTF-8.
    #[error("password is not valid utf-8")]
    PasswordNotUtf8,
    /// The two passwords typed at the terminal differ (three times over).
    #[error("passwords do not match")]
    PasswordMismatch,
    /// The password is shorter than [`MIN_PASSWORD_CHARS`] and weak ones were not allowed.
    #[error(
        "password shorter than {min} characters refused: a short password can be guessed \
         despite argon2 (use a passphrase of several words, or --allow-weak for a throwaway \
         test account)"
    )]
    PasswordTooShort {
        /// The minimum, [`MIN_PASSWORD_CHARS`].
        min: usize,
    },
    /// A size or count that the users file cannot hold (TOML integers stop at 2^63 - 1).
    #[error("{field} of `{}` is too large: at most {max}", name.escape_debug())]
    LimitTooLarge {
        /// The user.
        name: String,
        /// The field.
        field: &'static str,
        /// The largest value accepted.
        max: i64,
    },
    /// Reading a password from the terminal or stdin failed.
    #[error("cannot read password: {0}")]
    ReadPassword(io::Error),
}

/// A password in memory. Its `Debug` and `Display` print `********`, so it cannot leak into a
/// log line by accident.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The password's bytes, for hashing.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The password as text, for the one place that must show it (a generated first password).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the password is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// The parsed and validated users file.
#[derive(Clone)]
pub struct UserDb {
    users: BTreeMap<String, User>,
    /// (m KiB, t, p) used by most users; what [`UserDb::dummy_hash`] is made with.
    common_params: (u32, u32, u32),
    /// Made on first use (or by [`UserDb::load`]), so that validating a file for an edit does not
    /// pay for an argon2 run.
    dummy_hash: OnceLock<String>,
}

impl fmt::Debug for UserDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserDb")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("common_params", &self.common_params)
            .finish_non_exhaustive()
    }
}

impl UserDb {
    /// Reads and validates the users file at `path`: every name valid, every field known and of
    /// the right type, every hash a parseable argon2id PHC string within sane cost limits.
    ///
    /// Also makes the [dummy hash](UserDb::dummy_hash) now, so the first login of an unknown
    /// user costs the same as any other.
    pub fn load(path: &Path) -> Result<UserDb, UsersError> {
        let text = fs::read_to_string(path).map_err(|error| UsersError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let db = parse_at(&text, path)?;
        db.dummy_hash();
        Ok(db)
    }

    /// No users, as in an empty or missing users file.
    pub fn empty() -> UserDb {
        UserDb {
            users: BTreeMap::new(),
            common_params: DEFAULT_PARAMS,
            dummy_hash: OnceLock::new(),
        }
    }

    /// Parses and validates users-file text; errors call it "users file".
    pub fn parse(text: &str) -> Result<UserDb, UsersError> {
        parse_at(text, Path::new(UNNAMED_SOURCE))
    }

    /// The user called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// All users, sorted by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// A valid argon2id PHC hash of a random secret, made with the parameters most users in this
    /// file use ([`DEFAULT_PARAMS`] if there are none), so verifying an unknown user costs the
    /// same as a wrong password. Nobody knows the secret, but callers must still reject an
    /// unknown user whatever [`verify_password`] says.
    ///
    /// The first call runs argon2 once (slow); [`UserDb::load`] makes that call.
    pub fn dummy_hash(&self) -> &str {
        self.dummy_hash
            .get_or_init(|| make_dummy_hash(self.common_params))
    }
}

/// A valid argon2id PHC hash with parameters `(m KiB, t, p)` of a random secret thrown away
/// (slow: one argon2 run). What every account store answers for an unknown user.
pub fn make_dummy_hash((m, t, p): (u32, u32, u32)) -> String {
    let secret = match (try_generate_salt(), try_generate_salt()) {
        (Ok(a), Ok(b)) => [a, b].concat(),
        _ => return FALLBACK_DUMMY_HASH.to_owned(),
    };
    // The secret is random bytes, not text; hash it directly rather than via Password.
    argon2id(m, t, p)
        .ok()
        .and_then(|a| a.hash_password(&secret).ok())
        .map_or_else(|| FALLBACK_DUMMY_HASH.to_owned(), |h| h.to_string())
}

/// Of `(params, users)` counts, the most used; on a tie the costlier one, so the dummy hash
/// is never the cheap outlier. [`DEFAULT_PARAMS`] when there are none.
pub fn most_used_params(
    counts: impl IntoIterator<Item = ((u32, u32, u32), usize)>,
) -> (u32, u32, u32) {
    counts
        .into_iter()
        .max_by_key(|&((m, t, p), n)| (n, u64::from(m) * u64::from(t) * u64::from(p)))
        .map_or(DEFAULT_PARAMS, |(mtp, _)| mtp)
}

/// What tells one version of the users file from another without reading it: device, inode,
/// size, and modification and change times (nanoseconds). `ferry user` replaces the file by
/// rename, so every edit of it gets a new inode; an edit in place changes the size or the
/// times. The server compares stamps before each login and reloads only on a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file at `path` (through a symlink: a swapped link target counts as a
    /// change).
    pub fn of(path: &Path) -> io::Result<FileStamp> {
        let m = fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Checks a user name: 1 to [`MAX_USER_LEN`] bytes of UTF-8; no `/`, `\`, `:`, `@`, NUL,
/// control or invisible formatting characters, or whitespace; does not start with `-` or `.`
/// (which also rules out `.` and `..`). Letters of any script are fine.
pub fn validate_name(name: &str) -> Result<(), UsersError> {
    let bad = |reason| {
        Err(UsersError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    // The reason below spells the limit out; keep the two in step.
    const _: () = assert!(MAX_USER_LEN == 64);
    if name.len() > MAX_USER_LEN {
        return bad("longer than 64 bytes");
    }
    if name.starts_with('-') {
        return bad("starts with '-'");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    for c in name.chars() {
        let reason = match c {
            '/' | '\\' => "contains a path separator",
            ':' => "contains ':'",
            '@' => "contains '@'",
            c if c.is_control() => "contains a control character",
            c if c.is_whitespace() => "contains whitespace",
            c if is_invisible(c) => "contains an invisible formatting character",
            _ => continue,
        };
        return bad(reason);
    }
    Ok(())
}

/// Unicode format characters that can make a name look like another one or reorder the text
/// around it on a terminal (zero-width spaces and joiners, bidi controls, soft hyphen, BOM).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Hashes a new password with argon2id, [`DEFAULT_PARAMS`] and a random 16-byte salt.
///
/// Slow on purpose (tens of milliseconds in a release build).
pub fn hash_password(pw: &Password) -> Result<String, UsersError> {
    let (m, t, p) = DEFAULT_PARAMS;
    hash_password_with(pw, m, t, p)
}

/// Hashes a new password with argon2id, the given parameters (memory in KiB, iterations,
/// parallelism) and a random 16-byte salt. Refuses an empty password, one longer than
/// [`MAX_PASSWORD_LEN`] (it could never log in), and parameters outside argon2's range or the
/// sanity limits [`MAX_M_KIB`], [`MAX_T_COST`], [`MAX_P_COST`].
pub fn hash_password_with(pw: &Password, m_kib: u32, t: u32, p: u32) -> Result<String, UsersError> {
    if pw.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    if pw.len() > MAX_PASSWORD_LEN {
        return Err(UsersError::PasswordTooLong {
            max: MAX_PASSWORD_LEN,
        });
    }
    let hasher = argon2id(m_kib, t, p).map_err(UsersError::InvalidHash)?;
    let hash = hasher
        .hash_password(pw.as_bytes())
        .map_err(|e| UsersError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks `pw` against an argon2id PHC `hash`. Anything wrong (unparseable hash, another
/// algorithm, costs over the limits, mismatch) is `false`.
///
/// Blocking and slow on purpose: run it on a blocking pool. A password longer than
/// [`MAX_PASSWORD_LEN`] is refused before any hashing, so it cannot be used to burn CPU.
pub fn verify_password(hash: &str, pw: &Password) -> bool {
    verify_password_in(hash, pw, None)
}

/// [`verify_password`], with argon2's working memory taken from `warm` if it holds some, and
/// left there for the next check (see [`login_memory`]).
pub fn verify_password_in(hash: &str, pw: &Password, warm: Option<&login_memory::Warm>) -> bool {
    if pw.len() > MAX_PASSWORD_LEN {
        return false;
    }
    let Ok((phc, _)) = parse_hash(hash) else {
        return false;
    };
    // The algorithm, version and parameters come from the PHC string, already checked above.
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let argon = Argon2::new(Algorithm::Argon2id, version, params);
    // Working memory straight from the kernel, not the heap: a flood of logins cannot grow
    // the allocator's heap (allocating and freeing ~19 MiB per check from the heap does).
    // It is kept for the next check only while logins keep coming (see `login_memory`).
    let Ok(mut memory) =
        ArgonMemory::new(argon.params().block_count(), argon.params().t_cost(), warm)
    else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if argon
        .hash_password_into_with_memory(pw.as_bytes(), salt.as_ref(), &mut out, memory.blocks())
        .is_err()
    {
        return false;
    }
    // Constant time: how many leading bytes match must not show in the timing.
    out.iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// argon2's working memory for one verification: the warm mapping of an earlier check if
/// there is one of the right size (see [`login_memory`]), a fresh one otherwise (zero-filled
/// on first touch). Handed back for the next check when dropped, or unmapped.
struct ArgonMemory<'w> {
    map: Option<crate::mapping::Mapping>,
    blocks: usize,
    /// Where the memory goes back to, if it may outlive the check (see
    /// [`login_memory::Warm::give_back`]).
    keep: Option<&'w login_memory::Warm>,
}

impl<'w> ArgonMemory<'w> {
    fn new(
        blocks: usize,
        t_cost: u32,
        warm: Option<&'w login_memory::Warm>,
    ) -> io::Result<ArgonMemory<'w>> {
        let blocks = blocks.max(1);
        let len = blocks * Block::SIZE;
        let map = match warm.and_then(|w| w.take(len)) {
            Some(map) => map,
            None => {
                let map = crate::mapping::Mapping::new(len)?;
                // Huge pages: a few faults instead of ~4,900 for 19 MiB of fresh memory,
                // which measured 8-10 ms of a 27 ms check on a 2-core VM and 2-4 ms with
                // the advice.
                map.prefer_huge_pages();
                map
            }
        };
        Ok(ArgonMemory {
            map: Some(map),
            blocks,
            keep: warm.filter(|_| t_cost >= 2),
        })
    }

    fn blocks(&mut self) -> &mut [Block] {
        let Some(map) = &self.map else {
            return &mut [];
        };
        // SAFETY: the mapping holds at least `blocks * Block::SIZE` bytes (checked when it
        // was taken or made), page aligned (more than `Block`'s 64), and any bit pattern is
        // a valid `Block` (128 u64 words); it is owned by `self` and borrowed mutably here,
        // so nothing else sees it.
        unsafe { std::slice::from_raw_parts_mut(map.as_ptr().cast::<Block>(), self.blocks) }
    }
}

impl Drop for ArgonMemory<'_> {
    fn drop(&mut self) {
        if let Some(map) = self.map.take()
            && let Some(warm) = self.keep
        {
            warm.give_back(map);
        }
    }
}

/// The working memory of the last password check, kept warm for the next one while logins
/// keep coming.
///
/// Mapping and faulting in argon2's 19 MiB costs 2-4 ms of a ~20 ms check even with huge
/// pages; a burst of logins (scripts that connect once per file, a fleet reconnecting after a
/// restart) would pay it every time. At most one mapping is kept, and only for a short while:
/// the server gives it back to the kernel once no check has used it for a second
/// ([`login_memory::Warm::release_unused_for`]) and as soon as any session starts moving data
/// ([`login_memory::Warm::release`]), so it never adds to the memory of a transfer and an
/// idle server holds none of it. The server owns the one slot ([`login_memory::Warm`]) and
/// passes it to [`verify_password_in`]; other callers keep nothing.
///
/// Only memory of a check with two or more passes is kept: after the second pass every block
/// depends on the whole first pass, so what is left in it offers no shortcut to testing
/// password guesses (with one pass, the first blocks of a lane would).
pub mod login_memory {
    use std::sync::{Mutex, MutexGuard, PoisonError};
    use std::time::{Duration, Instant};

    use crate::mapping::Mapping;

    /// One slot for a mapping and when it was last given back. Every mapping taken out of it
    /// is unmapped outside the lock.
    #[derive(Default)]
    pub struct Warm(Mutex<Option<(Mapping, Instant)>>);

    impl Warm {
        pub const fn new() -> Warm {
            Warm(Mutex::new(None))
        }

        fn slot(&self) -> MutexGuard<'_, Option<(Mapping, Instant)>> {
            // A panic while the lock was held cannot leave the slot half-written.
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// The kept mapping, if it has exactly `len` bytes.
        pub(crate) fn take(&self, len: usize) -> Option<Mapping> {
            let mut slot = self.slot();
            if slot.as_ref().is_some_and(|(map, _)| map.len() == len) {
                slot.take().map(|(map, _)| map)
            } else {
                None
            }
        }

        /// Keeps `map` warm for the next check, replacing (and unmapping) an older one.
        pub(crate) fn give_back(&self, map: Mapping) {
            let old = self.slot().replace((map, Instant::now()));
            drop(old);
        }

        /// Whether a mapping is being kept.
        pub fn held(&self) -> bool {
            self.slot().is_some()
        }

        /// Unmaps the kept mapping, if any.
        pub fn release(&self) {
            let old = self.slot().take();
            drop(old);
        }

        /// Unmaps the kept mapping if no check has used it for `idle`. If one is still held,
        /// returns how long until it will have been unused for `idle`.
        pub fn release_unused_for(&self, idle: Duration) -> Option<Duration> {
            let mut slot = self.slot();
            let unused = slot.as_ref().map(|(_, used)| used.elapsed())?;
            if unused < idle {
                return Some(idle - unused);
            }
            let old = slot.take();
            drop(slot);
            drop(old);
            None
        }
    }
}

/// A random password for the first-start admin user: 20 characters from an alphabet without
/// look-alikes (`0 O o 1 l I`), about 116 bits.
pub fn random_password() -> Password {
    // ThreadRng is a CSPRNG seeded from the OS; `random_range` has no modulo bias.
    let mut rng = rand::rng();
    let s = (0..RANDOM_PASSWORD_LEN)
        .map(|_| {
            let i = rng.random_range(0..RANDOM_PASSWORD_ALPHABET.len());
            char::from(RANDOM_PASSWORD_ALPHABET[i])
        })
        .collect();
    Password(s)
}

/// Adds a user to the users file, creating the file (mode 0600) if it does not exist.
///
/// `hash` must be an argon2id PHC string (see [`hash_password`]); `home`, if given, must be valid
/// UTF-8 (it is stored as a TOML string). Fails with [`UsersError::AlreadyExists`] if the user is
/// there already. See [`remove_user`] for how the file is rewritten.
pub fn add_user(
    path: &Path,
    name: &str,
    hash: &str,
    home: Option<&Path>,
    read_only: bool,
) -> Result<(), UsersError> {
    let settings = UserChange {
        home: home.map(|h| Some(h.to_path_buf())),
        read_only: Some(read_only),
        ..UserChange::default()
    };
    add_user_with(path, name, hash, &settings)
}

/// Like [`add_user`], with every setting of `settings` (`read_only` defaults to false).
pub fn add_user_with(
    path: &Path,
    name: &str,
    hash: &str,
    settings: &UserChange,
) -> Result<(), UsersError> {
    validate_name(name)?;
    parse_hash(hash).map_err(UsersError::InvalidHash)?;
    // `read_only` is always written, so the file says what the account may do.
    let settings = UserChange {
        read_only: Some(settings.read_only.unwrap_or(false)),
        ..settings.clone()
    };
    let values = ChangeValues::of(name, &settings)?;
    edit(path, |doc| {
        let first = doc.as_table().is_empty() && doc.trailing().as_str().is_none_or(str::is_empty);
        let users = users_table_mut(doc, path)?;
        if users.contains_key(name) {
            return Err(UsersError::AlreadyExists(name.to_owned()));
        }
        let mut user = Table::new();
        user.insert("password", toml_edit::value(hash));
        values.apply(&mut user);
        if !first {
            // A blank line between the previous user and this one, as an admin would write it.
            user.decor_mut().set_prefix("\n");
        }
        users.insert(name, Item::Table(user));
        Ok(())
    })
}

/// Changes a user's settings in the users file, keeping the comments on lines it does not
/// change. Fails with [`UsersError::NotFound`] if the user is absent.
pub fn update_user(path: &Path, name: &str, change: &UserChange) -> Result<(), UsersError> {
    let values = ChangeValues::of(name, change)?;
    edit(path, |doc| {
        let user = users_table_mut(doc, path)?
            .get_mut(name)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| UsersError::NotFound(name.to_owned()))?;
        values.apply(user);
        Ok(())
    })
}

/// A [`UserChange`] checked and turned into TOML values: `Some(None)` removes the field.
struct ChangeValues(Vec<(&'static str, Option<Value>)>);

impl ChangeValues {
    fn of(name: &str, change: &UserChange) -> Result<ChangeValues, UsersError> {
        let mut out = Vec::new();
        if let Some(home) = &change.home {
            let home = home.as_deref().map(|h| home_str(name, h)).transpose()?;
            out.push(("home", home.map(Value::from)));
        }
        // In the order an admin would write them, after `password` (and `home`).
        if let Some(read_only) = change.read_only {
            out.push(("read_only", Some(Value::from(read_only))));
        }
        for (field, value) in [
            ("quota_bytes", change.quota_bytes),
            ("quota_files", change.quota_files),
            ("max_file_size", change.max_file_size),
        ] {
            let Some(value) = value else { continue };
            let value = value
                .map(|n| {
                    i64::try_from(n).map_err(|_| UsersError::LimitTooLarge {
                        name: name.to_owned(),
                        field,
                        max: i64::MAX,
                    })
                })
                .transpose()?;
            out.push((field, value.map(Value::from)));
        }
        Ok(ChangeValues(out))
    }

    /// Sets or removes each field, keeping a changed value's comment.
    fn apply(&self, user: &mut dyn TableLike) {
        for (field, value) in &self.0 {
            match value {
                None => {
                    user.remove(field);
                }
                Some(value) => match user.get_mut(field).and_then(Item::as_value_mut) {
                    Some(old) => {
                        let decor = old.decor().clone();
                        *old = value.clone();
                        *old.decor_mut() = decor;
                    }
                    None => {
                        user.insert(field, Item::Value(value.clone()));
                    }
                },
            }
        }
    }
}

/// Replaces a user's password hash in the users file, keeping the rest of the line (such as a
/// trailing comment). Fails with [`UsersError::NotFound`] if the user is absent.
pub fn set_password(path: &Path, name: &str, hash: &str) -> Result<(), UsersError> {
    parse_hash(hash).map_err(UsersError::InvalidHash)?;
    edit(path, |doc| {
        let user = users_table_mut(doc, path)?
            .get_mut(name)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| UsersError::NotFound(name.to_owned()))?;
        match user.get_mut("password").and_then(Item::as_value_mut) {
            Some(value) => {
                let decor = value.decor().clone();
                *value = Value::from(hash);
                *value.decor_mut() = decor;
            }
            // Unreachable for a file that validated, but harmless.
            None => {
                user.insert("password", toml_edit::value(hash));
            }
        }
        Ok(())
    })
}

/// Removes a user from the users file. Fails with [`UsersError::NotFound`] if the user is absent.
///
/// Like every edit: the file is locked against concurrent `ferry user` runs, refused untouched
/// if it does not validate, edited with its comments and layout kept, validated again, written
/// to an exclusively created temp file (mode 0600) in the same directory, fsynced, renamed over
/// the original, and the directory fsynced. If `path` is a symlink, its target is edited.
pub fn remove_user(path: &Path, name: &str) -> Result<(), UsersError> {
    edit(path, |doc| {
        let removed = users_table_mut(doc, path)?
            .remove(name)
            .ok_or_else(|| UsersError::NotFound(name.to_owned()))?;
        if let Item::Table(table) = removed {
            keep_leading_comments(doc, &table, path)?;
        }
        Ok(())
    })
}

/// The comments above a removed user's `[users.NAME]` header are kept if a blank line separates
/// them from the header (they are about the file, like a header comment, not about this user);
/// the comment block directly above the header goes with the user. Kept comments move to the
/// start of whatever followed the removed table.
fn keep_leading_comments(
    doc: &mut DocumentMut,
    removed: &Table,
    path: &Path,
) -> Result<(), UsersError> {
    let prefix = removed
        .decor()
        .prefix()
        .and_then(|raw| raw.as_str())
        .unwrap_or("");
    // Everything up to and including the last blank line.
    let mut keep_len = 0;
    let mut offset = 0;
    for line in prefix.split_inclusive('\n') {
        offset += line.len();
        if line.trim().is_empty() {
            keep_len = offset;
        }
    }
    // `keep_len` is just past a '\n', so a char boundary.
    let keep = &prefix[..keep_len];
    if !keep.contains('#') {
        return Ok(());
    }
    let Some(position) = removed.position() else {
        return Ok(());
    };
    let users = users_table_mut(doc, path)?;
    let next = users
        .iter_mut()
        .filter_map(|(_, item)| item.as_table_mut())
        .filter(|t| t.position().is_some_and(|p| p > position))
        .min_by_key(|t| t.position());
    // `keep` ends with a blank line already; drop the blank lines that opened the next part.
    let joined = |old: Option<&str>| {
        let mut rest = old.unwrap_or("");
        while let Some(eol) = rest.find('\n') {
            if !rest[..eol].trim().is_empty() {
                break;
            }
            rest = &rest[eol + 1..];
        }
        format!("{keep}{rest}")
    };
    match next {
        Some(next) => {
            let prefix = joined(next.decor().prefix().and_then(|raw| raw.as_str()));
            next.decor_mut().set_prefix(prefix);
        }
        None => {
            let trailing = joined(doc.trailing().as_str());
            doc.set_trailing(trailing);
        }
    }
    Ok(())
}

/// Reads a new password. With `from_stdin`, one line of stdin (for scripts; see
/// [`read_password_line`]). Otherwise from the terminal without echo, asked twice; if the two
/// differ, or the password is refused, the reason is shown and both are asked again, up to
/// three times. Empty passwords and ones longer than [`MAX_PASSWORD_LEN`] are refused, and so
/// are ones shorter than [`MIN_PASSWORD_CHARS`] unless `allow_weak`.
pub fn read_new_password(from_stdin: bool, allow_weak: bool) -> Result<Password, UsersError> {
    if from_stdin {
        let pw = read_password_line(&mut io::stdin().lock())?;
        return check_strength(pw, allow_weak);
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let again = |e: UsersError| -> Result<(), UsersError> {
            if tries >= PASSWORD_PROMPT_TRIES {
                return Err(e);
            }
            eprintln!("{e}; try again");
            Ok(())
        };
        let first =
            rpassword::prompt_password("New password: ").map_err(UsersError::ReadPassword)?;
        let first = match check_new_password(Password(first))
            .and_then(|pw| check_strength(pw, allow_weak))
        {
            Ok(pw) => pw,
            Err(
                e @ (UsersError::EmptyPassword
                | UsersError::PasswordTooLong { .. }
                | UsersError::PasswordTooShort { .. }),
            ) => {
                again(e)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let second = rpassword::prompt_password("Retype new password: ")
            .map_err(UsersError::ReadPassword)?;
        if first.as_bytes() == second.as_bytes() {
            return Ok(first);
        }
        again(UsersError::PasswordMismatch)?;
    }
}

/// Refuses a password shorter than [`MIN_PASSWORD_CHARS`] characters unless `allow_weak`.
pub fn check_strength(pw: Password, allow_weak: bool) -> Result<Password, UsersError> {
    if !allow_weak && pw.as_str().chars().count() < MIN_PASSWORD_CHARS {
        return Err(UsersError::PasswordTooShort {
            min: MIN_PASSWORD_CHARS,
        });
    }
    Ok(pw)
}

/// Reads one line from `reader` as a new password: a trailing `\n` or `\r\n` is stripped; an
/// empty line, one longer than [`MAX_PASSWORD_LEN`] bytes, or one that is not UTF-8 is refused.
/// Reads at most a few bytes past the limit.
pub fn read_password_line(reader: &mut impl BufRead) -> Result<Password, UsersError> {
    let mut line = Vec::new();
    // +2 for "\r\n", +1 to notice a line that is too long.
    let cap = (MAX_PASSWORD_LEN + 3) as u64;
    reader
        .by_ref()
        .take(cap)
        .read_until(b'\n', &mut line)
        .map_err(UsersError::ReadPassword)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let pw = String::from_utf8(line).map_err(|_| UsersError::PasswordNotUtf8)?;
    check_new_password(Password(pw))
}

fn check_new_password(pw: Password) -> Result<Password, UsersError> {
    if pw.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    if pw.len() > MAX_PASSWORD_LEN {
        return Err(UsersError::PasswordTooLong {
            max: MAX_PASSWORD_LEN,
        });
    }
    Ok(pw)
}

/// Checks that `hash` is a usable argon2id PHC string within the cost limits: what every
/// account store demands of a hash it is given.
pub fn check_hash(hash: &str) -> Result<(), UsersError> {
    parse_hash(hash).map(drop).map_err(UsersError::InvalidHash)
}

/// An argon2id hasher with these parameters, if they are within argon2's and our limits.
fn argon2id(m_kib: u32, t: u32, p: u32) -> Result<Argon2<'static>, &'static str> {
    if m_kib > MAX_M_KIB || t > MAX_T_COST || p > MAX_P_COST {
        return Err("argon2 parameters over the limits");
    }
    let params = Params::new(m_kib, t, p, None).map_err(|_| "invalid argon2 parameters")?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Parses a PHC string that must be a complete argon2id hash with sane parameters; returns it
/// and its (m KiB, t, p).
fn parse_hash(hash: &str) -> Result<(PasswordHash, (u32, u32, u32)), &'static str> {
    let phc = PasswordHash::new(hash).map_err(|_| "not a PHC string")?;
    if phc.algorithm != ARGON2ID_IDENT {
        return Err("not an argon2id hash");
    }
    if phc.salt.is_none() || phc.hash.is_none() {
        return Err("salt or hash missing");
    }
    if let Some(version) = phc.version {
        Version::try_from(version).map_err(|_| "unknown argon2 version")?;
    }
    let params = Params::try_from(&phc).map_err(|_| "invalid argon2 parameters")?;
    let mtp = (params.m_cost(), params.t_cost(), params.p_cost());
    if mtp.0 > MAX_M_KIB || mtp.1 > MAX_T_COST || mtp.2 > MAX_P_COST {
        return Err("argon2 parameters over the limits");
    }
    Ok((phc, mtp))
}

/// The most used (m, t, p); on a tie, the costlier one, so the dummy is never the cheap outlier.
fn most_common_params(users: &BTreeMap<String, User>) -> (u32, u32, u32) {
    let mut counts: BTreeMap<(u32, u32, u32), usize> = BTreeMap::new();
    for user in users.values() {
        if let Ok((_, mtp)) = parse_hash(&user.password_hash) {
            *counts.entry(mtp).or_default() += 1;
        }
    }
    most_used_params(counts)
}

fn home_str(name: &str, home: &Path) -> Result<String, UsersError> {
    let bad = |reason| UsersError::InvalidHome {
        name: name.to_owned(),
        reason,
    };
    let s = home.to_str().ok_or_else(|| bad("not valid utf-8"))?;
    check_home(s).map_err(bad)?;
    Ok(s.to_owned())
}

fn check_home(home: &str) -> Result<(), &'static str> {
    if home.is_empty() {
        return Err("empty");
    }
    if home.contains('\0') {
        return Err("contains NUL");
    }
    Ok(())
}

/// `name` quoted for an error message, with anything unprintable escaped.
fn q(name: &str) -> String {
    format!("`{}`", name.escape_debug())
}

fn parse_at(text: &str, path: &Path) -> Result<UserDb, UsersError> {
    let err = |span: Option<Range<usize>>, msg: String| {
        let msg = match span {
            Some(span) => {
                let line = text
                    .get(..span.start)
                    .map_or(0, |before| before.matches('\n').count());
                format!("line {}: {msg}", line + 1)
            }
            None => msg,
        };
        UsersError::Parse {
            path: path.to_path_buf(),
            msg,
        }
    };
    let doc = toml_edit::Document::parse(text).map_err(|e| err(e.span(), e.message().into()))?;
    let root = doc.as_table();
    let key_span = |t: &dyn TableLike, k: &str| t.key(k).and_then(|k| k.span());

    for (key, _) in root.iter() {
        if key != "users" {
            return Err(err(
                key_span(root, key),
                format!("unknown top-level key {} (expected `users`)", q(key)),
            ));
        }
    }
    let mut users = BTreeMap::new();
    if let Some(item) = root.get("users") {
        let table = item.as_table_like().ok_or_else(|| {
            err(
                key_span(root, "users"),
                "`users` must be a table of users, like [users.alice]".into(),
            )
        })?;
        for (name, item) in table.iter() {
            let span = key_span(table, name);
            if let Err(UsersError::InvalidName { reason, .. }) = validate_name(name) {
                return Err(err(
                    span,
                    format!("invalid user name {}: {reason}", q(name)),
                ));
            }
            let fields = item
                .as_table_like()
                .ok_or_else(|| err(span.clone(), format!("user {} must be a table", q(name))))?;
            let user =
                parse_user(name, fields).map_err(|(msg, at)| err(at.or(span.clone()), msg))?;
            users.insert(name.to_owned(), user);
        }
    }
    let common_params = most_common_params(&users);
    Ok(UserDb {
        users,
        common_params,
        dummy_hash: OnceLock::new(),
    })
}

/// An error message and where it is, if known.
type FieldError = (String, Option<Range<usize>>);

fn parse_user(name: &str, fields: &dyn TableLike) -> Result<User, FieldError> {
    let user = q(name);
    let mut password_hash = None;
    let mut home = None;
    let mut read_only = false;
    let (mut quota_bytes, mut quota_files, mut max_file_size) = (None, None, None);
    for (field, item) in fields.iter() {
        let span = fields.key(field).and_then(|k| k.span());
        let wrong = |what: &str| {
            (
                format!("user {user}: {} must be {what}", q(field)),
                span.clone(),
            )
        };
        match field {
            "password" => {
                let hash = item.as_str().ok_or_else(|| wrong("a string"))?;
                parse_hash(hash).map_err(|reason| {
                    (
                        format!("user {user}: `password` is not a usable argon2id hash: {reason}"),
                        span.clone(),
                    )
                })?;
                password_hash = Some(hash.to_owned());
            }
            "home" => {
                let dir = item.as_str().ok_or_else(|| wrong("a string"))?;
                check_home(dir).map_err(|reason| {
                    (
                        format!("user {user}: `home` is invalid: {reason}"),
                        span.clone(),
                    )
                })?;
                home = Some(PathBuf::from(dir));
            }
            "read_only" => read_only = item.as_bool().ok_or_else(|| wrong("true or false"))?,
            "quota_bytes" | "max_file_size" => {
                let what = "a byte count: a number, or a string like \"10 GiB\"";
                let n = match (item.as_integer(), item.as_str()) {
                    (Some(n), _) => u64::try_from(n).ok(),
                    (_, Some(text)) => parse_size(text),
                    _ => None,
                }
                .ok_or_else(|| wrong(what))?;
                if field == "quota_bytes" {
                    quota_bytes = Some(n);
                } else {
                    max_file_size = Some(n);
                }
            }
            "quota_files" => {
                let n = item
                    .as_integer()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| wrong("a non-negative integer"))?;
                quota_files = Some(n);
            }
            _ => {
                return Err((
                    format!(
                        "user {user}: unknown field {} (expected {USER_FIELDS})",
                        q(field)
                    ),
                    span,
                ));
            }
        }
    }
    let password_hash =
        password_hash.ok_or_else(|| (format!("user {user}: `password` is missing"), None))?;
    Ok(User {
        name: name.to_owned(),
        password_hash,
        home,
        read_only,
        quota_bytes,
        quota_files,
        max_file_size,
    })
}

/// Parses a size such as `"500"`, `"10 GiB"`, `"1.5G"` or `"200 MB"`: `K`/`M`/`G`/`T` and
/// `KiB`..`TiB` are powers of 1024, `KB`..`TB` powers of 1000, `B` or nothing is bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') {
        return None;
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(factor);
    }
    let value: f64 = number.parse().ok()?;
    let bytes = value * factor as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The `users` table of a document being edited, created (as an implicit table, so no bare
/// `[users]` header appears) if absent.
fn users_table_mut<'a>(
    doc: &'a mut DocumentMut,
    path: &Path,
) -> Result<&'a mut dyn TableLike, UsersError> {
    let item = doc.entry("users").or_insert_with(|| {
        let mut table = Table::new();
        table.set_implicit(true);
        Item::Table(table)
    });
    // A file that validated has a table here; keep the check rather than panic.
    item.as_table_like_mut().ok_or_else(|| UsersError::Parse {
        path: path.to_path_buf(),
        msg: "`users` must be a table of users".into(),
    })
}

/// Read-validate-modify-validate-write of the users file; see [`remove_user`].
fn edit(
    path: &Path,
    change: impl FnOnce(&mut DocumentMut) -> Result<(), UsersError>,
) -> Result<(), UsersError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| UsersError::Io { path, error }
    };
    // Edit a symlink's target rather than replace the link with a regular file.
    let path = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(io_err(path))?
        }
        _ => path.to_path_buf(),
    };
    let path = path.as_path();
    let file_name = path.file_name().ok_or_else(|| UsersError::Io {
        path: path.to_path_buf(),
        error: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir_file = File::open(dir).map_err(io_err(dir))?;
    // Two `ferry user` runs at once must not lose one's change: lock the directory (the file
    // itself is replaced by rename, so a lock on it would not hold). Released when dropped.
    rustix::fs::flock(&dir_file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        UsersError::Io {
            path: dir.to_path_buf(),
            error: e.into(),
        }
    })?;

    let (text, old_meta) = match fs::read_to_string(path) {
        Ok(text) => (text, fs::metadata(path).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(io_err(path)(e)),
    };
    // Refuse to touch a broken file: the admin should see and fix what is wrong.
    parse_at(&text, path)?;
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| UsersError::Parse {
                path: path.to_path_buf(),
                msg: e.message().to_owned(),
            })?;
    change(&mut doc)?;
    let new_text = doc.to_string();
    // Never write a file the server would refuse.
    parse_at(&new_text, path).map_err(|e| match e {
        UsersError::Parse { path, msg } => UsersError::Parse {
            path,
            msg: format!("edit would make the file invalid, left unchanged: {msg}"),
        },
        e => e,
    })?;

    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{:016x}", rand::rng().random::<u64>()));
    let tmp_path = dir.join(tmp_name);
    write_new_file(&tmp_path, new_text.as_bytes(), old_meta.as_ref()).map_err(io_err(path))?;
    if let Err(e) = fs::rename(&tmp_path, path) {
        // Best effort: the temp file is ours and must not linger.
        let _ = fs::remove_file(&tmp_path);
        return Err(io_err(path)(e));
    }
    dir_file.sync_all().map_err(io_err(dir))
}

/// Writes a secret (the first-start admin password) to `path`, mode 0600 from the moment it
/// exists: a new file is created exclusively beside it, then renamed over whatever `path` was
/// (a stale file of an earlier first start, or a planted symlink, which is replaced and never
/// followed).
pub fn write_secret_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{:016x}", rand::rng().random::<u64>()));
    let tmp = path.with_file_name(tmp_name);
    write_new_file(&tmp, data, None)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        // Best effort: the temp file is ours and must not linger.
        let _ = fs::remove_file(&tmp);
    })
}

/// Creates `path` exclusively (never through a symlink or over an existing file), mode 0600,
/// writes `data` and fsyncs it. If `like` is the metadata of the file being replaced, the new
/// file gets the same owner where permitted, so `sudo ferry user add` does not lock the server
/// out of its own users file.
pub(crate) fn write_new_file(
    path: &Path,
    data: &[u8],
    like: Option<&fs::Metadata>,
) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = (|| {
        if let Some(meta) = like {
            // Best effort: only root may give a file away, and an owner keeping their own file
            // is the common case; either way the content is what matters.
            let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
        }
        file.write_all(data)?;
        file.sync_all()
    })();
    if written.is_err() {
        // Only after our own create succeeded: never remove a name someone else made.
        let _ = fs::remove_file(path);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    /// Cheap argon2 parameters for fixtures: the production code path, a fraction of the cost.
    const CHEAP: (u32, u32, u32) = (64, 1, 1);

    fn pw(s: &str) -> Password {
        Password::new(s.to_owned())
    }

    fn cheap_hash(s: &str) -> String {
        hash_password_with(&pw(s), CHEAP.0, CHEAP.1, CHEAP.2).unwrap()
    }

    fn temp_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn parse_err(text: &str) -> String {
        UserDb::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn password_never_prints() {
        let p = pw("hunter2");
        assert_eq!(format!("{p}"), "********");
        assert_eq!(format!("{p:?}"), "********");
        assert_eq!(p.len(), 7);
        assert!(!p.is_empty());
        assert_eq!(p.as_bytes(), b"hunter2");
    }

    #[test]
    fn verify_round_trip() {
        let hash = cheap_hash("correct horse");
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert!(verify_password(&hash, &pw("correct horse")));
        assert!(!verify_password(&hash, &pw("correct horsE")));
        assert!(!verify_password(&hash, &pw("")));
        // Same password, fresh salt.
        assert_ne!(hash, cheap_hash("correct horse"));
    }

    #[test]
    fn reused_argon2_memory_gives_the_same_verdicts() {
        // Two passes, so the memory is kept between checks; the second and later checks run
        // on memory that still holds the previous one's blocks.
        let (m, t, p) = (64, 2, 1);
        let a = hash_password_with(&pw("first"), m, t, p).unwrap();
        let b = hash_password_with(&pw("second"), m, t, p).unwrap();
        let warm = login_memory::Warm::new();
        let verify_password = |hash: &str, pw: &Password| {
            let verdict = verify_password_in(hash, pw, Some(&warm));
            assert!(warm.held(), "the memory is kept for the next check");
            verdict
        };
        for _ in 0..3 {
            assert!(verify_password(&a, &pw("first")));
            assert!(!verify_password(&a, &pw("second")));
            assert!(verify_password(&b, &pw("second")));
            assert!(!verify_password(&b, &pw("first")));
        }
    }

    #[test]
    fn warm_memory_is_reused_only_at_its_size_and_released() {
        let warm = login_memory::Warm::new();
        assert!(warm.take(4096).is_none());
        let map = crate::mapping::Mapping::new(8192).unwrap();
        let addr = map.as_ptr();
        warm.give_back(map);
        assert!(warm.held());
        assert!(
            warm.take(4096).is_none(),
            "a mapping of another size is not handed out"
        );
        let again = warm.take(8192).expect("the kept mapping");
        assert_eq!(again.as_ptr(), addr);
        assert!(!warm.held());
        warm.give_back(again);
        // Recently used: kept; unused for long enough: unmapped.
        let left = warm.release_unused_for(Duration::from_secs(3600));
        assert!(
            left.is_some_and(|d| d > Duration::from_secs(3500)),
            "{left:?}"
        );
        assert_eq!(warm.release_unused_for(Duration::ZERO), None);
        assert!(!warm.held());
        warm.give_back(crate::mapping::Mapping::new(4096).unwrap());
        warm.release();
        assert!(!warm.held());
    }

    #[test]
    fn one_pass_memory_is_not_kept() {
        // With one pass the first blocks would allow cheap guessing: such memory is unmapped
        // at once. Checked on the memory type itself, which the server's slot backs.
        let warm = login_memory::Warm::new();
        let mut mem = ArgonMemory::new(64, 1, Some(&warm)).unwrap();
        assert_eq!(mem.blocks().len(), 64);
        assert!(mem.keep.is_none());
        drop(mem);
        assert!(!warm.held());
        let mem = ArgonMemory::new(64, 2, Some(&warm)).unwrap();
        assert!(mem.keep.is_some());
    }

    #[test]
    fn verify_refuses_other_algorithms_and_garbage() {
        let id = cheap_hash("pw");
        let as_i = id.replacen("$argon2id$", "$argon2i$", 1);
        let as_d = id.replacen("$argon2id$", "$argon2d$", 1);
        // A real argon2i hash of "pw" with the same parameters must be refused too.
        let real_i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(real_i.starts_with("$argon2i$"));
        let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        for hash in [&*as_i, &*as_d, &*real_i, bcrypt, "", "$argon2id$", "plain"] {
            assert!(!verify_password(hash, &pw("pw")), "{hash}");
        }
        assert!(verify_password(&id, &pw("pw")));
    }

    #[test]
    fn hash_password_refuses_empty_long_and_bad_params() {
        assert!(matches!(
            hash_password_with(&pw(""), 64, 1, 1),
            Err(UsersError::EmptyPassword)
        ));
        let long = pw(&"x".repeat(MAX_PASSWORD_LEN + 1));
        assert!(matches!(
            hash_password_with(&long, 64, 1, 1),
            Err(UsersError::PasswordTooLong { .. })
        ));
        let max = pw(&"x".repeat(MAX_PASSWORD_LEN));
        let hash = hash_password_with(&max, 64, 1, 1).unwrap();
        assert!(verify_password(&hash, &max));
        for (m, t, p) in [(1, 1, 1), (64, 0, 1), (64, 1, 0), (MAX_M_KIB + 1, 1, 1)] {
            assert!(
                matches!(
                    hash_password_with(&pw("x"), m, t, p),
                    Err(UsersError::InvalidHash(_))
                ),
                "{m} {t} {p}"
            );
        }
    }

    /// The one test that pays for production parameters.
    #[test]
    fn default_params_and_over_long_password_is_refused_without_hashing() {
        let hash = hash_password(&pw("secret")).unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );

        let start = Instant::now();
        assert!(!verify_password(&hash, &pw("wrong")));
        let normal = start.elapsed();

        let long = pw(&"x".repeat(MAX_PASSWORD_LEN + 1));
        let start = Instant::now();
        assert!(!verify_password(&hash, &long));
        let refused = start.elapsed();

        assert!(refused < Duration::from_millis(5), "{refused:?}");
        assert!(
            normal > refused * 10,
            "normal {normal:?}, refused {refused:?}"
        );
    }

    #[test]
    fn validate_name_cases() {
        let ok = [
            "alice",
            "a",
            "bob.smith",
            "b-o_b",
            "jürgen",
            "Δημήτρης",
            "用户",
            "x".repeat(64).as_str(),
            "a.",
            "a-",
        ]
        .map(String::from);
        for name in &ok {
            validate_name(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let bad = [
            "",
            "a/b",
            "a\\b",
            ".",
            "..",
            ".hidden",
            "-x",
            "a@b",
            "a:b",
            "a b",
            " a",
            "a\t",
            "a\u{0}b",
            "\u{7}",
            "a\u{1b}[31m",
            "a\u{a0}b",
            "a\u{200b}b",
            "a\u{202e}b",
            "x".repeat(65).as_str(),
            // 64 bytes but only 32 characters is fine; 66 bytes is not.
            "ü".repeat(33).as_str(),
        ]
        .map(String::from);
        for name in &bad {
            let err = validate_name(name).unwrap_err();
            assert!(matches!(err, UsersError::InvalidName { .. }), "{name:?}");
            // The message escapes what it quotes.
            assert!(!err.to_string().chars().any(|c| c.is_control()), "{err}");
        }
        validate_name(&"ü".repeat(32)).unwrap();
    }

    #[test]
    fn parse_full_file() {
        let (a, b) = (cheap_hash("a"), cheap_hash("b"));
        let text = format!(
            "# top comment\n\
             [users.bob]\npassword = \"{b}\"\nhome = \"bobs\"\nread_only = true\n\n\
             [users.alice]\npassword = \"{a}\" # the hash\nhome = \"/srv/a\"\n\n\
             [users.\"jürgen\"]\npassword = \"{a}\"\n"
        );
        let db = UserDb::parse(&text).unwrap();
        assert_eq!(db.len(), 3);
        assert!(!db.is_empty());
        let names: Vec<_> = db.users().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "jürgen"]);
        let bob = db.get("bob").unwrap();
        assert!(bob.read_only);
        assert_eq!(bob.password_hash, b);
        assert_eq!(bob.home_dir(Path::new("/root")), Path::new("/root/bobs"));
        let alice = db.get("alice").unwrap();
        assert!(!alice.read_only);
        assert_eq!(alice.home_dir(Path::new("/root")), Path::new("/srv/a"));
        let j = db.get("jürgen").unwrap();
        assert_eq!(j.home, None);
        assert_eq!(j.home_dir(Path::new("/root")), Path::new("/root/jürgen"));
        assert!(db.get("carol").is_none());
        assert!(
            !format!("{alice:?}").contains(&a),
            "Debug must not print the hash"
        );

        // Inline tables are tables too.
        let inline = format!("users = {{ carol = {{ password = \"{a}\" }} }}\n");
        assert!(UserDb::parse(&inline).unwrap().get("carol").is_some());
        // Empty file, empty table.
        assert!(UserDb::parse("").unwrap().is_empty());
        assert!(UserDb::parse("# nobody yet\n[users]\n").unwrap().is_empty());
    }

    #[test]
    fn unknown_field_names_user_and_field() {
        let h = cheap_hash("a");
        let msg = parse_err(&format!(
            "[users.alice]\npassword = \"{h}\"\n\n[users.bob]\npassword = \"{h}\"\nreadonly = true\n"
        ));
        assert!(msg.contains("`bob`") && msg.contains("`readonly`"), "{msg}");
        assert!(msg.contains("line 6"), "{msg}");
        assert!(msg.starts_with("users file: "), "{msg}");

        let msg = parse_err(&format!("[user.alice]\npassword = \"{h}\"\n"));
        assert!(msg.contains("unknown top-level key `user`"), "{msg}");
    }

    #[test]
    fn invalid_content_is_refused() {
        let h = cheap_hash("a");
        let cases = [
            (format!("[users.\"a/b\"]\npassword = \"{h}\"\n"), "invalid user name"),
            (format!("[users.\"-x\"]\npassword = \"{h}\"\n"), "invalid user name"),
            ("[users.alice]\nhome = \"/x\"\n".to_owned(), "`password` is missing"),
            ("[users.alice]\npassword = 3\n".to_owned(), "must be a string"),
            ("[users.alice]\npassword = \"hunter2\"\n".to_owned(), "not a PHC string"),
            (
                format!("[users.alice]\npassword = \"{}\"\n", h.replacen("argon2id", "argon2i", 1)),
                "not an argon2id hash",
            ),
            (
                "[users.alice]\npassword = \"$argon2id$v=19$m=2000000,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n"
                    .to_owned(),
                "over the limits",
            ),
            (format!("[users.alice]\npassword = \"{h}\"\nread_only = \"yes\"\n"), "true or false"),
            (format!("[users.alice]\npassword = \"{h}\"\nhome = \"\"\n"), "`home` is invalid"),
            (format!("[users]\nalice = \"{h}\"\n"), "must be a table"),
            ("users = 5\n".to_owned(), "`users` must be a table"),
            (format!("[[users]]\npassword = \"{h}\"\n"), "`users` must be a table"),
        ];
        for (text, want) in cases {
            let msg = parse_err(&text);
            assert!(msg.contains(want), "{text:?}: {msg}");
        }
    }

    #[test]
    fn broken_file_error_names_the_file() {
        let (_dir, path) = temp_file("[users.alice\npassword = \"x\"\n");
        let err = UserDb::load(&path).unwrap_err();
        assert!(matches!(err, UsersError::Parse { .. }));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: line 1", path.display())),
            "{msg}"
        );

        let missing = path.with_file_name("nope.toml");
        let msg = UserDb::load(&missing).unwrap_err().to_string();
        assert!(msg.contains("nope.toml"), "{msg}");
    }

    #[test]
    fn dummy_hash_uses_the_files_common_params() {
        let h = |m, t| hash_password_with(&pw("x"), m, t, 1).unwrap();
        let text = format!(
            "[users.a]\npassword = \"{}\"\n[users.b]\npassword = \"{}\"\n[users.c]\npassword = \"{}\"\n",
            h(64, 1),
            h(128, 2),
            h(128, 2)
        );
        let (_dir, path) = temp_file(&text);
        let db = UserDb::load(&path).unwrap();
        let dummy = db.dummy_hash();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=128,t=2,p=1$"),
            "{dummy}"
        );
        assert!(parse_hash(dummy).is_ok());
        assert!(!verify_password(dummy, &pw("x")));
        assert_eq!(db.dummy_hash(), dummy, "made once");

        // A tie goes to the costlier parameters.
        let text = format!(
            "[users.a]\npassword = \"{}\"\n[users.b]\npassword = \"{}\"\n",
            h(64, 1),
            h(96, 1)
        );
        let dummy = UserDb::parse(&text).unwrap().dummy_hash().to_owned();
        assert!(dummy.starts_with("$argon2id$v=19$m=96,t=1,p=1$"), "{dummy}");
    }

    #[test]
    fn empty_file_falls_back_to_default_params_and_fallback_is_valid() {
        let db = UserDb::parse("").unwrap();
        assert_eq!(db.common_params, DEFAULT_PARAMS);
        let (_, mtp) = parse_hash(FALLBACK_DUMMY_HASH).unwrap();
        assert_eq!(mtp, DEFAULT_PARAMS);
    }

    #[test]
    fn random_password_is_long_and_unambiguous() {
        let bits = RANDOM_PASSWORD_LEN as f64 * (RANDOM_PASSWORD_ALPHABET.len() as f64).log2();
        assert!(bits >= 100.0, "{bits}");
        let a = random_password();
        let b = random_password();
        assert_eq!(a.len(), RANDOM_PASSWORD_LEN);
        assert_ne!(a.as_str(), b.as_str());
        for c in a.as_str().chars() {
            assert!(c.is_ascii_alphanumeric() && !"0Oo1lI".contains(c), "{c}");
        }
    }

    #[test]
    fn read_password_line_cases() {
        let read = |input: &[u8]| read_password_line(&mut &input[..]);
        assert_eq!(read(b"secret\n").unwrap().as_str(), "secret");
        assert_eq!(read(b"secret\r\n").unwrap().as_str(), "secret");
        assert_eq!(read(b"secret").unwrap().as_str(), "secret");
        assert_eq!(
            read(b"two words\nnext line\n").unwrap().as_str(),
            "two words"
        );
        assert!(matches!(read(b"\n"), Err(UsersError::EmptyPassword)));
        assert!(matches!(read(b""), Err(UsersError::EmptyPassword)));
        assert!(matches!(read(b"\xff\n"), Err(UsersError::PasswordNotUtf8)));
        let max = "x".repeat(MAX_PASSWORD_LEN) + "\r\n";
        assert_eq!(read(max.as_bytes()).unwrap().len(), MAX_PASSWORD_LEN);
        let long = "x".repeat(MAX_PASSWORD_LEN * 4) + "\n";
        assert!(matches!(
            read(long.as_bytes()),
            Err(UsersError::PasswordTooLong { .. })
        ));
    }

    const ADMIN_FILE: &str = "\
# ferry users: edited by hand and by `ferry user`
# keep this comment

[users.alice]   # the admin
password = \"HASH_A\"   # set 2024-01-01
home = \"/srv/ferry/alice\"

# bob only fetches reports
[users.bob]
password = \"HASH_B\"
read_only = true
";

    fn admin_file() -> (tempfile::TempDir, PathBuf, String, String) {
        let (a, b) = (cheap_hash("a"), cheap_hash("b"));
        let text = ADMIN_FILE.replace("HASH_A", &a).replace("HASH_B", &b);
        let (dir, path) = temp_file(&text);
        (dir, path, a, b)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn add_keeps_others_and_comments() {
        let (dir, path, a, b) = admin_file();
        let c = cheap_hash("c");
        add_user(&path, "carol", &c, Some(Path::new("shared/carol")), false).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let expected = ADMIN_FILE.replace("HASH_A", &a).replace("HASH_B", &b)
            + &format!(
                "\n[users.carol]\npassword = \"{c}\"\nhome = \"shared/carol\"\nread_only = false\n"
            );
        assert_eq!(text, expected);
        let db = UserDb::load(&path).unwrap();
        assert_eq!(db.len(), 3);
        assert_eq!(
            db.get("carol").unwrap().home.as_deref(),
            Some(Path::new("shared/carol"))
        );
        assert!(verify_password(
            &db.get("carol").unwrap().password_hash,
            &pw("c")
        ));
        assert_eq!(mode(&path), 0o600);
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn passwd_keeps_others_and_comments() {
        let (_dir, path, a, b) = admin_file();
        let n = cheap_hash("new");
        set_password(&path, "alice", &n).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let expected = ADMIN_FILE.replace("HASH_A", &n).replace("HASH_B", &b);
        assert_eq!(text, expected);
        let db = UserDb::load(&path).unwrap();
        assert!(verify_password(
            &db.get("alice").unwrap().password_hash,
            &pw("new")
        ));
        assert!(!verify_password(
            &db.get("alice").unwrap().password_hash,
            &pw("a")
        ));
        assert_ne!(a, n);
    }

    #[test]
    fn del_keeps_others_and_comments() {
        let (_dir, path, _a, b) = admin_file();
        remove_user(&path, "alice").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        // The file's header comment stays; bob's own comment stays with bob.
        let expected = format!(
            "# ferry users: edited by hand and by `ferry user`\n# keep this comment\n\n\
             # bob only fetches reports\n[users.bob]\npassword = \"{b}\"\nread_only = true\n"
        );
        assert_eq!(text, expected);
        let db = UserDb::load(&path).unwrap();
        assert_eq!(db.len(), 1);
        assert_eq!(db.get("bob").unwrap().password_hash, b);

        // The comment glued to a user's header goes with the user.
        let (_dir, path, a, _b) = admin_file();
        remove_user(&path, "bob").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let expected = ADMIN_FILE.replace("HASH_A", &a);
        let expected = &expected[..expected.find("\n\n# bob").unwrap() + 1];
        assert_eq!(text, expected);
    }

    #[test]
    fn del_moves_separate_comments_to_what_follows() {
        let (a, b) = (cheap_hash("a"), cheap_hash("b"));
        let text = format!(
            "[users.alice]\npassword = \"{a}\"\n\n# -- section: robots --\n\n\
             # bob is a robot\n[users.bob]\npassword = \"{b}\"\n\n# end of file\n"
        );
        let (_dir, path) = temp_file(&text);
        remove_user(&path, "bob").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "[users.alice]\npassword = \"{a}\"\n\n# -- section: robots --\n\n# end of file\n"
            )
        );
    }

    #[test]
    fn edit_errors() {
        let (_dir, path, _a, _b) = admin_file();
        let before = fs::read_to_string(&path).unwrap();
        let c = cheap_hash("c");
        assert!(matches!(
            add_user(&path, "alice", &c, None, false),
            Err(UsersError::AlreadyExists(n)) if n == "alice"
        ));
        assert!(matches!(
            remove_user(&path, "carol"),
            Err(UsersError::NotFound(n)) if n == "carol"
        ));
        assert!(matches!(
            set_password(&path, "carol", &c),
            Err(UsersError::NotFound(_))
        ));
        assert!(matches!(
            add_user(&path, "a/b", &c, None, false),
            Err(UsersError::InvalidName { .. })
        ));
        assert!(matches!(
            add_user(&path, "carol", "$2b$12$abc", None, false),
            Err(UsersError::InvalidHash(_))
        ));
        assert!(matches!(
            set_password(&path, "alice", "plain"),
            Err(UsersError::InvalidHash(_))
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        assert_eq!(
            UsersError::NotFound("carol".into()).to_string(),
            "no user `carol`"
        );
    }

    #[test]
    fn edit_refuses_broken_file_and_leaves_it_untouched() {
        let broken = "[users.alice]\npassword = \"x\"\nreadonly = true\n";
        let (_dir, path) = temp_file(broken);
        let err = add_user(&path, "bob", &cheap_hash("b"), None, false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_eq!(fs::read_to_string(&path).unwrap(), broken);
        assert!(remove_user(&path, "alice").is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), broken);
    }

    #[test]
    fn add_creates_missing_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        add_user(&path, "alice", &cheap_hash("a"), None, true).unwrap();
        assert_eq!(mode(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("[users.alice]\n"),
            "no bare header, no blank line: {text}"
        );
        let db = UserDb::load(&path).unwrap();
        assert!(db.get("alice").unwrap().read_only);
        add_user(&path, "bob", &cheap_hash("b"), None, false).unwrap();
        remove_user(&path, "alice").unwrap();
        remove_user(&path, "bob").unwrap();
        assert!(UserDb::load(&path).unwrap().is_empty());
        // Mode is 0600 after a rewrite even if the admin made it wider.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        add_user(&path, "carol", &cheap_hash("c"), None, false).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn add_to_inline_table_and_unicode_name() {
        let a = cheap_hash("a");
        let (_dir, path) = temp_file(&format!("users = {{ alice = {{ password = \"{a}\" }} }}\n"));
        add_user(&path, "jürgen", &cheap_hash("j"), None, false).unwrap();
        let db = UserDb::load(&path).unwrap();
        assert_eq!(db.len(), 2);
        assert!(verify_password(
            &db.get("jürgen").unwrap().password_hash,
            &pw("j")
        ));
    }

    #[test]
    fn edit_goes_through_a_symlink_and_ignores_a_planted_temp_symlink() {
        let (dir, target, _a, _b) = admin_file();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        add_user(&link, "carol", &cheap_hash("c"), None, false).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(UserDb::load(&target).unwrap().get("carol").is_some());

        // A symlink at a temp name cannot be written through: the temp is created exclusively.
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let planted = dir.path().join(".users.toml.tmp-planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(write_new_file(&planted, b"evil", None).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn users_example_file_is_valid() {
        let text = include_str!("../users.example.toml");
        let db = UserDb::parse(text).unwrap();
        assert!(!db.is_empty());
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("500"), Some(500));
        assert_eq!(parse_size("10 GiB"), Some(10 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("200 MB"), Some(200_000_000));
        assert_eq!(parse_size("4k"), Some(4096));
        for bad in [
            "",
            "G",
            "-1",
            "1 XB",
            ".5G",
            "1e9",
            "99999999999999999999 TiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn limits_parse_and_bad_ones_are_named() {
        let h = hash_password_with(&Password::new("pw".into()), 64, 1, 1).unwrap();
        let db = UserDb::parse(&format!(
            "[users.carol]\npassword = \"{h}\"\nquota_bytes = \"1 MiB\"\nquota_files = 5\nmax_file_size = 1000\n"
        ))
        .unwrap();
        let carol = db.get("carol").unwrap();
        assert_eq!(carol.quota_bytes, Some(1 << 20));
        assert_eq!(carol.quota_files, Some(5));
        assert_eq!(carol.max_file_size, Some(1000));
        assert!(carol.has_limits());
        for bad in [
            "quota_bytes = \"lots\"",
            "quota_files = -1",
            "max_file_size = true",
        ] {
            let err = UserDb::parse(&format!("[users.carol]\npassword = \"{h}\"\n{bad}\n"))
                .unwrap_err()
                .to_string();
            let field = bad.split(' ').next().unwrap();
            assert!(err.contains(field), "{err}");
        }
    }
}
