//! Erlang External Term Format (first byte 131), read safely from untrusted bytes.
//!
//! The `eetf` decoder recurses, allocates whatever lengths a term claims and panics on some
//! tags, so every value is first walked by a small iterative validator: only the data tags a
//! `:erlang.term_to_binary/1` of plain data produces are allowed, every length must fit in the
//! bytes that remain, nesting is bounded and no bytes may trail the term.
//!
//! Only then is the value decoded, into a [`Term`] that borrows from the message. The tags a
//! StatusChangeEvent is made of (maps, binaries, atoms, small integers, the `microsecond` tuple
//! and `nil`) are read directly ([`read_subset`]); any other tag (floats, big integers, lists,
//! charlists, large tuples) hands the whole value to `eetf`, whose term tree is then converted.
//! Why not `eetf` for everything: it copies every atom and binary into its own allocation and
//! builds a SipHash `HashMap` per map, which alone costs more than the 2 µs a message may take
//! (issue #5). Both paths give the same term (map entries aside, whose order `eetf` does not
//! keep) and the same errors; the tests check one against the other.

use std::borrow::Cow;

use super::{DecodeError, DecodeErrorKind};

/// The version byte every external term starts with.
pub(crate) const VERSION: u8 = 131;

/// Deepest container nesting accepted (a StatusChangeEvent needs 4).
pub(crate) const MAX_DEPTH: usize = 16;

const COMPRESSED: u8 = 80;

/// A decoded term, borrowing atoms and binaries from the message when it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Term<'a> {
    /// An atom's text, in any of its four encodings. It is valid UTF-8 (as `eetf` requires);
    /// kept as bytes because atoms are mostly only compared, and a check is cheaper than a
    /// conversion.
    Atom(Cow<'a, [u8]>),
    /// A binary (an Elixir string when it is UTF-8).
    Binary(Cow<'a, [u8]>),
    /// A charlist written as STRING_EXT.
    ByteList(Cow<'a, [u8]>),
    /// An integer that fits 32 bits (SMALL_INTEGER_EXT, INTEGER_EXT; `eetf`'s FixInteger).
    Integer(i32),
    /// A big integer or a float, as decimal text (`eetf`'s BigInteger and Float).
    OtherNumber(String),
    /// A tuple.
    Tuple(Vec<Term<'a>>),
    /// A map without repeated keys: of identical keys only the last counts, as in `eetf`.
    Map(Vec<(Term<'a>, Term<'a>)>),
    /// A list (proper, improper or empty): no StatusChangeEvent field is one.
    List,
}

impl Term<'_> {
    /// A map key as text: an atom (any encoding) or a binary, as bytes. Atoms are UTF-8; a
    /// binary may not be, so compare the result only with text.
    pub(crate) fn as_key(&self) -> Option<&[u8]> {
        match self {
            Term::Atom(a) | Term::Binary(a) => Some(a),
            _ => None,
        }
    }

    /// Whether this is the atom `nil`.
    pub(crate) fn is_nil(&self) -> bool {
        matches!(self, Term::Atom(a) if **a == *b"nil")
    }
}

/// Validates and decodes one external term.
pub(crate) fn decode(bytes: &[u8]) -> Result<Term<'_>, DecodeError> {
    validate(bytes)?;
    match read_subset(bytes) {
        Ok(term) => Ok(term),
        Err(Unread::Invalid(e)) => Err(e),
        Err(Unread::OutsideSubset) => decode_with_eetf(bytes),
    }
}

fn undecodable() -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::InvalidEncoding,
        "ETF term could not be decoded (invalid atom text or integer sign)",
    )
}

/// Decodes a validated value with `eetf`.
pub(crate) fn decode_with_eetf(bytes: &[u8]) -> Result<Term<'static>, DecodeError> {
    eetf::Term::decode(bytes)
        .map(from_eetf)
        .map_err(|_| undecodable())
}

