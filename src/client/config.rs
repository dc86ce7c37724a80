//! The client's own files: `~/.config/ferry/config.toml` (host aliases) and where history and
//! pins live, honouring the XDG base directory variables.
//!
//! ```toml
//! [hosts.work]
//! address = "files.example.org"   # required
//! port = 8443                     # default 7443
//! user = "alice"                  # used when the target names no user
//! ca = "~/certs/work-ca.pem"      # trusted instead of the system roots
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One `[hosts.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAlias {
    /// Host name or IP address.
    pub address: String,
    /// Port.
    pub port: Option<u16>,
    /// User name.
    pub user: Option<String>,
    /// CA file (`~/` expands to the home directory).
    pub ca: Option<PathBuf>,
}

/// The parsed config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Aliases by name.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostAlias>,
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or unknown keys.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

impl ClientConfig {
    /// Loads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut config: ClientConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        for alias in config.hosts.values_mut() {
            if let Some(ca) = &alias.ca {
                alias.ca = Some(expand_home(ca));
            }
        }
        Ok(config)
    }

    /// Loads the default file (`$XDG_CONFIG_HOME/ferry/config.toml`), if there is a home.
    pub fn load_default() -> Result<ClientConfig, ConfigError> {
        match config_dir() {
            Some(d) => Self::load(&d.join("config.toml")),
            None => Ok(Self::default()),
        }
    }
}

/// `$XDG_CONFIG_HOME/ferry`, else `~/.config/ferry`.
pub fn config_dir() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config")
}

/// `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`.
pub fn state_dir() -> Option<PathBuf> {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    // The XDG spec says relative values are invalid and must be ignored.
    let base = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))?;
    Some(base.join("ferry"))
}

fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[hosts.work]\naddress = \"files.example.org\"\nport = 8443\nuser = \"alice\"\n\
             ca = \"/etc/ca.pem\"\n\n[hosts.home]\naddress = \"::1\"\n",
        )
        .unwrap();
        let c = ClientConfig::load(&path).unwrap();
        let work = &c.hosts["work"];
        assert_eq!(work.address, "files.example.org");
        assert_eq!(work.port, Some(8443));
        assert_eq!(work.user.as_deref(), Some("alice"));
        assert_eq!(work.ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.hosts["home"].port, None);

        std::fs::write(&path, "[hosts.x]\naddress = \"a\"\npassword = \"no\"\n").unwrap();
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("password"), "{err}");
        assert!(
            ClientConfig::load(&dir.path().join("missing.toml"))
                .unwrap()
                .hosts
                .is_empty()
        );
    }
}
