//! Recursive-descent parser from tokens to [`Expr`], with depth and length limits.
//!
//! Grammar, loosest binding first:
//!
//! ```text
//! selector   := or_expr END
//! or_expr    := and_expr ( OR and_expr )*
//! and_expr   := not_expr ( AND not_expr )*
//! not_expr   := NOT not_expr | comparison
//! comparison := additive [ ( = | <> | < | <= | > | >= ) additive
//!                        | [NOT] BETWEEN additive AND additive
//!                        | [NOT] IN ( literal ( , literal )* )          -- identifier only
//!                        | [NOT] LIKE string [ ESCAPE string ]          -- identifier only
//!                        | IS [NOT] NULL ]                              -- identifier only
//! additive   := multiplicative ( ( + | - ) multiplicative )*
//! multiplicative := unary ( ( * | / ) unary )*
//! unary      := ( + | - ) unary | primary
//! primary    := literal | identifier | ( or_expr )
//! ```

use crate::ast::{ArithmeticOp, ComparisonOp, Expr, UnaryOp};
use crate::error::ParseError;
use crate::lexer::{tokenize, Keyword, Token, TokenKind};
use crate::value::OwnedValue;

/// Deepest syntax tree the parser builds; deeper input is rejected, never overflowing the stack.
pub const MAX_DEPTH: usize = 128;

/// Longest selector accepted, in bytes.
pub const MAX_LENGTH: usize = 64 * 1024;

/// Parses a whole selector. Empty or whitespace-only input yields the literal `TRUE`.
pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.len() > MAX_LENGTH {
        let column = src
            .char_indices()
            .take_while(|(i, _)| *i < MAX_LENGTH)
            .count()
            + 1;
        return Err(ParseError::new(
            column,
            format!("selector is longer than {MAX_LENGTH} bytes"),
        ));
    }
    let tokens = tokenize(src)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    if parser.peek().kind == TokenKind::End {
        return Ok(Expr::Literal(OwnedValue::Boolean(true)));
    }
    let (expr, _) = parser.or_expr()?;
    let token = parser.peek();
    if token.kind != TokenKind::End {
        let expected = if token.kind == TokenKind::RParen {
            "end of input (unbalanced ')')"
        } else {
            "an operator or end of input"
        };
        return Err(parser.unexpected(expected));
    }
    Ok(expr)
}

/// An expression together with the height of its tree.
type Parsed = (Expr, usize);

