//! The operation table: every operation a session can ask for, whatever the front-end, with
//! what it does to a home (reads, lists, writes, may replace). A session's [`Scope`] is
//! checked against this table in one place, before any handler runs, so a read-only account
//! or an upload-only drop link holds through every front-end alike (the shape of
//! sftp-server.c's handler table, whose `does_write` flag is checked once by the dispatcher).

use std::fmt;

/// One operation of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Metadata of one path.
    Stat,
    /// The entries of a directory.
    List,
    /// A file's bytes (a download), from an offset.
    Get,
    /// A new file's bytes (an upload), committed only when verified.
    Put,
    /// How much of an upload to a path was kept for resuming it.
    Partial,
    /// The SHA-256 of a stored file.
    Sha256,
    /// A server-side copy of a file.
    Copy,
    /// The account's usage, limits and free space.
    Usage,
    /// A new directory.
    Mkdir,
    /// Removal of an empty directory.
    Rmdir,
    /// Removal of a file or link.
    Remove,
    /// A rename or move.
    Rename,
}

/// What an operation does to the home it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Reads stored bytes or metadata of a named path (stat, get, sha256, copy's source).
    pub reads: bool,
    /// Reveals which names a directory holds.
    pub lists: bool,
    /// Creates, changes or removes something.
    pub writes: bool,
    /// May replace an existing file when the request asks for it (`overwrite`).
    pub may_replace: bool,
}

impl Op {
    /// Every operation, in the order of the table.
    pub const ALL: [Op; 12] = [
        Op::Stat,
        Op::List,
        Op::Get,
        Op::Put,
        Op::Partial,
        Op::Sha256,
        Op::Copy,
        Op::Usage,
        Op::Mkdir,
        Op::Rmdir,
        Op::Remove,
        Op::Rename,
    ];

    /// The table itself.
    pub const fn access(self) -> Access {
        const fn a(reads: bool, lists: bool, writes: bool, may_replace: bool) -> Access {
            Access {
                reads,
                lists,
                writes,
                may_replace,
            }
        }
        match self {
            //                   reads  lists  writes replace
            Op::Stat => a(true, false, false, false),
            Op::List => a(false, true, false, false),
            Op::Get => a(true, false, false, false),
            Op::Put => a(false, false, true, true),
            // Says whether an upload to a path was kept and how long it is: a read.
            Op::Partial => a(true, false, false, false),
            Op::Sha256 => a(true, false, false, false),
            Op::Copy => a(true, false, true, true),
            Op::Usage => a(false, false, false, false),
            Op::Mkdir => a(false, false, true, false),
            Op::Rmdir => a(false, false, true, false),
            Op::Remove => a(false, false, true, false),
            Op::Rename => a(false, false, true, true),
        }
    }

