//! Walking the chain: every record must link to the one before it, and the anchored heads must
//! be in it. The first broken link is reported with its file and line.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use palisade_digest::{Digest, sha256};

use crate::log::{Fields, GENESIS, Head};

/// What an intact chain holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files read.
    pub files: usize,
    /// Records in the chain.
    pub records: u64,
    /// Sequence number of the first record (0 unless older files were rotated away).
    pub first_seq: Option<u64>,
    /// The last record.
    pub head: Option<Head>,
    /// Anchors that fell inside the chain and matched.
    pub anchors_checked: usize,
    /// Anchors older than the first record, which could not be checked.
    pub anchors_unchecked: usize,
    /// Records lost under load, from the `dropped` records.
    pub dropped: u64,
}

/// The first place where the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {kind}", file.display())]
pub struct Break {
    /// The file, as given.
    pub file: PathBuf,
    /// The line, counted from 1 in that file.
    pub line: u64,
    /// The most likely explanation.
    pub kind: BreakKind,
}

/// How the chain was broken at a [`Break`]: the most likely explanation of what is found there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// The line is not a whole record (not JSON, a field missing, or cut off without a newline).
    Malformed,
    /// The record's bytes were changed.
    Edited,
    /// Records are missing before this line.
    Deleted {
        /// How many, judging by the sequence numbers.
        missing: u64,
    },
    /// This record is out of order.
    Reordered,
    /// This line does not belong in the chain: the records around it link to each other.
    Inserted,
    /// The chain ends before an anchored head: its tail was cut off. The line is where the next
    /// record should be.
    Truncated {
        /// Records missing up to the newest anchor.
        missing: u64,
    },
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakKind::Malformed => f.write_str("not a whole audit record"),
            BreakKind::Edited => f.write_str("record edited"),
            BreakKind::Deleted { missing } => {
                write!(f, "{missing} record(s) deleted before this line")
            }
            BreakKind::Reordered => f.write_str("record out of order"),
            BreakKind::Inserted => f.write_str("line inserted"),
            BreakKind::Truncated { missing } => {
                write!(f, "chain truncated: {missing} record(s) missing before the anchored head")
            }
        }
    }
}

