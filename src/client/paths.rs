//! Remote path arithmetic on the client: the shell keeps a remote working directory and
//! resolves arguments against it. The server validates every path again on its own.

/// Resolves `arg` against the absolute remote directory `cwd`: `/` starts at the home, `.`
/// and empty components vanish, `..` goes up but never above `/`. Returns an absolute path.
pub fn resolve(cwd: &str, arg: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if !arg.starts_with('/') {
        parts.extend(cwd.split('/').filter(|c| !c.is_empty() && *c != "."));
    }
    for c in arg.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The last component of a remote path ("" for `/`).
pub fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Joins a remote directory and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution() {
        assert_eq!(resolve("/", "a"), "/a");
        assert_eq!(resolve("/a/b", "c/../d"), "/a/b/d");
        assert_eq!(resolve("/a/b", "/x"), "/x");
        assert_eq!(resolve("/a", "../../.."), "/");
        assert_eq!(resolve("/a", ".//b/./"), "/a/b");
        assert_eq!(resolve("/", ""), "/");
    }

    #[test]
    fn names() {
        assert_eq!(base_name("/a/b.txt"), "b.txt");
        assert_eq!(base_name("/a/dir/"), "dir");
        assert_eq!(base_name("/"), "");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
    }
}
