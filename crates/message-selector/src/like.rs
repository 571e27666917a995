//! `LIKE` patterns compiled into literal pieces, matched in linear-ish time without backtracking.
//!
//! A pattern is split at runs of `%` into segments `s0 % s1 % … % sk`. Each segment has a
//! fixed length in characters (`_` is exactly one character), so it matches at a given
//! position in at most one way. `s0` must match at the start, `sk` at the end, and each
//! middle segment is matched at its leftmost position after the previous one: taking the
//! leftmost occurrence never rules out a match that a later one would allow. The cost is
//! at most O(text × segment length) per segment, never exponential.

use crate::bytes::{ends_with, find, starts_with, str_eq, Substring};

/// One run of a segment: literal text, or a number of `_` wildcards.
#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    AnyChars(usize),
}

/// A `%`-free part of a pattern.
#[derive(Debug, Clone, Default)]
struct Segment {
    pieces: Vec<Piece>,
    /// Length in characters of any text the segment matches.
    chars: usize,
}

impl Segment {
    fn push_char(&mut self, c: char) {
        self.chars += 1;
        if let Some(Piece::Literal(lit)) = self.pieces.last_mut() {
            lit.push(c);
        } else {
            self.pieces.push(Piece::Literal(c.to_string()));
        }
    }

    fn push_any(&mut self) {
        self.chars += 1;
        if let Some(Piece::AnyChars(n)) = self.pieces.last_mut() {
            *n += 1;
        } else {
            self.pieces.push(Piece::AnyChars(1));
        }
    }

    /// The literal text if the segment has no `_`.
    fn as_literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Literal(lit)] => Some(lit),
            _ => None,
        }
    }

    /// Matches the segment at byte offset `pos`, returning the end offset.
    fn match_at(&self, text: &str, mut pos: usize) -> Option<usize> {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(lit) => {
                    if !starts_with(text.get(pos..)?, lit) {
                        return None;
                    }
                    pos += lit.len();
                }
                Piece::AnyChars(n) => {
                    let rest = text.get(pos..)?;
                    let mut chars = rest.chars();
                    for _ in 0..*n {
                        chars.next()?;
                    }
                    pos += rest.len() - chars.as_str().len();
                }
            }
        }
        Some(pos)
    }

    /// Leftmost match starting at or after `from`; returns the end offset.
    fn find_from(&self, text: &str, from: usize) -> Option<usize> {
        match self.pieces.first() {
            Some(Piece::Literal(lit)) => {
                let mut start = from;
                loop {
                    start += find(text.get(start..)?, lit)?;
                    if let Some(end) = self.match_at(text, start) {
                        return Some(end);
                    }
                    // Next candidate: one character further on.
                    start += text.get(start..)?.chars().next()?.len_utf8();
                }
            }
            _ => {
                let rest = text.get(from..)?;
                rest.char_indices()
                    .map(|(i, _)| from + i)
                    .chain(std::iter::once(text.len()))
                    .find_map(|start| self.match_at(text, start))
            }
        }
    }

    /// Matches the segment so that it ends exactly at the end of `text`, starting at or
    /// after `from`.
    fn match_suffix(&self, text: &str, from: usize) -> bool {
        let start = if self.chars == 0 {
            text.len()
        } else {
            match text.char_indices().rev().nth(self.chars - 1) {
                Some((i, _)) => i,
                None => return false,
            }
        };
        start >= from && self.match_at(text, start) == Some(text.len())
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcards at all.
    Exact(Box<str>),
    /// `literal%`
    Prefix(Box<str>),
    /// `%literal`
    Suffix(Box<str>),
    /// `%literal%`. (A match of a valid UTF-8 needle in valid UTF-8 text starts and ends
    /// on character boundaries, so byte search is character search here.)
    Contains(Substring),
    /// `prefix%middle%`, as in `'https://%/CarePlan/%'`.
    PrefixContains { prefix: Box<str>, middle: Substring },
    /// `first%middle…%last` where no segment has `_`.
    Literals {
        first: Box<str>,
        middle: Box<[Substring]>,
        last: Box<str>,
    },
    /// Anything else: `first % middle… % last`, or only `first` when there is no `%`.
    General {
        first: Segment,
        middle: Vec<Segment>,
        last: Option<Segment>,
    },
}

/// A compiled `LIKE` pattern.
#[derive(Debug, Clone)]
pub(crate) struct LikePattern {
    matcher: Matcher,
}