/// Converts an `eetf` term. Its depth is bounded by [`validate`].
fn from_eetf(term: eetf::Term) -> Term<'static> {
    match term {
        eetf::Term::Atom(a) => Term::Atom(Cow::Owned(a.name.into_bytes())),
        eetf::Term::Binary(b) => Term::Binary(Cow::Owned(b.bytes)),
        eetf::Term::ByteList(b) => Term::ByteList(Cow::Owned(b.bytes)),
        eetf::Term::FixInteger(i) => Term::Integer(i.value),
        eetf::Term::BigInteger(i) => Term::OtherNumber(i.value.to_string()),
        eetf::Term::Float(f) => Term::OtherNumber(f.value.to_string()),
        eetf::Term::Tuple(t) => Term::Tuple(t.elements.into_iter().map(from_eetf).collect()),
        eetf::Term::Map(m) => Term::Map(
            m.map
                .into_iter()
                .map(|(k, v)| (from_eetf(k), from_eetf(v)))
                .collect(),
        ),
        // Lists; the other kinds (pids, funs, …) do not pass `validate`.
        _ => Term::List,
    }
}

/// Why [`read_subset`] gave no term.
#[derive(Debug)]
enum Unread {
    /// The value is invalid (the error `eetf` would give).
    Invalid(DecodeError),
    /// The value uses a tag outside the StatusChangeEvent subset: `eetf` must decode it.
    OutsideSubset,
}

impl From<DecodeError> for Unread {
    fn from(e: DecodeError) -> Self {
        Unread::Invalid(e)
    }
}

/// Reads a validated value made only of the tags a StatusChangeEvent uses, without copying.
fn read_subset(bytes: &[u8]) -> Result<Term<'_>, Unread> {
    let mut cur = Cursor { bytes, pos: 0 };
    if cur.u8()? != usize::from(VERSION) {
        return Err(Unread::OutsideSubset);
    }
    let term = read_term(&mut cur, 0)?;
    if cur.remaining() != 0 {
        // `validate` already refused trailing bytes; stay safe if called without it.
        return Err(Unread::OutsideSubset);
    }
    Ok(term)
}

fn read_term<'a>(cur: &mut Cursor<'a>, depth: usize) -> Result<Term<'a>, Unread> {
    let atom = |bytes: &'a [u8]| {
        if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
            Ok(Term::Atom(Cow::Borrowed(bytes)))
        } else {
            Err(Unread::Invalid(undecodable()))
        }
    };
    match cur.u8()? {
        97 => Ok(Term::Integer(i32::from(cur.take::<1>()?[0]))), // SMALL_INTEGER_EXT
        98 => Ok(Term::Integer(i32::from_be_bytes(cur.take::<4>()?))), // INTEGER_EXT
        106 => Ok(Term::List),                                   // NIL_EXT
        100 | 118 => {
            // ATOM_EXT, ATOM_UTF8_EXT (`eetf` reads the Latin-1 kind as UTF-8 too)
            let n = cur.u16()?;
            atom(cur.slice(n)?)
        }
        115 | 119 => {
            // SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
            let n = cur.u8()?;
            atom(cur.slice(n)?)
        }
        109 => {
            // BINARY_EXT
            let n = cur.u32()?;
            Ok(Term::Binary(Cow::Borrowed(cur.slice(n)?)))
        }
        // `validate` refused deeper nesting; this bounds the recursion all the same.
        104 | 116 if depth >= MAX_DEPTH => Err(Unread::Invalid(too_deep())),
        104 => {
            // SMALL_TUPLE_EXT
            let n = cur.u8()?;
            let mut elements = Vec::with_capacity(n);
            for _ in 0..n {
                elements.push(read_term(cur, depth + 1)?);
            }
            Ok(Term::Tuple(elements))
        }
        116 => {
            // MAP_EXT; `validate` checked that the pairs fit in the bytes that remain.
            let n = cur.u32()?;
            if n > cur.remaining() {
                return Err(Unread::Invalid(truncated()));
            }
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                let key = read_term(cur, depth + 1)?;
                let value = read_term(cur, depth + 1)?;
                pairs.push((key, value));
            }
            keep_last_of_identical_keys(&mut pairs);
            Ok(Term::Map(pairs))
        }
        _ => Err(Unread::OutsideSubset),
    }
}

