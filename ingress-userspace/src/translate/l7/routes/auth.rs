//! What `auth-type: basic` and `auth-url` compile to, once per Ingress and plan, for the
//! proxy's auth filters: the users and their parsed hashes with the `WWW-Authenticate`
//! challenge; the external auth service's URL, method, the headers to copy back and the
//! sign-in redirect's fixed parts.
//!
//! **Verified-credentials cache.** bcrypt and SHA-crypt cost milliseconds by design, and a
//! keep-alive client sends the same `Authorization` with every request. Each [`BasicAuth`]
//! keeps a bounded, direct-mapped cache of [`CACHE_SLOTS`] slots, each holding the HMAC-SHA-256
//! (keyed with a random key made with the plan) of an `Authorization` value that verified.
//! A hit costs one HMAC and one lock-free load (arc-swap); only a miss that verifies allocates
//! (it stores its tag). The cache holds no password, dies with the plan (a changed Secret
//! makes a new plan, hence an empty cache), and a collision only evicts. Failures are not
//! cached: a wrong password is checked every time, as nginx does.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue, Method};
use ring::{hmac, rand::SystemRandom};

use super::htpasswd::PasswordHash;

/// Slots of a [`BasicAuth`]'s verified-credentials cache.
pub const CACHE_SLOTS: usize = 1024;

/// `auth-type: basic`: the users allowed, and how to ask for credentials.
pub struct BasicAuth {
    /// User → stored hash.
    pub users: HashMap<String, PasswordHash>,
    /// `Basic realm="<auth-realm>"`.
    pub challenge: HeaderValue,
    key: hmac::Key,
    verified: Box<[ArcSwapOption<hmac::Tag>]>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.len())
            .field("challenge", &self.challenge)
            .finish()
    }
}

impl BasicAuth {
    /// Users and realm; the cache starts empty, with a fresh key.
    pub fn new(users: HashMap<String, PasswordHash>, challenge: HeaderValue) -> Self {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            // The system's random source failing is not something to serve through: a key
            // of zeros would still be unguessable to clients, who never see the tags.
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &[0u8; 32]));
        Self {
            users,
            challenge,
            key,
            verified: (0..CACHE_SLOTS).map(|_| ArcSwapOption::empty()).collect(),
        }
    }

    /// The cache tag of an `Authorization` value.
    pub fn tag(&self, authorization: &[u8]) -> hmac::Tag {
        hmac::sign(&self.key, authorization)
    }

    fn slot(&self, tag: &hmac::Tag) -> &ArcSwapOption<hmac::Tag> {
        let bytes = tag.as_ref();
        let index = usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) % CACHE_SLOTS;
        &self.verified[index]
    }

    /// Whether this `Authorization` value verified before (with this plan).
    pub fn is_verified(&self, tag: &hmac::Tag) -> bool {
        self.slot(tag)
            .load()
            .as_ref()
            .is_some_and(|cached| (**cached).as_ref() == tag.as_ref())
    }

    /// Remembers that this `Authorization` value verified.
    pub fn remember(&self, tag: hmac::Tag) {
        self.slot(&tag).store(Some(Arc::new(tag)));
    }

    /// Whether `user` with `password` is allowed (the slow part: the hash).
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        self.users
            .get(user)
            .is_some_and(|hash| hash.verify(password))
    }
}

/// `auth-url`: a sub-request per request to an auth service.
#[derive(Debug)]
pub struct ExternalAuth {
    /// The URL as written (`http://host[:port]/path?query`).
    pub url: http::Uri,
    /// `Host` of the sub-request: the URL's authority.
    pub host: HeaderValue,
    /// `auth-method` (default GET).
    pub method: Method,
    /// Whether `auth-method` was given: ingress-nginx then also sends `X-Original-URI` and
    /// `X-Scheme`.
    pub method_given: bool,
    /// `auth-response-headers`: copied from the auth service's 2xx answer onto the request to
    /// the backend (and removed from it when the answer lacks them).
    pub response_headers: Vec<HeaderName>,
    /// `auth-request-redirect`: the `X-Auth-Request-Redirect` value; `None`: the request URI.
    pub request_redirect: Option<HeaderValue>,
    /// `auth-signin`: a 401 becomes a 302 to this.
    pub signin: Option<Signin>,
}

/// `auth-signin`, split where nginx substitutes variables at request time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signin {
    /// Literal text and variables, in order.
    pub parts: Vec<SigninPart>,
}

/// A piece of the sign-in URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigninPart {
    /// Literal text.
    Text(String),
    /// `$escaped_request_uri`: the request URI, percent-encoded (set_escape_uri).
    EscapedRequestUri,
    /// `$request_uri`.
    RequestUri,
    /// `$host` / `$http_host` / `$best_http_host`: the request's host.
    Host,
    /// `$scheme` / `$pass_access_scheme`.
    Scheme,
}
