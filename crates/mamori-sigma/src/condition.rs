//! Sigma conditions: `sel1 and not (filter_a or 1 of filter_*)`.
//!
//! Grammar (lowest precedence first), as in the Sigma specification:
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | primary
//! primary := "(" expr ")" | quant "of" pattern | identifier
//! quant   := NUMBER | "all" | "any"
//! pattern := "them" | identifier with optional `*` wildcards
//! ```
//!
//! Identifiers are resolved against the rule's search identifiers here, so an unknown name
//! is an error at load time, never at match time.

/// A condition over search identifiers, resolved to their indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// One search identifier.
    Sel(usize),
    /// All children hold.
    And(Vec<Cond>),
    /// At least one child holds.
    Or(Vec<Cond>),
    /// The child does not hold.
    Not(Box<Cond>),
    /// At least `n` of the listed search identifiers hold.
    AtLeast(usize, Vec<usize>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    And,
    Or,
    Not,
    Of,
    All,
    Num(usize),
    Ident(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '(' {
            out.push(Tok::LParen);
            chars.next();
            continue;
        }
        if c == ')' {
            out.push(Tok::RParen);
            chars.next();
            continue;
        }
        if c == '|' {
            return Err(
                "aggregation expressions (`| count() …`) are deprecated; use a correlation rule"
                    .into(),
            );
        }
        if c.is_alphanumeric() || c == '_' || c == '*' || c == '-' || c == '.' {
            let mut end = i;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' || d == '*' || d == '-' || d == '.' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &s[i..end];
            out.push(match word.to_ascii_lowercase().as_str() {
                "and" => Tok::And,
                "or" => Tok::Or,
                "not" => Tok::Not,
                "of" => Tok::Of,
                "all" => Tok::All,
                "any" => Tok::Num(1),
                _ => match word.parse::<usize>() {
                    Ok(n) => Tok::Num(n),
                    Err(_) => Tok::Ident(word.to_string()),
                },
            });
            continue;
        }
        return Err(format!("unexpected character {c:?}"));
    }
    Ok(out)
}

/// Parses `text` against the search identifiers `names`.
pub fn parse_condition(text: &str, names: &[&str]) -> Result<Cond, String> {
    let toks = tokenize(text)?;
    if toks.is_empty() {
        return Err("empty condition".into());
    }
    let mut p = Parser {
        toks: &toks,
        pos: 0,
        names,
        depth: 0,
    };
    let c = p.expr()?;
    if p.pos != toks.len() {
        return Err(format!(
            "unexpected {:?} after a complete expression",
            toks[p.pos]
        ));
    }
    Ok(c)
}

struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
    names: &'a [&'a str],
    depth: usize,
}

const MAX_DEPTH: usize = 100;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<&Tok> {
        let t = self.toks.get(self.pos);
        self.pos += 1;
        t
    }

    fn expr(&mut self) -> Result<Cond, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("condition nests too deeply".into());
        }
        let mut items = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            items.push(self.and()?);
        }
        self.depth -= 1;
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Cond::Or(items)
        })
    }

    fn and(&mut self) -> Result<Cond, String> {
        let mut items = vec![self.unary()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Cond::And(items)
        })
    }

    fn unary(&mut self) -> Result<Cond, String> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err("condition nests too deeply".into());
            }
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond, String> {
        match self.next().cloned() {
            Some(Tok::LParen) => {
                let e = self.expr()?;
                match self.next() {
                    Some(Tok::RParen) => Ok(e),
                    _ => Err("missing `)`".into()),
                }
            }
            Some(q @ (Tok::Num(_) | Tok::All)) => {
                if self.next() != Some(&Tok::Of) {
                    return Err(format!("expected `of` after {q:?}"));
                }
                let pattern = match self.next() {
                    Some(Tok::Ident(p)) => p.clone(),
                    other => {
                        return Err(format!(
                            "expected a name pattern or `them` after `of`, found {other:?}"
                        ));
                    }
                };
                let sels = self.resolve_pattern(&pattern)?;
                Ok(match q {
                    Tok::All => Cond::And(sels.into_iter().map(Cond::Sel).collect()),
                    Tok::Num(0) => return Err("`0 of` never matches anything".into()),
                    Tok::Num(n) => Cond::AtLeast(n, sels),
                    _ => unreachable!("q is Num or All"),
                })
            }
            Some(Tok::Ident(name)) => {
                if name.contains('*') {
                    return Err(format!(
                        "wildcard {name:?} is only allowed after `1 of` / `all of`"
                    ));
                }
                match self.names.iter().position(|n| *n == name) {
                    Some(i) => Ok(Cond::Sel(i)),
                    None => Err(format!("undefined search identifier {name:?}")),
                }
            }
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("condition ends too early".into()),
        }
    }

    fn resolve_pattern(&self, pattern: &str) -> Result<Vec<usize>, String> {
        let sels: Vec<usize> = if pattern == "them" {
            self.names
                .iter()
                .enumerate()
                .filter(|(_, n)| !n.starts_with('_'))
                .map(|(i, _)| i)
                .collect()
        } else {
            self.names
                .iter()
                .enumerate()
                .filter(|(_, n)| glob_match(pattern, n))
                .map(|(i, _)| i)
                .collect()
        };
        if sels.is_empty() {
            return Err(format!("pattern {pattern:?} matches no search identifier"));
        }
        Ok(sels)
    }
}

/// `*`-only glob used for search identifier patterns.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["selection", "filter_a", "filter_b", "kw"];

    #[test]
    fn precedence() {
        let c = parse_condition("selection and not filter_a or kw", NAMES).unwrap();
        assert_eq!(
            c,
            Cond::Or(vec![
                Cond::And(vec![Cond::Sel(0), Cond::Not(Box::new(Cond::Sel(1)))]),
                Cond::Sel(3)
            ])
        );
    }

    #[test]
    fn quantifiers() {
        assert_eq!(
            parse_condition("selection and not 1 of filter_*", NAMES).unwrap(),
            Cond::And(vec![
                Cond::Sel(0),
                Cond::Not(Box::new(Cond::AtLeast(1, vec![1, 2])))
            ])
        );
        assert_eq!(
            parse_condition("all of them", NAMES).unwrap(),
            Cond::And(vec![Cond::Sel(0), Cond::Sel(1), Cond::Sel(2), Cond::Sel(3)])
        );
        assert_eq!(
            parse_condition("2 of them", NAMES).unwrap(),
            Cond::AtLeast(2, vec![0, 1, 2, 3])
        );
        assert!(parse_condition("(selection or kw) and not (filter_a)", NAMES).is_ok());
    }

    #[test]
    fn errors() {
        assert!(
            parse_condition("selection and", NAMES)
                .unwrap_err()
                .contains("ends too early")
        );
        assert!(
            parse_condition("nope", NAMES)
                .unwrap_err()
                .contains("undefined")
        );
        assert!(
            parse_condition("1 of x*", NAMES)
                .unwrap_err()
                .contains("matches no")
        );
        assert!(
            parse_condition("(selection", NAMES)
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            parse_condition("selection | count() > 5", NAMES)
                .unwrap_err()
                .contains("deprecated")
        );
        let deep = format!("{}selection{}", "(".repeat(500), ")".repeat(500));
        assert!(parse_condition(&deep, NAMES).is_err());
        let nots = format!("{}selection", "not ".repeat(500));
        assert!(parse_condition(&nots, NAMES).is_err());
    }
}