/// Drops every pair whose key a later pair repeats, as inserting into `eetf`'s map does.
fn keep_last_of_identical_keys(pairs: &mut Vec<(Term<'_>, Term<'_>)>) {
    // Maps are small: keys are compared pair by pair, by a cheap fingerprint first. A large map
    // is sorted instead.
    const SMALL: usize = 16;
    let n = pairs.len();
    if n < 2 {
        return;
    }
    let repeated: Vec<bool> = if n <= SMALL {
        let mut prints = [0u64; SMALL];
        for (print, (key, _)) in prints.iter_mut().zip(pairs.iter()) {
            *print = key.fingerprint();
        }
        let is_repeated =
            |i: usize| (i + 1..n).any(|j| prints[i] == prints[j] && pairs[i].0 == pairs[j].0);
        if !(0..n).any(is_repeated) {
            return;
        }
        (0..n).map(is_repeated).collect()
    } else {
        let mut order: Vec<usize> = (0..n).collect();
        // Stable: identical keys stay in wire order, so each but the last is repeated.
        order.sort_by(|&a, &b| pairs[a].0.cmp_key(&pairs[b].0));
        let mut repeated = vec![false; n];
        for w in order.windows(2) {
            if pairs[w[0]].0 == pairs[w[1]].0 {
                repeated[w[0]] = true;
            }
        }
        repeated
    };
    let mut i = 0;
    pairs.retain(|_| {
        i += 1;
        !repeated[i - 1]
    });
}

