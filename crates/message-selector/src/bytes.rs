//! Byte-string equality and search for the short strings selectors deal in, inlined
//! instead of calling `memcmp` or setting up `str::find`'s two-way searcher per call.

use memchr::memmem;

/// A substring searcher for one needle, prepared once when a LIKE pattern is compiled.
///
/// [`memmem::Finder`] chooses its algorithm at run time and calls it through a function
/// pointer, behind checks for short haystacks and prefilter state; on the ~60-byte texts
/// selectors see, that overhead is most of the search. For needles of 2 to 32 bytes on
/// x86_64 the search is instead the inlined SSE2 loop of `sse2::PackedPair`; everything else
/// (other needle lengths, texts shorter than one vector, other targets) goes to `memmem`.
/// Both report the leftmost match.
#[derive(Debug, Clone)]
pub(crate) struct Substring {
    finder: memmem::Finder<'static>,
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    packed: Option<sse2::PackedPair>,
}

impl Substring {
    pub(crate) fn new(needle: &str) -> Substring {
        let needle = needle.as_bytes();
        Substring {
            finder: memmem::Finder::new(needle).into_owned(),
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            packed: sse2::PackedPair::new(needle),
        }
    }

    /// The needle's length in bytes.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.finder.needle().len()
    }

    /// Byte offset of the leftmost occurrence of the needle in `haystack`.
    #[inline(always)]
    pub(crate) fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        if let Some(packed) = &self.packed {
            if let Some(found) = packed.find(haystack, self.finder.needle()) {
                return found;
            }
        }
        self.finder.find(haystack)
    }
}

/// The "packed pair" substring search (as in `memchr`, after
/// <http://0x80.pl/articles/simd-strfind.html>) on SSE2, which every x86_64 CPU has.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };

    use memchr::arch::all::packedpair::Pair;

    use super::bytes_eq;

    /// Sixteen candidate start positions are tested at once: a position is a candidate
    /// when two of the needle's bytes (its rarest, by `memchr`'s byte frequency table)
    /// are at their offsets from it; candidates are then compared with the whole needle.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct PackedPair {
        /// The two bytes, each repeated in all sixteen lanes.
        bytes: [__m128i; 2],
        /// Their offsets in the needle.
        offsets: [usize; 2],
        /// The shortest haystack for one whole vector: the larger offset plus 16.
        span: usize,
    }

    impl PackedPair {
        /// Needles longer than this are left to `memmem`, as `memmem` itself does: each
        /// candidate then costs at most a 32-byte compare, so the search stays linear.
        const MAX_NEEDLE: usize = 32;

        /// `None` for needles shorter than 2 or longer than [`Self::MAX_NEEDLE`] bytes.
        pub(super) fn new(needle: &[u8]) -> Option<PackedPair> {
            if needle.len() > PackedPair::MAX_NEEDLE {
                return None;
            }
            let pair = Pair::new(needle)?;
            let offsets = [usize::from(pair.index1()), usize::from(pair.index2())];
            // SAFETY: SSE2 is available: this module is only compiled when it is enabled.
            // The intrinsic only computes a value (and is a safe function on newer Rust).
            let splat = |at: usize| unsafe { _mm_set1_epi8(needle[at] as i8) };
            Some(PackedPair {
                bytes: [splat(offsets[0]), splat(offsets[1])],
                offsets,
                span: offsets[0].max(offsets[1]) + 16,
            })
        }

        /// Candidate starts `at..at + 16` as a bit mask, bit `i` for `at + i`, given the
        /// bytes `firsts` and `seconds` at the two offsets from each start. No candidates
        /// where a vector would run past their end (which callers avoid).
        #[inline(always)]
        fn candidates(&self, firsts: &[u8], seconds: &[u8], at: usize) -> u32 {
            let (Some(first), Some(second)) = (
                firsts.get(at..).and_then(|f| f.get(..16)),
                seconds.get(at..).and_then(|s| s.get(..16)),
            ) else {
                return 0;
            };
            // SAFETY: SSE2 is available (see `new`). Each load reads the 16 bytes of a
            // 16-byte slice, and `loadu` has no alignment requirement.
            let mask = unsafe {
                let first = _mm_cmpeq_epi8(_mm_loadu_si128(first.as_ptr().cast()), self.bytes[0]);
                let second = _mm_cmpeq_epi8(_mm_loadu_si128(second.as_ptr().cast()), self.bytes[1]);
                _mm_movemask_epi8(_mm_and_si128(first, second))
            };
            // The mask has only the low 16 bits set.
            mask as u32
        }

        /// `Some` with the offset of the leftmost occurrence of `needle` (the needle this
        /// was built for) in `haystack`, if any; `None` if the haystack is too short for
        /// a vector, which is left to the caller.
        ///
        /// Inlined, this scans up to the first vector with candidates and checks the
        /// first; should it not match (rare with rare bytes), the rest of the search is a
        /// call. Keeping the check out of any loop keeps LLVM from preparing it (the
        /// needle's length classes) before every search.
        #[inline(always)]
        pub(super) fn find(&self, haystack: &[u8], needle: &[u8]) -> Option<Option<usize>> {
            let (firsts, seconds, last) = self.probes(haystack)?;
            let mut at = 0;
            let candidates = loop {
                if at >= last {
                    at = last;
                    break self.candidates(firsts, seconds, at);
                }
                let candidates = self.candidates(firsts, seconds, at);
                if candidates != 0 {
                    break candidates;
                }
                at += 16;
            };
            if candidates == 0 {
                return Some(None);
            }
            // The first candidate here; any others, and the rest of the haystack, in a call.
            let start = at + candidates.trailing_zeros() as usize;
            let Some(text) = haystack.get(start..start + needle.len()) else {
                // Running past the end, as all later candidates would: no match.
                return Some(None);
            };
            if bytes_eq(text, needle) {
                return Some(Some(start));
            }
            Some(self.find_from(haystack, needle, at, candidates & (candidates - 1)))
        }

        /// The leftmost occurrence among the `candidates` of the vector at `at` (bit `i`
        /// for `at + i`) and in the vectors after it.
        #[inline(never)]
        fn find_from(
            &self,
            haystack: &[u8],
            needle: &[u8],
            at: usize,
            candidates: u32,
        ) -> Option<usize> {
            if let Some(found) = verify(haystack, needle, at, candidates) {
                return Some(found);
            }
            let (firsts, seconds, last) = self.probes(haystack)?;
            if at >= last {
                return None;
            }
            let mut at = at + 16;
            while at < last {
                let candidates = self.candidates(firsts, seconds, at);
                if candidates != 0 {
                    if let Some(found) = verify(haystack, needle, at, candidates) {
                        return Some(found);
                    }
                }
                at += 16;
            }
            verify(
                haystack,
                needle,
                last,
                self.candidates(firsts, seconds, last),
            )
        }

        /// The bytes the two probes see from the starts `0..last + 16`, and `last`:
        /// `None` if the haystack is shorter than [`PackedPair::span`].
        ///
        /// A match starting at `s` ends by the end, `s + needle.len() <= len`, and the
        /// offsets are below `needle.len()`, so `s < last + 16`: vectors at 0, 16, 32, …
        /// below `last`, and then one at `last`, cover every start.
        #[inline(always)]
        fn probes<'h>(&self, haystack: &'h [u8]) -> Option<(&'h [u8], &'h [u8], usize)> {
            let last = haystack.len().checked_sub(self.span)?;
            let [first, second] = self.offsets;
            // Both within the haystack since `last + 16 + offset <= len`.
            let reach = last + 16;
            let firsts = haystack.get(first..first + reach)?;
            let seconds = haystack.get(second..second + reach)?;
            Some((firsts, seconds, last))
        }
    }

    /// The first of the candidate starts (`at` plus the bits of `candidates`) where
    /// `needle` occurs.
    #[inline(always)]
    fn verify(haystack: &[u8], needle: &[u8], at: usize, mut candidates: u32) -> Option<usize> {
        while candidates != 0 {
            let start = at + candidates.trailing_zeros() as usize;
            // A candidate running past the end means the later ones do too: no match.
            if bytes_eq(haystack.get(start..start + needle.len())?, needle) {
                return Some(start);
            }
            candidates &= candidates - 1;
        }
        None
    }
}

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