/// Why [`verify`] did not accept the files.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken.
    #[error("audit chain broken at {0}")]
    Broken(#[from] Break),
    /// A file could not be read.
    #[error("cannot read audit file {}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Walks the chain through `files`, oldest first (`FILE.N` … `FILE.1`, `FILE`), and checks it
/// against `anchors`: heads recorded somewhere else (for the same sequence number, the last one
/// given counts).
///
/// Every record but the first must carry the next sequence number and the SHA-256 of the
/// record before it; a first record with sequence number 0 must link to [`GENESIS`]. Each anchor
/// inside the chain must match its record, and an anchor past the last record means the tail was
/// cut off. The first record of the oldest file is taken as given: records deleted before it
/// look like an older rotation.
pub fn verify<P: AsRef<Path>>(files: &[P], anchors: &[Head]) -> Result<Summary, VerifyError> {
    let anchors: BTreeMap<u64, Digest> = anchors.iter().map(|h| (h.seq, h.hash)).collect();
    let paths: Vec<&Path> = files.iter().map(AsRef::as_ref).collect();
    let broken = |(file, line): Loc, kind| -> VerifyError {
        Break { file: paths.get(file).map(|p| p.to_path_buf()).unwrap_or_default(), line, kind }
            .into()
    };

    let mut summary = Summary { files: paths.len(), ..Summary::default() };
    let mut records = Records::new(&paths).peekable();
    let mut last: Option<Accepted> = None;
    let mut before_last: Option<Digest> = None;
    let mut lines_in_last_file = 0;
    while let Some(rec) = records.next() {
        let rec = rec?;
        if rec.loc.0 + 1 == paths.len() {
            lines_in_last_file = rec.loc.1;
        }
        let next = match records.peek() {
            Some(Ok(next)) => Some(next),
            _ => None,
        };
        let Some(fields) = &rec.fields else {
            let inserted = last
                .as_ref()
                .is_some_and(|l| next.is_some_and(|n| n.links_to(l.hash, l.seq.saturating_add(1))));
            let kind = if inserted { BreakKind::Inserted } else { BreakKind::Malformed };
            return Err(broken(rec.loc, kind));
        };
        match &last {
            Some(l) if l.seq.checked_add(1) != Some(fields.seq) || fields.prev != l.hash => {
                let (loc, kind) = classify(&rec, fields, l, before_last, next, &anchors);
                return Err(broken(loc, kind));
            }
            Some(_) => {}
            None if fields.seq == 0 && fields.prev != GENESIS => {
                return Err(broken(rec.loc, BreakKind::Edited));
            }
            None => summary.anchors_unchecked = anchors.range(..fields.seq).count(),
        }
        if let Some(anchor) = anchors.get(&fields.seq) {
            if *anchor != rec.hash {
                return Err(broken(rec.loc, BreakKind::Edited));
            }
            summary.anchors_checked += 1;
        }
        summary.first_seq.get_or_insert(fields.seq);
        summary.records += 1;
        summary.dropped = summary.dropped.saturating_add(fields.dropped);
        before_last = last.as_ref().map(|l| l.hash);
        last = Some(Accepted { loc: rec.loc, seq: fields.seq, hash: rec.hash, prev: fields.prev });
    }
    summary.head = last.as_ref().map(|l| Head { seq: l.seq, hash: l.hash });

    if let Some((&newest, _)) = anchors.last_key_value() {
        let missing = match &last {
            Some(l) if newest > l.seq => newest - l.seq,
            Some(_) => 0,
            None => newest.saturating_add(1),
        };
        if missing > 0 {
            let loc = (paths.len().saturating_sub(1), lines_in_last_file + 1);
            return Err(broken(loc, BreakKind::Truncated { missing }));
        }
    }
    Ok(summary)
}

/// File index and line number.
type Loc = (usize, u64);

/// The last record that linked correctly.
struct Accepted {
    loc: Loc,
    seq: u64,
    hash: Digest,
    prev: Digest,
}

/// One line of a file: where it is, its hash and, when it is a record, its chain fields.
struct Record {
    loc: Loc,
    hash: Digest,
    fields: Option<ChainFields>,
}

struct ChainFields {
    seq: u64,
    prev: Digest,
    dropped: u64,
}

impl Record {
    fn links_to(&self, hash: Digest, seq: u64) -> bool {
        self.fields.as_ref().is_some_and(|f| f.prev == hash && f.seq == seq)
    }
}

/// Explains a record that does not link to `last`, using one line of lookahead.
fn classify(
    rec: &Record,
    fields: &ChainFields,
    last: &Accepted,
    before_last: Option<Digest>,
    next: Option<&Record>,
    anchors: &BTreeMap<u64, Digest>,
) -> (Loc, BreakKind) {
    // Sequence numbers come from the file: no arithmetic on them may overflow.
    let expect = last.seq.saturating_add(1);
    let next_fields = next.and_then(|n| n.fields.as_ref());
    // The first record and this one changed places (further on, the check below sees a swap
    // at its first line).
    if before_last.is_none() && fields.seq.checked_add(1) == Some(last.seq) && last.prev == rec.hash
    {
        return (last.loc, BreakKind::Reordered);
    }
    // This record and the next one changed places.
    if next.is_some_and(|n| {
        next_fields.is_some_and(|nf| nf.seq.checked_add(1) == Some(fields.seq))
            && fields.prev == n.hash
    }) {
        return (rec.loc, BreakKind::Reordered);
    }
    // The next record links to the last one: this line is extra.
    if next.is_some_and(|n| n.links_to(last.hash, expect)) {
        return (rec.loc, BreakKind::Inserted);
    }
    // This record links to the one before the last: the last one is extra.
    if fields.seq == last.seq && Some(fields.prev) == before_last {
        return (last.loc, BreakKind::Inserted);
    }
    // The link holds but the number does not: this record was changed.
    if fields.prev == last.hash {
        return (rec.loc, BreakKind::Edited);
    }
    // The number holds but the link does not: the last record was changed, unless this one is
    // not itself confirmed by the next record (or by an anchor when it is the last).
    if fields.seq == expect {
        let confirmed = match next {
            Some(n) => n.links_to(rec.hash, fields.seq.saturating_add(1)),
            None => anchors.get(&fields.seq).is_none_or(|a| *a == rec.hash),
        };
        return if confirmed {
            (last.loc, BreakKind::Edited)
        } else {
            (rec.loc, BreakKind::Edited)
        };
    }
    if fields.seq > expect && next_fields.is_none_or(|nf| nf.seq != expect) {
        return (rec.loc, BreakKind::Deleted { missing: fields.seq - expect });
    }
    (rec.loc, BreakKind::Reordered)
}

/// The lines of every file in turn, hashed and parsed.
struct Records<'a> {
    paths: &'a [&'a Path],
    file: usize,
    reader: Option<BufReader<File>>,
    line: u64,
    buf: Vec<u8>,
}