impl Term<'_> {
    /// Equal terms have equal fingerprints (kind, length and first bytes of text, or value).
    fn fingerprint(&self) -> u64 {
        let text = |kind: u64, b: &[u8]| {
            let mut head = [0u8; 4];
            for (h, b) in head.iter_mut().zip(b) {
                *h = *b;
            }
            kind << 56 | (b.len() as u64 & 0xff_ffff) << 32 | u64::from(u32::from_le_bytes(head))
        };
        match self {
            Term::Atom(a) => text(1, a),
            Term::Binary(b) => text(2, b),
            Term::ByteList(b) => text(3, b),
            Term::Integer(i) => 4 << 56 | u64::from(*i as u32),
            Term::OtherNumber(n) => text(5, n.as_bytes()),
            Term::Tuple(t) => 6 << 56 | t.len() as u64,
            Term::Map(m) => 7 << 56 | m.len() as u64,
            Term::List => 8 << 56,
        }
    }

    /// A total order consistent with `==`, for finding repeated map keys.
    fn cmp_key(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        fn rank(t: &Term<'_>) -> u8 {
            match t {
                Term::Atom(_) => 0,
                Term::Binary(_) => 1,
                Term::ByteList(_) => 2,
                Term::Integer(_) => 3,
                Term::OtherNumber(_) => 4,
                Term::Tuple(_) => 5,
                Term::Map(_) => 6,
                Term::List => 7,
            }
        }
        let seq = |a: &[Term<'_>], b: &[Term<'_>]| {
            a.len().cmp(&b.len()).then_with(|| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| x.cmp_key(y))
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            })
        };
        match (self, other) {
            (Term::Atom(a), Term::Atom(b)) => a.cmp(b),
            (Term::Binary(a), Term::Binary(b)) | (Term::ByteList(a), Term::ByteList(b)) => a.cmp(b),
            (Term::Integer(a), Term::Integer(b)) => a.cmp(b),
            (Term::OtherNumber(a), Term::OtherNumber(b)) => a.cmp(b),
            (Term::Tuple(a), Term::Tuple(b)) => seq(a, b),
            (Term::Map(a), Term::Map(b)) => a.len().cmp(&b.len()).then_with(|| {
                a.iter()
                    .zip(b)
                    .map(|((ka, va), (kb, vb))| ka.cmp_key(kb).then_with(|| va.cmp_key(vb)))
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            }),
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

/// One term as [`Reader`] gives it: a scalar, or a container's header whose elements follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// An atom in any of its four encodings, checked to be UTF-8.
    Atom(&'a [u8]),
    /// A binary.
    Binary(&'a [u8]),
    /// SMALL_INTEGER_EXT or INTEGER_EXT.
    Integer(i32),
    /// NIL_EXT, the empty list.
    Nil,
    /// SMALL_TUPLE_EXT with this many elements.
    Tuple(usize),
    /// MAP_EXT with this many key-value pairs.
    Map(usize),
}

/// Reads a term token by token, in one pass and without allocating, for callers that map a
/// known shape straight to their output (the StatusChangeEvent fast path).
///
/// It reads only the tags [`read_subset`] reads, and checks what [`validate`] and
/// [`read_subset`] check: lengths, atom text and nesting. It gives no errors: `None` means
/// "not read here" (invalid, or outside the subset), and the caller then leaves the whole value
/// to [`decode`], which decides with its precise reasons. So whatever a caller reads this way,
/// [`decode`] would read the same, given that the caller also reads every byte, [`Reader::skip`]
/// included, and checks [`Reader::at_end`].
pub(crate) struct Reader<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader past the version byte, or `None` without one.
    pub(crate) fn new(bytes: &'a [u8]) -> Option<Self> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => Some(Self { rest }),
            _ => None,
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }

    fn atom(&mut self, n: usize) -> Option<Token<'a>> {
        let text = self.take(n)?;
        (text.is_ascii() || std::str::from_utf8(text).is_ok()).then_some(Token::Atom(text))
    }

    /// Reads the next term, or its header when it is a container. `depth` is the number of
    /// containers around it (0 for the value itself); a container needs `depth < MAX_DEPTH`.
    pub(crate) fn token(&mut self, depth: usize) -> Option<Token<'a>> {
        let [tag] = self.array()?;
        match tag {
            97 => self.array().map(|[i]| Token::Integer(i32::from(i))),
            98 => self.array().map(|i| Token::Integer(i32::from_be_bytes(i))),
            106 => Some(Token::Nil),
            100 | 118 => {
                let n = u16::from_be_bytes(self.array()?);
                self.atom(usize::from(n))
            }
            115 | 119 => {
                let [n] = self.array()?;
                self.atom(usize::from(n))
            }
            109 => {
                let n = usize::try_from(u32::from_be_bytes(self.array()?)).ok()?;
                self.take(n).map(Token::Binary)
            }
            104 if depth < MAX_DEPTH => self.array().map(|[n]| Token::Tuple(usize::from(n))),
            116 if depth < MAX_DEPTH => {
                let n = usize::try_from(u32::from_be_bytes(self.array()?)).ok()?;
                // Every pair takes at least two bytes.
                (n <= self.rest.len() / 2).then_some(Token::Map(n))
            }
            _ => None,
        }
    }

    /// Reads past one whole term (checking it as [`Reader::token`] does).
    pub(crate) fn skip(&mut self, depth: usize) -> Option<()> {
        match self.token(depth)? {
            Token::Tuple(n) => (0..n).try_for_each(|_| self.skip(depth + 1)),
            Token::Map(n) => (0..n * 2).try_for_each(|_| self.skip(depth + 1)),
            _ => Some(()),
        }
    }

    /// Whether every byte has been read (no trailing bytes after the term).
    pub(crate) fn at_end(&self) -> bool {
        self.rest.is_empty()
    }
}

fn too_deep() -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::InvalidEncoding,
        format!("ETF term is nested deeper than {MAX_DEPTH} levels"),
    )
}

