//! Erlang External Term Format (first byte 131), read safely from untrusted bytes.
//!
//! The `eetf` decoder recurses, allocates whatever lengths a term claims and panics on some
//! tags, so every value is first walked by a small iterative validator: only the data tags a
//! `:erlang.term_to_binary/1` of plain data produces are allowed, every length must fit in the
//! bytes that remain, nesting is bounded and no bytes may trail the term. Only then is the
//! value handed to `eetf`.

use eetf::Term;

use super::{DecodeError, DecodeErrorKind};

/// The version byte every external term starts with.
pub(crate) const VERSION: u8 = 131;

/// Deepest container nesting accepted (a StatusChangeEvent needs 4).
pub(crate) const MAX_DEPTH: usize = 16;

const COMPRESSED: u8 = 80;

/// Validates and decodes one external term.
pub(crate) fn decode(bytes: &[u8]) -> Result<Term, DecodeError> {
    validate(bytes)?;
    Term::decode(bytes).map_err(|_| {
        DecodeError::new(
            DecodeErrorKind::InvalidEncoding,
            "ETF term could not be decoded (invalid atom text or integer sign)",
        )
    })
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

impl Cursor<'_> {
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
    // Terms still to read at each open container level; the root is one term.
    let mut pending: Vec<usize> = vec![1];
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
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
            if pending.len() > MAX_DEPTH {
                return Err(DecodeError::new(
                    DecodeErrorKind::InvalidEncoding,
                    format!("ETF term is nested deeper than {MAX_DEPTH} levels"),
                ));
            }
            pending.push(children);
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
