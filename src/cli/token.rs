//! `ferry token add|list|del`: API tokens for curl and scripts, kept in `tokens.toml` beside
//! the users file ([`crate::accounts::tokens`]), and the revocation `ferry user add|del` does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use super::{Expiry, parse_expiry};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::accounts::tokens::{TomlTokens, format_time, tokens_path_beside};
use crate::state::tokens::{
    ApiTokens, TokenError, TokenId, TokenScope, issue, validate_token_name,
};
use crate::users::UserDb;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Add a token and print it once.
    #[command(
        long_about = "Add an API token for a user and print it once on stdout: fy_<id>_<secret>. \
        Only its SHA-256 is kept (in tokens.toml beside the users file), so it cannot be shown \
        again. Use it as `Authorization: Bearer <token>`. A running server accepts it at once. \
        --user may be left out when the users file has one user. --expires takes 90d, 12h, \
        30m or never (default 90d); --read-only limits it to listing and downloading.\n\n\
        Examples:\n  TOKEN=$(ferry token add ci --user alice --expires 30d)\n  \
        curl -H \"Authorization: Bearer $TOKEN\" https://files.example.org:7443/f/report.pdf"
    )]
    Add {
        /// A label for the token (`ci`, `backup laptop`): at most 64 printable characters.
        name: String,
        /// The user it acts for (default: the only user, if there is one).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// How long it lives: 90d, 12h, 30m, or never.
        #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_expiry)]
        expires: Expiry,
        /// Listing and downloading only.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        files: TokenFiles,
    },
    /// List tokens (never their secrets).
    #[command(
        long_about = "List tokens: id, user, scope, created, expires, name. Neither the secret \
        nor its hash is shown.\n\nExample:\n  ferry token list --user alice"
    )]
    List {
        /// Only this user's tokens.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        #[command(flatten)]
        files: TokenFiles,
    },
    /// Delete (revoke) a token by its id.
    #[command(
        long_about = "Delete a token by its id (the 8 hex digits after `fy_`, as `ferry token \
        list` shows). A running server refuses it from the next request on.\n\n\
        Example:\n  ferry token del 3fa9c2d1"
    )]
    Del {
        /// The token's id.
        id: String,
        #[command(flatten)]
        files: TokenFiles,
    },
}

#[derive(Debug, Args)]
pub(super) struct TokenFiles {
    /// The users file.
    #[arg(long = "users", value_name = "FILE", default_value = "users.toml")]
    users: PathBuf,
    /// The tokens file (default: tokens.toml beside the users file).
    #[arg(long = "tokens", value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Keep the tokens (and find the users) in PostgreSQL instead, as `ferry user
    /// --accounts` does: postgres://USER@HOST:PORT/DB. The password comes from PGPASSWORD or
    /// ?password_file=PATH, never from the command line.
    #[arg(long, value_name = "URL", conflicts_with_all = ["users", "tokens"])]
    accounts: Option<String>,
}

impl TokenFiles {
    /// The database's tokens, when `--accounts` names one.
    fn pg(&self, rt: &tokio::runtime::Runtime) -> Result<Option<crate::pg::tokens::PgTokens>> {
        let Some(url) = &self.accounts else {
            return Ok(None);
        };
        let cfg = pg_config(url)?;
        Ok(Some(rt.block_on(crate::pg::tokens::open(&cfg))?))
    }

    /// Where the tokens are, for messages.
    fn place(&self) -> String {
        match &self.accounts {
            Some(_) => "the accounts database".into(),
            None => self.tokens().display().to_string(),
        }
    }

    fn tokens(&self) -> PathBuf {
        self.tokens
            .clone()
            .unwrap_or_else(|| tokens_path_beside(&self.users))
    }
}

