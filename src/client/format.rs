//! How results look on a terminal: `ls` lines, sizes, the line that ends every transfer and
//! the summary of a recursive one. Every name from the network goes through
//! [`for_terminal`] here.

use std::time::Duration;

use crate::protocol::{Entry, EntryKind};
use crate::sanitize::for_terminal;

/// `1234567` -> `1.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes per second over `elapsed`, as `12.3 MiB/s`.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let per_sec = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
    format!("{}/s", human_bytes(per_sec as u64))
}

/// `-rw-r--r--` style type and permission bits.
pub fn mode_string(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::File => '-',
        EntryKind::Symlink => 'l',
        EntryKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Local time as `2026-11-27 09:40`.
pub fn time_string(mtime: i64) -> String {
    chrono::DateTime::from_timestamp(mtime, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|| "????-??-?? ??:??".to_string())
}

/// One `ls` line: type and permissions, size, modification time, name (escaped). Sizes are
/// exact bytes, or human (`1.2 MiB`) with `human`.
pub fn format_entry(e: &Entry, human: bool) -> String {
    let size = if human {
        human_bytes(e.size)
    } else {
        e.size.to_string()
    };
    let suffix = if e.kind == EntryKind::Dir { "/" } else { "" };
    let name = for_terminal(&e.name);
    // The directory slash only in human mode: the exact form is the one scripts parse.
    if human {
        format!(
            "{} {size:>10} {} {name}{suffix}",
            mode_string(e.kind, e.mode),
            time_string(e.mtime)
        )
    } else {
        format!(
            "{} {size:>12} {} {name}",
            mode_string(e.kind, e.mode),
            time_string(e.mtime)
        )
    }
}

/// The line that ends every transfer: name, size, time, rate, where a resumed transfer
/// started (`resumed at 12.0 MiB`), verified digest. The rate counts the bytes that moved.
pub fn transfer_line(
    name: &str,
    size: u64,
    resumed_from: u64,
    elapsed: Duration,
    sha256: &str,
) -> String {
    let resumed = if resumed_from > 0 {
        format!(", resumed at {}", human_bytes(resumed_from))
    } else {
        String::new()
    };
    format!(
        "{}: {} in {:.2} s ({}){resumed}, sha256 {sha256} verified",
        for_terminal(name),
        human_bytes(size),
        elapsed.as_secs_f64(),
        rate(size.saturating_sub(resumed_from), elapsed),
    )
}

/// The summary of a transfer of several files.
pub fn summary_line(files: usize, bytes: u64, elapsed: Duration, failed: usize) -> String {
    let secs = elapsed.as_secs_f64();
    let per_sec = if secs > 0.0 { files as f64 / secs } else { 0.0 };
    let verified = if failed == 0 {
        "all verified".to_string()
    } else {
        format!("{failed} FAILED")
    };
    format!(
        "{files} file{} ({}) in {secs:.2} s ({}, {per_sec:.0} files/s), {verified}",
        if files == 1 { "" } else { "s" },
        human_bytes(bytes),
        rate(bytes, elapsed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
    }

    #[test]
    fn entry_line_escapes_names() {
        let e = Entry {
            name: "evil\x1b[2J".into(),
            kind: EntryKind::File,
            size: 42,
            mtime: 0,
            mode: 0o644,
        };
        let line = format_entry(&e, false);
        assert!(line.starts_with("-rw-r--r-- "));
        assert!(line.contains("evil\\u{1b}[2J"));
        assert!(!line.contains('\x1b'));
        let e = Entry {
            size: 3 * 1024 * 1024,
            kind: EntryKind::Dir,
            ..e
        };
        let line = format_entry(&e, true);
        assert!(line.starts_with("drw-r--r-- "), "{line}");
        assert!(line.contains("3.0 MiB"), "{line}");
        assert!(line.ends_with("[2J/"), "{line}");
    }

    #[test]
    fn lines() {
        let l = transfer_line("a\nb", 2048, 0, Duration::from_secs(2), "ab");
        assert_eq!(
            l,
            "a\\nb: 2.0 KiB in 2.00 s (1.0 KiB/s), sha256 ab verified"
        );
        let l = transfer_line("r", 3 << 20, 2 << 20, Duration::from_secs(1), "ab");
        assert_eq!(
            l,
            "r: 3.0 MiB in 1.00 s (1.0 MiB/s), resumed at 2.0 MiB, sha256 ab verified"
        );
        let s = summary_line(10, 4096, Duration::from_secs(2), 0);
        assert_eq!(
            s,
            "10 files (4.0 KiB) in 2.00 s (2.0 KiB/s, 5 files/s), all verified"
        );
        assert!(summary_line(1, 0, Duration::ZERO, 1).contains("1 FAILED"));
    }
}