struct Parser<'s> {
    tokens: Vec<Token<'s>>,
    pos: usize,
    /// Current recursion depth of the descent, bounded by [`MAX_DEPTH`].
    depth: usize,
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Token<'s> {
        // The token list always ends with End and `advance` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token<'s> {
        let token = self.peek().clone();
        if token.kind != TokenKind::End {
            self.pos += 1;
        }
        token
    }

    fn at_keyword(&self, kw: Keyword) -> bool {
        self.peek().kind == TokenKind::Keyword(kw)
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        let token = self.peek();
        ParseError::new(
            token.column,
            format!("expected {expected} but found {}", token.describe()),
        )
    }

    fn expect(&mut self, kind: &TokenKind<'_>, expected: &str) -> Result<Token<'s>, ParseError> {
        if &self.peek().kind == kind {
            Ok(self.advance())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_keyword(&mut self, kw: Keyword) -> Result<(), ParseError> {
        if self.at_keyword(kw) {
            self.advance();
            Ok(())
        } else {
            Err(self.unexpected(kw.as_str()))
        }
    }

    /// Enters one level of recursion, failing cleanly instead of exhausting the stack.
    fn descend(&mut self, column: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.too_deep(column));
        }
        Ok(())
    }

    fn too_deep(&self, column: usize) -> ParseError {
        ParseError::new(
            column,
            format!("expression nested more than {MAX_DEPTH} levels deep"),
        )
    }

    /// Joins two subtrees under a new node, checking the height limit.
    fn join(
        &self,
        column: usize,
        (left, lh): Parsed,
        (right, rh): Parsed,
        make: impl FnOnce(Box<Expr>, Box<Expr>) -> Expr,
    ) -> Result<Parsed, ParseError> {
        let height = lh.max(rh) + 1;
        if height > MAX_DEPTH {
            return Err(self.too_deep(column));
        }
        Ok((make(Box::new(left), Box::new(right)), height))
    }

    fn or_expr(&mut self) -> Result<Parsed, ParseError> {
        let mut left = self.and_expr()?;
        while self.at_keyword(Keyword::Or) {
            let column = self.advance().column;
            let right = self.and_expr()?;
            left = self.join(column, left, right, Expr::Or)?;
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Parsed, ParseError> {
        let mut left = self.not_expr()?;
        while self.at_keyword(Keyword::And) {
            let column = self.advance().column;
            let right = self.not_expr()?;
            left = self.join(column, left, right, Expr::And)?;
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Parsed, ParseError> {
        if !self.at_keyword(Keyword::Not) {
            return self.comparison();
        }
        let column = self.advance().column;
        self.descend(column)?;
        let (operand, height) = self.not_expr()?;
        self.depth -= 1;
        if height + 1 > MAX_DEPTH {
            return Err(self.too_deep(column));
        }
        Ok((Expr::Not(Box::new(operand)), height + 1))
    }

    fn comparison(&mut self) -> Result<Parsed, ParseError> {
        let start = self.peek().column;
        let left = self.additive()?;
        let token = self.peek().clone();
        let op = match token.kind {
            TokenKind::Eq => Some(ComparisonOp::Eq),
            TokenKind::Ne => Some(ComparisonOp::Ne),
            TokenKind::Lt => Some(ComparisonOp::Lt),
            TokenKind::Le => Some(ComparisonOp::Le),
            TokenKind::Gt => Some(ComparisonOp::Gt),
            TokenKind::Ge => Some(ComparisonOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.advance();
            let right = self.additive()?;
            return self.join(token.column, left, right, |left, right| Expr::Comparison {
                op,
                left,
                right,
            });
        }
        let (negated, keyword) = match token.kind {
            TokenKind::Keyword(Keyword::Not) => {
                self.advance();
                match self.peek().kind {
                    TokenKind::Keyword(kw @ (Keyword::Between | Keyword::In | Keyword::Like)) => {
                        (true, kw)
                    }
                    _ => return Err(self.unexpected("BETWEEN, IN or LIKE after NOT")),
                }
            }
            TokenKind::Keyword(
                kw @ (Keyword::Between | Keyword::In | Keyword::Like | Keyword::Is),
            ) => (false, kw),
            _ => return Ok(left),
        };
        let keyword_column = self.advance().column;
        if keyword == Keyword::Between {
            let low = self.additive()?;
            self.expect_keyword(Keyword::And)?;
            let high = self.additive()?;
            let height = left.1.max(low.1).max(high.1) + 1;
            if height > MAX_DEPTH {
                return Err(self.too_deep(keyword_column));
            }
            return Ok((
                Expr::Between {
                    operand: Box::new(left.0),
                    low: Box::new(low.0),
                    high: Box::new(high.0),
                    negated,
                },
                height,
            ));
        }
        let Expr::Identifier(identifier) = left.0 else {
            return Err(ParseError::new(
                start,
                format!(
                    "the left operand of {} must be an identifier",
                    keyword.as_str()
                ),
            ));
        };
        let expr = match keyword {
            Keyword::In => self.in_rest(identifier, negated)?,
            Keyword::Like => self.like_rest(identifier, negated)?,
            _ => self.is_null_rest(identifier)?,
        };
        Ok((expr, 2))
    }

    fn in_rest(&mut self, identifier: String, negated: bool) -> Result<Expr, ParseError> {
        self.expect(&TokenKind::LParen, "'(' after IN")?;
        let mut list = Vec::new();
        loop {
            list.push(self.in_item()?);
            if self.peek().kind == TokenKind::Comma {
                self.advance();
            } else {
                self.expect(&TokenKind::RParen, "',' or ')'")?;
                return Ok(Expr::In {
                    identifier,
                    list,
                    negated,
                });
            }
        }
    }

    /// An IN list item: a string literal (JMS) or, as an extension, a signed numeric literal.
    fn in_item(&mut self) -> Result<OwnedValue, ParseError> {
        let token = self.peek().clone();
        match token.kind {
            TokenKind::String(s) => {
                self.advance();
                Ok(OwnedValue::String(s))
            }
            TokenKind::Long(_) | TokenKind::Double(_) => {
                let value = number_value(&token, false)?;
                self.advance();
                Ok(value)
            }
            TokenKind::Plus | TokenKind::Minus => {
                self.advance();
                match self.numeric_literal(token.kind == TokenKind::Minus)? {
                    Some(value) => Ok(value),
                    None => Err(self.unexpected("numeric literal after sign")),
                }
            }
            _ => Err(self.unexpected("string or numeric literal")),
        }
    }

    fn like_rest(&mut self, identifier: String, negated: bool) -> Result<Expr, ParseError> {
        let pattern_token = self.peek().clone();
        let TokenKind::String(pattern) = pattern_token.kind else {
            return Err(self.unexpected("string literal pattern after LIKE"));
        };
        self.advance();
        let mut escape = None;
        if self.at_keyword(Keyword::Escape) {
            self.advance();
            let token = self.peek().clone();
            let TokenKind::String(text) = token.kind else {
                return Err(self.unexpected("string literal after ESCAPE"));
            };
            self.advance();
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => escape = Some(c),
                _ => {
                    return Err(ParseError::new(
                        token.column,
                        format!(
                            "ESCAPE must be exactly one character, found {}",
                            text.chars().count()
                        ),
                    ))
                }
            }
        }
        if let Some(e) = escape {
            if crate::like::ends_with_dangling_escape(&pattern, e) {
                return Err(ParseError::new(
                    pattern_token.column,
                    "LIKE pattern ends with the escape character",
                ));
            }
        }
        Ok(Expr::Like {
            identifier,
            pattern,
            escape,
            negated,
        })
    }

    fn is_null_rest(&mut self, identifier: String) -> Result<Expr, ParseError> {
        let negated = if self.at_keyword(Keyword::Not) {
            self.advance();
            true
        } else {
            false
        };
        if !self.at_keyword(Keyword::Null) {
            let expected = if negated { "NULL" } else { "NULL or NOT NULL" };
            return Err(self.unexpected(expected));
        }
        self.advance();
        Ok(Expr::IsNull {
            identifier,
            negated,
        })
    }

    fn additive(&mut self) -> Result<Parsed, ParseError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Plus => ArithmeticOp::Add,
                TokenKind::Minus => ArithmeticOp::Subtract,
                _ => return Ok(left),
            };
            let column = self.advance().column;
            let right = self.multiplicative()?;
            left = self.join(column, left, right, |left, right| Expr::Arithmetic {
                op,
                left,
                right,
            })?;
        }
    }

    fn multiplicative(&mut self) -> Result<Parsed, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Star => ArithmeticOp::Multiply,
                TokenKind::Slash => ArithmeticOp::Divide,
                _ => return Ok(left),
            };
            let column = self.advance().column;
            let right = self.unary()?;
            left = self.join(column, left, right, |left, right| Expr::Arithmetic {
                op,
                left,
                right,
            })?;
        }
    }

    fn unary(&mut self) -> Result<Parsed, ParseError> {
        let token = self.peek().clone();
        let op = match token.kind {
            TokenKind::Plus => UnaryOp::Plus,
            TokenKind::Minus => UnaryOp::Minus,
            _ => return self.primary(),
        };
        self.advance();
        // A sign directly before a number is part of the literal, so that
        // -9223372036854775808 is representable.
        if let Some(value) = self.numeric_literal(op == UnaryOp::Minus)? {
            return Ok((Expr::Literal(value), 1));
        }
        self.descend(token.column)?;
        let (operand, height) = self.unary()?;
        self.depth -= 1;
        if height + 1 > MAX_DEPTH {
            return Err(self.too_deep(token.column));
        }
        Ok((
            Expr::Unary {
                op,
                operand: Box::new(operand),
            },
            height + 1,
        ))
    }

    /// Consumes a numeric literal if one is next; `negative` after a minus sign.
    fn numeric_literal(&mut self, negative: bool) -> Result<Option<OwnedValue>, ParseError> {
        let token = self.peek();
        if !matches!(token.kind, TokenKind::Long(_) | TokenKind::Double(_)) {
            return Ok(None);
        }
        let value = number_value(token, negative)?;
        self.advance();
        Ok(Some(value))
    }

    fn primary(&mut self) -> Result<Parsed, ParseError> {
        let token = self.peek().clone();
        let expr = match token.kind {
            TokenKind::Identifier(name) => Expr::Identifier(name.to_owned()),
            TokenKind::String(s) => Expr::Literal(OwnedValue::String(s)),
            TokenKind::Keyword(Keyword::True) => Expr::Literal(OwnedValue::Boolean(true)),
            TokenKind::Keyword(Keyword::False) => Expr::Literal(OwnedValue::Boolean(false)),
            TokenKind::Long(_) | TokenKind::Double(_) => {
                Expr::Literal(number_value(&token, false)?)
            }
            TokenKind::LParen => {
                self.advance();
                self.descend(token.column)?;
                let inner = self.or_expr()?;
                self.depth -= 1;
                self.expect(&TokenKind::RParen, "')'")?;
                return Ok(inner);
            }
            TokenKind::Keyword(Keyword::Null) => {
                return Err(self.unexpected("expression (NULL is only valid in IS [NOT] NULL)"))
            }
            TokenKind::Keyword(kw) => {
                return Err(ParseError::new(
                    token.column,
                    format!(
                        "expected expression but found keyword {} (keywords cannot be used as identifiers)",
                        kw.as_str()
                    ),
                ))
            }
            _ => return Err(self.unexpected("expression")),
        };
        self.advance();
        Ok((expr, 1))
    }
}

/// The value of a numeric literal token, negated if `negative`; other tokens are a bug.
fn number_value(token: &Token<'_>, negative: bool) -> Result<OwnedValue, ParseError> {
    match token.kind {
        TokenKind::Long(magnitude) => {
            let value = if negative { -magnitude } else { magnitude };
            i64::try_from(value).map(OwnedValue::Long).map_err(|_| {
                ParseError::new(
                    token.column,
                    format!(
                        "exact numeric literal {}{} is out of range for a 64-bit long",
                        if negative { "-" } else { "" },
                        token.text
                    ),
                )
            })
        }
        TokenKind::Double(d) => Ok(OwnedValue::Double(if negative { -d } else { d })),
        _ => Err(ParseError::new(token.column, "expected numeric literal")),
    }
}
