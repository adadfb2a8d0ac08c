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

/// Parses a certificate chain and key, checking that they belong together.
pub fn certified_key(
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
pub fn self_signed(provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
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
pub struct CertResolver {
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

/// Builds certificate stores from plans, remembering what parsed before.
pub struct CertBook {
    provider: Arc<CryptoProvider>,
    self_signed: Arc<CertifiedKey>,
    /// Last good certificate per Secret, with the PEM it came from.
    parsed: HashMap<ObjectName, (PemPair, Arc<CertifiedKey>)>,
    resolver: Arc<CertResolver>,
}

impl CertBook {
    /// A book whose resolver serves the self-signed certificate for every name.
    pub fn new(provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
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
        })
    }

    /// The resolver to put in the rustls server configuration.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Installs the plan's certificates. Entries come in precedence order: the first one naming
    /// a host wins. Returns the Secrets that could not be used (and did not replace anything).
    pub fn apply(&mut self, tls: &[TlsPlan], default: Option<&TlsPlan>) -> Vec<CertProblem> {
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
                return previous.map(|(_, key)| key.clone());
            }
        };
        if let Some((cached_pem, key)) = previous {
            if cached_pem == pem {
                return Some(key.clone());
            }
        }
        match certified_key(pem, &self.provider) {
            Ok(key) => {
                self.parsed
                    .insert(plan.secret.clone(), (pem.clone(), key.clone()));
                Some(key)
            }
            Err(error) => {
                let kept = previous.map(|(_, key)| key.clone());
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
}
