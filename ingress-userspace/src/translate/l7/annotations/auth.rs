//! The access and upstream annotations of one Ingress, as ingress-nginx's `auth`, `authreq`,
//! `upstreamvhost` and `serviceupstream` parsers read them: `auth-type: basic` with
//! `auth-secret` (`name` or `namespace/name`), `auth-secret-type` (`auth-file`, the default: an
//! htpasswd file in the Secret's `auth` key; or `auth-map`: users as keys, hashes as values)
//! and `auth-realm`; `auth-url` with `auth-method`, `auth-signin` (and
//! `auth-signin-redirect-param`), `auth-response-headers` and `auth-request-redirect`;
//! `upstream-vhost`; `service-upstream`.
//!
//! ingress-nginx refuses to serve a location whose auth it cannot set up (`return 503`): so
//! does xdp-ingress, for a bad value, `auth-type: digest` (not implemented), an `https://`
//! auth URL (not implemented) and, once the Secret is looked up ([`resolve_basic`]), a
//! missing Secret, key or hash that does not parse. Never served unprotected.

use std::{collections::HashMap, sync::Arc};

use http::{HeaderName, HeaderValue, Method, Uri};

use super::{field, Reader};
use crate::{
    model::{ClusterObjects, ObjectName, Problem},
    translate::l7::{
        class::OurIngress,
        routes::{
            auth::{BasicAuth, ExternalAuth, Signin, SigninPart},
            htpasswd::PasswordHash,
        },
    },
};

/// `auth-type: basic` as written, before its Secret is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::translate::l7) struct BasicAuthSource {
    /// The Secret.
    pub(in crate::translate::l7) secret: ObjectName,
    /// `auth-secret-type: auth-map`.
    pub(in crate::translate::l7) map: bool,
    /// `Basic realm="..."`.
    pub(in crate::translate::l7) challenge: HeaderValue,
}

