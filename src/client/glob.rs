//! Shell-style globs on both sides: `*`, `?` and `[...]` in any path component, matched by
//! the client (the server knows no patterns). Remote expansion lists directories through the
//! session (`ops::Session::expand_remote`); local expansion reads directories here.

use std::path::{Path, PathBuf};

use super::ClientError;

/// Whether an argument holds glob characters.
pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands a local argument: a glob becomes the sorted matching paths (an error if none); a
/// plain path is returned as is (even if missing: the transfer reports that).
pub fn expand_local(arg: &str) -> Result<Vec<PathBuf>, ClientError> {
    if !has_glob(arg) {
        return Ok(vec![PathBuf::from(arg)]);
    }
    let absolute = arg.starts_with('/');
    let mut found: Vec<PathBuf> = vec![if absolute {
        PathBuf::from("/")
    } else {
        PathBuf::new()
    }];
    let comps: Vec<&str> = arg.split('/').filter(|c| !c.is_empty()).collect();
    for comp in comps {
        let mut next = Vec::new();
        for base in &found {
            if !has_glob(comp) {
                next.push(base.join(comp));
                continue;
            }
            let dir = if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base.as_path()
            };
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| glob_match(comp, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| base.join(n)));
        }
        found = next;
    }
    if found.is_empty() {
        // A name with '[' or '*' in it is taken as written if it exists.
        if std::fs::symlink_metadata(arg).is_ok() {
            return Ok(vec![PathBuf::from(arg)]);
        }
        return Err(ClientError::local(
            Path::new(arg),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no match"),
        ));
    }
    Ok(found)
}

/// Shell-style matching of one name: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`; a leading `.` must be
/// matched explicitly (as in sh).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    // Iterative with one backtrack point for `*`: linear-ish, no exponential blowup.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => match class_match(&p[pi..], n[ni]) {
                    Some((true, len)) => {
                        pi += len;
                        ni += 1;
                        continue;
                    }
                    Some((false, _)) => {}
                    // Not a complete bracket expression: a literal '['.
                    None if n[ni] == '[' => {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                    None => {}
                },
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the bracket expression at the start of `p`; `None` if it is not a
/// complete bracket expression, else (matched, length of the expression).
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.log", "a.log"));
        assert!(!glob_match("*.log", "a.log.1"));
        assert!(!glob_match("*.log", ".hidden.log"));
        assert!(glob_match(".*", ".hidden"));
        assert!(glob_match("2026-*", "2026-11-27.txt"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("[ab]x", "bx"));
        assert!(!glob_match("[!ab]x", "bx"));
        assert!(glob_match("[a-c]*", "cat"));
        assert!(!glob_match("[a-c]*", "dog"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("**a", "bba"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("[x", "[x"));
        assert!(glob_match("ü*", "über"));
        // No exponential backtracking.
        assert!(!glob_match(&"*a".repeat(30), &"a".repeat(29)));
    }

    #[test]
    fn local_globs_expand_sorted_and_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.log", "a.log", "c.txt", ".h.log"] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/d.log"), b"x").unwrap();
        let base = dir.path().to_str().unwrap();
        let found = expand_local(&format!("{base}/*.log")).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.log", "b.log"]);
        let found = expand_local(&format!("{base}/s*/*.log")).unwrap();
        assert_eq!(found, [dir.path().join("sub/d.log")]);
        assert!(expand_local(&format!("{base}/*.none")).is_err());
        assert_eq!(expand_local("plain").unwrap(), [PathBuf::from("plain")]);
    }
}
