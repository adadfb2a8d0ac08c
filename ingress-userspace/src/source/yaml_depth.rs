//! How deeply a YAML stream nests, measured before serde_yaml builds anything from it.
//!
//! libyaml's scanner does work per token in proportion to the number of open flow collections
//! (`[`, `{`): 97 KiB of `[` cost seconds of CPU (6 s in a debug build, 13-15 s reported on a
//! release build) before serde_yaml's own recursion limit (128) could say no. This module runs the same parser serde_yaml uses (unsafe-libyaml, the very
//! crate and version), event by event, and stops at the first collection deeper than the limit:
//! the tokens looked at before it are at most the limit plus libyaml's 1024-character simple-key
//! window, so rejecting costs microseconds. Using libyaml itself, not a scan of brackets and
//! indentation, means the depth measured is the depth serde_yaml would meet: quotes, comments
//! and block scalars are read exactly as it reads them.

use std::mem::MaybeUninit;

/// The first document that nests deeper than the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooDeep {
    /// The document's number, from 1 (serde_yaml counts documents the same way).
    pub document: usize,
    /// The byte offset where that document starts: the text before it holds only the documents
    /// before it.
    pub document_start: usize,
    /// Where the collection that went past the limit opens (line and column from 1).
    pub line: u64,
    /// See `line`.
    pub column: u64,
}

/// Whether some document of `text` could nest flow collections more than `limit` deep: it holds
/// more than `limit` flow openers (`[`, `{`, counted anywhere, even in scalars and comments, so
/// the answer errs towards `true`). Only flow nesting makes libyaml's scanner slow; block nesting
/// costs linear time and serde_yaml's own recursion limit (128) refuses it. One byte scan, so a
/// file of ordinary documents skips [`too_deep`]'s full parse (10,000 Services: about 0.4 s of
/// the agent's start).
pub(crate) fn may_nest_flows_deeper(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    let mut openers = 0usize;
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'[' | b'{' => {
                openers += 1;
                if openers > limit {
                    return true;
                }
            }
            // A `---` line starts a new document (it cannot occur inside a scalar); splitting at
            // anything less would only count more per document.
            b'\n'
                if bytes[at + 1..].starts_with(b"---")
                    && matches!(bytes.get(at + 4), None | Some(b' ' | b'\t' | b'\r' | b'\n')) =>
            {
                openers = 0;
            }
            _ => {}
        }
    }
    false
}

