//! For `cargo xtask bench`'s S4j: the public JWK of an RSA PEM key (n and e in base64url, read
//! from the DER by hand: xtask has no dependencies) and a tiny loopback JWKS server on a std
//! thread that counts the requests it answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// The public JWK (`kty` RSA, `use` sig, `alg` RS256) of a PEM RSA public key, either
/// `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo) or `BEGIN RSA PUBLIC KEY` (PKCS#1).
pub(crate) fn rsa_public_jwk(pem: &str, kid: &str) -> Result<String, String> {
    let (n, e) = rsa_public_components(pem)?;
    Ok(format!(
        "{{\"kty\":\"RSA\",\"use\":\"sig\",\"alg\":\"RS256\",\"kid\":{kid:?},\"n\":\"{}\",\"e\":\"{}\"}}",
        base64url(&n),
        base64url(&e)
    ))
}

/// A JWKS document holding `keys` (JWK objects as JSON text).
pub(crate) fn jwks_json(keys: &[String]) -> String {
    format!("{{\"keys\":[{}]}}", keys.join(","))
}

/// The modulus and public exponent of a PEM RSA public key, big-endian without leading zeros.
fn rsa_public_components(pem: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let begin = pem.find("-----BEGIN ").ok_or("not a PEM file (no BEGIN line)")?;
    let rest = &pem[begin + "-----BEGIN ".len()..];
    let (label, rest) = rest.split_once("-----").ok_or("PEM: unterminated BEGIN line")?;
    let body = rest.split("-----END ").next().unwrap_or_default();
    let der = base64_decode(body)?;
    let rsa_public_key = match label {
        "RSA PUBLIC KEY" => der,
        "PUBLIC KEY" => {
            // SubjectPublicKeyInfo ::= SEQUENCE { AlgorithmIdentifier, BIT STRING }
            let (spki, _) = tlv(&der, 0x30)?;
            let (algorithm, rest) = tlv(spki, 0x30)?;
            const RSA_ENCRYPTION: &[u8] =
                &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
            if !algorithm.starts_with(RSA_ENCRYPTION) {
                return Err("PEM: not an RSA public key".into());
            }
            let (bits, _) = tlv(rest, 0x03)?;
            match bits.split_first() {
                Some((0, key)) => key.to_vec(),
                _ => return Err("PEM: bad BIT STRING".into()),
            }
        }
        other => return Err(format!("PEM: expected a public key, found {other:?}")),
    };
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    let (seq, _) = tlv(&rsa_public_key, 0x30)?;
    let (n, rest) = tlv(seq, 0x02)?;
    let (e, _) = tlv(rest, 0x02)?;
    let strip = |v: &[u8]| v.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    let (n, e) = (strip(n), strip(e));
    if n.is_empty() || e.is_empty() {
        return Err("PEM: empty RSA modulus or exponent".into());
    }
    Ok((n, e))
}

/// One DER element with tag `tag`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    let (&t, rest) = input.split_first().ok_or("DER: truncated")?;
    if t != tag {
        return Err(format!("DER: expected tag {tag:#04x}, found {t:#04x}"));
    }
    let (&first, rest) = rest.split_first().ok_or("DER: truncated length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("DER: bad length".into());
        }
        let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err("DER: truncated contents".into());
    }
    Ok(rest.split_at(len))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (padding and whitespace allowed).
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .ok_or_else(|| format!("base64: bad character {:?}", char::from(c)))?;
        acc = (acc << 6) | u32::try_from(v).unwrap_or(0);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
    }
    Ok(out)
}

/// base64url without padding (RFC 7515 section 2), as JWKs carry `n` and `e`.
fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let c = ALPHABET[((n >> (18 - 6 * i)) & 63) as usize];
            out.push(match c {
                b'+' => '-',
                b'/' => '_',
                c => char::from(c),
            });
        }
    }
    out
}

