//! TLS: certificates chosen by SNI from the plan's Secrets, swapped atomically on reload.
//!
//! SNI is matched like Ingress hosts: exact name, then a single-label `*.` wildcard, then the
//! default certificate (`--default-tls-secret`, else one self-signed at start). A Secret whose PEM
//! does not parse keeps its previous certificate; parsed certificates are cached by Secret and
//! content, so a reload re-parses only what changed.

use std::{collections::HashMap, fmt, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{
    model::ObjectName,
    translate::l7::{PemPair, TlsPlan},
};

/// Why a certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls.crt` has no certificate.
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    /// `tls.crt` or `tls.key` is not valid PEM.
    #[error("{field} is not valid PEM: {message}")]
    Pem {
        /// `tls.crt` or `tls.key`.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the key or the pair.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[error("generating the self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

/// The crypto provider the proxy serves with, and `validate` checks certificates with.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The Secrets among a plan's TLS entries whose PEM [`certified_key`] refuses, once each, with
/// why: what `validate` reports. The agent refuses the same ones in [`CertBook::apply`] (and
/// keeps a previous certificate, which `validate` has not got).
pub(crate) fn unusable_certificates(
    tls: &[TlsPlan],
    default: Option<&TlsPlan>,
    provider: &CryptoProvider,
) -> Vec<CertProblem> {
    let mut checked = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for plan in default.into_iter().chain(tls) {
        // A missing Secret or key is already the translator's problem.
        let Ok(pem) = &plan.pem else { continue };
        if !checked.insert(&plan.secret) {
            continue;
        }
        if let Err(error) = certified_key(pem, provider) {
            problems.push(CertProblem {
                secret: plan.secret.clone(),
                message: error.to_string(),
            });
        }
    }
    problems
}

/// Parses a certificate chain and key, checking that they belong together.
pub(crate) fn certified_key(
    pem: &PemPair,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&pem.certificate_chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            field: "tls.crt",
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.private_key).map_err(|e| TlsError::Pem {
        field: "tls.key",
        message: e.to_string(),
    })?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}

/// A self-signed certificate for names no Secret covers.
pub(crate) fn self_signed(provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let generated = rcgen::generate_simple_self_signed(vec!["xdp-ingress-default".to_string()])?;
    let pem = PemPair {
        certificate_chain: generated.cert.pem().into_bytes(),
        private_key: generated.key_pair.serialize_pem().into_bytes(),
    };
    certified_key(&pem, provider)
}

/// Certificates by SNI name.
struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    fn lookup(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        // rustls hands SNI over already lower-cased and without a trailing dot.
        if let Some(key) = self.exact.get(name) {
            return key.clone();
        }
        name.split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// The SNI resolver rustls calls on every handshake; reloads swap its store.
pub(crate) struct CertResolver {
    store: ArcSwap<CertStore>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = self.store.load();
        f.debug_struct("CertResolver")
            .field("exact", &store.exact.len())
            .field("wildcard", &store.wildcard.len())
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().lookup(hello.server_name()))
    }
}

/// A certificate problem found while applying a plan (the previous certificate, if any, stays).
#[derive(Debug)]
pub struct CertProblem {
    /// The Secret.
    pub secret: ObjectName,
    /// What is wrong.
    pub message: String,
}

/// The leaf certificate's notAfter (seconds since the epoch) per Secret in use, for `/metrics`;
/// replaced whole on each reload.
pub(crate) type CertExpiry = Arc<ArcSwap<Vec<(ObjectName, i64)>>>;

/// A Secret's last good certificate: the PEM it came from, the key, the leaf's notAfter.
type Parsed = (PemPair, Arc<CertifiedKey>, Option<i64>);

/// Builds certificate stores from plans, remembering what parsed before.
pub(crate) struct CertBook {
    provider: Arc<CryptoProvider>,
    self_signed: Arc<CertifiedKey>,
    /// Last good certificate per Secret.
    parsed: HashMap<ObjectName, Parsed>,
    resolver: Arc<CertResolver>,
    expiry: CertExpiry,
}

impl CertBook {
    /// A book whose resolver serves the self-signed certificate for every name.
    pub(crate) fn new(provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let self_signed = self_signed(&provider)?;
        let resolver = Arc::new(CertResolver {
            store: ArcSwap::from_pointee(CertStore {
                exact: HashMap::new(),
                wildcard: HashMap::new(),
                default: self_signed.clone(),
            }),
        });
        Ok(Self {
            provider,
            self_signed,
            parsed: HashMap::new(),
            resolver,
            expiry: CertExpiry::default(),
        })
    }

    /// The certificates' expiry, as of the last [`CertBook::apply`].
    pub(crate) fn expiry(&self) -> CertExpiry {
        self.expiry.clone()
    }