impl Reader<'_, '_> {
    /// `auth-type` and its companions; `None` when absent (or bad: then reported).
    pub(super) fn basic_auth(&mut self) -> Option<BasicAuthSource> {
        let kind = self.get("auth-type")?.trim();
        match kind {
            "basic" => {}
            "digest" => {
                self.fail(
                    "auth-type",
                    "\"digest\" is not supported by xdp-ingress (only \"basic\"); not served \
                     unprotected"
                        .to_string(),
                );
                return None;
            }
            other => {
                self.fail(
                    "auth-type",
                    format!("{other:?} is not an authentication type (\"basic\" or \"digest\")"),
                );
                return None;
            }
        }
        let map = match self.get("auth-secret-type").map(str::trim) {
            None | Some("auth-file") => false,
            Some("auth-map") => true,
            Some(other) => {
                self.fail(
                    "auth-secret-type",
                    format!("{other:?} is neither \"auth-file\" nor \"auth-map\""),
                );
                return None;
            }
        };
        let Some(value) = self.get("auth-secret").map(str::trim) else {
            self.fail(
                "auth-secret",
                "auth-type: basic needs the Secret holding the users".to_string(),
            );
            return None;
        };
        let Some(secret) = secret_name(value, &self.ingress.name.namespace) else {
            self.fail(
                "auth-secret",
                format!("{value:?} is not a Secret name (\"name\" or \"namespace/name\")"),
            );
            return None;
        };
        let realm = self.get("auth-realm").unwrap_or_default();
        // nginx writes the realm in quotes, escaping nothing: a quote or control character
        // would make another header.
        let challenge = (!realm.contains('"'))
            .then(|| HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")).ok())
            .flatten();
        let Some(challenge) = challenge else {
            self.fail(
                "auth-realm",
                format!("{realm:?} cannot be sent in a header (quotes or control characters)"),
            );
            return None;
        };
        Some(BasicAuthSource {
            secret,
            map,
            challenge,
        })
    }

    /// `auth-url` and its companions; `None` when absent (or bad: then reported).
    pub(super) fn external_auth(&mut self) -> Option<Arc<ExternalAuth>> {
        let value = self.get("auth-url")?.trim();
        let url = match value.parse::<Uri>() {
            Ok(url) if url.scheme_str() == Some("http") && url.authority().is_some() => url,
            Ok(url) if url.scheme_str() == Some("https") => {
                self.fail(
                    "auth-url",
                    format!("{value:?}: https auth services are not supported by xdp-ingress yet"),
                );
                return None;
            }
            _ => {
                self.fail("auth-url", format!("{value:?} is not an http:// URL"));
                return None;
            }
        };
        let host = url
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())?;
        let (method, method_given) = match self.get("auth-method").map(str::trim) {
            None => (Method::GET, false),
            Some(m) => match m {
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "CONNECT" | "OPTIONS"
                | "TRACE" => (Method::from_bytes(m.as_bytes()).ok()?, true),
                other => {
                    self.fail(
                        "auth-method",
                        format!("{other:?} is not an HTTP method (GET, HEAD, POST...)"),
                    );
                    return None;
                }
            },
        };
        let mut response_headers = Vec::new();
        if let Some(list) = self.get("auth-response-headers") {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let valid = name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(header) if valid => response_headers.push(header),
                    _ => {
                        self.fail(
                            "auth-response-headers",
                            format!("{name:?} is not a header name"),
                        );
                        return None;
                    }
                }
            }
        }
        let request_redirect = match self.get("auth-request-redirect").map(str::trim) {
            None | Some("") => None,
            Some(text) => match HeaderValue::from_str(text) {
                Ok(value) => Some(value),
                Err(_) => {
                    self.fail(
                        "auth-request-redirect",
                        format!("{text:?} cannot be sent in a header"),
                    );
                    return None;
                }
            },
        };
        let param = self
            .get("auth-signin-redirect-param")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("rd");
        let signin = match self.get("auth-signin").map(str::trim) {
            None | Some("") => None,
            Some(text) => match signin(text, param) {
                Ok(signin) => Some(signin),
                Err(why) => {
                    self.fail("auth-signin", why);
                    return None;
                }
            },
        };
        Some(Arc::new(ExternalAuth {
            url,
            host,
            method,
            method_given,
            response_headers,
            request_redirect,
            signin,
        }))
    }

    /// `upstream-vhost`.
    pub(super) fn upstream_vhost(&mut self) -> Option<HeaderValue> {
        let value = self.get("upstream-vhost")?.trim();
        if value.is_empty() {
            return None;
        }
        let valid = !value.bytes().any(|b| b.is_ascii_whitespace() || b == b'/');
        match HeaderValue::from_str(value) {
            Ok(host) if valid => Some(host),
            _ => {
                self.fail("upstream-vhost", format!("{value:?} is not a host name"));
                None
            }
        }
    }
}

