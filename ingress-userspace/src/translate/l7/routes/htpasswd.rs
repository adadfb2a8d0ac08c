//! htpasswd password hashes, parsed once when the plan is built and checked by the proxy: the
//! formats nginx's `auth_basic_user_file` accepts and `htpasswd` writes: Apache's `$apr1$`
//! MD5, crypt(3)'s `$1$` MD5, `$2a$`/`$2b$`/`$2y$` bcrypt, `$5$` SHA-256, `$6$` SHA-512 and
//! DES, `{SHA}` (base64 SHA-1), `{SSHA}` (salted SHA-1) and `{PLAIN}`. Comparisons of
//! computed and stored hashes are constant-time.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use md5::{Digest as _, Md5};
use ring::digest;

/// One user's stored hash, in a form that needs no parsing per check.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$apr1$salt$hash`: the salt and the whole text to compare with.
    Apr1 {
        /// The salt (up to 8 characters).
        salt: String,
        /// The whole stored text.
        full: String,
    },
    /// A crypt(3) hash pwhash computes (`$1$`, `$2?$`, `$5$`, `$6$`, DES).
    Crypt(String),
    /// `{SHA}`: the SHA-1 digest.
    Sha1(Vec<u8>),
    /// `{SSHA}`: SHA-1 of password and salt, then the salt.
    SaltedSha1 {
        /// The 20-byte digest.
        digest: Vec<u8>,
        /// The salt that follows it.
        salt: Vec<u8>,
    },
    /// `{PLAIN}`: the password itself.
    Plain(String),
}

impl std::fmt::Debug for PasswordHash {
    // Never print hashes (they can be attacked offline).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            PasswordHash::Apr1 { .. } => "apr1",
            PasswordHash::Crypt(_) => "crypt",
            PasswordHash::Sha1(_) => "{SHA}",
            PasswordHash::SaltedSha1 { .. } => "{SSHA}",
            PasswordHash::Plain(_) => "{PLAIN}",
        };
        write!(f, "PasswordHash({kind})")
    }
}