fn truncated() -> DecodeError {
    DecodeError::new(DecodeErrorKind::InvalidEncoding, "ETF term is truncated")
}

fn unsupported(tag: u8) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::UnsupportedType,
        format!("ETF term tag {tag} is not supported (only plain data terms are)"),
    )
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        if n > self.remaining() {
            return Err(truncated());
        }
        self.pos += n;
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let slice = self
            .bytes
            .get(self.pos..self.pos + N)
            .ok_or_else(truncated)?;
        self.pos += N;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn slice(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(self.take::<1>()?[0]))
    }

    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.take::<2>()?)))
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(u32::from_be_bytes(self.take::<4>()?)).map_err(|_| truncated())
    }
}

/// Walks the term without recursion, checking tags, lengths, depth and trailing bytes.
pub(crate) fn validate(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut cur = Cursor { bytes, pos: 0 };
    if cur.u8()? != usize::from(VERSION) {
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidEncoding,
            "ETF value must start with version byte 131",
        ));
    }
    if bytes.get(1) == Some(&COMPRESSED) {
        return Err(DecodeError::new(
            DecodeErrorKind::UnsupportedType,
            "compressed ETF terms (tag 80) are not supported",
        ));
    }
    // Terms still to read at each open container level; the root is one term. At most
    // MAX_DEPTH + 1 levels are ever open, so a fixed stack does.
    let mut pending = [0usize; MAX_DEPTH + 1];
    pending[0] = 1;
    let mut open: usize = 1;
    while let Some(top) = open.checked_sub(1).and_then(|i| pending.get_mut(i)) {
        if *top == 0 {
            open -= 1;
            continue;
        }
        *top -= 1;
        let children = match cur.take::<1>()?[0] {
            97 => cur.skip(1).map(|()| 0)?, // SMALL_INTEGER_EXT
            98 => cur.skip(4).map(|()| 0)?, // INTEGER_EXT
            70 => cur.skip(8).map(|()| 0)?, // NEW_FLOAT_EXT
            106 => 0,                       // NIL_EXT
            100 | 118 => {
                // ATOM_EXT, ATOM_UTF8_EXT
                let n = cur.u16()?;
                cur.skip(n)?;
                0
            }
            115 | 119 => {
                // SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
                let n = cur.u8()?;
                cur.skip(n)?;
                0
            }
            107 => {
                // STRING_EXT (a list of bytes)
                let n = cur.u16()?;
                cur.skip(n)?;
                0
            }
            109 => {
                // BINARY_EXT
                let n = cur.u32()?;
                cur.skip(n)?;
                0
            }
            110 => {
                // SMALL_BIG_EXT: sign byte and at most 8 digit bytes (fits an i64 or nearly)
                let n = cur.u8()?;
                if n > 8 {
                    return Err(DecodeError::new(
                        DecodeErrorKind::UnsupportedType,
                        "ETF integers wider than 64 bits are not supported",
                    ));
                }
                cur.skip(1 + n)?;
                0
            }
            104 => cur.u8()?,  // SMALL_TUPLE_EXT
            105 => cur.u32()?, // LARGE_TUPLE_EXT
            108 => cur.u32()?.checked_add(1).ok_or_else(truncated)?, // LIST_EXT + tail
            116 => cur.u32()?.checked_mul(2).ok_or_else(truncated)?, // MAP_EXT pairs
            COMPRESSED => {
                return Err(DecodeError::new(
                    DecodeErrorKind::UnsupportedType,
                    "compressed ETF terms (tag 80) are not supported",
                ))
            }
            tag => return Err(unsupported(tag)),
        };
        if children > 0 {
            // Every term takes at least one byte: a count beyond the rest cannot be complete.
            if children > cur.remaining() {
                return Err(truncated());
            }
            let slot = pending.get_mut(open).ok_or_else(too_deep)?;
            *slot = children;
            open += 1;
        }
    }
    if cur.remaining() != 0 {
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidEncoding,
            format!("{} trailing bytes after the ETF term", cur.remaining()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Map entries in one order, so that terms from both paths compare.
    fn normalised(term: Term<'_>) -> Term<'static> {
        match term {
            Term::Atom(a) => Term::Atom(Cow::Owned(a.into_owned())),
            Term::Binary(b) => Term::Binary(Cow::Owned(b.into_owned())),
            Term::ByteList(b) => Term::ByteList(Cow::Owned(b.into_owned())),
            Term::Integer(i) => Term::Integer(i),
            Term::OtherNumber(n) => Term::OtherNumber(n),
            Term::Tuple(t) => Term::Tuple(t.into_iter().map(normalised).collect()),
            Term::Map(m) => {
                let mut pairs: Vec<_> = m
                    .into_iter()
                    .map(|(k, v)| (normalised(k), normalised(v)))
                    .collect();
                pairs.sort_by(|a, b| a.0.cmp_key(&b.0));
                Term::Map(pairs)
            }
            Term::List => Term::List,
        }
    }

    /// Decodes with both paths: they must agree on the term or on the error.
    fn both(bytes: &[u8]) -> Result<Term<'static>, DecodeError> {
        let fast = decode(bytes).map(normalised);
        let reference = validate(bytes)
            .and_then(|()| decode_with_eetf(bytes))
            .map(normalised);
        assert_eq!(fast, reference, "{bytes:?}");
        fast
    }

    fn encoded(term: &eetf::Term) -> Vec<u8> {
        let mut out = Vec::new();
        term.encode(&mut out).unwrap();
        out
    }

    fn atom(name: &str) -> eetf::Term {
        eetf::Term::from(eetf::Atom::from(name))
    }

    /// Plain data terms as Elixir writes them, StatusChangeEvent subset and beyond.
    fn any_term() -> impl Strategy<Value = eetf::Term> {
        let leaf = prop_oneof![
            "[a-z_]{0,12}".prop_map(|a| atom(&a)),
            "\\PC{0,3}".prop_map(|a| atom(&a)),
            proptest::collection::vec(any::<u8>(), 0..12)
                .prop_map(|b| eetf::Term::from(eetf::Binary::from(b))),
            any::<i32>().prop_map(|i| eetf::Term::from(eetf::FixInteger::from(i))),
            (0..=255u8).prop_map(|i| eetf::Term::from(eetf::FixInteger::from(i))),
            any::<i64>().prop_map(|i| eetf::Term::from(eetf::BigInteger::from(i))),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| eetf::Term::from(eetf::Float::try_from(f).unwrap())),
            "[a-z]{0,6}".prop_map(|s| eetf::Term::from(eetf::ByteList::from(s.as_str()))),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|t| eetf::Term::from(eetf::Tuple::from(t))),
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|l| eetf::Term::from(eetf::List::from(l))),
                // Keys as StatusChangeEvents have them: atoms and binaries.
                proptest::collection::vec(
                    (
                        prop_oneof![
                            "[a-z]{1,3}".prop_map(|a| atom(&a)),
                            "[a-z]{1,3}"
                                .prop_map(|b| eetf::Term::from(eetf::Binary::from(b.as_bytes()))),
                        ],
                        inner
                    ),
                    0..20
                )
                .prop_map(|pairs| {
                    eetf::Term::from(eetf::Map::from(
                        pairs
                            .into_iter()
                            .collect::<std::collections::HashMap<_, _>>(),
                    ))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_direct_reader_agrees_with_eetf(term in any_term()) {
            let bytes = encoded(&term);
            // The nesting limit applies to both paths alike.
            let _ = both(&bytes);
        }

        #[test]
        fn the_token_reader_reads_only_what_decode_reads_directly(
            term in any_term(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            damage in any::<bool>(),
        ) {
            let mut bytes = encoded(&term);
            if damage {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let read = Reader::new(&bytes).and_then(|mut r| r.skip(0).map(|()| r.at_end()));
            if read == Some(true) {
                prop_assert!(validate(&bytes).is_ok(), "{:?}", bytes);
                prop_assert!(read_subset(&bytes).is_ok(), "{:?}", bytes);
            }
        }

        #[test]
        fn the_direct_reader_agrees_with_eetf_on_damaged_terms(
            term in any_term(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = encoded(&term);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = both(&bytes);
        }
    }

    #[test]
    fn the_subset_is_read_without_eetf_and_borrows() {
        // %{a: "x", "b" => {1, 300}, c: nil}
        let bytes = [
            &[131u8, 116, 0, 0, 0, 3, 119, 1, b'a', 109, 0, 0, 0, 1, b'x'][..],
            &[109, 0, 0, 0, 1, b'b', 104, 2, 97, 1, 98, 0, 0, 1, 44],
            &[100, 0, 1, b'c', 115, 3, b'n', b'i', b'l'],
        ]
        .concat();
        let term = read_subset(&bytes).unwrap();
        let Term::Map(pairs) = &term else {
            panic!("{term:?}")
        };
        assert!(matches!(
            pairs[0],
            (
                Term::Atom(Cow::Borrowed(b"a")),
                Term::Binary(Cow::Borrowed(b"x"))
            )
        ));
        assert_eq!(
            pairs[1].1,
            Term::Tuple(vec![Term::Integer(1), Term::Integer(300)])
        );
        assert!(pairs[2].1.is_nil());
        assert_eq!(pairs[0].0.as_key(), Some(&b"a"[..]));
        assert_eq!(pairs[1].1.as_key(), None);
        assert_eq!(normalised(term), both(&bytes).unwrap());
    }

    #[test]
    fn other_tags_are_left_to_eetf() {
        for bytes in [
            vec![131, 70, 64, 9, 33, 251, 84, 68, 45, 24], // 3.141592653589793
            vec![131, 110, 2, 1, 0, 1],                    // -256
            vec![131, 107, 0, 2, b'h', b'i'],              // "hi" as a charlist
            vec![131, 108, 0, 0, 0, 1, 97, 1, 106],        // [1]
            vec![131, 105, 0, 0, 0, 1, 97, 1],             // {1} as LARGE_TUPLE_EXT
            vec![131, 104, 2, 119, 1, b'a', 70, 0, 0, 0, 0, 0, 0, 0, 0], // {a, 0.0}
        ] {
            assert!(
                matches!(read_subset(&bytes), Err(Unread::OutsideSubset)),
                "{bytes:?}"
            );
            both(&bytes).unwrap();
        }
        assert_eq!(
            both(&[131, 70, 64, 9, 33, 251, 84, 68, 45, 24]).unwrap(),
            Term::OtherNumber("3.141592653589793".to_owned())
        );
        assert_eq!(
            both(&[131, 110, 2, 1, 0, 1]).unwrap(),
            Term::OtherNumber("-256".to_owned())
        );
    }

    #[test]
    fn invalid_atoms_anywhere_are_refused_by_both_paths() {
        let bad_atom: &[&[u8]] = &[
            &[119, 2, 0xff, 0xfe],
            &[118, 0, 1, 0x80],
            &[115, 1, 0xc0],
            &[100, 0, 2, 0xe2, 0x82],
        ];
        for atom in bad_atom {
            // Alone, as a map key, as a value and behind a tag only eetf reads.
            let mut alone = vec![131];
            alone.extend_from_slice(atom);
            let mut key = vec![131, 116, 0, 0, 0, 1];
            key.extend_from_slice(atom);
            key.push(106);
            let mut value = vec![131, 116, 0, 0, 0, 1, 119, 1, b'a'];
            value.extend_from_slice(atom);
            let mut behind = vec![131, 104, 2, 70, 0, 0, 0, 0, 0, 0, 0, 0];
            behind.extend_from_slice(atom);
            for bytes in [alone, key, value, behind] {
                let e = both(&bytes).unwrap_err();
                assert!(
                    e.to_string().contains("invalid atom text"),
                    "{bytes:?}: {e}"
                );
            }
        }
        // Non-ASCII UTF-8 atoms are fine.
        let term = both(&[131, 119, 2, 0xc3, 0xa9]).unwrap();
        assert_eq!(term, Term::Atom(Cow::Owned("é".as_bytes().to_vec())));
    }

    #[test]
    fn of_identical_map_keys_the_last_counts() {
        // %{a: 1, "a" => 2, a: 3}: the atom and the binary are different keys.
        let bytes = [
            131u8, 116, 0, 0, 0, 3, 119, 1, b'a', 97, 1, 109, 0, 0, 0, 1, b'a', 97, 2, 119, 1,
            b'a', 97, 3,
        ];
        let Ok(Term::Map(pairs)) = decode(&bytes) else {
            panic!()
        };
        assert_eq!(
            pairs,
            vec![
                (Term::Binary(Cow::Borrowed(b"a")), Term::Integer(2)),
                (Term::Atom(Cow::Borrowed(b"a")), Term::Integer(3)),
            ]
        );
        both(&bytes).unwrap();
        // A large map (sorted rather than compared pair by pair): keys 0..40, each twice.
        let mut large = vec![131u8, 116, 0, 0, 0, 80];
        for round in 0..2u8 {
            for key in 0..40u8 {
                large.extend_from_slice(&[97, key, 97, round]);
            }
        }
        let Ok(Term::Map(pairs)) = decode(&large) else {
            panic!()
        };
        assert_eq!(pairs.len(), 40);
        assert!(pairs.iter().all(|(_, v)| *v == Term::Integer(1)));
        both(&large).unwrap();
    }

    #[test]
    fn the_direct_reader_bounds_its_recursion_without_validation() {
        let mut deep = vec![131u8];
        for _ in 0..10_000 {
            deep.extend_from_slice(&[104, 1]);
        }
        deep.push(106);
        let Err(Unread::Invalid(e)) = read_subset(&deep) else {
            panic!("nested tuples were read")
        };
        assert!(e.to_string().contains("nested deeper than 16"), "{e}");
        // Nor does it trust lengths: a map claiming more pairs than bytes is truncated.
        assert!(matches!(
            read_subset(&[131, 116, 0, 0, 1, 0, 106]),
            Err(Unread::Invalid(_))
        ));
        assert!(matches!(
            read_subset(&[131, 109, 0, 0, 0, 9, 1]),
            Err(Unread::Invalid(_))
        ));
        // Exactly at the limit both paths read it.
        let mut limit = vec![131u8];
        for _ in 0..MAX_DEPTH {
            limit.extend_from_slice(&[104, 1]);
        }
        limit.push(106);
        both(&limit).unwrap();
    }

    #[test]
    fn fingerprints_agree_with_equality() {
        let terms = [
            Term::Atom(Cow::Borrowed(b"abcdef")),
            Term::Atom(Cow::Owned(b"abcdef".to_vec())),
            Term::Atom(Cow::Borrowed(b"abcdeg")),
            Term::Binary(Cow::Borrowed(b"abcdef")),
            Term::ByteList(Cow::Borrowed(b"abcdef")),
            Term::Integer(-1),
            Term::Integer(1),
            Term::OtherNumber("1".to_owned()),
            Term::Tuple(vec![Term::Integer(1)]),
            Term::Tuple(vec![Term::Integer(2)]),
            Term::Map(vec![]),
            Term::List,
        ];
        for a in &terms {
            for b in &terms {
                if a == b {
                    assert_eq!(a.fingerprint(), b.fingerprint(), "{a:?} {b:?}");
                    assert_eq!(a.cmp_key(b), std::cmp::Ordering::Equal);
                } else {
                    assert_ne!(a.cmp_key(b), std::cmp::Ordering::Equal, "{a:?} {b:?}");
                }
            }
        }
    }
}