impl LikePattern {
    /// Compiles `pattern`; an escape character makes the character after it literal.
    pub(crate) fn new(pattern: &str, escape: Option<char>) -> LikePattern {
        let mut segments = vec![Segment::default()];
        let mut chars = pattern.chars();
        let mut after_percent = false;
        while let Some(c) = chars.next() {
            let current = segments.len() - 1;
            if Some(c) == escape {
                // The parser rejects a trailing escape; if one slips through it is literal.
                segments[current].push_char(chars.next().unwrap_or(c));
                after_percent = false;
            } else if c == '%' {
                if !after_percent {
                    segments.push(Segment::default());
                }
                after_percent = true;
            } else if c == '_' {
                segments[current].push_any();
                after_percent = false;
            } else {
                segments[current].push_char(c);
                after_percent = false;
            }
        }
        let first = segments.remove(0);
        let last = segments.pop();
        let first_lit: Option<Box<str>> = first.as_literal().map(Box::from);
        let last_lit: Option<Box<str>> = last.as_ref().and_then(|l| l.as_literal().map(Box::from));
        let middle_lits: Option<Vec<Box<str>>> = segments
            .iter()
            .map(|m| m.as_literal().map(Box::from))
            .collect();
        let matcher = match (first_lit, middle_lits, last.is_some(), last_lit) {
            (Some(f), _, false, _) => Matcher::Exact(f),
            (Some(f), Some(m), true, Some(l)) => match m.len() {
                0 if l.is_empty() => Matcher::Prefix(f),
                0 if f.is_empty() => Matcher::Suffix(l),
                1 if f.is_empty() && l.is_empty() => Matcher::Contains(Substring::new(&m[0])),
                1 if l.is_empty() => Matcher::PrefixContains {
                    prefix: f,
                    middle: Substring::new(&m[0]),
                },
                _ => Matcher::Literals {
                    first: f,
                    middle: m.iter().map(|s| Substring::new(s)).collect(),
                    last: l,
                },
            },
            _ => Matcher::General {
                first,
                middle: segments,
                last,
            },
        };
        LikePattern { matcher }
    }

    /// Whether the whole of `text` matches the pattern.
    ///
    /// `prefix%middle%` (URL-like patterns such as `'https://%/CarePlan/%'`) is matched
    /// inline in the evaluator's loop; a call with its prologue and dispatch cost about
    /// as much as the search itself. The other shapes are one call away.
    #[inline(always)]
    pub(crate) fn matches(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::PrefixContains { prefix, middle } => {
                starts_with(text, prefix) && middle.find(&text.as_bytes()[prefix.len()..]).is_some()
            }
            _ => self.matches_other(text),
        }
    }

    /// [`LikePattern::matches`] for the shapes other than `prefix%middle%`.
    #[inline(never)]
    fn matches_other(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(lit) => str_eq(text, lit),
            Matcher::Prefix(lit) => starts_with(text, lit),
            Matcher::Suffix(lit) => ends_with(text, lit),
            Matcher::Contains(middle) => middle.find(text.as_bytes()).is_some(),
            Matcher::PrefixContains { .. } => self.matches(text),
            Matcher::Literals {
                first,
                middle,
                last,
            } => {
                if !starts_with(text, first) {
                    return false;
                }
                let mut pos = first.len();
                let Some((final_middle, leading)) = middle.split_last() else {
                    return text.len() - pos >= last.len() && ends_with(text, last);
                };
                let bytes = text.as_bytes();
                for segment in leading {
                    match segment.find(&bytes[pos..]) {
                        Some(at) => pos += at + segment.len(),
                        None => return false,
                    }
                }
                match final_middle.find(&bytes[pos..]) {
                    Some(at) => pos += at + final_middle.len(),
                    None => return false,
                }
                text.len() - pos >= last.len() && ends_with(text, last)
            }
            Matcher::General {
                first,
                middle,
                last,
            } => {
                let Some(mut pos) = first.match_at(text, 0) else {
                    return false;
                };
                match last {
                    None => pos == text.len(),
                    Some(last) => {
                        for segment in middle {
                            match segment.find_from(text, pos) {
                                Some(end) => pos = end,
                                None => return false,
                            }
                        }
                        last.match_suffix(text, pos)
                    }
                }
            }
        }
    }
}

/// Whether `pattern` ends with an escape character that has nothing to escape.
pub(crate) fn ends_with_dangling_escape(pattern: &str, escape: char) -> bool {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape && chars.next().is_none() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::LikePattern;

    fn like(pattern: &str, text: &str) -> bool {
        LikePattern::new(pattern, Some('\\')).matches(text)
    }

    #[test]
    fn shapes() {
        assert!(like("abc", "abc"));
        assert!(!like("abc", "abcd"));
        assert!(like("ab%", "abcd"));
        assert!(like("%cd", "abcd"));
        assert!(like("%bc%", "abcd"));
        assert!(like("a_c%", "abcd"));
        assert!(like("%", ""));
        assert!(like("%%", "x"));
        assert!(!like("_", ""));
        assert!(like("a%b%c", "aXbYc"));
        assert!(like("a%b%c", "abc"));
        assert!(!like("a%b%c", "acb"));
        assert!(like("%a_c%", "xxabcxx"));
        assert!(like("%ab%ab", "abab"));
        assert!(!like("%ab%ab", "aba"));
        assert!(like("\\%%", "%x"));
        assert!(!like("\\%%", "x%"));
        assert!(like("_é_", "aéb"));
        assert!(like("%_", "é"));
        assert!(like("a%_", "aé"));
        assert!(!like("a%_", "a"));
        assert!(like("a%b%c", "abbc"));
        assert!(!like("ab%bc", "abc"));
        assert!(like("ab%bc", "abbc"));
    }
}