impl PasswordHash {
    /// Parses a stored hash; `Err` says why it is not one nginx would accept.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("$apr1$") {
            let salt = rest.split('$').next().unwrap_or_default();
            if salt.is_empty() || salt.len() > 8 || rest.len() == salt.len() {
                return Err("an $apr1$ hash needs a salt of 1 to 8 characters and a hash".into());
            }
            return Ok(PasswordHash::Apr1 {
                salt: salt.to_string(),
                full: text.to_string(),
            });
        }
        if let Some(b64) = text.strip_prefix("{SHA}") {
            return match STANDARD.decode(b64) {
                Ok(d) if d.len() == 20 => Ok(PasswordHash::Sha1(d)),
                _ => Err("a {SHA} hash is the base64 of a 20-byte SHA-1 digest".into()),
            };
        }
        if let Some(b64) = text.strip_prefix("{SSHA}") {
            return match STANDARD.decode(b64) {
                Ok(mut d) if d.len() > 20 => {
                    let salt = d.split_off(20);
                    Ok(PasswordHash::SaltedSha1 { digest: d, salt })
                }
                _ => Err("a {SSHA} hash is the base64 of a SHA-1 digest and a salt".into()),
            };
        }
        if let Some(plain) = text.strip_prefix("{PLAIN}") {
            return Ok(PasswordHash::Plain(plain.to_string()));
        }
        // pwhash recognises the crypt(3) formats; a hash it cannot recompute from a trial
        // password is not one it can check.
        match pwhash::unix::crypt("", text) {
            Ok(_) if text.starts_with('$') || text.len() == 13 => {
                Ok(PasswordHash::Crypt(text.to_string()))
            }
            _ => Err(
                "not a hash nginx accepts ($apr1$, $1$, $2y$ bcrypt, $5$, $6$, DES crypt, {SHA}, \
                 {SSHA} or {PLAIN})"
                    .into(),
            ),
        }
    }

    /// Whether `password` matches. bcrypt and the SHA-crypt formats are slow on purpose: the
    /// proxy caches what it verified (see `auth`).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Apr1 { salt, full } => {
                constant_eq(apr1(password, salt.as_bytes()).as_bytes(), full.as_bytes())
            }
            PasswordHash::Crypt(hash) => pwhash::unix::verify(password, hash),
            PasswordHash::Sha1(expected) => {
                let computed = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, password);
                constant_eq(computed.as_ref(), expected)
            }
            PasswordHash::SaltedSha1 {
                digest: expected,
                salt,
            } => {
                let mut context = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
                context.update(password);
                context.update(salt);
                constant_eq(context.finish().as_ref(), expected)
            }
            PasswordHash::Plain(plain) => constant_eq(password, plain.as_bytes()),
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The crypt(3) alphabet.
const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Apache's `$apr1$` hash: FreeBSD's MD5-crypt with the magic `$apr1$`.
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let mut alternate = Md5::new();
    alternate.update(password);
    alternate.update(salt);
    alternate.update(password);
    let alternate = alternate.finalize();
    let mut context = Md5::new();
    context.update(password);
    context.update(MAGIC);
    context.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        context.update(&alternate[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            context.update([0u8]);
        } else {
            context.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut result = context.finalize();
    for round in 0..1000 {
        let mut context = Md5::new();
        if round & 1 == 1 {
            context.update(password);
        } else {
            context.update(result);
        }
        if round % 3 != 0 {
            context.update(salt);
        }
        if round % 7 != 0 {
            context.update(password);
        }
        if round & 1 == 1 {
            context.update(result);
        } else {
            context.update(password);
        }
        result = context.finalize();
    }
    let mut out = String::with_capacity(MAGIC.len() + salt.len() + 23);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut push = |value: u32, chars: usize| {
        let mut value = value;
        for _ in 0..chars {
            out.push(char::from(ITOA64[(value & 0x3f) as usize]));
            value >>= 6;
        }
    };
    let r = |i: usize| u32::from(result[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((r(a) << 16) | (r(b) << 8) | r(c), 4);
    }
    push(r(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_htpasswd_and_openssl_write() {
        let cases = [
            // htpasswd -m, and `openssl passwd -apr1`.
            ("$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00", "password"),
            ("$apr1$xdpsalt1$TfoCBxHSD3h0592WRbsd31", "apr1-pass"),
            // `openssl passwd -5` / `-6`.
            (
                "$5$xdpsalt5$pwCEFp5uWc88NveXpSkQpcmZ2IyILPSDsDYtTUYoAW8",
                "sha256-pass",
            ),
            (
                "$6$xdpsalt6$eqrJD93v/Wkn07FijliyX0RGXJEVVIVsstpKHkjLRpEfnl06qnOUzPyGEIhiwBW6enOwJloCfHiwQ6wor1mxO/",
                "sha512-pass",
            ),
            // OpenBSD's bcrypt test vector.
            (
                "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
                "U*U",
            ),
            // htpasswd -s.
            ("{SHA}lwP+QnDZZeQ+bmQbA4P37mDtFVo=", "sha1-pass"),
            ("{PLAIN}plain-pass", "plain-pass"),
        ];
        for (hash, password) in cases {
            let parsed = PasswordHash::parse(hash).unwrap();
            assert!(parsed.verify(password.as_bytes()), "{hash}");
            assert!(!parsed.verify(b"wrong"), "{hash}");
        }
    }

    #[test]
    fn salted_sha1() {
        let mut context = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
        context.update(b"secret");
        context.update(b"salt");
        let mut bytes = context.finish().as_ref().to_vec();
        bytes.extend_from_slice(b"salt");
        let hash = PasswordHash::parse(&format!("{{SSHA}}{}", STANDARD.encode(bytes))).unwrap();
        assert!(hash.verify(b"secret"));
        assert!(!hash.verify(b"secreT"));
    }

    #[test]
    fn what_is_not_a_hash() {
        for bad in [
            "",
            "$apr1$",
            "$apr1$toolongsalt$x",
            "{SHA}short",
            "$9$x$y",
            "abc",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad:?}");
        }
    }
}
