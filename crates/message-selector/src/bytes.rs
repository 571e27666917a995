//! Byte-string equality and search for the short strings selectors deal in, inlined
//! instead of calling `memcmp` or setting up `str::find`'s two-way searcher per call.

/// Byte offset of the first occurrence of `needle` in `haystack`.
///
/// Short needles (the usual case in selectors) use [`find_short`], which beats setting up
/// `str::find`'s two-way searcher on every call; long needles use `str::find`, which is
/// linear in the worst case.
#[inline]
pub(crate) fn find(haystack: &str, needle: &str) -> Option<usize> {
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
            if bytes_eq(&hay[at..=at + tail], pat) {
                return Some(at);
            }
            candidates &= candidates - 1;
        }
        start += 8;
    }
    (start..=last_start).find(|&at| bytes_eq(&hay[at..=at + tail], pat))
}

#[inline]
fn load4(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// `a == b` for byte strings, with word loads for short ones.
#[inline(always)]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        // Two overlapping loads cover every byte.
        4..=7 => load4(a, 0) == load4(b, 0) && load4(a, n - 4) == load4(b, n - 4),
        8..=64 => {
            let mut at = 0;
            while at + 8 < n {
                if load(a, at) != load(b, at) {
                    return false;
                }
                at += 8;
            }
            load(a, n - 8) == load(b, n - 8)
        }
        _ => a == b,
    }
}

/// `a == b` for strings.
#[inline(always)]
pub(crate) fn str_eq(a: &str, b: &str) -> bool {
    bytes_eq(a.as_bytes(), b.as_bytes())
}

/// `text.starts_with(prefix)`.
#[inline(always)]
pub(crate) fn starts_with(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len() && bytes_eq(&text.as_bytes()[..prefix.len()], prefix.as_bytes())
}

/// `text.ends_with(suffix)`.
#[inline(always)]
pub(crate) fn ends_with(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && bytes_eq(
            &text.as_bytes()[text.len() - suffix.len()..],
            suffix.as_bytes(),
        )
}

#[cfg(test)]
mod tests {
    use super::{bytes_eq, ends_with, find, starts_with};

    #[test]
    fn bytes_eq_agrees_with_slice_eq() {
        let text: Vec<u8> = (0..80u8).collect();
        for n in 0..80 {
            let a = &text[..n];
            let mut b = a.to_vec();
            assert!(bytes_eq(a, &b), "{n}");
            for i in 0..n {
                b[i] ^= 0x40;
                assert!(!bytes_eq(a, &b), "{n} {i}");
                b[i] ^= 0x40;
            }
            assert!(!bytes_eq(a, &text[..n.saturating_sub(1)]) || n == 0);
        }
        assert!(starts_with("https://x", "https://"));
        assert!(!starts_with("http", "https://"));
        assert!(ends_with("abc", "bc"));
        assert!(!ends_with("c", "bc"));
    }

    #[test]
    fn find_agrees_with_str_find() {
        let hay = "xxabxxxxxxxxabcabxxxxabcdabcdeéabcéxx/CarePlan/x/CarePlan";
        let long = "q".repeat(40);
        for needle in [
            "a",
            "ab",
            "abc",
            "abcd",
            "abcde",
            "é",
            "éx",
            "/CarePlan/",
            "x/C",
            "zz",
            "Plan",
            "",
            &long,
        ] {
            for start in 0..hay.len() {
                if let Some(h) = hay.get(start..) {
                    assert_eq!(find(h, needle), h.find(needle), "{h:?} {needle:?}");
                }
            }
        }
    }
}