pub(super) fn run(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Add {
            name,
            user,
            expires,
            read_only,
            files,
        } => add(name, user, expires, read_only, &files),
        TokenCommand::List { user, files } => {
            let rt = super::command_runtime()?;
            let tokens = match files.pg(&rt)? {
                Some(pg) => rt.block_on(pg.list(user.as_deref()))?,
                None => rt.block_on(TomlTokens::new(files.tokens()).list(user.as_deref()))?,
            };
            let now = SystemTime::now();
            let mut out = String::new();
            for t in &tokens {
                let expires = match t.expires {
                    None => "never".to_owned(),
                    Some(e) if e <= now => format!("{} (expired)", format_time(e)),
                    Some(e) => format_time(e),
                };
                out.push_str(&format!(
                    "{}  {:<16} {:<9} {}  {}  {}\n",
                    t.id,
                    t.user,
                    t.scope.as_str(),
                    format_time(t.created),
                    expires,
                    t.name
                ));
            }
            print!("{out}");
            if tokens.is_empty() {
                eprintln!("no tokens in {}", files.place());
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Del { id, files } => {
            let id: TokenId = id.parse()?;
            let rt = super::command_runtime()?;
            match files.pg(&rt)? {
                Some(pg) => rt.block_on(pg.revoke(id))?,
                None => rt.block_on(TomlTokens::new(files.tokens()).revoke(id))?,
            }
            eprintln!("deleted token {id} (a running server refuses it from the next request on)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add(
    name: String,
    user: Option<String>,
    expires: Expiry,
    read_only: bool,
    files: &TokenFiles,
) -> Result<ExitCode> {
    validate_token_name(&name)?;
    if files.accounts.is_some() {
        return add_pg(name, user, expires, read_only, files);
    }
    let user = match user {
        Some(u) => u,
        None => {
            let db = UserDb::load(&files.users)?;
            let mut all = db.users();
            match (all.next(), all.next()) {
                (Some(only), None) => only.name.clone(),
                (None, _) => bail!("no users in {}: add one first", files.users.display()),
                (Some(_), Some(_)) => bail!(
                    "{} has {} users: say which with --user",
                    files.users.display(),
                    db.len()
                ),
            }
        }
    };
    let scope = if read_only {
        TokenScope::ReadOnly
    } else {
        TokenScope::Full
    };
    let store = TomlTokens::new(files.tokens());
    let now = SystemTime::now();
    let (token, record) = store.update(|table| {
        // The user is checked under the tokens file's lock: `ferry user del` deletes the user
        // first and then revokes their tokens under this lock, so a token can never outlive
        // its user's deletion (see `user_deleted`).
        let db = UserDb::load(&files.users).map_err(|e| TokenError::invalid(e.to_string()))?;
        if db.get(&user).is_none() {
            return Err(TokenError::invalid(format!(
                "no user `{}` in {}",
                user.escape_debug(),
                files.users.display()
            )));
        }
        let (token, record) = issue(&user, &name, scope, expires.0, now, |id| {
            table.get(id).is_some()
        })?;
        table.insert(record.clone())?;
        Ok((token, record))
    })?;
    println!("{}", token.expose());
    let until = record.expires.map_or_else(
        || "never expires".to_owned(),
        |e| format!("expires {}", format_time(e)),
    );
    eprintln!(
        "added token {} for {user} ({}, {until}); it is shown only this once. Use it as: \
         curl -H \"Authorization: Bearer $TOKEN\" https://HOST:7443/f/...",
        record.id,
        scope.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

/// `ferry token add --accounts`: the user looked up, and the token added, in the database.
fn add_pg(
    name: String,
    user: Option<String>,
    expires: Expiry,
    read_only: bool,
    files: &TokenFiles,
) -> Result<ExitCode> {
    let rt = super::command_runtime()?;
    let store = files.pg(&rt)?.context("--accounts names no database")?;
    let user = match user {
        Some(u) => u,
        None => {
            let url = files.accounts.as_deref().unwrap_or_default();
            let accounts = rt.block_on(crate::pg::accounts::open(&pg_config(url)?))?;
            let all = rt.block_on(crate::accounts::AccountStore::list(&accounts))?;
            match all.as_slice() {
                [only] => only.name.clone(),
                [] => bail!("no users in the accounts database: add one first"),
                _ => bail!(
                    "the accounts database has {} users: say which with --user",
                    all.len()
                ),
            }
        }
    };
    let scope = if read_only {
        TokenScope::ReadOnly
    } else {
        TokenScope::Full
    };
    let now = SystemTime::now();
    // A drawn id that is taken is refused by the add; draw again a few times.
    let mut attempt = 0;
    let (token, record) = loop {
        let (token, record) = issue(&user, &name, scope, expires.0, now, |_| false)?;
        match rt.block_on(store.add_for_existing_user(&record)) {
            Ok(()) => break (token, record),
            Err(TokenError::AlreadyExists(_)) if attempt < 8 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    println!("{}", token.expose());
    let until = record.expires.map_or_else(
        || "never expires".to_owned(),
        |e| format!("expires {}", format_time(e)),
    );
    eprintln!(
        "added token {} for {user} ({}, {until}); it is shown only this once. Use it as: \
         curl -H \"Authorization: Bearer $TOKEN\" https://HOST:7443/f/...",
        record.id,
        scope.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

/// The database `url` names, refused when the URL carries the password (a command line
/// shows in process lists), as `ferry user --accounts` refuses it.
pub(super) fn pg_config(url: &str) -> Result<crate::pg::PgConfig> {
    let cfg = crate::pg::PgConfig::from_url(url).context("--accounts")?;
    if cfg.url_has_password() {
        bail!(
            "--accounts: put the password in PGPASSWORD or ?password_file=PATH, not in the \
             URL (a command line shows in process lists)"
        );
    }
    Ok(cfg)
}

/// Revokes every token of `user` in the database `url`: what [`revoke_user_tokens`] does
/// for `ferry user add|del --accounts`. Returns how many went.
pub(super) fn revoke_user_tokens_pg(url: &str, user: &str) -> Result<usize> {
    let rt = super::command_runtime()?;
    let store = rt.block_on(crate::pg::tokens::open(&pg_config(url)?))?;
    rt.block_on(store.revoke_user(user))
        .with_context(|| format!("the tokens of {user} in the accounts database were not revoked"))
}

/// Revokes every token of `user` in `tokens` (default: beside `users`): run after `ferry user
/// del` has deleted the user, and after `ferry user add` made one, so that a user deleted and
/// made again under the same name never gets the old tokens back. Returns how many went.
pub(super) fn revoke_user_tokens(users: &Path, tokens: Option<&Path>, user: &str) -> Result<usize> {
    let path = tokens.map_or_else(|| tokens_path_beside(users), Path::to_path_buf);
    let store = TomlTokens::new(path);
    store
        .update(|table| Ok(table.remove_user(user)))
        .with_context(|| {
            format!(
                "the tokens of {user} in {} were not revoked",
                store.path().display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiries_take_units_or_never() {
        let d = |s: &str| parse_expiry(s).map(|e| e.0);
        assert_eq!(d("90d"), Ok(Some(Duration::from_secs(90 * 86_400))));
        assert_eq!(d("12h"), Ok(Some(Duration::from_secs(12 * 3600))));
        assert_eq!(d("30m"), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(d("45s"), Ok(Some(Duration::from_secs(45))));
        assert_eq!(d("never"), Ok(None));
        for bad in [
            "", "90", "0d", "500ms", "3w", "d", "-1d", "36501d", "never!",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
        assert_eq!(d("36500d"), Ok(Some(crate::cli::MAX_EXPIRY)));
    }
}