#[inline]
fn load16(bytes: &[u8], at: usize) -> u128 {
    let mut word = [0; 16];
    word.copy_from_slice(&bytes[at..at + 16]);
    u128::from_le_bytes(word)
}

/// `a == b` for byte strings, with word loads for short ones. (LLVM compares the 16-byte
/// words with one SSE2 compare on x86_64.)
#[inline(always)]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        // Two overlapping loads cover every byte; the most common lengths first.
        8..=16 => load(a, 0) == load(b, 0) && load(a, n - 8) == load(b, n - 8),
        17..=32 => load16(a, 0) == load16(b, 0) && load16(a, n - 16) == load16(b, n - 16),
        4..=7 => load4(a, 0) == load4(b, 0) && load4(a, n - 4) == load4(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        33..=64 => {
            let mut at = 0;
            while at + 16 < n {
                if load16(a, at) != load16(b, at) {
                    return false;
                }
                at += 16;
            }
            load16(a, n - 16) == load16(b, n - 16)
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
    use proptest::prelude::*;

    use super::{bytes_eq, ends_with, find, starts_with, Substring};

    /// Leftmost occurrence by brute force.
    fn naive_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        (0..=haystack.len().checked_sub(needle.len())?)
            .find(|&at| &haystack[at..at + needle.len()] == needle)
    }

    #[test]
    fn substring_agrees_with_naive_search() {
        // Haystacks of every length around the vector width and the needle's span, with
        // the needle (or near misses) at every position, so that the last, overlapping
        // vector and candidates running past the end are exercised.
        for needle in [
            "/CarePlan/",
            "ab",
            "aab",
            "é",
            "x",
            "",
            "CarePlanCarePlanCarePlanCarePla",
        ] {
            let searcher = Substring::new(needle);
            let needle = needle.as_bytes();
            for len in 0..80 {
                let base: Vec<u8> = (0..len).map(|i| b"-/aCP"[i % 5]).collect();
                assert_eq!(searcher.find(&base), naive_find(&base, needle));
                for at in 0..len {
                    for cut in [needle.len(), needle.len().saturating_sub(1)] {
                        let mut hay = base.clone();
                        let end = (at + cut).min(len);
                        hay[at..end].copy_from_slice(&needle[..end - at]);
                        assert_eq!(
                            searcher.find(&hay),
                            naive_find(&hay, needle),
                            "{:?} in {:?}",
                            String::from_utf8_lossy(needle),
                            String::from_utf8_lossy(&hay),
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Small alphabets make candidates (both probe bytes present) frequent.
        #[test]
        fn substring_agrees_with_naive_search_on_random_text(
            needle in "[abc/]{1,12}|[a-zA-Z/]{1,40}",
            haystack in "[abc/]{0,100}",
        ) {
            let found = Substring::new(&needle).find(haystack.as_bytes());
            prop_assert_eq!(found, naive_find(haystack.as_bytes(), needle.as_bytes()));
        }
    }

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
