//! Counters, a latency histogram, and the payloads sent and verified.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::frame::Kind;

/// Results shared by the tasks of one run (single-threaded runtime).
#[derive(Debug)]
pub struct Stats {
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            messages: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
            // 1 µs to 10 min, 3 significant figures.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

impl Stats {
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us);
    }

    /// (p50, p99, p99.9, max) in microseconds; zeros when nothing was recorded.
    pub fn percentiles(&self) -> (u64, u64, u64, u64) {
        if self.hist.is_empty() {
            return (0, 0, 0, 0);
        }
        (
            self.hist.value_at_quantile(0.5),
            self.hist.value_at_quantile(0.99),
            self.hist.value_at_quantile(0.999),
            self.hist.max(),
        )
    }
}

/// Writes the payload of message `seq`: text is the decimal sequence
/// number padded with `x`; binary is the little-endian sequence number
/// repeated, mixed with the position.
pub fn fill(dst: &mut [u8], seq: u64, kind: Kind) {
    match kind {
        Kind::Text => {
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut n = seq;
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let digits = &digits[at..];
            let k = digits.len().min(dst.len());
            dst[..k].copy_from_slice(&digits[..k]);
            dst[k..].fill(b'x');
        }
        Kind::Binary => {
            let word = seq.to_le_bytes();
            for (i, b) in dst.iter_mut().enumerate() {
                *b = word[i & 7] ^ (i as u8);
            }
        }
    }
}

/// Checks replies byte for byte: the reply to message `seq` must be
/// `prefix + payload(seq)`, of the same kind.
#[derive(Debug)]
pub struct Checker {
    prefix: Vec<u8>,
    size: usize,
    kind: Kind,
    scratch: Vec<u8>,
}

impl Checker {
    pub fn new(prefix: &str, size: usize, kind: Kind) -> Self {
        Checker { prefix: prefix.as_bytes().to_vec(), size, kind, scratch: vec![0; size] }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn check(&mut self, seq: u64, kind: Kind, body: &[u8]) -> Result<(), String> {
        fill(&mut self.scratch, seq, self.kind);
        let plen = self.prefix.len();
        if kind == self.kind
            && body.len() == plen + self.size
            && body[..plen] == self.prefix[..]
            && body[plen..] == self.scratch[..]
        {
            return Ok(());
        }
        let mut expected = self.prefix.clone();
        expected.extend_from_slice(&self.scratch);
        Err(format!(
            "reply did not match the message sent: expected {:?} ({} bytes) {}, got {:?} ({} bytes) {}",
            self.kind,
            expected.len(),
            preview(&expected),
            kind,
            body.len(),
            preview(body),
        ))
    }
}

fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    if bytes.len() > MAX { format!("{text:?}...") } else { format!("{text:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_and_verify() {
        let mut a = vec![0; 8];
        let mut b = vec![0; 8];
        fill(&mut a, 12, Kind::Text);
        fill(&mut b, 13, Kind::Text);
        assert_eq!(&a, b"12xxxxxx");
        assert_ne!(a, b);
        let mut tiny = [0u8; 2];
        fill(&mut tiny, 12345, Kind::Text);
        assert_eq!(&tiny, b"12");
        fill(&mut a, 1, Kind::Binary);
        fill(&mut b, 2, Kind::Binary);
        assert_ne!(a, b);

        let mut c = Checker::new("Server received: ", 8, Kind::Text);
        assert!(c.check(12, Kind::Text, b"Server received: 12xxxxxx").is_ok());
        let err = c.check(12, Kind::Text, b"12xxxxxx").unwrap_err();
        assert!(err.starts_with("reply did not match"), "{err}");
        assert!(c.check(12, Kind::Binary, b"Server received: 12xxxxxx").is_err());
        assert!(c.check(13, Kind::Text, b"Server received: 12xxxxxx").is_err());

        let mut c = Checker::new("P", 8, Kind::Binary);
        let mut body = b"P".to_vec();
        body.extend_from_slice(&a);
        assert!(c.check(1, Kind::Binary, &body).is_ok());
    }

    #[test]
    fn percentiles() {
        let mut s = Stats::default();
        assert_eq!(s.percentiles(), (0, 0, 0, 0));
        for us in 1..=1000 {
            s.record(Duration::from_micros(us));
        }
        let (p50, p99, _, max) = s.percentiles();
        assert!((499..=501).contains(&p50) && (989..=991).contains(&p99) && max == 1000);
        s.error("a".into());
        s.error("b".into());
        assert_eq!((s.errors, s.first_error.as_deref()), (2, Some("a")));
    }
}
