//! The one assertion style of the tests: a failed check is an `Err` that says what was expected
//! and what was seen, never a panic, so the same check serves a test's body and the retried
//! closures of `settle` and `eventually` (where a panic would end the retrying), and a test's
//! cleanup (dropped namespaces, stopped agents) runs on the way out. Conditions use
//! `anyhow::ensure!`; equality uses [`ensure_eq!`] and [`ensure_ne!`], which print both sides as
//! `assert_eq!` does.

/// `Err` unless `seen == expected`: "`<what>: `expected <expected>, seen <seen>" (both `Debug`),
/// each side evaluated once, by reference, as `assert_eq!` does.
#[macro_export]
macro_rules! ensure_eq {
    ($seen:expr, $expected:expr $(,)?) => {
        match (&$seen, &$expected) {
            (seen, expected) => ::anyhow::ensure!(
                *seen == *expected,
                "expected {:?}, seen {:?}",
                expected,
                seen
            ),
        }
    };
    ($seen:expr, $expected:expr, $($what:tt)+) => {
        match (&$seen, &$expected) {
            (seen, expected) => ::anyhow::ensure!(
                *seen == *expected,
                "{}: expected {:?}, seen {:?}",
                format_args!($($what)+),
                expected,
                seen
            ),
        }
    };
}

/// `Err` if `seen == other`: "`<what>: `expected anything but <other>, seen it".
#[macro_export]
macro_rules! ensure_ne {
    ($seen:expr, $other:expr $(,)?) => {
        match (&$seen, &$other) {
            (seen, other) => ::anyhow::ensure!(
                *seen != *other,
                "expected anything but {:?}, seen {:?}",
                other,
                seen
            ),
        }
    };
    ($seen:expr, $other:expr, $($what:tt)+) => {
        match (&$seen, &$other) {
            (seen, other) => ::anyhow::ensure!(
                *seen != *other,
                "{}: expected anything but {:?}, seen {:?}",
                format_args!($($what)+),
                other,
                seen
            ),
        }
    };
}

#[cfg(test)]
mod tests {
    use anyhow::Result;

    fn equal(seen: u16, expected: u16) -> Result<()> {
        ensure_eq!(seen, expected, "status of {}", "/x");
        Ok(())
    }

    #[test]
    fn a_mismatch_says_what_was_expected_and_seen() {
        assert!(equal(200, 200).is_ok());
        let error = equal(404, 200).map(|()| "no error").unwrap_or_else(|e| {
            assert_eq!(e.to_string(), "status of /x: expected 200, seen 404");
            "checked"
        });
        assert_eq!(error, "checked");
    }
}
