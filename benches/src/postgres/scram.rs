//! The client side of SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), the SASL mechanism
//! PostgreSQL asks for when a password is stored as `scram-sha-256` (its default since 14),
//! without I/O: [`Scram::client_first`], then [`Scram::client_final`] from the server's first
//! message, then [`Scram::verify_server_final`], which proves the server knew the password too.
//!
//! No channel binding (the GS2 header is `n,,`: this client does not speak TLS). PostgreSQL
//! takes the user from the startup message, so the user in the SCRAM messages is empty. The
//! password is used as its bytes, without SASLprep, which is what SASLprep leaves of a plain
//! ASCII password.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The mechanism's name in PostgreSQL's SASL messages.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// The most PBKDF2 iterations accepted from a server (PostgreSQL's default is 4096): each costs
/// two HMACs, so a hostile count cannot keep the client busy for long.
pub const ITERATIONS_MAX: u32 = 1 << 20;

type HmacSha256 = Hmac<Sha256>;

/// What was wrong with the server's side of the exchange.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    #[error("malformed SCRAM message from postgres: {what}")]
    Malformed { what: String },
    #[error("postgres refused the SCRAM exchange: {reason}")]
    Refused { reason: String },
    #[error(
        "postgres's SCRAM signature does not match: the server does not know the password (or \
         is not the server it claims to be)"
    )]
    ServerSignature,
}

fn malformed(what: impl Into<String>) -> ScramError {
    ScramError::Malformed { what: what.into() }
}

/// One exchange, from the client's first message to the check of the server's last.
#[derive(Debug)]
pub struct Scram {
    password: Vec<u8>,
    client_nonce: String,
    client_first_bare: String,
    /// The server's signature to expect, once the client's final message is made.
    server_signature: Option<[u8; 32]>,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one block of output: RFC 5802's `Hi`.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut result = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        result.iter_mut().zip(&u).for_each(|(r, x)| *r ^= x);
    }
    result
}

impl Scram {
    /// An exchange for `user` (PostgreSQL: empty) with `password`, whose client nonce is
    /// `client_nonce` (printable, no comma: [`Scram::random_nonce`]).
    pub fn new(user: &str, password: &str, client_nonce: String) -> Scram {
        assert!(
            client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b','),
            "a SCRAM nonce is printable without commas: {client_nonce:?}"
        );
        let user = user.replace('=', "=3D").replace(',', "=2C");
        Scram {
            password: password.as_bytes().to_vec(),
            client_first_bare: format!("n={user},r={client_nonce}"),
            client_nonce,
            server_signature: None,
        }
    }

    /// 18 random bytes in base64, as libpq makes its nonce.
    pub fn random_nonce() -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 18];
        getrandom::fill(&mut bytes)?;
        Ok(base64_encode(&bytes))
    }

    /// The client's first message: GS2 header `n,,` (no channel binding) and the bare part.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client's final message, with its proof, from the server's first message
    /// (`r=<nonce>,s=<salt>,i=<iterations>`).
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| malformed("the server's first message is not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", value)) => nonce = Some(value),
                Some(("s", value)) => salt = Some(value),
                Some(("i", value)) => iterations = Some(value),
                Some(("e", reason)) => {
                    return Err(ScramError::Refused {
                        reason: reason.to_string(),
                    });
                }
                _ => {}
            }
        }
        let nonce = nonce.ok_or_else(|| malformed("no nonce (r=) in the server's first"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(malformed("the server's nonce does not extend the client's"));
        }
        let salt = salt.ok_or_else(|| malformed("no salt (s=) in the server's first"))?;
        let salt = base64_decode(salt).ok_or_else(|| malformed("the salt is not base64"))?;
        let iterations: u32 = iterations
            .and_then(|i| i.parse().ok())
            .filter(|i| (1..=ITERATIONS_MAX).contains(i))
            .ok_or_else(|| {
                malformed(format!(
                    "the iteration count (i=) is missing or not in 1..={ITERATIONS_MAX}"
                ))
            })?;
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        // "biws" is base64 of the GS2 header "n,,".
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        proof
            .iter_mut()
            .zip(&client_signature)
            .for_each(|(p, s)| *p ^= s);
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", base64_encode(&proof)))
    }

    /// Checks the server's final message (`v=<signature>`, or `e=<error>`).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self
            .server_signature
            .expect("the client's final message is made before the server's is checked");
        let server_final = std::str::from_utf8(server_final)
            .map_err(|_| malformed("the server's final message is not UTF-8"))?;
        for attribute in server_final.split(',') {
            match attribute.split_once('=') {
                Some(("v", signature)) => {
                    let signature = base64_decode(signature)
                        .ok_or_else(|| malformed("the server's signature is not base64"))?;
                    return if signature == expected {
                        Ok(())
                    } else {
                        Err(ScramError::ServerSignature)
                    };
                }
                Some(("e", reason)) => {
                    return Err(ScramError::Refused {
                        reason: reason.to_string(),
                    });
                }
                _ => {}
            }
        }
        Err(malformed("no signature (v=) in the server's final"))
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |word, (i, &b)| word | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(word >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; `None` for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (index, chunk) in text.chunks(4).enumerate() {
        let last = index == text.len() / 4 - 1;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut word = 0u32;
        for &c in &chunk[..4 - padding] {
            let value = BASE64.iter().position(|&b| b == c)?;
            word = word << 6 | value as u32;
        }
        word <<= 6 * padding as u32;
        let bytes = word.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3, the SCRAM-SHA-256 example exchange: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_example_exchange() {
        let mut scram = Scram::new("user", "pencil", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(scram.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            scram.client_final(server_first).expect("client final"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            scram.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Ok(())
        );
        assert_eq!(
            scram.verify_server_final(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::ServerSignature)
        );
        assert!(matches!(
            scram.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::Refused { .. })
        ));
    }

    #[test]
    fn bad_server_firsts_are_errors_that_say_what() {
        for (server_first, what) in [
            (&b"r=other,s=QUJD,i=4096"[..], "does not extend"),
            (b"r=abc,s=QUJD,i=4096", "does not extend"),
            (b"r=abcd,s=Q!JD,i=4096", "not base64"),
            (b"r=abcd,s=QUJD,i=0", "iteration count"),
            (b"r=abcd,s=QUJD,i=99999999", "iteration count"),
            (b"s=QUJD,i=1", "no nonce"),
            (b"e=other-error", "refused"),
        ] {
            let mut scram = Scram::new("", "pw", "abc".into());
            let error = scram.client_final(server_first).expect_err("bad");
            assert!(
                error.to_string().contains(what),
                "{server_first:?}: {error}"
            );
        }
    }

    #[test]
    fn base64_round_trips_and_rejects_what_is_not_base64() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\xfe\x00", "//4A"),
        ] {
            assert_eq!(base64_encode(bytes), text);
            assert_eq!(base64_decode(text).as_deref(), Some(bytes), "{text}");
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "Zm 9"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
        let nonce = Scram::random_nonce().expect("entropy");
        assert_eq!(nonce.len(), 24);
        Scram::new("", "pw", nonce);
    }
}
