//! `LIKE` patterns compiled into literal pieces, matched in linear-ish time without backtracking.
//!
//! A pattern is split at runs of `%` into segments `s0 % s1 % … % sk`. Each segment has a
//! fixed length in characters (`_` is exactly one character), so it matches at a given
//! position in at most one way. `s0` must match at the start, `sk` at the end, and each
//! middle segment is matched at its leftmost position after the previous one: taking the
//! leftmost occurrence never rules out a match that a later one would allow. The cost is
//! at most O(text × segment length) per segment, never exponential.

/// One run of a segment: literal text, or a number of `_` wildcards.
#[derive(Debug, Clone)]
enum Piece {
    Literal(Box<str>),
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
            let mut s = String::from(std::mem::take(lit));
            s.push(c);
            *lit = s.into_boxed_str();
        } else {
            self.pieces.push(Piece::Literal(c.to_string().into_boxed_str()));
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
                    if !text.get(pos..)?.starts_with(&**lit) {
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

/// Byte offset of the first occurrence of `needle` in `haystack`.
///
/// Short needles (the usual case in selectors) use [`find_short`], which beats setting up
/// `str::find`'s two-way searcher on every call; long needles use `str::find`, which is
/// linear in the worst case.
#[inline]
fn find(haystack: &str, needle: &str) -> Option<usize> {
    const SHORT: usize = 32;
    if needle.is_empty() {
        return Some(0);
    }
    if needle.len() > SHORT {
        return haystack.find(needle);
    }
    // A match of a valid UTF-8 needle starts with a lead byte, so on a char boundary.
    find_short(haystack.as_bytes(), needle.as_bytes())
}

const LO_BYTES: u64 = 0x0101_0101_0101_0101;
const HI_BITS: u64 = 0x8080_8080_8080_8080;

/// High bit set in every zero byte of `x` (and possibly in some bytes above one).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO_BYTES) & !x & HI_BITS
}

#[inline]
fn load(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Substring search eight positions at a time: a position is a candidate when both the
/// needle's first and last bytes match there (SWAR), and candidates are then verified.
/// Worst case O(haystack × needle), with needle at most 32 bytes.
fn find_short(hay: &[u8], pat: &[u8]) -> Option<usize> {
    let (&first, &last) = (pat.first()?, pat.last()?);
    let tail = pat.len() - 1;
    let last_start = hay.len().checked_sub(pat.len())?;
    let (first_bytes, last_bytes) = (u64::from(first) * LO_BYTES, u64::from(last) * LO_BYTES);
    let mut start = 0;
    // Whole words: starts start..start+8 are all valid and their last bytes are in range.
    while start + 7 <= last_start {
        let mut candidates = zero_bytes(load(hay, start) ^ first_bytes)
            & zero_bytes(load(hay, start + tail) ^ last_bytes);
        while candidates != 0 {
            let at = start + (candidates.trailing_zeros() / 8) as usize;
            if hay[at..=at + tail] == *pat {
                return Some(at);
            }
            candidates &= candidates - 1;
        }
        start += 8;
    }
    (start..=last_start).find(|&at| hay[at..=at + tail] == *pat)
}

#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcards at all.
    Exact(Box<str>),
    /// `literal%`
    Prefix(Box<str>),
    /// `%literal`
    Suffix(Box<str>),
    /// `%literal%`
    Contains(Box<str>),
    /// `first%middle…%last` where no segment has `_`.
    Literals {
        first: Box<str>,
        middle: Box<[Box<str>]>,
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
            (Some(f), Some(mut m), true, Some(l)) => match m.len() {
                0 if l.is_empty() => Matcher::Prefix(f),
                0 if f.is_empty() => Matcher::Suffix(l),
                1 if f.is_empty() && l.is_empty() => Matcher::Contains(m.remove(0)),
                _ => Matcher::Literals {
                    first: f,
                    middle: m.into_boxed_slice(),
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
    #[inline]
    pub(crate) fn matches(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(lit) => text == &**lit,
            Matcher::Prefix(lit) => text.starts_with(&**lit),
            Matcher::Suffix(lit) => text.ends_with(&**lit),
            Matcher::Contains(lit) => find(text, lit).is_some(),
            Matcher::Literals {
                first,
                middle,
                last,
            } => {
                let Some(rest) = text.strip_prefix(&**first) else {
                    return false;
                };
                let mut pos = text.len() - rest.len();
                for segment in middle.iter() {
                    match find(&text[pos..], segment) {
                        Some(at) => pos += at + segment.len(),
                        None => return false,
                    }
                }
                text.len() - pos >= last.len() && text.ends_with(&**last)
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

    #[test]
    fn find_short_agrees_with_str_find() {
        let hay = "xxabxxxxxxxxabcabxxxxabcdabcdeéabcéxx/CarePlan/x/CarePlan";
        for needle in ["a", "ab", "abc", "abcd", "abcde", "é", "éx", "/CarePlan/", "x/C", "zz", "Plan"] {
            for start in 0..hay.len() {
                if let Some(h) = hay.get(start..) {
                    assert_eq!(super::find(h, needle), h.find(needle), "{h:?} {needle:?}");
                }
            }
        }
    }
}
