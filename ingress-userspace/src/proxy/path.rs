//! The request path, decided once: the proxy routes on the path this module returns and sends
//! exactly that path to the endpoint, so the route chosen and the resource the endpoint serves
//! cannot disagree (`/public/../admin` must not reach the `/public` backend as a raw path that a
//! normalising backend then serves as `/admin`).
//!
//! What [`normalize`] does, in order:
//! - **Percent-encoded unreserved characters are decoded** (`%2e` → `.`, `%41` → `A`; RFC 3986
//!   §6.2.2.2), so an encoded dot is a dot; other escapes stay as sent. A `%` not followed by two
//!   hex digits is refused.
//! - **Encoded slashes are refused** (`%2F`, `%5C`; 400), as Apache httpd and Tomcat do by
//!   default: whether a backend reads them as separators is the backend's choice, so no routing
//!   decision on them can be trusted. `--allow-encoded-slashes` keeps them, encoded, as ordinary
//!   characters of a segment (Envoy's default), for applications such as GitLab's API that need
//!   them. A raw `\` is refused (some servers read it as `/`).
//! - **Dot segments are removed** (RFC 3986 §5.2.4): `.` goes, `..` removes the segment before
//!   it. A `..` that would climb above the root is refused (nginx answers 400 too; RFC 3986 would
//!   clamp it, which only hides an attack).
//! - **Slashes are merged** (`//` → `/`), as nginx does by default (`merge_slashes on`).
//! - **`;` is an ordinary character**, except that a segment `.;…` or `..;…` is refused: Java
//!   servers strip path parameters and read it as a dot segment (the classic `/public/..;/admin`).
//!
//! The query is not touched. A path that needs none of this (nearly all) is returned borrowed:
//! no allocation.

use std::borrow::Cow;

/// Why a path was refused (the proxy answers 400 with this text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the path")]
    InvalidPercentEncoding,
    /// `%2F` or `%5C` without `--allow-encoded-slashes`.
    #[error("encoded slash (%2F or %5C) in the path")]
    EncodedSlash,
    /// A raw `\`.
    #[error("backslash in the path")]
    Backslash,
    /// More `..` segments than there are segments before them.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// A segment `.;…` or `..;…`.
    #[error("dot segment with parameters (`..;`) in the path")]
    DotSegmentWithParameters,
}

/// The path the proxy routes on and sends upstream; see the module documentation. `path` is the
/// request target's path, without the query. Paths that do not start with `/` (`*`, an empty
/// path) are returned as they are.
pub(crate) fn normalize(
    path: &str,
    allow_encoded_slashes: bool,
) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes(), allow_encoded_slashes)?;
    let normal = remove_dot_segments(&decoded)?;
    if normal == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(normal))
}