impl<'a> Records<'a> {
    fn new(paths: &'a [&'a Path]) -> Records<'a> {
        Records { paths, file: 0, reader: None, line: 0, buf: Vec::new() }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record, VerifyError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let path = *self.paths.get(self.file)?;
            let io_err = |source| VerifyError::Io { file: path.to_owned(), source };
            let reader = match &mut self.reader {
                Some(reader) => reader,
                None => match File::open(path) {
                    Ok(file) => {
                        self.line = 0;
                        self.reader.insert(BufReader::new(file))
                    }
                    Err(e) => {
                        self.file = self.paths.len();
                        return Some(Err(io_err(e)));
                    }
                },
            };
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.reader = None;
                    self.file += 1;
                }
                Ok(_) => {
                    self.line += 1;
                    let whole = self.buf.last() == Some(&b'\n');
                    let line = if whole { &self.buf[..self.buf.len() - 1] } else { &self.buf[..] };
                    let fields = if whole { parse(line) } else { None };
                    let loc = (self.file, self.line);
                    return Some(Ok(Record { loc, hash: sha256(line), fields }));
                }
                Err(e) => {
                    self.file = self.paths.len();
                    return Some(Err(io_err(e)));
                }
            }
        }
    }
}

fn parse(line: &[u8]) -> Option<ChainFields> {
    let fields: Fields = serde_json::from_slice(line).ok()?;
    let prev = Digest::from_hex(&fields.prev)?;
    let dropped = if fields.event == "dropped" { fields.count.unwrap_or(0) } else { 0 };
    Some(ChainFields { seq: fields.seq, prev, dropped })
}

/// Orders paths the way rotation names them, oldest first: `FILE.3`, `FILE.2`, `FILE.1`, `FILE`.
/// Paths without a numeric suffix keep their order, after the numbered ones of the same name.
pub fn chain_order(paths: &mut [PathBuf]) {
    let key = |p: &PathBuf| -> (PathBuf, std::cmp::Reverse<u64>) {
        let suffix = p.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u64>().ok());
        match suffix {
            Some(n) => (p.with_extension(""), std::cmp::Reverse(n)),
            None => (p.clone(), std::cmp::Reverse(0)),
        }
    };
    let first_seen: Vec<PathBuf> = {
        let mut bases: Vec<PathBuf> = Vec::new();
        for p in paths.iter() {
            let base = key(p).0;
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
        bases
    };
    paths.sort_by_key(|p| {
        let (base, n) = key(p);
        (first_seen.iter().position(|b| *b == base), n)
    });
}
