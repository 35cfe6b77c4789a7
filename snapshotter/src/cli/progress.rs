//! Progress output: bars on a terminal, plain lines otherwise (logs, CI).

use std::io::{IsTerminal, Read};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    Lines,
    Quiet,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

/// Where tasks report: several bars stay readable together on a terminal.
#[derive(Clone)]
pub struct Progress {
    mode: ProgressMode,
    multi: MultiProgress,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        Progress {
            mode,
            multi: MultiProgress::new(),
        }
    }

    pub fn task(&self, label: String, total: u64) -> Task {
        Task::start(self.mode, &self.multi, label, total)
    }
}

/// Progress of one unit of work with a known byte size.
#[derive(Clone)]
pub struct Task {
    bar: ProgressBar,
    mode: ProgressMode,
    label: String,
}

impl Task {
    fn start(mode: ProgressMode, multi: &MultiProgress, label: String, total: u64) -> Self {
        let bar = match mode {
            ProgressMode::Bars => {
                // Added to the group before it first draws, so concurrent
                // bars never overwrite each other.
                let bar = multi.add(ProgressBar::new(total));
                let style = ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(label.clone());
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            }
            _ => ProgressBar::hidden(),
        };
        if mode == ProgressMode::Lines {
            eprintln!("{label}: started ({})", human_bytes(total));
        }
        Task { bar, mode, label }
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn finish(&self, message: String) {
        match self.mode {
            ProgressMode::Bars => self.bar.finish_with_message(message),
            ProgressMode::Lines => eprintln!("{}: {message}", self.label),
            ProgressMode::Quiet => {}
        }
    }

    pub fn abandon(&self) {
        match self.mode {
            ProgressMode::Bars => self.bar.abandon_with_message("failed"),
            ProgressMode::Lines => eprintln!("{}: failed", self.label),
            ProgressMode::Quiet => {}
        }
    }
}

/// Counts bytes read into a [`Task`].
pub struct ProgressReader<R> {
    inner: R,
    task: Task,
}

impl<R> ProgressReader<R> {
    pub fn new(inner: R, task: Task) -> Self {
        ProgressReader { inner, task }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.task.inc(n as u64);
        Ok(n)
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
