//! Known answers, streaming against one-shot, Python hashlib agreement and the formatting API.

use std::io::{self, Read, Write};

use proptest::prelude::*;

use super::*;

/// The FIPS 180-4 two-block message (448 bits).
const MSG_448: &str = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

#[track_caller]
fn check(input: &[u8], expected_hex: &str) {
    assert_eq!(sha256(input).to_hex(), expected_hex);
    assert_eq!(sha256_reader(input).unwrap().to_hex(), expected_hex);
    let mut hasher = Sha256Hasher::new();
    hasher.update(input);
    assert_eq!(hasher.finalize().to_hex(), expected_hex);
}

#[test]
fn fips_empty_message() {
    check(b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

#[test]
fn fips_abc() {
    check(b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn fips_448_bit_message() {
    check(MSG_448.as_bytes(), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

#[test]
fn fips_one_million_a() {
    check(
        &vec![b'a'; 1_000_000],
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    );
}

#[test]
fn one_million_a_fed_in_small_pieces() {
    let mut hasher = Sha256Hasher::new();
    for _ in 0..10_000 {
        hasher.update([b'a'; 100]);
    }
    assert_eq!(
        hasher.finalize().to_hex(),
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    );
}

#[test]
fn agrees_with_python_hashlib_fixture() {
    // Made by testdata/gen_hashlib.py; the test reads only the checked-in file.
    let fixture = include_str!("../testdata/hashlib_sha256.txt");
    let mut cases = 0;
    for line in fixture.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (input, expected) = line.split_once(' ').expect("line is `<input hex> <digest hex>`");
        let input = if input == "-" { Vec::new() } else { hex::decode(input).unwrap() };
        check(&input, expected);
        assert_eq!(Digest::from_hex(expected), Some(sha256(&input)));
        cases += 1;
    }
    assert_eq!(cases, 80);
}

#[test]
fn display_and_to_hex_are_64_lowercase_hex_chars() {
    let d = sha256("abc");
    let shown = d.to_string();
    assert_eq!(shown, d.to_hex());
    assert_eq!(shown.len(), 64);
    assert!(shown.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}

#[test]
fn debug_prints_hex() {
    assert_eq!(
        format!("{:?}", sha256("abc")),
        "Digest(ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad)"
    );
}

#[test]
fn from_hex_round_trips_and_accepts_uppercase() {
    let d = sha256("abc");
    assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
    assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()), Some(d));
}

#[test]
fn from_hex_rejects_wrong_length_and_non_hex() {
    let hex = sha256("abc").to_hex();
    assert_eq!(Digest::from_hex(""), None);
    assert_eq!(Digest::from_hex(&hex[..62]), None);
    assert_eq!(Digest::from_hex(&format!("{hex}00")), None);
    assert_eq!(Digest::from_hex(&format!("{}zz", &hex[..62])), None);
    assert_eq!(Digest::from_hex(&format!(" {}", &hex[..63])), None);
}

#[test]
fn as_bytes_and_from_bytes_agree() {
    let d = sha256("abc");
    assert_eq!(Digest::from_bytes(*d.as_bytes()), d);
    assert_eq!(d.as_bytes()[0], 0xba);
    assert_eq!(<[u8; 32]>::from(d), *d.as_bytes());
}

#[test]
fn digest_equality_distinguishes_a_single_bit() {
    let d = sha256("abc");
    let mut bytes = *d.as_bytes();
    bytes[31] ^= 1;
    assert_ne!(d, Digest::from_bytes(bytes));
    assert_eq!(d, sha256(b"abc"));
}

#[test]
fn equal_digests_hash_equally() {
    let set: std::collections::HashSet<Digest> = [sha256("a"), sha256("a"), sha256("b")].into();
    assert_eq!(set.len(), 2);
}

#[test]
fn ct_eq_compares_contents_and_lengths() {
    assert!(ct_eq(b"", b""));
    assert!(ct_eq(b"secret", b"secret"));
    assert!(!ct_eq(b"secret", b"secreT"));
    assert!(!ct_eq(b"secret", b"secre"));
    assert!(!ct_eq(b"", b"x"));
}

#[test]
fn fingerprint_is_prefix_of_the_digest() {
    assert_eq!(Fingerprint::of("abc").to_string(), "sha256:ba7816bf8f01");
    assert_eq!(sha256("").fingerprint().to_string(), "sha256:e3b0c44298fc");
    let d = sha256("some token");
    assert_eq!(d.fingerprint().to_string(), format!("sha256:{}", &d.to_hex()[..12]));
    assert_eq!(d.fingerprint(), Fingerprint::of("some token"));
    assert_ne!(Fingerprint::of("a"), Fingerprint::of("b"));
}

#[test]
fn hasher_write_impl_matches_update() {
    let mut hasher = Sha256Hasher::new();
    let middle = 'b';
    write!(hasher, "a{middle}c").unwrap();
    hasher.flush().unwrap();
    assert_eq!(hasher.finalize(), sha256("abc"));
}

#[test]
fn io_copy_into_hasher_matches_one_shot() {
    let data = vec![7u8; 100_000];
    let mut hasher = Sha256Hasher::new();
    io::copy(&mut data.as_slice(), &mut hasher).unwrap();
    assert_eq!(hasher.finalize(), sha256(&data));
}

#[test]
fn cloned_hasher_forks_the_state() {
    let mut prefix = Sha256Hasher::new();
    prefix.update("ab");
    let mut fork = prefix.clone();
    prefix.update("c");
    fork.update("d");
    assert_eq!(prefix.finalize(), sha256("abc"));
    assert_eq!(fork.finalize(), sha256("abd"));
}

/// A reader that fails with `Interrupted` before every chunk and returns at most 3 bytes at once.
struct Choppy<'a> {
    data: &'a [u8],
    interrupt_next: bool,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt_next = !self.interrupt_next;
        if !self.interrupt_next {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = buf.len().min(3).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn reader_retries_interrupted_and_handles_short_reads() {
    let data = MSG_448.as_bytes();
    let reader = Choppy { data, interrupt_next: false };
    assert_eq!(sha256_reader(reader).unwrap(), sha256(data));
}

struct Failing;

impl Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("disk on fire"))
    }
}

#[test]
fn reader_error_is_returned() {
    let err = sha256_reader(io::Read::chain(&b"abc"[..], Failing)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert_eq!(err.to_string(), "disk on fire");
}

proptest! {
    #[test]
    fn streaming_equals_one_shot_for_random_splits(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut hasher = Sha256Hasher::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            hasher.update(&data[start..cut]);
            start = cut;
        }
        prop_assert_eq!(hasher.finalize(), sha256(&data));
    }

    #[test]
    fn hex_round_trips(bytes in any::<[u8; 32]>()) {
        let d = Digest::from_bytes(bytes);
        prop_assert_eq!(Digest::from_hex(&d.to_string()), Some(d));
    }

    #[test]
    fn ct_eq_agrees_with_slice_eq(
        a in proptest::collection::vec(any::<u8>(), 0..8),
        b in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        prop_assert_eq!(ct_eq(&a, &b), a == b);
    }
}
