//! How a backend spreads requests over its endpoints, as the plan says it
//! ([`Balance`]): the proxy's default (fewest outstanding of two choices), a consistent hash of
//! a request value (`upstream-hash-by`), or a session cookie (`affinity: cookie`). The
//! ingress-nginx annotations are parsed here once per Ingress: a hash key's nginx variables
//! are compiled into [`HashPart`]s, so the proxy only reads the request and hashes.

use std::sync::Arc;

use http::HeaderName;

/// How a backend chooses an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Two candidates, the one with fewer outstanding requests (the proxy's default).
    #[default]
    LeastRequests,
    /// `upstream-hash-by`: a consistent hash ring over the endpoints, keyed by this value.
    Hash(Arc<HashKey>),
    /// `affinity: cookie`: a cookie names the endpoint a session keeps.
    Cookie(Arc<CookieAffinity>),
}

/// An `upstream-hash-by` value, compiled: text and nginx variables, concatenated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashKey {
    /// The value as written (for `validate` and problems).
    pub text: String,
    /// Its parts, in order.
    pub parts: Vec<HashPart>,
}

/// One part of a hash key. Variables the request lacks are empty, as in nginx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashPart {
    /// Literal text.
    Text(String),
    /// `$request_uri`: the path and query as the client sent them.
    RequestUri,
    /// `$uri`: the normalised path.
    Uri,
    /// `$args` / `$query_string`: the query.
    Args,
    /// `$host`: the host without port, lower-case.
    Host,
    /// `$remote_addr`: the client's address.
    RemoteAddr,
    /// `$scheme`: `http` or `https`.
    Scheme,
    /// `$http_<name>`: a request header (`_` read as `-`).
    Header(HeaderName),
    /// `$cookie_<name>`: a cookie's value.
    Cookie(String),
    /// `$arg_<name>`: a query argument's value (name compared without case, as nginx).
    Arg(String),
}

impl HashKey {
    /// Parses nginx's complex value syntax (`$name`, `${name}`, text between). An unknown
    /// variable is an error, as nginx refuses a configuration that names one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, next) = match after.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(end) => (&braced[..end], &braced[end + 1..]),
                    None => return Err(format!("{text:?}: '${{' without a closing '}}'")),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                return Err(format!("{text:?}: '$' without a variable name"));
            }
            if !literal.is_empty() {
                parts.push(HashPart::Text(std::mem::take(&mut literal)));
            }
            parts.push(variable(name).ok_or_else(|| {
                format!(
                    "{text:?}: unknown variable ${name} (supported: $request_uri, $uri, $args, \
                     $host, $remote_addr, $scheme, $http_<name>, $cookie_<name>, $arg_<name>)"
                )
            })?);
            rest = next;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(HashPart::Text(literal));
        }
        if parts.is_empty() {
            return Err("empty".into());
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }
}

fn variable(name: &str) -> Option<HashPart> {
    let lower = name.to_ascii_lowercase();
    let part = match lower.as_str() {
        "request_uri" => HashPart::RequestUri,
        "uri" | "document_uri" => HashPart::Uri,
        "args" | "query_string" => HashPart::Args,
        "host" => HashPart::Host,
        "remote_addr" | "binary_remote_addr" => HashPart::RemoteAddr,
        "scheme" => HashPart::Scheme,
        _ => {
            if let Some(header) = lower.strip_prefix("http_").filter(|h| !h.is_empty()) {
                let header = header.replace('_', "-");
                return HeaderName::from_bytes(header.as_bytes())
                    .ok()
                    .map(HashPart::Header);
            }
            if let Some(cookie) = name.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                return Some(HashPart::Cookie(cookie.to_string()));
            }
            if let Some(arg) = lower.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                return Some(HashPart::Arg(arg.to_string()));
            }
            return None;
        }
    };
    Some(part)
}

/// `affinity-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AffinityMode {
    /// The cookie holds a random key placed on a consistent hash ring: when endpoints come or
    /// go, some sessions move (ingress-nginx's default).
    #[default]
    Balanced,
    /// The cookie names the endpoint (a salted hash of its address): a session moves only
    /// when its endpoint is gone.
    Persistent,
}

/// `affinity: cookie` and the `session-cookie-*` annotations, with ingress-nginx's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAffinity {
    /// `session-cookie-name` (default `INGRESSCOOKIE`).
    pub name: String,
    /// `session-cookie-path`; `None`: the path of the rule that matched.
    pub path: Option<String>,
    /// `session-cookie-domain`.
    pub domain: Option<String>,
    /// `session-cookie-max-age`, seconds.
    pub max_age: Option<u64>,
    /// `session-cookie-expires`, seconds from now.
    pub expires: Option<u64>,
    /// `session-cookie-secure`; `None`: `Secure` on requests that came over TLS.
    pub secure: Option<bool>,
    /// `session-cookie-samesite`, only `None`, `Lax` or `Strict` (lua-resty-cookie drops
    /// others).
    pub samesite: Option<&'static str>,
    /// `session-cookie-conditional-samesite-none`: no `SameSite=None` for browsers that
    /// reject it.
    pub conditional_samesite_none: bool,
    /// `affinity-mode`.
    pub mode: AffinityMode,
    /// `session-cookie-change-on-failure`: an endpoint that failed the request gets the
    /// session a new one (and a new cookie); otherwise the request stays with it.
    pub change_on_failure: bool,
}

impl Default for CookieAffinity {
    fn default() -> Self {
        Self {
            name: "INGRESSCOOKIE".into(),
            path: None,
            domain: None,
            max_age: None,
            expires: None,
            secure: None,
            samesite: None,
            conditional_samesite_none: false,
            mode: AffinityMode::Balanced,
            change_on_failure: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_compile_variables_and_text() {
        let key = HashKey::parse("$request_uri").unwrap();
        assert_eq!(key.parts, vec![HashPart::RequestUri]);
        let key = HashKey::parse("user-${http_x_user}:$arg_ID/$cookie_Session$host").unwrap();
        assert_eq!(
            key.parts,
            vec![
                HashPart::Text("user-".into()),
                HashPart::Header(HeaderName::from_static("x-user")),
                HashPart::Text(":".into()),
                HashPart::Arg("id".into()),
                HashPart::Text("/".into()),
                HashPart::Cookie("Session".into()),
                HashPart::Host,
            ]
        );
        assert_eq!(
            HashKey::parse("$remote_addr").unwrap().parts,
            vec![HashPart::RemoteAddr]
        );
        assert!(HashKey::parse("$nonsense")
            .unwrap_err()
            .contains("$nonsense"));
        assert!(HashKey::parse("${host").is_err());
        assert!(HashKey::parse("a$").is_err());
        assert!(HashKey::parse("").is_err());
    }
}