/// The first document of `text` with a collection nested more than `limit` deep, or `None`.
/// A syntax error ends the measurement: serde_yaml stops at the same error and reports it.
pub(crate) fn too_deep(text: &str, limit: usize) -> Option<TooDeep> {
    let mut parser = Parser::new(text)?;
    let mut document = 0;
    let mut document_start = 0;
    let mut depth = 0usize;
    loop {
        let (kind, mark) = parser.next()?;
        match kind {
            unsafe_libyaml::YAML_STREAM_END_EVENT => return None,
            unsafe_libyaml::YAML_DOCUMENT_START_EVENT => {
                document += 1;
                document_start = usize::try_from(mark.index).unwrap_or(usize::MAX);
                depth = 0;
            }
            unsafe_libyaml::YAML_SEQUENCE_START_EVENT
            | unsafe_libyaml::YAML_MAPPING_START_EVENT => {
                depth += 1;
                if depth > limit {
                    return Some(TooDeep {
                        document,
                        document_start,
                        line: mark.line + 1,
                        column: mark.column + 1,
                    });
                }
            }
            unsafe_libyaml::YAML_SEQUENCE_END_EVENT | unsafe_libyaml::YAML_MAPPING_END_EVENT => {
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
}

/// A libyaml parser reading a borrowed string; freed on drop.
struct Parser<'text> {
    /// Boxed: libyaml keeps pointers into its own struct, so it must not move.
    sys: Box<MaybeUninit<unsafe_libyaml::yaml_parser_t>>,
    _text: std::marker::PhantomData<&'text str>,
}

impl<'text> Parser<'text> {
    /// `None` if libyaml cannot allocate its buffers.
    fn new(text: &'text str) -> Option<Self> {
        let mut sys = Box::new(MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit());
        // SAFETY: the pointer is to a live, boxed (so unmoving) `yaml_parser_t`, which
        // `yaml_parser_initialize` initialises; the input is a `&'text str` that outlives the
        // parser (`Parser<'text>`), passed with its exact length, as serde_yaml passes it.
        unsafe {
            let parser = sys.as_mut_ptr();
            if unsafe_libyaml::yaml_parser_initialize(parser).fail {
                return None;
            }
            unsafe_libyaml::yaml_parser_set_encoding(parser, unsafe_libyaml::YAML_UTF8_ENCODING);
            unsafe_libyaml::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as u64);
        }
        Some(Self {
            sys,
            _text: std::marker::PhantomData,
        })
    }

    /// The next event's type and where it starts; `None` on a syntax error.
    fn next(
        &mut self,
    ) -> Option<(
        unsafe_libyaml::yaml_event_type_t,
        unsafe_libyaml::yaml_mark_t,
    )> {
        let mut event = MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised in `new` and is only used here and in `drop`; an
        // event that `yaml_parser_parse` filled in (it succeeded) is read, then freed exactly
        // once. After a failure libyaml leaves no event to free.
        unsafe {
            let event = event.as_mut_ptr();
            if unsafe_libyaml::yaml_parser_parse(self.sys.as_mut_ptr(), event).fail {
                return None;
            }
            let kind = (*event).type_;
            let mark = (*event).start_mark;
            unsafe_libyaml::yaml_event_delete(event);
            Some((kind, mark))
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` (a `Parser` exists only after a successful
        // `yaml_parser_initialize`), deleted once, here.
        unsafe { unsafe_libyaml::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_block_and_flow_nesting_per_document() {
        assert_eq!(too_deep("a: {b: [c]}\n", 3), None);
        let deep = too_deep("a: {b: [c]}\n", 2).unwrap();
        assert_eq!((deep.document, deep.line, deep.column), (1, 1, 8));
        // Block nesting counts as well: a sequence in a mapping in a sequence.
        assert!(too_deep("- a:\n  - b\n", 2).is_some());
        assert!(too_deep("- a:\n  - b\n", 3).is_none());
        // The second document is the deep one; the first ends before it.
        let text = "a: 1\n---\nb: [[[x]]]\n";
        let deep = too_deep(text, 3).unwrap();
        assert_eq!(deep.document, 2);
        assert_eq!(&text[deep.document_start..deep.document_start + 3], "---");
    }

    #[test]
    fn brackets_in_scalars_and_comments_do_not_count() {
        let text = "a: \"[[[[[[\"\nb: '{{{{{{'\nc: x[[[[[[\n# [[[[[[[\nd: |\n  [[[[[[\n";
        assert_eq!(too_deep(text, 1), None);
    }

    /// 400 KiB of `[`: serde_yaml alone spent 17 s on it (debug build); measured here, it is
    /// rejected at once.
    #[test]
    fn rejects_deep_flow_nesting_without_reading_it_all() {
        let text = "[".repeat(400 * 1024);
        let started = std::time::Instant::now();
        let deep = too_deep(&text, 100).unwrap();
        assert_eq!((deep.document, deep.line, deep.column), (1, 1, 101));
        // Generous: it takes well under a millisecond.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn only_documents_with_many_flow_openers_need_the_full_measurement() {
        let ordinary = "a: {b: [c]}\n---\nd: [e, {f: g}]\n";
        assert!(!may_nest_flows_deeper(ordinary, 3));
        // Counted per document, conservatively (brackets in scalars count too).
        assert!(may_nest_flows_deeper("a: '[[[[x'\n", 3));
        assert!(!may_nest_flows_deeper("a: [[x]]\n---\nb: [[x]]\n", 3));
        assert!(may_nest_flows_deeper("a: [[x]]\n---x\nb: [[x]]\n", 3));
        assert!(may_nest_flows_deeper(&"[".repeat(101), 100));
    }

    #[test]
    fn a_syntax_error_ends_the_measurement() {
        assert_eq!(too_deep("a: [b\nc: }\n", 100), None);
        assert_eq!(too_deep("", 0), None);
    }
}
