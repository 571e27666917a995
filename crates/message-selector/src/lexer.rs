//! Turns selector text into tokens, each tagged with its 1-based character column.

use crate::error::ParseError;

/// Reserved words; matched case-insensitively and never usable as identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    Not,
    And,
    Or,
    Between,
    Like,
    In,
    Is,
    Null,
    True,
    False,
    Escape,
}

impl Keyword {
    const ALL: [Keyword; 11] = [
        Keyword::Not,
        Keyword::And,
        Keyword::Or,
        Keyword::Between,
        Keyword::Like,
        Keyword::In,
        Keyword::Is,
        Keyword::Null,
        Keyword::True,
        Keyword::False,
        Keyword::Escape,
    ];

    fn lookup(word: &str) -> Option<Keyword> {
        Self::ALL
            .into_iter()
            .find(|kw| kw.as_str().eq_ignore_ascii_case(word))
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Keyword::Not => "NOT",
            Keyword::And => "AND",
            Keyword::Or => "OR",
            Keyword::Between => "BETWEEN",
            Keyword::Like => "LIKE",
            Keyword::In => "IN",
            Keyword::Is => "IS",
            Keyword::Null => "NULL",
            Keyword::True => "TRUE",
            Keyword::False => "FALSE",
            Keyword::Escape => "ESCAPE",
        }
    }
}

/// Java `isJavaIdentifierStart`, approximated with Unicode alphabetic plus `_` and `$`.
fn is_identifier_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

/// Java `isJavaIdentifierPart`, approximated with Unicode alphanumeric plus `_` and `$`.
fn is_identifier_part(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind<'s> {
    Identifier(&'s str),
    Keyword(Keyword),
    String(String),
    /// An exact numeric without sign; i128 so that `-9223372036854775808` can be folded.
    Long(i128),
    Double(f64),
    LParen,
    RParen,
    Comma,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token<'s> {
    pub(crate) kind: TokenKind<'s>,
    pub(crate) column: usize,
    /// The token's source text, for error messages.
    pub(crate) text: &'s str,
}

impl Token<'_> {
    /// Describes the token for "but found …" in error messages.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Identifier(name) => format!("identifier '{name}'"),
            TokenKind::Keyword(kw) => format!("keyword {}", kw.as_str()),
            TokenKind::String(_) => format!("string literal {}", abbreviate(self.text)),
            TokenKind::Long(_) | TokenKind::Double(_) => format!("number {}", self.text),
            TokenKind::End => "end of input".to_owned(),
            _ => format!("'{}'", self.text),
        }
    }
}

fn abbreviate(text: &str) -> String {
    const MAX: usize = 24;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// Splits `src` into tokens; the last one is always [`TokenKind::End`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let mut lexer = Lexer {
        src,
        pos: 0,
        column: 1,
    };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let end = token.kind == TokenKind::End;
        tokens.push(token);
        if end {
            return Ok(tokens);
        }
    }
}

struct Lexer<'s> {
    src: &'s str,
    /// Byte offset of the next unread character.
    pos: usize,
    /// 1-based character column of the next unread character.
    column: usize,
}