    /// The resolver to put in the rustls server configuration.
    pub(crate) fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Installs the plan's certificates. Entries come in precedence order: the first one naming
    /// a host wins. Returns the Secrets that could not be used (and did not replace anything).
    pub(crate) fn apply(&mut self, tls: &[TlsPlan], default: Option<&TlsPlan>) -> Vec<CertProblem> {
        let mut problems = Vec::new();
        let mut store = CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: self.self_signed.clone(),
        };
        if let Some(plan) = default {
            if let Some(key) = self.key_for(plan, &mut problems) {
                store.default = key;
            }
        }
        for plan in tls {
            let Some(key) = self.key_for(plan, &mut problems) else {
                continue;
            };
            for host in &plan.hosts {
                let host = host.to_ascii_lowercase();
                let (map, name) = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut store.wildcard, suffix.to_string()),
                    None => (&mut store.exact, host),
                };
                map.entry(name).or_insert_with(|| key.clone());
            }
        }
        let in_use: std::collections::HashSet<&ObjectName> =
            tls.iter().chain(default).map(|p| &p.secret).collect();
        self.parsed.retain(|secret, _| in_use.contains(secret));
        self.resolver.store.store(Arc::new(store));
        let mut expiry: Vec<(ObjectName, i64)> = self
            .parsed
            .iter()
            .filter_map(|(secret, (_, _, not_after))| Some((secret.clone(), (*not_after)?)))
            .collect();
        expiry.sort();
        self.expiry.store(Arc::new(expiry));
        problems
    }

    /// The certificate of one entry: cached when the PEM is unchanged, parsed when new, the
    /// previous one when the new PEM is unusable.
    fn key_for(
        &mut self,
        plan: &TlsPlan,
        problems: &mut Vec<CertProblem>,
    ) -> Option<Arc<CertifiedKey>> {
        let previous = self.parsed.get(&plan.secret);
        let pem = match &plan.pem {
            Ok(pem) => pem,
            Err(message) => {
                problems.push(CertProblem {
                    secret: plan.secret.clone(),
                    message: message.clone(),
                });
                return previous.map(|(_, key, _)| key.clone());
            }
        };
        if let Some((cached_pem, key, _)) = previous {
            if cached_pem == pem {
                return Some(key.clone());
            }
        }
        match certified_key(pem, &self.provider) {
            Ok(key) => {
                // Parsed once per Secret content, like the key: reloads cost nothing more.
                let not_after = key.cert.first().and_then(|leaf| not_after(leaf).ok());
                self.parsed
                    .insert(plan.secret.clone(), (pem.clone(), key.clone(), not_after));
                Some(key)
            }
            Err(error) => {
                let kept = previous.map(|(_, key, _)| key.clone());
                problems.push(CertProblem {
                    secret: plan.secret.clone(),
                    message: if kept.is_some() {
                        format!("{error}; the previous certificate stays in use")
                    } else {
                        error.to_string()
                    },
                });
                kept
            }
        }
    }
}

/// Why a certificate's validity could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ValidityError {
    /// The DER ended early or a length is wrong.
    #[error("truncated or malformed DER")]
    Malformed,
    /// A field is not the element X.509 puts there.
    #[error("unexpected DER tag {0:#04x}")]
    UnexpectedTag(u8),
    /// notAfter is not a UTCTime or GeneralizedTime this parser understands.
    #[error("unsupported time {0:?}")]
    Time(String),
}

