//! SHA-256 digests, constant-time comparison and short fingerprints for logs.
//!
//! [`sha256`] hashes bytes in one call, [`Sha256Hasher`] hashes incrementally (it is also an
//! [`std::io::Write`]), and [`sha256_reader`] hashes everything a [`std::io::Read`] yields.
//! The result is a [`Digest`], whose `Display` is the lowercase hex that Python's
//! `hashlib.sha256(x).hexdigest()` prints and whose `==` runs in constant time.
//! [`Fingerprint`] is a 48-bit SHA-256 prefix such as `sha256:ba7816bf8f01`, meant for naming
//! tokens and e-mail addresses in logs without revealing them.
//!
//! The crate deliberately does not do keyed hashing (HMAC), password hashing or any other
//! algorithm: a plain SHA-256 of a low-entropy secret (a password, an e-mail address) can be
//! brute-forced, so a [`Fingerprint`] only hides values that are hard to guess or whose exposure
//! in a log is acceptable as a hash. Nothing here fails except I/O in [`sha256_reader`], so there
//! is no error type.
//!
//! ```
//! use palisade_digest::{Fingerprint, Sha256Hasher, sha256};
//!
//! let digest = sha256("abc");
//! assert_eq!(
//!     digest.to_string(),
//!     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
//! );
//!
//! let mut hasher = Sha256Hasher::new();
//! hasher.update("a");
//! hasher.update(b"bc");
//! assert_eq!(hasher.finalize(), digest);
//!
//! assert_eq!(Fingerprint::of("abc").to_string(), "sha256:ba7816bf8f01");
//! assert_eq!(digest.fingerprint(), Fingerprint::of("abc"));
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};

use sha2::Digest as _;
use subtle::ConstantTimeEq;

/// A SHA-256 digest: 32 bytes.
///
/// `==` compares in constant time, so comparing a digest supplied by a peer with an expected one
/// does not leak how many leading bytes matched. `Debug` and `Display` print lowercase hex.
#[derive(Clone, Copy, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Wraps 32 raw bytes as a digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters, as `hashlib.sha256(x).hexdigest()` prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case); anything else is `None`.
    pub fn from_hex(s: &str) -> Option<Digest> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// The short, loggable prefix of this digest.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut prefix = [0u8; FINGERPRINT_LEN];
        prefix.copy_from_slice(&self.0[..FINGERPRINT_LEN]);
        Fingerprint(prefix)
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Digest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Consistent with `PartialEq`: equal digests have equal bytes.
        self.0.hash(state);
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl From<[u8; 32]> for Digest {
    fn from(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }
}

impl From<Digest> for [u8; 32] {
    fn from(digest: Digest) -> [u8; 32] {
        digest.0
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The SHA-256 of `data`.
pub fn sha256(data: impl AsRef<[u8]>) -> Digest {
    Digest(sha2::Sha256::digest(data.as_ref()).into())
}

/// The SHA-256 of everything `reader` yields until end of file.
///
/// Reads in 8 KiB chunks and retries on [`io::ErrorKind::Interrupted`]; any other read error is
/// returned as is.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<Digest> {
    let mut hasher = Sha256Hasher::new();
    let mut buf = [0u8; 8 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// An incremental SHA-256: feed it with [`update`](Sha256Hasher::update) or through
/// [`std::io::Write`], then [`finalize`](Sha256Hasher::finalize).
///
/// Cloning it forks the state, which is useful to hash a common prefix once.
#[derive(Clone, Default)]
pub struct Sha256Hasher(sha2::Sha256);

impl Sha256Hasher {
    /// A hasher that has seen no input.
    pub fn new() -> Sha256Hasher {
        Sha256Hasher::default()
    }

    /// Feeds `data` to the hasher.
    pub fn update(&mut self, data: impl AsRef<[u8]>) {
        self.0.update(data.as_ref());
    }

    /// The SHA-256 of everything fed so far.
    pub fn finalize(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher { .. }")
    }
}

impl Write for Sha256Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compares two byte strings without an early exit.
///
/// For equal lengths the time taken does not depend on where the inputs differ. Different lengths
/// return `false` at once, so the length itself is not hidden; compare fixed-size values (such as
/// [`Digest`]s) when the length is secret.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Number of digest bytes kept in a [`Fingerprint`] (12 hex characters).
const FINGERPRINT_LEN: usize = 6;

/// A short SHA-256 prefix for naming a secret in logs: `Display` prints `sha256:` followed by the
/// first 12 lowercase hex characters of the digest, e.g. `sha256:ba7816bf8f01`.
///
/// 48 bits are enough to tell apart the values seen in one deployment's logs; they are not a
/// secure identifier and must not be used for authentication or deduplication.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint([u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// The fingerprint of `data`: a prefix of [`sha256(data)`](sha256).
    pub fn of(data: impl AsRef<[u8]>) -> Fingerprint {
        sha256(data).fingerprint()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