impl<'s> Lexer<'s> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.src[self.pos..].chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        self.column += 1;
        Some(c)
    }

    fn bump_while(&mut self, pred: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&pred) {
            self.bump();
        }
    }

    fn next_token(&mut self) -> Result<Token<'s>, ParseError> {
        self.bump_while(char::is_whitespace);
        let start = self.pos;
        let column = self.column;
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: TokenKind::End,
                column,
                text: "",
            });
        };
        let kind = match c {
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            ',' => TokenKind::Comma,
            '=' => TokenKind::Eq,
            '+' => TokenKind::Plus,
            '-' => TokenKind::Minus,
            '*' => TokenKind::Star,
            '/' => TokenKind::Slash,
            '<' => match self.peek() {
                Some('>') => {
                    self.bump();
                    TokenKind::Ne
                }
                Some('=') => {
                    self.bump();
                    TokenKind::Le
                }
                _ => TokenKind::Lt,
            },
            '>' => {
                if self.peek() == Some('=') {
                    self.bump();
                    TokenKind::Ge
                } else {
                    TokenKind::Gt
                }
            }
            '\'' => TokenKind::String(self.string_rest(column)?),
            '0'..='9' => self.number_rest(start, column)?,
            '.' if self.peek().is_some_and(|d| d.is_ascii_digit()) => {
                self.number_rest(start, column)?
            }
            c if is_identifier_start(c) => {
                self.bump_while(is_identifier_part);
                let word = &self.src[start..self.pos];
                match Keyword::lookup(word) {
                    Some(kw) => TokenKind::Keyword(kw),
                    None => TokenKind::Identifier(word),
                }
            }
            '!' if self.peek() == Some('=') => {
                return Err(ParseError::new(
                    column,
                    "unexpected '!=': the not-equal operator is '<>'",
                ))
            }
            c => {
                return Err(ParseError::new(
                    column,
                    format!("unexpected character {c:?}"),
                ))
            }
        };
        Ok(Token {
            kind,
            column,
            text: &self.src[start..self.pos],
        })
    }

    /// Reads the rest of a string literal after its opening quote; `''` is one quote.
    fn string_rest(&mut self, column: usize) -> Result<String, ParseError> {
        let mut value = String::new();
        loop {
            match self.bump() {
                None => return Err(ParseError::new(column, "unterminated string literal")),
                Some('\'') if self.peek() == Some('\'') => {
                    self.bump();
                    value.push('\'');
                }
                Some('\'') => return Ok(value),
                Some(c) => value.push(c),
            }
        }
    }

    /// Reads a numeric literal whose first character (a digit or '.') was consumed.
    fn number_rest(&mut self, start: usize, column: usize) -> Result<TokenKind<'s>, ParseError> {
        let first = &self.src[start..self.pos];
        if first == "0" && matches!(self.peek(), Some('x' | 'X')) {
            self.bump();
            let digits_start = self.pos;
            self.bump_while(|c| c.is_ascii_hexdigit());
            let digits = &self.src[digits_start..self.pos];
            if digits.is_empty() {
                return Err(ParseError::new(column, "malformed hexadecimal literal"));
            }
            let value = u64::from_str_radix(digits, 16)
                .map_err(|_| ParseError::new(column, "exact numeric literal out of range"))?;
            self.long_suffix();
            self.reject_trailing_identifier(column)?;
            // Java long literals in hex are 64-bit two's complement: 0xFFFFFFFFFFFFFFFFL is -1.
            return Ok(TokenKind::Long(i128::from(value as i64)));
        }
        let mut approximate = first == ".";
        self.bump_while(|c| c.is_ascii_digit());
        if !approximate && self.peek() == Some('.') {
            approximate = true;
            self.bump();
            self.bump_while(|c| c.is_ascii_digit());
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let sign = matches!(self.peek_second(), Some('+' | '-'));
            let after = if sign {
                self.src[self.pos..].chars().nth(2)
            } else {
                self.peek_second()
            };
            if !after.is_some_and(|c| c.is_ascii_digit()) {
                return Err(ParseError::new(
                    column,
                    "malformed exponent in numeric literal",
                ));
            }
            approximate = true;
            self.bump();
            if sign {
                self.bump();
            }
            self.bump_while(|c| c.is_ascii_digit());
        }
        let text = &self.src[start..self.pos];
        if approximate {
            self.reject_trailing_identifier(column)?;
            let value: f64 = text
                .parse()
                .map_err(|_| ParseError::new(column, "malformed approximate numeric literal"))?;
            if !value.is_finite() {
                return Err(ParseError::new(
                    column,
                    "approximate numeric literal out of range",
                ));
            }
            return Ok(TokenKind::Double(value));
        }
        self.long_suffix();
        self.reject_trailing_identifier(column)?;
        let (digits, radix) = if text.len() > 1 && text.starts_with('0') {
            (&text[1..], 8)
        } else {
            (text, 10)
        };
        let value = u64::from_str_radix(digits, radix).map_err(|e| {
            if radix == 8 && digits.bytes().any(|b| b > b'7') {
                ParseError::new(column, "malformed octal literal (leading 0 means octal)")
            } else {
                ParseError::new(column, format!("exact numeric literal out of range ({e})"))
            }
        })?;
        if radix == 8 {
            return Ok(TokenKind::Long(i128::from(value as i64)));
        }
        Ok(TokenKind::Long(i128::from(value)))
    }

    fn long_suffix(&mut self) {
        if matches!(self.peek(), Some('l' | 'L')) {
            self.bump();
        }
    }

    fn reject_trailing_identifier(&self, column: usize) -> Result<(), ParseError> {
        if self.peek().is_some_and(is_identifier_part) {
            return Err(ParseError::new(column, "malformed numeric literal"));
        }
        Ok(())
    }
}