/// One DER element: its tag, its contents, and what follows it.
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), ValidityError> {
    let (&tag, rest) = input.split_first().ok_or(ValidityError::Malformed)?;
    let (&first, rest) = rest.split_first().ok_or(ValidityError::Malformed)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // Certificates are far below 2^32 bytes; more length bytes is not a certificate.
        if n == 0 || n > 4 || rest.len() < n {
            return Err(ValidityError::Malformed);
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(ValidityError::Malformed);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), ValidityError> {
    let (found, contents, rest) = der_element(input)?;
    if found != tag {
        return Err(ValidityError::UnexpectedTag(found));
    }
    Ok((contents, rest))
}

/// The notAfter of a DER certificate, in seconds since the epoch. A few lines of DER walking
/// (Certificate → TBSCertificate → [version], serial, signature, issuer, validity) instead of a
/// full X.509 parser: this is the only field the agent reads, once per Secret content.
pub(crate) fn not_after(certificate: &[u8]) -> Result<i64, ValidityError> {
    const SEQUENCE: u8 = 0x30;
    let (certificate, _) = expect(certificate, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    // The version is explicitly tagged [0] and absent for v1 certificates.
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    let (_serial, tbs) = expect(tbs, 0x02)?;
    let (_signature, tbs) = expect(tbs, SEQUENCE)?;
    let (_issuer, tbs) = expect(tbs, SEQUENCE)?;
    let (validity, _) = expect(tbs, SEQUENCE)?;
    let (_not_before, _, validity) = der_element(validity)?;
    let (tag, time, _) = der_element(validity)?;
    let text = std::str::from_utf8(time).map_err(|_| ValidityError::Malformed)?;
    let bad = || ValidityError::Time(text.to_string());
    // ASCII only, so the byte-offset slicing below cannot split a character.
    if !text.is_ascii() {
        return Err(bad());
    }
    // UTCTime: YYMMDDHHMMSSZ (RFC 5280: 50..99 is 19xx); GeneralizedTime: YYYYMMDDHHMMSSZ.
    let (year, rest) = match tag {
        0x17 if text.len() == 13 => {
            let yy: i64 = text[..2].parse().map_err(|_| bad())?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 15 => (text[..4].parse().map_err(|_| bad())?, &text[4..]),
        0x17 | 0x18 => return Err(bad()),
        other => return Err(ValidityError::UnexpectedTag(other)),
    };
    if !rest.ends_with('Z') {
        return Err(bad());
    }
    let field = |i: usize| -> Result<i64, ValidityError> {
        rest.get(i..i + 2)
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(bad)
    };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn pem_for(names: &[&str]) -> PemPair {
        let generated = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        PemPair {
            certificate_chain: generated.cert.pem().into_bytes(),
            private_key: generated.key_pair.serialize_pem().into_bytes(),
        }
    }

    fn plan(secret: &str, hosts: &[&str], pem: Result<PemPair, String>) -> TlsPlan {
        TlsPlan {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            secret: ObjectName {
                namespace: "default".into(),
                name: secret.into(),
            },
            ingress: None,
            pem,
        }
    }

    #[test]
    fn reads_not_after_and_publishes_expiry_per_secret() {
        let mut params = rcgen::CertificateParams::new(vec!["shop.example".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 3, 4);
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key_pair).unwrap();
        // 2031-03-04T00:00:00Z.
        assert_eq!(not_after(cert.der()), Ok(1_930_348_800));
        // GeneralizedTime from 2050 on.
        params.not_after = rcgen::date_time_ymd(2051, 1, 1);
        let later = params.self_signed(&key_pair).unwrap();
        assert_eq!(not_after(later.der()), Ok(2_556_144_000));
        assert!(not_after(&cert.der()[..40]).is_err());
        assert!(not_after(b"").is_err());

        let mut book = CertBook::new(provider()).unwrap();
        let pem = PemPair {
            certificate_chain: cert.pem().into_bytes(),
            private_key: key_pair.serialize_pem().into_bytes(),
        };
        assert!(book
            .apply(&[plan("shop", &["shop.example"], Ok(pem))], None)
            .is_empty());
        let expiry = book.expiry().load_full();
        assert_eq!(expiry.len(), 1);
        assert_eq!(expiry[0].0.name, "shop");
        assert_eq!(expiry[0].1, 1_930_348_800);
        book.apply(&[], None);
        assert!(book.expiry().load().is_empty());
    }

    #[test]
    fn sni_exact_then_wildcard_then_default_and_bad_pem_keeps_previous() {
        let mut book = CertBook::new(provider()).unwrap();
        let shop = pem_for(&["shop.example"]);
        let wild = pem_for(&["*.example"]);
        let problems = book.apply(
            &[
                plan("shop", &["shop.example"], Ok(shop.clone())),
                plan("wild", &["*.example"], Ok(wild.clone())),
            ],
            None,
        );
        assert!(problems.is_empty());
        let store = book.resolver.store.load();
        let shop_key = store.lookup(Some("shop.example"));
        let wild_key = store.lookup(Some("a.example"));
        assert!(!Arc::ptr_eq(&shop_key, &wild_key));
        assert!(Arc::ptr_eq(
            &store.lookup(Some("a.b.example")),
            &book.self_signed
        ));
        assert!(Arc::ptr_eq(&store.lookup(None), &book.self_signed));

        let broken = PemPair {
            certificate_chain:
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
            private_key: shop.private_key.clone(),
        };
        let problems = book.apply(&[plan("shop", &["shop.example"], Ok(broken))], None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("previous certificate stays"));
        let store = book.resolver.store.load();
        assert!(Arc::ptr_eq(&store.lookup(Some("shop.example")), &shop_key));

        // A key that does not belong to the certificate is refused.
        let mismatched = PemPair {
            certificate_chain: shop.certificate_chain.clone(),
            private_key: wild.private_key.clone(),
        };
        assert!(certified_key(&mismatched, &provider()).is_err());
    }

    #[test]
    fn unusable_certificates_names_each_refused_secret_once() {
        let good = pem_for(&["shop.example"]);
        let other = pem_for(&["other.example"]);
        let mismatched = PemPair {
            certificate_chain: good.certificate_chain.clone(),
            private_key: other.private_key.clone(),
        };
        let not_pem = PemPair {
            certificate_chain: b"not a certificate".to_vec(),
            private_key: good.private_key.clone(),
        };
        let plans = [
            plan("good", &["shop.example"], Ok(good)),
            plan("mismatched", &["a.example"], Ok(mismatched.clone())),
            plan("mismatched", &["b.example"], Ok(mismatched)),
            plan("missing", &["c.example"], Err("no Secret".into())),
        ];
        let default = plan("not-pem", &[], Ok(not_pem));
        let problems = unusable_certificates(&plans, Some(&default), &crypto_provider());
        let names: Vec<&str> = problems.iter().map(|p| p.secret.name.as_str()).collect();
        assert_eq!(names, ["not-pem", "mismatched"]);
        assert_eq!(problems[0].message, "tls.crt holds no PEM certificate");
    }
}
