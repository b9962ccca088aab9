//! Kubernetes label and field selectors.
//!
//! Behaviour follows `k8s.io/apimachinery` (`pkg/labels/selector.go`,
//! `pkg/fields/selector.go` and the label key/value validation rules), so
//! that list/watch filtering and the error messages returned to clients look
//! like the ones a real API server produces.
//!
//! * [`LabelSelector`] — the equality- and set-based label selector grammar
//!   (`a=b`, `a!=b`, `a in (x,y)`, `!a`, `a>5`, ...) plus the conversion from
//!   the structured `metav1.LabelSelector` form ([`LabelSelector::from_match`]).
//! * [`FieldSelector`] — the `field=value,field!=value` grammar with `\`
//!   escapes in values.
//!
//! Nothing in here panics on user input: the lexers only split strings at
//! ASCII delimiters, so every slice lands on a UTF-8 character boundary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Label keys are qualified names and values label values, with the shared rules.
use super::validation::{label_value as label_value_errors, qualified_name as label_key_errors};

// --- field.Error style formatting ------------------------------------------

/// Quotes a string roughly like Go's `%q`.
fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// Renders a string slice like Go's `%#v` of a `[]string`.
fn quote_list(values: &[String]) -> String {
    if values.is_empty() {
        return "[]string(nil)".to_string();
    }
    let inner: Vec<String> = values.iter().map(|v| quote(v)).collect();
    format!("[]string{{{}}}", inner.join(", "))
}

fn invalid(path: &str, rendered_value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: {rendered_value}: {detail}")
}

/// Combines several messages like an apimachinery error aggregate:
/// duplicates are dropped, one message stands alone, several are bracketed.
fn aggregate(errs: Vec<String>) -> Result<(), String> {
    let mut unique: Vec<String> = Vec::with_capacity(errs.len());
    for e in errs {
        if !unique.contains(&e) {
            unique.push(e);
        }
    }
    match unique.len() {
        0 => Ok(()),
        1 => Err(unique.remove(0)),
        _ => Err(format!("[{}]", unique.join(", "))),
    }
}

// ---------------------------------------------------------------------------
// Label selector
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// What a label set holds for a key.
#[derive(Clone, Copy)]
enum Lookup<'a> {
    Missing,
    Value(&'a str),
    /// The key is present but its value is not a string (only possible for
    /// loosely typed JSON objects); it equals no selector value.
    Unmatchable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Operator,
    /// As given: one entry for `=`, `==`, `!=`, `>`, `<`; at least one for
    /// `in`/`notin`; none for the existence operators.
    values: Vec<String>,
}

