//! Progress bars on stderr: one for the current file, plus an overall bar when several files
//! move. They appear only for transfers that take longer than a moment, only when stderr is a
//! terminal, and never with `-q` (the caller decides that and passes `enabled`).

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::sanitize::for_terminal;

/// How long a transfer runs before its bars are drawn: quick ones never flash a bar.
const SHOW_AFTER: Duration = Duration::from_millis(400);

/// Bars of one command (a single file, or many).
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    overall: Option<ProgressBar>,
    file: ProgressBar,
    started: Instant,
    shown: bool,
    /// Set while the bars are on screen, when the terminal does not echo keys: indicatif pads
    /// a bar to the full width, so the `^C` of a Ctrl-C would wrap onto a new line and leave
    /// the bar behind when it is cleared. The settings come back when this is dropped.
    _quiet: Option<crate::platform::EchoOff>,
    done_bytes: u64,
    done_files: usize,
    total_files: usize,
}

impl Bars {
    /// Bars for `total_files` files of `total_bytes` in all, or `None` when disabled.
    pub fn new(enabled: bool, total_files: usize, total_bytes: u64) -> Option<Bars> {
        if !enabled {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        let overall = (total_files > 1).then(|| {
            let bar = multi.add(ProgressBar::new(total_bytes));
            bar.set_style(style(
                "{msg:>24} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                 {binary_bytes_per_sec} ETA {eta}",
            ));
            bar.set_message(format!("0/{total_files} files"));
            bar
        });
        let file = multi.add(ProgressBar::new(0));
        file.set_style(style(
            "{msg:>24!} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}",
        ));
        Some(Bars {
            multi,
            overall,
            file,
            started: Instant::now(),
            shown: false,
            _quiet: None,
            done_bytes: 0,
            done_files: 0,
            total_files,
        })
    }

    /// Several files are in flight and only the total is known: the file line shows just
    /// the name of the current file.
    pub fn pipelined(&mut self) {
        self.file.set_style(style("{spinner} {msg}"));
    }

    /// A new current file.
    pub fn start_file(&mut self, name: &str, size: u64) {
        self.file.set_length(size);
        self.file.set_position(0);
        self.file.set_message(for_terminal(name).into_owned());
        self.maybe_show();
    }

    /// Bytes of the current file moved so far.
    pub fn position(&mut self, n: u64) {
        self.file.set_position(n);
        if let Some(o) = &self.overall {
            o.set_position(self.done_bytes + n);
        }
        self.maybe_show();
    }

    /// Bytes of all files moved so far (pipelined transfers report only the total).
    pub fn overall_position(&mut self, n: u64) {
        match &self.overall {
            Some(o) => o.set_position(n),
            None => self.file.set_position(n),
        }
        self.maybe_show();
    }

    /// The current file is finished (successfully or not) after `size` bytes.
    pub fn file_done(&mut self, size: u64) {
        self.done_bytes += size;
        self.done_files += 1;
        if let Some(o) = &self.overall {
            o.set_position(self.done_bytes);
            o.set_message(format!("{}/{} files", self.done_files, self.total_files));
        }
    }

    /// Prints a line (to stdout) without tearing the bars.
    pub fn println(&self, line: &str) {
        self.multi.suspend(|| println!("{line}"));
    }

    /// Prints a line to stderr without tearing the bars.
    pub fn eprintln(&self, line: &str) {
        self.multi.suspend(|| eprintln!("{line}"));
    }

    /// Removes the bars.
    pub fn finish(self) {
        self.file.finish_and_clear();
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
        let _ = self.multi.clear();
    }

    fn maybe_show(&mut self) {
        if !self.shown && self.started.elapsed() >= SHOW_AFTER {
            self.shown = true;
            self._quiet = crate::platform::echo_off();
            self.multi.set_draw_target(ProgressDrawTarget::stderr());
            self.file.enable_steady_tick(Duration::from_millis(200));
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Prints to stdout through the bars if there are any.
pub fn out(bars: Option<&Bars>, line: &str) {
    match bars {
        Some(b) => b.println(line),
        None => println!("{line}"),
    }
}

/// Prints to stderr through the bars if there are any.
pub fn err(bars: Option<&Bars>, line: &str) {
    match bars {
        Some(b) => b.eprintln(line),
        None => eprintln!("{line}"),
    }
}
