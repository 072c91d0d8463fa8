//! Tests for the size-rotating writer.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::SizeRotatingFile;

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn log_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("app.log")
}

#[track_caller]
fn write_lines(writer: &mut SizeRotatingFile, count: usize, line: &str) {
    for _ in 0..count {
        writer.write_all(line.as_bytes()).unwrap();
    }
}

#[test]
fn rotation_keeps_at_most_max_files_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut writer = SizeRotatingFile::open(path.clone(), 100, 3).unwrap();
    // 10 bytes a line, 10 lines a file: 500 lines is 50 files' worth.
    write_lines(&mut writer, 500, "012345678\n");
    writer.flush().unwrap();

    assert_eq!(files_in(dir.path()), ["app.log", "app.log.1", "app.log.2", "app.log.3"]);
    for name in files_in(dir.path()) {
        let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(len <= 100, "file of {len} bytes exceeds the limit");
    }
    // The rotated files are full; the newest lines are in the active file.
    assert_eq!(std::fs::metadata(SizeRotatingFile::rotated_path(&path, 3)).unwrap().len(), 100);
}

#[test]
fn records_are_never_split_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut writer = SizeRotatingFile::open(path.clone(), 25, 2).unwrap();
    // Two 12-byte lines fit (24 bytes); the third starts a new file.
    write_lines(&mut writer, 3, "abcdefghijk\n");

    let old = std::fs::read_to_string(SizeRotatingFile::rotated_path(&path, 1)).unwrap();
    let active = std::fs::read_to_string(&path).unwrap();
    assert_eq!(old, "abcdefghijk\nabcdefghijk\n");
    assert_eq!(active, "abcdefghijk\n");
}

#[test]
fn oldest_file_is_dropped_and_newer_ones_shift_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut writer = SizeRotatingFile::open(path.clone(), 2, 2).unwrap();
    for line in ["a\n", "b\n", "c\n", "d\n"] {
        writer.write_all(line.as_bytes()).unwrap();
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&path), "d\n");
    assert_eq!(read(&SizeRotatingFile::rotated_path(&path, 1)), "c\n");
    assert_eq!(read(&SizeRotatingFile::rotated_path(&path, 2)), "b\n");
    assert!(!SizeRotatingFile::rotated_path(&path, 3).exists());
}

#[test]
fn zero_max_files_keeps_only_the_active_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut writer = SizeRotatingFile::open(path.clone(), 20, 0).unwrap();
    write_lines(&mut writer, 50, "0123456789\n");
    assert_eq!(files_in(dir.path()), ["app.log"]);
    assert!(std::fs::metadata(&path).unwrap().len() <= 20);
}

#[test]
fn oversized_record_is_cut_to_the_limit_keeping_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut writer = SizeRotatingFile::open(path.clone(), 8, 1).unwrap();
    let written = writer.write(b"0123456789abcdef\n").unwrap();
    assert_eq!(written, 17, "the whole record counts as consumed");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "0123456\n");
}

#[test]
fn cut_never_splits_a_utf8_character() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut writer = SizeRotatingFile::open(path.clone(), 5, 1).unwrap();
    // "aé" is 3 bytes, "é" 2 more: a cut at 4 bytes would split the second "é".
    writer.write_all("aéé\n".as_bytes()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "aé\n");
}

#[test]
fn existing_file_length_counts_towards_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    std::fs::write(&path, "previous run\n").unwrap();
    let mut writer = SizeRotatingFile::open(path.clone(), 20, 1).unwrap();
    writer.write_all(b"new line\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(SizeRotatingFile::rotated_path(&path, 1)).unwrap(),
        "previous run\n"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new line\n");
}

#[test]
fn writing_resumes_after_the_active_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut writer = SizeRotatingFile::open(path.clone(), 10, 2).unwrap();
    writer.write_all(b"one\n").unwrap();
    // Someone (logrotate, an operator) moves the active file away.
    std::fs::rename(&path, dir.path().join("moved")).unwrap();
    write_lines(&mut writer, 3, "two\n");
    // The first "two" went to the moved file; the second rotated (there was
    // nothing to rename) and recreated the active file.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\ntwo\n");
}

#[cfg(unix)]
#[test]
fn new_files_are_not_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let _writer = SizeRotatingFile::open(path.clone(), 10, 1).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o007, 0, "mode {mode:o} gives others access");
}
