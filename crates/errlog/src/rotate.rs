//! A size-rotating file writer that never splits a record and bounds disk use.
//!
//! Each `write` call is treated as one record (the non-blocking worker hands
//! over one formatted event per call). Before a record would push the active
//! file past the limit, the file is rotated: `NAME` becomes `NAME.1`, `NAME.1`
//! becomes `NAME.2`, and so on, and the file past `max_files` is deleted. So the
//! files together never hold more than `(max_files + 1) * max_bytes` bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Appends to `path`, rotating by size and keeping at most `max_files` old files.
#[derive(Debug)]
pub(crate) struct SizeRotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: usize,
    /// `None` after a failed rotation or reopen; the next write tries again.
    file: Option<File>,
    /// Bytes in the active file.
    len: u64,
}

impl SizeRotatingFile {
    /// Opens (or creates) `path` for appending; its current length counts
    /// towards `max_bytes`. `max_bytes` must be at least 1.
    pub(crate) fn open(path: PathBuf, max_bytes: u64, max_files: usize) -> io::Result<Self> {
        let mut this = Self { path, max_bytes: max_bytes.max(1), max_files, file: None, len: 0 };
        this.reopen()?;
        Ok(this)
    }

    /// The path of the `n`th rotated file: `NAME.n`.
    pub(crate) fn rotated_path(path: &Path, n: usize) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = open_append(&self.path)?;
        self.len = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        // Close the active file before renaming it (required on Windows).
        self.file = None;
        if self.max_files == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&Self::rotated_path(&self.path, self.max_files))?;
            for n in (1..self.max_files).rev() {
                rename_if_exists(
                    &Self::rotated_path(&self.path, n),
                    &Self::rotated_path(&self.path, n + 1),
                )?;
            }
            rename_if_exists(&self.path, &Self::rotated_path(&self.path, 1))?;
        }
        self.reopen()
    }
}

impl Write for SizeRotatingFile {
    /// Writes `buf` as one record. A record longer than `max_bytes` is cut to
    /// `max_bytes` (at a UTF-8 boundary, keeping a final newline) so the disk
    /// bound holds whatever is logged. When rotation fails the record is
    /// dropped and the error returned, rather than growing the file unbounded.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let record = truncate_record(buf, self.max_bytes);
        let record_len = record.len() as u64;
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.len > 0 && self.len.saturating_add(record_len) > self.max_bytes {
            self.rotate()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("error log file is not open"));
        };
        file.write_all(&record)?;
        self.len += record_len;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Cuts `buf` to at most `max` bytes, at a UTF-8 character boundary, ending in
/// a newline when `buf` did.
fn truncate_record(buf: &[u8], max: u64) -> std::borrow::Cow<'_, [u8]> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if buf.len() <= max {
        return buf.into();
    }
    let wants_newline = buf.ends_with(b"\n");
    let mut cut = if wants_newline { max - 1 } else { max };
    // Back up over UTF-8 continuation bytes so the cut never splits a character.
    while cut > 0 && (buf[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    let mut out = buf[..cut].to_vec();
    if wants_newline {
        out.push(b'\n');
    }
    out.into()
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Owner read/write, group read, nothing for others: error lines carry
        // peer addresses and user ids.
        options.mode(0o640);
    }
    options.open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