impl Requirement {
    /// Builds a validated requirement (upstream `NewRequirement`). Messages
    /// use the field paths `key`, `values`, `values[i]` and `values[i][key]`.
    fn new(key: &str, op: Operator, values: Vec<String>) -> Result<Requirement, String> {
        let mut errs = Vec::new();
        let key_errs = label_key_errors(key);
        if !key_errs.is_empty() {
            errs.push(invalid("key", &quote(key), &key_errs.join("; ")));
        }
        match op {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(invalid(
                        "values",
                        &quote_list(&values),
                        "for 'in', 'notin' operators, values set can't be empty",
                    ));
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(invalid(
                        "values",
                        &quote_list(&values),
                        "exact-match compatibility requires one single value",
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(invalid(
                        "values",
                        &quote_list(&values),
                        "values set must be empty for exists and does not exist",
                    ));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(invalid(
                        "values",
                        &quote_list(&values),
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(invalid(
                            &format!("values[{i}]"),
                            &quote(v),
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let value_errs = label_value_errors(v);
            if !value_errs.is_empty() {
                errs.push(invalid(
                    &format!("values[{i}][{key}]"),
                    &quote(v),
                    &value_errs.join("; "),
                ));
            }
        }
        aggregate(errs)?;
        Ok(Requirement {
            key: key.to_string(),
            op,
            values,
        })
    }

    fn has_value(&self, value: &str) -> bool {
        self.values.iter().any(|v| v == value)
    }

    fn matches_lookup(&self, found: Lookup<'_>) -> bool {
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => match found {
                Lookup::Value(v) => self.has_value(v),
                Lookup::Missing | Lookup::Unmatchable => false,
            },
            Operator::NotIn | Operator::NotEquals => match found {
                Lookup::Value(v) => !self.has_value(v),
                Lookup::Missing | Lookup::Unmatchable => true,
            },
            Operator::Exists => !matches!(found, Lookup::Missing),
            Operator::DoesNotExist => matches!(found, Lookup::Missing),
            Operator::GreaterThan | Operator::LessThan => {
                let Lookup::Value(v) = found else {
                    return false;
                };
                let (Ok(actual), [wanted]) = (v.parse::<i64>(), self.values.as_slice()) else {
                    return false;
                };
                let Ok(wanted) = wanted.parse::<i64>() else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    actual > wanted
                } else {
                    actual < wanted
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Operator::Exists => return f.write_str(&self.key),
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        let set_based = matches!(self.op, Operator::In | Operator::NotIn);
        let mut sorted: Vec<&str> = self.values.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        let values = sorted.join(",");
        if set_based {
            write!(f, "{}{op}({values})", self.key)
        } else {
            write!(f, "{}{op}{values}", self.key)
        }
    }
}

/// A label selector: the conjunction (AND) of its requirements.
///
/// The empty selector (parsed from `""`, or built from an empty
/// `matchLabels`/`matchExpressions`) matches every object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Sorted by key (stable), as upstream does for deterministic output.
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the string form used by `?labelSelector=` and `kubectl -l`.
    ///
    /// Grammar: comma-separated requirements, each one of `key`, `!key`,
    /// `key=value`, `key==value`, `key!=value`, `key in (v1,v2)`,
    /// `key notin (v1,v2)`, `key>int`, `key<int`. Whitespace between tokens
    /// is ignored. Keys must be qualified names and values label values.
    ///
    /// # Errors
    ///
    /// Returns a message in the style of the Kubernetes API server when the
    /// input is malformed or a key/value fails validation.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut parser = Parser {
            items: lex(s),
            pos: 0,
        };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Converts the structured `metav1.LabelSelector` form (upstream
    /// `LabelSelectorAsSelector`). `match_expressions` holds
    /// `(key, operator, values)` with operator one of `In`, `NotIn`,
    /// `Exists`, `DoesNotExist`.
    ///
    /// Empty labels and expressions give the match-everything selector; a
    /// *nil* selector (matches nothing) has to be handled by the caller.
    ///
    /// # Errors
    ///
    /// Fails on an unknown operator, a wrong number of values for the
    /// operator, or an invalid key or value.
    pub fn from_match(
        match_labels: &BTreeMap<String, String>,
        match_expressions: &[(String, String, Vec<String>)],
    ) -> Result<LabelSelector, String> {
        let mut requirements = Vec::with_capacity(match_labels.len() + match_expressions.len());
        for (key, value) in match_labels {
            requirements.push(Requirement::new(
                key,
                Operator::Equals,
                vec![value.clone()],
            )?);
        }
        for (key, operator, values) in match_expressions {
            let op = match operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(format!(
                        "{} is not a valid label selector operator",
                        quote(other)
                    ));
                }
            };
            requirements.push(Requirement::new(key, op, values.clone())?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Converts an API `LabelSelector` (matchLabels and matchExpressions).
    pub fn from_k8s(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Result<LabelSelector, String> {
        let expressions: Vec<(String, String, Vec<String>)> = selector
            .match_expressions
            .iter()
            .flatten()
            .map(|e| (e.key.clone(), e.operator.clone(), e.values.clone().unwrap_or_default()))
            .collect();
        Self::from_match(&selector.match_labels.clone().unwrap_or_default(), &expressions)
    }

    /// Converts a selector held as JSON: a `LabelSelector` object, or the plain
    /// label map ReplicationControllers and Services use.
    pub fn from_json(selector: &serde_json::Value) -> Result<LabelSelector, String> {
        if selector.get("matchLabels").is_some() || selector.get("matchExpressions").is_some() {
            let typed = serde_json::from_value(selector.clone()).map_err(|e| e.to_string())?;
            return Self::from_k8s(&typed);
        }
        let labels: BTreeMap<String, String> = serde_json::from_value(selector.clone()).map_err(|e| e.to_string())?;
        Self::from_match(&labels, &[])
    }

    /// True when the selector places no restriction (matches everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// True when every requirement holds for `labels`.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            r.matches_lookup(match labels.get(&r.key) {
                Some(v) => Lookup::Value(v),
                None => Lookup::Missing,
            })
        })
    }

    /// Like [`matches`](Self::matches) for `metadata.labels` held as JSON.
    /// `None` means "no labels". A key whose value is not a JSON string
    /// counts as present (for `key` / `!key`) but equals no value, so it
    /// fails `=`, `in`, `>` and `<`, and satisfies `!=` and `notin`.
    #[must_use]
    pub fn matches_json(
        &self,
        labels: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> bool {
        self.requirements.iter().all(|r| {
            let found = match labels.and_then(|m| m.get(&r.key)) {
                None => Lookup::Missing,
                Some(serde_json::Value::String(v)) => Lookup::Value(v),
                Some(_) => Lookup::Unmatchable,
            };
            r.matches_lookup(found)
        })
    }

    /// If the selector pins `key` to exactly one value (`key=v`, `key==v`
    /// or `key in (v)`), returns that value. Like upstream, only the first
    /// requirement on `key` is considered.
    #[must_use]
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.op, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for LabelSelector {
    /// Canonical form: requirements sorted by key, joined by `,`; values of
    /// `in`/`notin` sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// --- lexer -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    Identifier,
    In,
    NotIn,
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    OpenPar,
    ClosePar,
    Comma,
}

#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    tok: Tok,
    lit: &'a str,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the selector into tokens; the last item is always `Tok::End`.
///
/// Token boundaries are only ever placed next to ASCII bytes (whitespace or
/// operator characters) or at the ends of the string, so all slices fall on
/// UTF-8 character boundaries.
fn lex(s: &str) -> Vec<Item<'_>> {
    let bytes = s.as_bytes();
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        let Some(&b) = bytes.get(pos) else {
            items.push(Item {
                tok: Tok::End,
                lit: "",
            });
            return items;
        };
        let start = pos;
        let tok = if is_special(b) {
            let followed_by_eq = bytes.get(pos + 1) == Some(&b'=');
            let (tok, len) = match b {
                b'=' if followed_by_eq => (Tok::DoubleEquals, 2),
                b'!' if followed_by_eq => (Tok::NotEquals, 2),
                b'=' => (Tok::Equals, 1),
                b'!' => (Tok::Bang, 1),
                b'(' => (Tok::OpenPar, 1),
                b')' => (Tok::ClosePar, 1),
                b',' => (Tok::Comma, 1),
                b'>' => (Tok::GreaterThan, 1),
                _ => (Tok::LessThan, 1),
            };
            pos += len;
            tok
        } else {
            while pos < bytes.len() && !is_special(bytes[pos]) && !is_whitespace(bytes[pos]) {
                pos += 1;
            }
            match &s[start..pos] {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Identifier,
            }
        };
        items.push(Item {
            tok,
            lit: &s[start..pos],
        });
    }
}

// --- parser ----------------------------------------------------------------

/// `in` and `notin` are keywords only where an operator is expected;
/// elsewhere (keys, values) they are plain identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Operator,
    Value,
}

struct Parser<'a> {
    items: Vec<Item<'a>>,
    pos: usize,
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

impl<'a> Parser<'a> {
    fn current(&self, ctx: Context) -> (Tok, &'a str) {
        // `items` always ends with `End`; never read past it.
        let item = self
            .items
            .get(self.pos)
            .or(self.items.last())
            .copied()
            .unwrap_or(Item {
                tok: Tok::End,
                lit: "",
            });
        let tok = match item.tok {
            Tok::In | Tok::NotIn if ctx == Context::Value => Tok::Identifier,
            t => t,
        };
        (tok, item.lit)
    }

    fn peek(&self, ctx: Context) -> (Tok, &'a str) {
        self.current(ctx)
    }

    fn next(&mut self, ctx: Context) -> (Tok, &'a str) {
        let item = self.current(ctx);
        if self.pos < self.items.len() {
            self.pos += 1;
        }
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.peek(Context::Value);
            match tok {
                Tok::Identifier | Tok::Bang => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(r);
                    let (tok, lit) = self.next(Context::Value);
                    match tok {
                        Tok::End => return Ok(requirements),
                        Tok::Comma => {
                            let (tok, lit) = self.peek(Context::Value);
                            if tok != Tok::Identifier && tok != Tok::Bang {
                                return Err(format!(
                                    "found '{lit}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => {
                            return Err(format!("found '{lit}', expected: ',' or 'end of string'"));
                        }
                    }
                }
                Tok::End => return Ok(requirements),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, unary) = self.parse_key()?;
        if let Some(op) = unary {
            return Requirement::new(key, op, Vec::new());
        }
        let (tok, lit) = self.next(Context::Operator);
        let op = match tok {
            Tok::In => Operator::In,
            Tok::NotIn => Operator::NotIn,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::NotEquals => Operator::NotEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            _ => return Err(format!("found '{lit}', expected: {BINARY_OPERATORS}")),
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_value_set()?,
            _ => vec![self.parse_single_value()?],
        };
        Requirement::new(key, op, values)
    }

    /// Reads `[!]key`. Returns the unary operator when the requirement ends
    /// here (`!key` always does; `key` does when followed by `,` or the end).
    fn parse_key(&mut self) -> Result<(&'a str, Option<Operator>), String> {
        let (mut tok, mut lit) = self.next(Context::Value);
        let negated = tok == Tok::Bang;
        if negated {
            (tok, lit) = self.next(Context::Value);
        }
        if tok != Tok::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let errs = label_key_errors(lit);
        if !errs.is_empty() {
            return Err(invalid("<nil>", &quote(lit), &errs.join("; ")));
        }
        if negated {
            return Ok((lit, Some(Operator::DoesNotExist)));
        }
        let (next, _) = self.peek(Context::Value);
        if matches!(next, Tok::End | Tok::Comma) {
            return Ok((lit, Some(Operator::Exists)));
        }
        Ok((lit, None))
    }

    /// Reads `( v1, v2, ... )`. Empty entries stand for the empty value, so
    /// `()` and `(a,)` both contain `""`. The result is sorted and deduplicated.
    fn parse_value_set(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.next(Context::Value);
        if tok != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.peek(Context::Value);
        let set = match tok {
            Tok::ClosePar => {
                self.next(Context::Value);
                BTreeSet::from([String::new()])
            }
            Tok::Identifier | Tok::Comma => {
                let set = self.parse_value_list()?;
                // parse_value_list only succeeds in front of ')'.
                let (tok, _) = self.next(Context::Value);
                if tok != Tok::ClosePar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                set
            }
            _ => return Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        };
        Ok(set.into_iter().collect())
    }

    fn parse_value_list(&mut self) -> Result<BTreeSet<String>, String> {
        let mut set = BTreeSet::new();
        loop {
            let (tok, lit) = self.next(Context::Value);
            match tok {
                Tok::Identifier => {
                    set.insert(lit.to_string());
                    let (after, after_lit) = self.peek(Context::Value);
                    match after {
                        Tok::Comma => {}
                        Tok::ClosePar => return Ok(set),
                        _ => return Err(format!("found '{after_lit}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    // A comma with nothing before it, before ')' or before
                    // another comma delimits an empty value.
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    match self.peek(Context::Value).0 {
                        Tok::ClosePar => {
                            set.insert(String::new());
                            return Ok(set);
                        }
                        Tok::Comma => {
                            set.insert(String::new());
                        }
                        _ => {}
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`; nothing (end or `,`)
    /// means the empty value.
    fn parse_single_value(&mut self) -> Result<String, String> {
        if matches!(self.peek(Context::Value).0, Tok::End | Tok::Comma) {
            return Ok(String::new());
        }
        match self.next(Context::Value) {
            (Tok::Identifier, lit) => Ok(lit.to_string()),
            (_, lit) => Err(format!("found '{lit}', expected: identifier")),
        }
    }
}

// ---------------------------------------------------------------------------
// Field selector
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    equal: bool,
    value: String,
}

/// A field selector: the conjunction of `field=value` / `field!=value`
/// terms. The empty selector matches everything.
///
/// Field names are taken literally (no trimming, no unescaping); values may
/// escape `\`, `,` and `=` with a backslash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Splits at commas not preceded by an escaping backslash; escapes are kept.
fn split_field_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at the first operator (`!=`, `==` or `=`, tried in that
/// order at each position). Returns `(field, is_equality, raw value)`.
fn split_field_term(term: &str) -> Option<(&str, bool, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, equal) in [("!=", false), ("==", true), ("=", true)] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], equal, value));
            }
        }
    }
    None
}

fn unescape_field_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut escaped = false;
    for c in raw.chars() {
        if escaped {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{other}"
                    ));
                }
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: '{c}'"
                ));
            }
            other => out.push(other),
        }
    }
    if escaped {
        return Err("invalid field selector: invalid escape sequence: \\".to_string());
    }
    Ok(out)
}

fn escape_field_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl FieldSelector {
    /// Parses `field=value,field==value,field!=value`. Empty terms (e.g. a
    /// trailing comma) are ignored; terms are kept in sorted order.
    ///
    /// # Errors
    ///
    /// Fails on a term without an operator, an invalid escape sequence or an
    /// unescaped `,`/`=` in a value.
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut parts = split_field_terms(s);
        parts.sort_unstable();
        let mut terms = Vec::with_capacity(parts.len());
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, equal, raw)) = split_field_term(part) else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let value = unescape_field_value(raw)?;
            // A bare "=" or "!=" (no field, no value) restricts nothing.
            if field.is_empty() && value.is_empty() {
                continue;
            }
            terms.push(FieldTerm {
                field: field.to_string(),
                equal,
                value,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// The terms as `(field, is_equality, unescaped value)`; `is_equality`
    /// is true for `=`/`==` and false for `!=`.
    pub fn requirements(&self) -> impl Iterator<Item = (&str, bool, &str)> {
        self.terms
            .iter()
            .map(|t| (t.field.as_str(), t.equal, t.value.as_str()))
    }

    /// True when every term holds. `get(field)` returns the object's value
    /// for a field; a missing field compares as the empty string.
    #[must_use]
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let actual = get(&t.field).unwrap_or_default();
            (actual == t.value) == t.equal
        })
    }

    /// True when the selector places no restriction.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value of the first `=`/`==` term on `field`, if any.
    #[must_use]
    pub fn single_value(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.equal && t.field == field)
            .map(|t| t.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    /// Canonical form: `field=value` / `field!=value` joined by `,`, with
    /// `\`, `,` and `=` in values escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if t.equal { "=" } else { "!=" };
            write!(f, "{}{op}{}", t.field, escape_field_value(&t.value))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("parse {s:?} failed: {e}"))
    }

    fn err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(v) => panic!("parse {s:?} unexpectedly succeeded: {v}"),
            Err(e) => e,
        }
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> (String, String, Vec<String>) {
        (
            key.to_string(),
            op.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |f| {
            pairs
                .iter()
                .find(|(k, _)| *k == f)
                .map(|(_, v)| v.to_string())
        }
    }

    fn fsel(s: &str) -> FieldSelector {
        FieldSelector::parse(s).unwrap_or_else(|e| panic!("parse {s:?} failed: {e}"))
    }

    // --- label selector: matching -----------------------------------------

    #[test]
    fn empty_string_matches_everything() {
        let s = sel("");
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert_eq!(s.to_string(), "");
    }

    #[test]
    fn whitespace_only_is_the_empty_selector() {
        assert!(sel(" \t\r\n ").is_empty());
    }

    #[test]
    fn default_selector_is_empty_and_matches_everything() {
        let s = LabelSelector::default();
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn equality_matches_only_the_exact_value() {
        let s = sel("env=prod");
        assert!(!s.is_empty());
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])));
        assert!(!s.matches(&labels(&[("other", "prod")])));
    }

    #[test]
    fn double_equals_behaves_like_equals() {
        let s = sel("env==prod");
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn not_equals_matches_other_values_and_missing_key() {
        let s = sel("env!=prod");
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn equals_with_no_value_matches_empty_label_value() {
        let s = sel("a=");
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[("a", "x")])));
        assert!(!s.matches(&labels(&[])));
        let s = sel("a=,b=c");
        assert!(s.matches(&labels(&[("a", ""), ("b", "c")])));
        let s = sel("a!=");
        assert!(s.matches(&labels(&[("a", "x")])));
        assert!(!s.matches(&labels(&[("a", "")])));
    }

    #[test]
    fn set_based_in_matches_any_listed_value() {
        let s = sel("tier in (frontend, backend)");
        assert!(s.matches(&labels(&[("tier", "frontend")])));
        assert!(s.matches(&labels(&[("tier", "backend")])));
        assert!(!s.matches(&labels(&[("tier", "cache")])));
    }

    #[test]
    fn set_based_in_does_not_match_objects_without_the_key() {
        assert!(!sel("tier in (a)").matches(&labels(&[("other", "a")])));
    }

    #[test]
    fn set_based_notin_matches_objects_without_the_key() {
        let s = sel("tier notin (a,b)");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("tier", "c")])));
        assert!(!s.matches(&labels(&[("tier", "a")])));
        assert!(!s.matches(&labels(&[("tier", "b")])));
    }

    #[test]
    fn empty_parentheses_mean_the_empty_value() {
        let s = sel("a in ()");
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[("a", "x")])));
        assert_eq!(s.to_string(), "a in ()");
    }

    #[test]
    fn empty_entries_in_a_value_set_mean_the_empty_value() {
        for input in ["x in (foo,,baz)", "x in (,foo,baz)", "x in (foo,baz,)"] {
            let s = sel(input);
            assert!(s.matches(&labels(&[("x", "")])), "{input}");
            assert!(s.matches(&labels(&[("x", "foo")])), "{input}");
            assert!(s.matches(&labels(&[("x", "baz")])), "{input}");
            assert!(!s.matches(&labels(&[("x", "bar")])), "{input}");
            assert_eq!(s.to_string(), "x in (,baz,foo)", "{input}");
        }
        assert_eq!(sel("x in (,)").to_string(), "x in ()");
    }

    #[test]
    fn exists_matches_any_value_including_empty() {
        let s = sel("app");
        assert!(s.matches(&labels(&[("app", "x")])));
        assert!(s.matches(&labels(&[("app", "")])));
        assert!(!s.matches(&labels(&[("other", "x")])));
    }

    #[test]
    fn does_not_exist_matches_only_objects_without_the_key() {
        let s = sel("!app");
        assert!(!s.matches(&labels(&[("app", "x")])));
        assert!(s.matches(&labels(&[("other", "x")])));
        assert!(s.matches(&labels(&[])));
        assert_eq!(sel("! app").to_string(), "!app");
    }

    #[test]
    fn greater_than_compares_integers() {
        let s = sel("replicas>5");
        assert!(s.matches(&labels(&[("replicas", "6")])));
        assert!(s.matches(&labels(&[("replicas", "10")])));
        assert!(!s.matches(&labels(&[("replicas", "5")])));
        assert!(!s.matches(&labels(&[("replicas", "4")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn less_than_compares_integers() {
        let s = sel("replicas<5");
        assert!(s.matches(&labels(&[("replicas", "4")])));
        assert!(s.matches(&labels(&[("replicas", "0")])));
        assert!(!s.matches(&labels(&[("replicas", "5")])));
        assert!(!s.matches(&labels(&[("replicas", "10")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn gt_lt_never_match_non_integer_label_values() {
        assert!(!sel("a>1").matches(&labels(&[("a", "x")])));
        assert!(!sel("a<1").matches(&labels(&[("a", "")])));
        assert!(!sel("a<1").matches(&labels(&[("a", "99999999999999999999")])));
    }

    #[test]
    fn comma_is_a_conjunction() {
        let s = sel("a=1,b!=2,c,!d");
        assert!(s.matches(&labels(&[("a", "1"), ("b", "3"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "2"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("c", ""), ("d", "x")])));
        assert!(!s.matches(&labels(&[("a", "1")])));
    }

    #[test]
    fn conflicting_requirements_match_nothing() {
        let s = sel("a=1,a=2");
        assert!(!s.matches(&labels(&[("a", "1")])));
        assert!(!s.matches(&labels(&[("a", "2")])));
        assert_eq!(s.to_string(), "a=1,a=2");
    }

    #[test]
    fn whitespace_is_tolerated_around_tokens() {
        let s = sel("  a = b ,\tc\tin\t( x ,y ) ,\n!d , e != f , g>1 ");
        assert_eq!(s.to_string(), "a=b,c in (x,y),!d,e!=f,g>1");
        let s = sel("a in(x),b notin(y)");
        assert_eq!(s.to_string(), "a in (x),b notin (y)");
    }

    #[test]
    fn keywords_are_plain_identifiers_outside_operator_position() {
        let s = sel("in in (in, notin)");
        assert!(s.matches(&labels(&[("in", "notin")])));
        assert_eq!(s.to_string(), "in in (in,notin)");
        let s = sel("notin notin (in),in");
        assert_eq!(s.to_string(), "in,notin notin (in)");
        assert!(sel("!notin").matches(&labels(&[])));
        assert!(sel("a=in").matches(&labels(&[("a", "in")])));
    }

    #[test]
    fn prefixed_keys_are_accepted() {
        let s = sel("app.kubernetes.io/name=web,example.com/x in (a)");
        assert!(s.matches(&labels(&[
            ("app.kubernetes.io/name", "web"),
            ("example.com/x", "a")
        ])));
    }

    #[test]
    fn requires_exact_match_reports_pinned_values() {
        let s = sel("a=1,b in (2),c in (3,4),d!=5,e==6");
        assert_eq!(s.requires_exact_match("a"), Some("1"));
        assert_eq!(s.requires_exact_match("b"), Some("2"));
        assert_eq!(s.requires_exact_match("c"), None);
        assert_eq!(s.requires_exact_match("d"), None);
        assert_eq!(s.requires_exact_match("e"), Some("6"));
        assert_eq!(s.requires_exact_match("zz"), None);
    }

    // --- label selector: JSON matching ------------------------------------

    fn json_labels(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn json_labels_match_like_string_maps() {
        let m = json_labels(serde_json::json!({"env": "prod", "n": "7"}));
        assert!(sel("env=prod,n>5").matches_json(Some(&m)));
        assert!(sel("env in (prod,dev),!missing").matches_json(Some(&m)));
        assert!(!sel("env=dev").matches_json(Some(&m)));
    }

    #[test]
    fn json_missing_labels_behave_as_no_labels() {
        assert!(sel("").matches_json(None));
        assert!(sel("!a").matches_json(None));
        assert!(sel("a notin (x)").matches_json(None));
        assert!(!sel("a").matches_json(None));
        assert!(!sel("a=b").matches_json(None));
    }

    #[test]
    fn json_non_string_label_values_never_match_a_value() {
        let m = json_labels(serde_json::json!({"n": 7, "b": true, "z": null}));
        assert!(!sel("n=7").matches_json(Some(&m)));
        assert!(!sel("n in (7)").matches_json(Some(&m)));
        assert!(!sel("n>1").matches_json(Some(&m)));
        assert!(!sel("n<100").matches_json(Some(&m)));
        assert!(!sel("b=true").matches_json(Some(&m)));
        assert!(sel("n!=7").matches_json(Some(&m)));
        assert!(sel("n notin (7)").matches_json(Some(&m)));
        // The key is still present.
        assert!(sel("n,b,z").matches_json(Some(&m)));
        assert!(!sel("!z").matches_json(Some(&m)));
    }

    // --- label selector: Display / round trips ----------------------------

    #[test]
    fn display_sorts_requirements_by_key_and_set_values() {
        let s = sel("tier!=x, env in (b, a), app");
        assert_eq!(s.to_string(), "app,env in (a,b),tier!=x");
    }

    #[test]
    fn display_deduplicates_parsed_set_values() {
        assert_eq!(sel("a in (x,x,y)").to_string(), "a in (x,y)");
    }

    #[test]
    fn display_keeps_operator_spelling() {
        for s in [
            "a=b",
            "a==b",
            "a!=b",
            "a>1",
            "a<1",
            "a",
            "!a",
            "a in (b)",
            "a notin (b)",
        ] {
            assert_eq!(sel(s).to_string(), s);
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        let inputs = [
            "",
            "a",
            "!a",
            "a=b",
            "a==b",
            "a!=b",
            "a=",
            "a>10",
            "a<0",
            "a in ()",
            "x in (foo,,baz),y,z notin ()",
            "z in (c,b,a), y notin (q), x, !w, v=1, u==2, t!=3, s>4, r<5",
            "example.com/k in (in,notin),notin=in",
            "a=1,a=2,a!=3",
        ];
        for input in inputs {
            let first = sel(input);
            let text = first.to_string();
            let second = sel(&text);
            assert_eq!(first, second, "{input:?} -> {text:?}");
            assert_eq!(second.to_string(), text);
        }
    }

    #[test]
    fn from_match_display_round_trips_through_parse() {
        let ml = labels(&[("app", "web"), ("b", "")]);
        let ex = [
            expr("tier", "In", &["z", "a", "m"]),
            expr("env", "NotIn", &["prod"]),
            expr("x", "Exists", &[]),
            expr("y", "DoesNotExist", &[]),
            expr("w", "In", &[""]),
        ];
        let s = LabelSelector::from_match(&ml, &ex).unwrap();
        let text = s.to_string();
        assert_eq!(
            text,
            "app=web,b=,env notin (prod),tier in (a,m,z),w in (),x,!y"
        );
        let reparsed = sel(&text);
        assert_eq!(reparsed.to_string(), text);
        for l in [
            labels(&[
                ("app", "web"),
                ("b", ""),
                ("tier", "m"),
                ("w", ""),
                ("x", "1"),
            ]),
            labels(&[
                ("app", "web"),
                ("b", ""),
                ("tier", "m"),
                ("w", ""),
                ("x", "1"),
                ("env", "prod"),
            ]),
            labels(&[
                ("app", "web"),
                ("b", ""),
                ("tier", "q"),
                ("w", ""),
                ("x", "1"),
            ]),
            labels(&[
                ("app", "web"),
                ("b", ""),
                ("tier", "a"),
                ("w", ""),
                ("x", "1"),
                ("y", ""),
            ]),
        ] {
            assert_eq!(s.matches(&l), reparsed.matches(&l), "{l:?}");
        }
    }

    // --- label selector: from_match ---------------------------------------

    #[test]
    fn from_match_empty_matches_everything() {
        let s = LabelSelector::from_match(&BTreeMap::new(), &[]).unwrap();
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn from_match_labels_are_equality_requirements() {
        let s = LabelSelector::from_match(&labels(&[("app", "web"), ("tier", "fe")]), &[]).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert_eq!(s.to_string(), "app=web,tier=fe");
    }

    #[test]
    fn from_match_expressions_cover_every_operator() {
        let ex = [
            expr("a", "In", &["1", "2"]),
            expr("b", "NotIn", &["3"]),
            expr("c", "Exists", &[]),
            expr("d", "DoesNotExist", &[]),
        ];
        let s = LabelSelector::from_match(&BTreeMap::new(), &ex).unwrap();
        assert!(s.matches(&labels(&[("a", "2"), ("c", "")])));
        assert!(s.matches(&labels(&[("a", "1"), ("b", "4"), ("c", "x")])));
        assert!(!s.matches(&labels(&[("a", "3"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "3"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "1")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("c", ""), ("d", "")])));
    }

    #[test]
    fn from_match_rejects_unknown_operator() {
        let e =
            LabelSelector::from_match(&BTreeMap::new(), &[expr("a", "Gt", &["1"])]).unwrap_err();
        assert_eq!(e, "\"Gt\" is not a valid label selector operator");
        let e =
            LabelSelector::from_match(&BTreeMap::new(), &[expr("a", "in", &["1"])]).unwrap_err();
        assert!(e.contains("not a valid label selector operator"), "{e}");
    }

    #[test]
    fn from_match_in_and_notin_need_values() {
        for op in ["In", "NotIn"] {
            let e = LabelSelector::from_match(&BTreeMap::new(), &[expr("a", op, &[])]).unwrap_err();
            assert_eq!(
                e,
                "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
            );
        }
    }

    #[test]
    fn from_match_exists_and_does_not_exist_refuse_values() {
        for op in ["Exists", "DoesNotExist"] {
            let e =
                LabelSelector::from_match(&BTreeMap::new(), &[expr("a", op, &["x"])]).unwrap_err();
            assert_eq!(
                e,
                "values: Invalid value: []string{\"x\"}: values set must be empty for exists and does not exist"
            );
        }
    }

    #[test]
    fn from_match_validates_keys_and_values() {
        let e = LabelSelector::from_match(&labels(&[("bad key", "v")]), &[]).unwrap_err();
        assert!(
            e.starts_with("key: Invalid value: \"bad key\": name part must consist of"),
            "{e}"
        );
        let e = LabelSelector::from_match(&labels(&[("k", "bad value")]), &[]).unwrap_err();
        assert!(
            e.starts_with(
                "values[0][k]: Invalid value: \"bad value\": a valid label must be an empty string"
            ),
            "{e}"
        );
        let e = LabelSelector::from_match(&BTreeMap::new(), &[expr("k", "In", &["ok", "-bad"])])
            .unwrap_err();
        assert!(
            e.starts_with("values[1][k]: Invalid value: \"-bad\""),
            "{e}"
        );
    }

    #[test]
    fn from_match_reports_several_problems_together() {
        let e = LabelSelector::from_match(&BTreeMap::new(), &[expr("-k", "Exists", &["v"])])
            .unwrap_err();
        assert!(e.starts_with("[key: Invalid value: \"-k\""), "{e}");
        assert!(
            e.contains(", values: Invalid value: []string{\"v\"}"),
            "{e}"
        );
        assert!(e.ends_with(']'), "{e}");
    }

    // --- label selector: parse errors -------------------------------------

    #[test]
    fn trailing_comma_is_rejected() {
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(err("a,"), "found '', expected: identifier after ','");
    }

    #[test]
    fn leading_or_double_comma_is_rejected() {
        assert_eq!(
            err(",a"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(err("a,,b"), "found ',', expected: identifier after ','");
    }

    #[test]
    fn selector_starting_with_an_operator_is_rejected() {
        assert_eq!(
            err("=a"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("(a)"),
            "found '(', expected: !, identifier, or 'end of string'"
        );
    }

    #[test]
    fn missing_operator_between_key_and_value_is_rejected() {
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            err("a!"),
            "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt"
        );
    }

    #[test]
    fn bang_without_key_is_rejected() {
        assert_eq!(
            err("!"),
            "unable to parse requirement: found '', expected: identifier"
        );
        assert_eq!(
            err("!=a"),
            "found '!=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("!!a"),
            "unable to parse requirement: found '!', expected: identifier"
        );
    }

    #[test]
    fn does_not_exist_cannot_take_a_value() {
        assert_eq!(err("!a=b"), "found '=', expected: ',' or 'end of string'");
        assert_eq!(
            err("!a in (b)"),
            "found 'in', expected: ',' or 'end of string'"
        );
    }

    #[test]
    fn extra_tokens_after_a_requirement_are_rejected() {
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(err("a=b=c"), "found '=', expected: ',' or 'end of string'");
        assert_eq!(err("a=b)"), "found ')', expected: ',' or 'end of string'");
    }

    #[test]
    fn operator_in_value_position_is_rejected() {
        assert_eq!(
            err("a=!"),
            "unable to parse requirement: found '!', expected: identifier"
        );
        assert_eq!(
            err("a=(b)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(
            err("a<>1"),
            "unable to parse requirement: found '>', expected: identifier"
        );
    }

    #[test]
    fn set_operator_without_parenthesis_is_rejected() {
        assert_eq!(
            err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            err("a notin"),
            "unable to parse requirement: found '' expected: '('"
        );
    }

    #[test]
    fn unbalanced_parentheses_are_rejected() {
        assert_eq!(
            err("a in ("),
            "unable to parse requirement: found '', expected: ',', ')' or identifier"
        );
        assert_eq!(
            err("a in (b"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in (b,"),
            "unable to parse requirement: found '', expected: ',', or identifier"
        );
        assert_eq!(
            err("a in ((b))"),
            "unable to parse requirement: found '(', expected: ',', ')' or identifier"
        );
        assert_eq!(
            err("a in (b))"),
            "found ')', expected: ',' or 'end of string'"
        );
        assert_eq!(
            err("a in (b c)"),
            "unable to parse requirement: found 'c', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in (b,=)"),
            "unable to parse requirement: found '=', expected: ',', or identifier"
        );
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let e = err("app:monolith");
        assert_eq!(
            e,
            "unable to parse requirement: <nil>: Invalid value: \"app:monolith\": name part must \
             consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for \
             validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        for bad in [
            "-a", "a-", "a_/b", "/a", "a/", "a/b/c", "A.com/b", "é", "a b=c d",
        ] {
            let e = err(bad);
            assert!(e.starts_with("unable to parse requirement: "), "{bad}: {e}");
        }
        assert!(err("/a").contains("prefix part must be non-empty"));
        assert!(err("a/").contains("name part must be non-empty"));
        assert!(err("a/b/c").contains("a qualified name must consist of"));
        assert!(err("A.com/b").contains("prefix part a lowercase RFC 1123 subdomain"));
    }

    #[test]
    fn key_length_limits_are_enforced() {
        let name63 = "a".repeat(63);
        assert!(LabelSelector::parse(&name63).is_ok());
        let e = err(&"a".repeat(64));
        assert!(e.contains("name part must be no more than 63 bytes"), "{e}");

        let label = "b".repeat(63);
        let prefix253 = format!("{label}.{label}.{label}.{}", "c".repeat(61));
        assert_eq!(prefix253.len(), 253);
        assert!(LabelSelector::parse(&format!("{prefix253}/x")).is_ok());
        let prefix254 = format!("{prefix253}c");
        let e = err(&format!("{prefix254}/x"));
        assert!(
            e.contains("prefix part must be no more than 253 bytes"),
            "{e}"
        );
    }

    #[test]
    fn invalid_values_are_rejected() {
        let e = err("a=-b");
        assert!(
            e.starts_with(
                "unable to parse requirement: values[0][a]: Invalid value: \"-b\": a valid label \
                 must be an empty string or consist of alphanumeric characters"
            ),
            "{e}"
        );
        assert!(e.contains(
            "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?'"
        ));
        assert!(err("a in (ok, b_)").contains("values[0][a]: Invalid value: \"b_\""));
        assert!(err("a!=x/y").contains("Invalid value: \"x/y\""));
        let e = err(&format!("a={}", "v".repeat(64)));
        assert!(e.contains("must be no more than 63 bytes"), "{e}");
        assert!(LabelSelector::parse(&format!("a={}", "v".repeat(63))).is_ok());
    }

    #[test]
    fn several_invalid_values_are_reported_together() {
        let e = err("a in (-x, y_)");
        assert!(
            e.starts_with("unable to parse requirement: [values[0][a]: Invalid value: \"-x\""),
            "{e}"
        );
        assert!(e.contains(", values[1][a]: Invalid value: \"y_\""), "{e}");
    }

    #[test]
    fn gt_lt_require_integer_values() {
        assert_eq!(
            err("a>b"),
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        assert!(err("a<").contains("the value must be an integer"));
        assert!(err("a>1.5").contains("the value must be an integer"));
        assert!(err("a>99999999999999999999").contains("the value must be an integer"));
        // Negative numbers are integers but not valid label values.
        let e = err("a>-1");
        assert!(e.contains("values[0][a]: Invalid value: \"-1\""), "{e}");
        assert!(!e.contains("must be an integer"), "{e}");
    }

    #[test]
    fn unicode_input_errors_without_panicking() {
        for input in ["ключ=значение", "a=ü", "a in (日本)", "😀", "a>٣", "a=b,é"]
        {
            assert!(LabelSelector::parse(input).is_err(), "{input}");
        }
        assert!(err("a=\u{0}").contains("Invalid value"));
    }

    /// Deterministic pseudo-random inputs built from grammar fragments and
    /// multi-byte characters: parsing must never panic, and whatever parses
    /// must round-trip through Display.
    #[test]
    fn arbitrary_input_never_panics() {
        const PIECES: &[&str] = &[
            "a", "b", "in", "notin", "=", "==", "!=", "!", "(", ")", ",", ">", "<", " ", "\t", "1",
            "-", "_", ".", "/", "é", "日", "😀", "\\", "x.y/z", "",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 10) as usize;
            let mut s = String::new();
            for _ in 0..len {
                s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            if let Ok(parsed) = LabelSelector::parse(&s) {
                let text = parsed.to_string();
                let again = LabelSelector::parse(&text)
                    .unwrap_or_else(|e| panic!("{s:?} -> {text:?} failed: {e}"));
                assert_eq!(again.to_string(), text, "{s:?}");
                let _ = parsed.matches(&labels(&[("a", "1"), ("b", "")]));
            }
            if let Ok(parsed) = FieldSelector::parse(&s) {
                let text = parsed.to_string();
                let again = FieldSelector::parse(&text)
                    .unwrap_or_else(|e| panic!("{s:?} -> {text:?} failed: {e}"));
                let mut a: Vec<_> = parsed.requirements().collect();
                let mut b: Vec<_> = again.requirements().collect();
                a.sort();
                b.sort();
                assert_eq!(a, b, "{s:?}");
            }
        }
    }

    // --- field selector ---------------------------------------------------

    #[test]
    fn field_empty_selector_matches_everything() {
        for input in ["", ",", ",,"] {
            let s = fsel(input);
            assert!(s.is_empty());
            assert!(s.matches(fields(&[("metadata.name", "x")])));
            assert_eq!(s.to_string(), "");
            assert_eq!(s.requirements().count(), 0);
        }
        assert!(FieldSelector::default().is_empty());
    }

    #[test]
    fn field_equality_matches_exact_value() {
        let s = fsel("metadata.name=foo");
        assert!(!s.is_empty());
        assert!(s.matches(fields(&[("metadata.name", "foo")])));
        assert!(!s.matches(fields(&[("metadata.name", "bar")])));
        assert!(!s.matches(fields(&[])));
    }

    #[test]
    fn field_double_equals_is_equality() {
        let s = fsel("status.phase==Running");
        assert!(s.matches(fields(&[("status.phase", "Running")])));
        assert_eq!(s.to_string(), "status.phase=Running");
        assert_eq!(
            s.requirements().collect::<Vec<_>>(),
            vec![("status.phase", true, "Running")]
        );
    }

    #[test]
    fn field_not_equals_matches_other_values_and_missing_field() {
        let s = fsel("spec.nodeName!=n1");
        assert!(s.matches(fields(&[("spec.nodeName", "n2")])));
        assert!(!s.matches(fields(&[("spec.nodeName", "n1")])));
        assert!(s.matches(fields(&[])));
    }

    #[test]
    fn field_missing_field_compares_as_empty_string() {
        assert!(fsel("spec.nodeName=").matches(fields(&[])));
        assert!(!fsel("spec.nodeName!=").matches(fields(&[])));
        assert!(fsel("spec.nodeName!=").matches(fields(&[("spec.nodeName", "n")])));
    }

    #[test]
    fn field_terms_are_a_conjunction_in_sorted_order() {
        let s = fsel("b=2,a!=1");
        assert_eq!(s.to_string(), "a!=1,b=2");
        assert!(s.matches(fields(&[("a", "0"), ("b", "2")])));
        assert!(!s.matches(fields(&[("a", "1"), ("b", "2")])));
        assert!(!s.matches(fields(&[("a", "0"), ("b", "3")])));
        assert_eq!(
            s.requirements().collect::<Vec<_>>(),
            vec![("a", false, "1"), ("b", true, "2")]
        );
    }

    #[test]
    fn field_trailing_and_doubled_commas_are_ignored() {
        assert_eq!(fsel("a=1,,b=2,").to_string(), "a=1,b=2");
    }

    #[test]
    fn field_escaped_characters_in_values_are_unescaped() {
        let s = fsel(r"metadata.name=a\,b\=c\\d");
        assert_eq!(s.single_value("metadata.name"), Some(r"a,b=c\d"));
        assert!(s.matches(fields(&[("metadata.name", r"a,b=c\d")])));
        assert_eq!(s.to_string(), r"metadata.name=a\,b\=c\\d");
    }

    #[test]
    fn field_escaped_comma_does_not_split_terms() {
        let s = fsel(r"a=x\,y,b=z");
        assert_eq!(
            s.requirements().collect::<Vec<_>>(),
            vec![("a", true, "x,y"), ("b", true, "z")]
        );
    }

    #[test]
    fn field_display_round_trips_through_parse() {
        for input in [
            "",
            "a=b",
            "a!=b",
            "a==b",
            r"a=\,\=\\",
            r"z=1,y!=2,x==\\",
            "metadata.namespace=default,metadata.name!=",
            "a=ü日😀",
        ] {
            let first = fsel(input);
            let text = first.to_string();
            let second = fsel(&text);
            assert_eq!(second.to_string(), text, "{input:?}");
            let mut a: Vec<_> = first.requirements().collect();
            let mut b: Vec<_> = second.requirements().collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{input:?}");
        }
    }

    #[test]
    fn field_unescaped_special_characters_in_values_are_rejected() {
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err(),
            "invalid field selector: unescaped character in value: '='"
        );
        assert!(FieldSelector::parse("a==b=c").is_err());
    }

    #[test]
    fn field_invalid_escape_sequences_are_rejected() {
        assert_eq!(
            FieldSelector::parse(r"a=b\x").unwrap_err(),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").unwrap_err(),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            FieldSelector::parse("a=\\é").unwrap_err(),
            "invalid field selector: invalid escape sequence: \\é"
        );
    }

    #[test]
    fn field_terms_without_operator_are_rejected() {
        assert_eq!(
            FieldSelector::parse("a=1,foo").unwrap_err(),
            "invalid selector: 'a=1,foo'; can't understand 'foo'"
        );
        assert!(FieldSelector::parse(" ").is_err());
        assert!(FieldSelector::parse("a!b").is_err());
    }

    #[test]
    fn field_operator_is_the_first_one_found() {
        let s = fsel("a!b=c");
        assert_eq!(
            s.requirements().collect::<Vec<_>>(),
            vec![("a!b", true, "c")]
        );
        // "!=" wins at position 1, leaving "=b" which has an unescaped '='.
        assert_eq!(
            FieldSelector::parse("a!==b").unwrap_err(),
            "invalid field selector: unescaped character in value: '='"
        );
    }

    #[test]
    fn field_names_and_values_are_not_trimmed() {
        let s = fsel(" a = b ");
        assert_eq!(
            s.requirements().collect::<Vec<_>>(),
            vec![(" a ", true, " b ")]
        );
        assert!(!s.matches(fields(&[("a", "b")])));
    }

    #[test]
    fn field_bare_operator_terms_restrict_nothing() {
        assert!(fsel("=").is_empty());
        assert!(fsel("!=").is_empty());
        assert!(fsel("==,a=1").requirements().eq([("a", true, "1")]));
        // A value without a field is kept.
        assert_eq!(
            fsel("=x").requirements().collect::<Vec<_>>(),
            vec![("", true, "x")]
        );
    }

    #[test]
    fn field_single_value_only_reports_equality_terms() {
        let s = fsel("metadata.name!=a,metadata.namespace=ns,spec.x==y");
        assert_eq!(s.single_value("metadata.name"), None);
        assert_eq!(s.single_value("metadata.namespace"), Some("ns"));
        assert_eq!(s.single_value("spec.x"), Some("y"));
        assert_eq!(s.single_value("other"), None);
        let s = fsel("metadata.name!=a,metadata.name=b");
        assert_eq!(s.single_value("metadata.name"), Some("b"));
    }

    #[test]
    fn field_unicode_values_are_preserved() {
        let s = fsel("a=ü日😀,b!=é");
        assert!(s.matches(fields(&[("a", "ü日😀"), ("b", "x")])));
        assert!(!s.matches(fields(&[("a", "ü日😀"), ("b", "é")])));
    }
}