/// A JWKS server on 127.0.0.1 (one std thread, one request per connection): `GET /jwks` gets
/// the document, anything else 404. Counts every request. Lives as long as the process.
pub(crate) struct JwksServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    pub(crate) fn start(body: String) -> Result<JwksServer, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("JWKS server: bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("JWKS server: {e}"))?;
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &body, &counter);
            }
        });
        Ok(JwksServer { addr, requests })
    }

    /// `http://127.0.0.1:PORT/jwks`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Requests answered so far (any path).
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(mut stream: TcpStream, body: &str, counter: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    counter.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&head);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) =
        if method == "GET" && path == "/jwks" { ("200 OK", body) } else { ("404 Not Found", "") };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = crate::root().join("crates/token/tests/fixtures").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// `openssl rsa -pubin -in rsa-public.pem -modulus`, in base64url.
    const FIXTURE_N: &str = "tuXfX3Y4W3j2Yd_0IhTdMZXctXEqgT86TjxwSceB7JGWD9puiJZXZcWHh0nmK4fM05J_KcdA_JO5oXyVDcaTXnwjVsTraP1BjvR46E1ievCgTuT1sgiMe8ijHVvsTjPmWaCHL9S4RlfnAJysdsXvFyujZPbRTIFxNYtV0ayTQh1sY1zDw63Lw028C0HohbHCOdMPi5F3BdWM81eS9X5V4Q7Yc9pydYb4_CzKdjhygv-v8ns8mhqizGZEIzqtd20_G1JkyfRh96QrKssx9wwQv-rbytluFheH4bpnmOr7PeM-vE4bHToY_22CWFo5Y19yAO19NtI6lP9oNIFK5Y3wjQ";

    #[test]
    fn the_jwk_of_the_rsa_fixture_has_its_modulus_and_exponent() {
        let jwk = rsa_public_jwk(&fixture("rsa-public.pem"), "bench").unwrap();
        assert_eq!(
            jwk,
            format!(
                "{{\"kty\":\"RSA\",\"use\":\"sig\",\"alg\":\"RS256\",\"kid\":\"bench\",\"n\":\"{FIXTURE_N}\",\"e\":\"AQAB\"}}"
            )
        );
        assert_eq!(jwks_json(std::slice::from_ref(&jwk)), format!("{{\"keys\":[{jwk}]}}"));
        // 2048 bits.
        let (n, e) = rsa_public_components(&fixture("rsa-public.pem")).unwrap();
        assert_eq!((n.len(), e), (256, vec![1, 0, 1]));
    }

    #[test]
    fn other_pem_files_are_refused() {
        assert!(rsa_public_jwk(&fixture("ec-public.pem"), "k").is_err());
        assert!(rsa_public_jwk(&fixture("rsa-private.pem"), "k").is_err());
        assert!(rsa_public_jwk("no pem here", "k").is_err());
        assert!(
            rsa_public_jwk("-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----", "k")
                .is_err()
        );
    }

    #[test]
    fn base64_both_ways() {
        assert_eq!(base64_decode("TWFu\nTWE=").unwrap(), b"ManMa");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert!(base64_decode("T*").is_err());
        assert_eq!(base64url(b"Man"), "TWFu");
        assert_eq!(base64url(b"Ma"), "TWE");
        assert_eq!(base64url(b"M"), "TQ");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[]), "");
    }

    fn get(server: &JwksServer, path: &str) -> String {
        let mut s = TcpStream::connect(server.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_answers_get_jwks_and_counts_requests() {
        let server = JwksServer::start("{\"keys\":[]}".into()).unwrap();
        assert!(server.url().starts_with("http://127.0.0.1:"));
        assert_eq!(server.requests(), 0);
        let reply = get(&server, "/jwks");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("Content-Length: 11\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\n{\"keys\":[]}"), "{reply}");
        assert!(get(&server, "/other").starts_with("HTTP/1.1 404"));
        assert_eq!(server.requests(), 2);
    }
}