/// Whether `path` needs no work: no `%`, no `\`, no empty segment and no dot segment (one byte
/// scan; the common case).
fn is_normal(path: &[u8]) -> bool {
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' | b'\\' => return false,
            b'/' => match path.get(i + 1) {
                Some(b'/') => return false,
                Some(b'.') if is_dot_segment_start(&path[i + 1..]) => return false,
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    true
}

/// Whether `rest` (starting at a segment's first byte, a `.`) begins with `.` or `..` followed by
/// the segment's end or `;`.
fn is_dot_segment_start(rest: &[u8]) -> bool {
    let dots = rest.iter().take_while(|&&b| b == b'.').count();
    (dots == 1 || dots == 2) && matches!(rest.get(dots), None | Some(b'/') | Some(b';'))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters, upper-cases the hex of the others, refuses bad
/// escapes, encoded slashes (unless allowed) and backslashes.
fn decode_unreserved(path: &[u8], allow_encoded_slashes: bool) -> Result<String, PathError> {
    // Bytes, not chars: a path may hold raw UTF-8 (hyper accepts it), which must pass untouched.
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' => {
                let (Some(high), Some(low)) = (
                    path.get(i + 1).copied().and_then(hex_value),
                    path.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let byte = high << 4 | low;
                if is_unreserved(byte) {
                    out.push(byte);
                } else if matches!(byte, b'/' | b'\\') && !allow_encoded_slashes {
                    return Err(PathError::EncodedSlash);
                } else {
                    out.extend_from_slice(&[
                        b'%',
                        path[i + 1].to_ascii_uppercase(),
                        path[i + 2].to_ascii_uppercase(),
                    ]);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    // Only ASCII escapes were replaced, by ASCII: the text is as valid as the path was.
    String::from_utf8(out).map_err(|_| PathError::InvalidPercentEncoding)
}

/// RFC 3986 §5.2.4 on an absolute path, merging empty segments; refuses climbing above the root
/// and `..;` segments.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    // A path ending in `/`, `/.` or `/..` names a directory: it keeps its trailing slash.
    let mut trailing_slash = false;
    // The first element is the empty string before the leading `/`.
    for segment in path.split('/').skip(1) {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ if segment.starts_with(".;") || segment.starts_with("..;") => {
                return Err(PathError::DotSegmentWithParameters)
            }
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, false).map(Cow::into_owned)
    }

    #[test]
    fn ordinary_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/a",
            "/a/b/",
            "/.well-known/x",
            "/a/.hidden",
            "/a/b.c",
            "/a..b",
            "*",
        ] {
            assert!(
                matches!(normalize(path, false), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/public/./../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/b/../../c").unwrap(), "/c");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/.").unwrap(), "/");
    }

    #[test]
    fn encoded_dots_are_dots() {
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2e./admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2e/admin").unwrap(), "/public/admin");
        assert_eq!(norm("/%70ublic").unwrap(), "/public");
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(norm("//admin").unwrap(), "/admin");
        assert_eq!(norm("/a//b///c//").unwrap(), "/a/b/c/");
        assert_eq!(norm("/public//..//admin").unwrap(), "/admin");
    }

    #[test]
    fn other_escapes_stay_encoded_in_upper_case() {
        assert_eq!(norm("/a%20b/%3f").unwrap(), "/a%20b/%3F");
        assert!(matches!(
            normalize("/a%20b", false),
            Ok(Cow::Borrowed("/a%20b"))
        ));
    }

    #[test]
    fn refused_paths() {
        assert_eq!(norm("/../admin"), Err(PathError::AboveRoot));
        assert_eq!(norm("/a/../../admin"), Err(PathError::AboveRoot));
        assert_eq!(norm("/%2e%2e/admin"), Err(PathError::AboveRoot));
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%2f..%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a\\..\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/a%zz"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(norm("/a%2"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(
            norm("/public/..;/admin"),
            Err(PathError::DotSegmentWithParameters)
        );
        assert_eq!(
            norm("/public/.;x/admin"),
            Err(PathError::DotSegmentWithParameters)
        );
        assert_eq!(
            norm("/public/%2e%2e;/admin"),
            Err(PathError::DotSegmentWithParameters)
        );
    }

    #[test]
    fn raw_utf8_passes_untouched() {
        assert_eq!(
            norm("/caf\u{e9}/./men\u{fc}").unwrap(),
            "/caf\u{e9}/men\u{fc}"
        );
        assert_eq!(norm("/%C3%A9/x/..").unwrap(), "/%C3%A9/");
    }

    #[test]
    fn semicolons_elsewhere_are_ordinary() {
        assert_eq!(norm("/a;x/b").unwrap(), "/a;x/b");
        assert_eq!(norm("/a;x/../b").unwrap(), "/b");
    }

    #[test]
    fn encoded_slashes_can_be_allowed_and_stay_opaque() {
        assert_eq!(
            normalize("/api/projects/group%2fproject/..", true).unwrap(),
            "/api/projects/"
        );
        assert_eq!(
            normalize("/api/group%2F..%2Fadmin", true).unwrap(),
            "/api/group%2F..%2Fadmin"
        );
    }

    /// A fixed seed and a bounded number of cases: the same run every time, in well under a
    /// second (the fuzz run CI can afford).
    fn fuzz_config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: 4096,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0001),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        }
    }

    /// Paths made of the pieces attacks are made of.
    fn hostile_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "/", "//", "a", "b", ".", "..", "%2e", "%2E", "%2f", "%5C", "%41", "%20", ";", ";x",
            "\\", "%", "%z", "~", "public", "admin", "\u{e9}",
        ]);
        prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    proptest::proptest! {
        #![proptest_config(fuzz_config())]

        /// What comes out has no dot segment (plain or encoded), no empty segment and no
        /// backslash, and is a fixed point: routing and the endpoint read the same path.
        #[test]
        fn normalised_paths_are_normal_and_stable(path in hostile_path(), allow in proptest::bool::ANY) {
            if let Ok(normal) = normalize(&path, allow) {
                proptest::prop_assert!(normal.starts_with('/'));
                proptest::prop_assert!(!normal.contains("//"), "{normal}");
                proptest::prop_assert!(!normal.contains('\\'), "{normal}");
                let lower = normal.to_ascii_lowercase();
                proptest::prop_assert!(!lower.contains("%2e"), "{normal}");
                for segment in normal.split('/') {
                    let bare = segment.split(';').next().unwrap_or(segment);
                    proptest::prop_assert!(bare != "." && bare != "..", "{path} -> {normal}");
                }
                let again = normalize(&normal, allow);
                proptest::prop_assert!(
                    matches!(again, Ok(Cow::Borrowed(p)) if p == normal.as_ref()),
                    "{path} -> {normal} -> {again:?}"
                );
            }
        }

        /// The fast path (no allocation) never skips a path the full work would change.
        #[test]
        fn the_fast_path_agrees_with_the_full_work(path in hostile_path()) {
            if is_normal(path.as_bytes()) {
                let full = decode_unreserved(path.as_bytes(), true)
                    .and_then(|decoded| remove_dot_segments(&decoded));
                proptest::prop_assert_eq!(full.as_deref(), Ok(path.as_str()));
            }
        }
    }
}