/// `name` (in `namespace`) or `namespace/name`.
fn secret_name(value: &str, namespace: &str) -> Option<ObjectName> {
    let (namespace, name) = value.split_once('/').unwrap_or((namespace, value));
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (label(namespace) && label(name)).then(|| ObjectName {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// ingress-nginx's `buildAuthSignURL`: `?<param>=$pass_access_scheme://$http_host$escaped_request_uri`
/// is added unless the URL already has that parameter; then nginx's variables are found.
fn signin(text: &str, param: &str) -> Result<Signin, String> {
    let lower = text.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(format!(
            "{text:?} is not an absolute http:// or https:// URL"
        ));
    }
    let query = text.split_once('?').map(|(_, q)| q);
    let has_param = query.is_some_and(|q| {
        q.split('&').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, v)| k == param && !v.is_empty())
        })
    });
    let full = if has_param {
        text.to_string()
    } else {
        let separator = if query.is_some_and(|q| !q.is_empty()) {
            '&'
        } else if query.is_some() {
            // `...?` with nothing after it.
            '\0'
        } else {
            '?'
        };
        let mut full = text.to_string();
        if separator != '\0' {
            full.push(separator);
        }
        full.push_str(&format!(
            "{param}=$pass_access_scheme://$http_host$escaped_request_uri"
        ));
        full
    };
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = full.as_str();
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let part = match &after[..len] {
            "escaped_request_uri" => SigninPart::EscapedRequestUri,
            "request_uri" => SigninPart::RequestUri,
            "host" | "http_host" | "best_http_host" => SigninPart::Host,
            "scheme" | "pass_access_scheme" => SigninPart::Scheme,
            "" => return Err(format!("{text:?}: a '$' that starts no variable")),
            other => {
                return Err(format!(
                    "{text:?}: ${other} is not supported (only $escaped_request_uri, \
                     $request_uri, $host, $http_host, $scheme, $pass_access_scheme)"
                ))
            }
        };
        if !literal.is_empty() {
            parts.push(SigninPart::Text(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = &after[len..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(SigninPart::Text(literal));
    }
    let texts_ok = parts.iter().all(|p| match p {
        SigninPart::Text(t) => HeaderValue::from_str(t).is_ok() && !t.contains(' '),
        _ => true,
    });
    if !texts_ok {
        return Err(format!("{text:?} cannot be sent in a Location header"));
    }
    Ok(Signin { parts })
}

/// Looks up the Secret of `auth-type: basic` and builds the users; the problem names the
/// annotation (the Ingress's routes answer 503) when it cannot be used.
pub(in crate::translate::l7) fn resolve_basic(
    ingress: &OurIngress<'_>,
    source: &BasicAuthSource,
    objects: &ClusterObjects,
    problems: &mut Vec<Problem>,
) -> Result<Arc<BasicAuth>, String> {
    let result = users(source, objects).and_then(|users| {
        if users.is_empty() {
            Err(format!("Secret {} names no user", source.secret))
        } else {
            Ok(users)
        }
    });
    match result {
        Ok(users) => Ok(Arc::new(BasicAuth::new(users, source.challenge.clone()))),
        Err(why) => {
            problems.push(ingress.problem(
                field("auth-secret"),
                format!("{why}; this Ingress's routes answer 503 until it is fixed"),
            ));
            Err(format!(
                "503 Service Unavailable: Ingress {} has invalid annotations: {}auth-secret: {why}\n",
                ingress.name,
                super::PREFIX
            ))
        }
    }
}

fn users(
    source: &BasicAuthSource,
    objects: &ClusterObjects,
) -> Result<HashMap<String, PasswordHash>, String> {
    let name = &source.secret;
    let secret = objects
        .secrets
        .get(name)
        .ok_or_else(|| format!("no Secret {name}"))?;
    let data = secret.object.data.as_ref();
    let mut users = HashMap::new();
    let mut add = |user: &str, hash: &str, what: &str| -> Result<(), String> {
        let hash = PasswordHash::parse(hash.trim())
            .map_err(|why| format!("Secret {name}: {what}: user {user:?}: {why}"))?;
        users.entry(user.to_string()).or_insert(hash);
        Ok(())
    };
    if source.map {
        for (user, hash) in data.into_iter().flatten() {
            let hash = std::str::from_utf8(&hash.0)
                .map_err(|_| format!("Secret {name}: key {user:?} is not text"))?;
            add(user, hash, &format!("key {user:?}"))?;
        }
    } else {
        let file = data
            .and_then(|d| d.get("auth"))
            .ok_or_else(|| format!("Secret {name} has no key \"auth\""))?;
        let text = std::str::from_utf8(&file.0)
            .map_err(|_| format!("Secret {name}: key \"auth\" is not text"))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            // nginx skips comments and lines without a user.
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                continue;
            };
            // htpasswd files may carry a comment field after a second ':' (nginx ignores it).
            let hash = hash.split(':').next().unwrap_or(hash);
            add(user, hash, &format!("key \"auth\" line {}", i + 1))?;
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests;