    /// The operation's name in audit lines and logs (the same word on every front-end).
    pub const fn name(self) -> &'static str {
        match self {
            Op::Stat => "stat",
            Op::List => "list",
            Op::Get => "get",
            Op::Put => "put",
            Op::Partial => "partial",
            Op::Sha256 => "sha256",
            Op::Copy => "copy",
            Op::Usage => "usage",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Remove => "remove",
            Op::Rename => "rename",
        }
    }

    /// Whether a finished request of this operation gets an audit line: everything that
    /// moves or changes data.
    pub const fn audited(self) -> bool {
        let a = self.access();
        a.writes || matches!(self, Op::Get)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a session may do. Checked once per request against [`Op::access`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything within the home.
    Full,
    /// Reading and listing only (an account marked read-only).
    ReadOnly,
    /// Uploads only, never replacing a file, and nothing that reads or lists, not even
    /// whether a partial upload was kept (a drop link; the web front-end creates these).
    /// What the core adds for such a session (issue 14): a name that exists gets a new one
    /// rather than an error (the sender's receipt then names the name it landed under, as a
    /// receipt must: so a sender can learn that the name was taken, at the cost of one file
    /// of the link's `max_files` per probe; docs/SECURITY.md), resumes use partials of the
    /// link and its uploader only, and confinement to the link's folder is the storage
    /// namespace's job, as a home confines a user.
    UploadOnly,
    /// Reading one file or folder of the home and what is below it, nothing else (a download
    /// link): stat, get and SHA-256 of that path or a path below it, and listing of it or a
    /// folder below it. No usage, no partials, no copy, no change. The path is in normal form
    /// (`/`, `/a/b`), relative to the home the session sees: a folder link's home is its
    /// folder, so its path is `/`; a file link's home is the file's folder and its path the
    /// file's name, so not even a sibling can be read.
    ReadOnlyOne(String),
}

/// Why a [`Scope`] refused an operation; the text is what the peer is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied(pub &'static str);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Scope {
    /// Whether `op` may run, `replace` saying whether the request asks to replace an
    /// existing file.
    pub fn check(&self, op: Op, replace: bool) -> Result<(), Denied> {
        let a = op.access();
        match self {
            Scope::Full => Ok(()),
            Scope::ReadOnly if a.writes => Err(Denied("read-only user")),
            Scope::ReadOnly => Ok(()),
            Scope::ReadOnlyOne(_) => match op {
                Op::Stat | Op::List | Op::Get | Op::Sha256 => Ok(()),
                _ => Err(Denied("this link only allows downloads")),
            },
            Scope::UploadOnly => {
                if op != Op::Put || a.reads || a.lists {
                    Err(Denied("this link only accepts uploads"))
                } else if replace && a.may_replace {
                    Err(Denied("this link never replaces a file"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl Scope {
    /// Whether `op` may touch `path` (in normal form, `/a/b`, as `RemotePath` displays it):
    /// only [`Scope::ReadOnlyOne`] limits where, to its path and what is below it. Checked
    /// after [`Scope::check`] by every operation that names a path.
    pub fn check_path(&self, op: Op, path: &str) -> Result<(), Denied> {
        let Scope::ReadOnlyOne(top) = self else {
            return Ok(());
        };
        let beneath = top == "/"
            || path == top
            || path
                .strip_prefix(top.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if beneath {
            Ok(())
        } else {
            // The same answer whatever the operation: nothing tells what lies outside.
            let _ = op;
            Err(Denied("this link does not reach that path"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_refuses_exactly_the_operations_that_write() {
        for op in Op::ALL {
            for replace in [false, true] {
                let got = Scope::ReadOnly.check(op, replace);
                if op.access().writes {
                    assert_eq!(got, Err(Denied("read-only user")), "{op}");
                } else {
                    assert_eq!(got, Ok(()), "{op}");
                }
                assert_eq!(Scope::Full.check(op, replace), Ok(()), "{op}");
            }
        }
    }

    #[test]
    fn upload_only_allows_new_uploads_and_nothing_else() {
        let allowed: Vec<Op> = Op::ALL
            .into_iter()
            .filter(|op| Scope::UploadOnly.check(*op, false).is_ok())
            .collect();
        assert_eq!(allowed, [Op::Put]);
        assert!(Scope::UploadOnly.check(Op::Put, true).is_err());
        for op in Op::ALL {
            let a = op.access();
            if a.reads || a.lists {
                assert!(Scope::UploadOnly.check(op, false).is_err(), "{op}");
            }
        }
    }

    #[test]
    fn read_only_one_reads_its_path_and_below_and_nothing_else() {
        let file = Scope::ReadOnlyOne("/report.pdf".into());
        let allowed: Vec<Op> = Op::ALL
            .into_iter()
            .filter(|op| file.check(*op, false).is_ok())
            .collect();
        assert_eq!(allowed, [Op::Stat, Op::List, Op::Get, Op::Sha256]);
        assert!(file.check_path(Op::Get, "/report.pdf").is_ok());
        for other in ["/", "/report.pdf2", "/report.pd", "/sibling.txt", "/report"] {
            assert!(file.check_path(Op::Get, other).is_err(), "{other}");
            assert!(file.check_path(Op::List, other).is_err(), "{other}");
        }
        let folder = Scope::ReadOnlyOne("/".into());
        assert!(folder.check_path(Op::List, "/").is_ok());
        assert!(folder.check_path(Op::Get, "/a/b").is_ok());
        let sub = Scope::ReadOnlyOne("/a".into());
        assert!(sub.check_path(Op::Get, "/a/b").is_ok());
        assert!(sub.check_path(Op::Get, "/ab").is_err());
        for op in [Op::Usage, Op::Partial, Op::Copy, Op::Put, Op::Remove] {
            assert!(folder.check(op, false).is_err(), "{op}");
        }
        // Every other scope reaches everywhere its operations do.
        for s in [Scope::Full, Scope::ReadOnly, Scope::UploadOnly] {
            assert!(s.check_path(Op::Get, "/x").is_ok());
        }
    }

    #[test]
    fn names_are_the_audit_words_and_every_change_is_audited() {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(
            names,
            [
                "stat", "list", "get", "put", "partial", "sha256", "copy", "usage", "mkdir",
                "rmdir", "remove", "rename"
            ]
        );
        let audited: Vec<Op> = Op::ALL.into_iter().filter(|o| o.audited()).collect();
        assert_eq!(
            audited,
            [
                Op::Get,
                Op::Put,
                Op::Copy,
                Op::Mkdir,
                Op::Rmdir,
                Op::Remove,
                Op::Rename
            ]
        );
    }
}
