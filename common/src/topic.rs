//! MQTT topic names and filters: validation, shared-subscription (`$share/group/filter`)
//! parsing, and the three questions asked of filters (does it match a topic, does one
//! filter cover another, can two overlap).

use std::fmt;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Empty string.
    Empty,
    /// A wildcard in a topic name, or a misplaced wildcard in a filter.
    Wildcard,
    /// NUL character.
    Nul,
    /// Too many levels.
    TooDeep,
    /// Longer than an MQTT string can be (65535 bytes).
    TooLong,
    /// `$share/` without a group or a filter.
    BadShare,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "empty topic",
            TopicError::Wildcard => "misplaced wildcard",
            TopicError::Nul => "NUL character in topic",
            TopicError::TooDeep => "too many topic levels",
            TopicError::TooLong => "topic longer than 65535 bytes",
            TopicError::BadShare => "malformed shared subscription",
        })
    }
}

impl std::error::Error for TopicError {}

/// Validates a topic name a client publishes to.
pub fn validate_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    if topic.split('/').count() > max_levels {
        return Err(TopicError::TooDeep);
    }
    Ok(())
}

/// Validates a (non-shared) topic filter.
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let mut levels = 0;
    let mut iter = filter.split('/').peekable();
    while let Some(level) = iter.next() {
        levels += 1;
        match level {
            "+" => {}
            "#" if iter.peek().is_none() => {}
            l if l.contains(['+', '#']) => return Err(TopicError::Wildcard),
            _ => {}
        }
    }
    if levels > max_levels {
        return Err(TopicError::TooDeep);
    }
    Ok(())
}

/// A filter as subscribed: either plain or `$share/{group}/{filter}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// Shared-subscription group, if any.
    pub group: Option<&'a str>,
    /// The filter that is matched against topics.
    pub filter: &'a str,
}

/// Splits a subscription into its shared group and filter, without validating either:
/// `$share/g/a/+` is (Some("g"), "a/+"); anything else is (None, itself). For code that
/// only needs the filter a subscription stands for (ACL checks, listings).
pub fn split_share(raw: &str) -> (Option<&str>, &str) {
    match raw.strip_prefix("$share/").and_then(|r| r.split_once('/')) {
        Some((group, filter)) => (Some(group), filter),
        None => (None, raw),
    }
}

/// Splits and validates a subscription filter, including `$share/group/filter`.
pub fn parse_filter(raw: &str, max_levels: usize) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter, max_levels)?;
        return Ok(ParsedFilter {
            group: Some(group),
            filter,
        });
    }
    validate_filter(raw, max_levels)?;
    Ok(ParsedFilter {
        group: None,
        filter: raw,
    })
}

fn starts_wild(f: &str) -> bool {
    f.starts_with(['+', '#'])
}

/// Whether `filter` matches the topic name `topic` (`+` one level, `#` the rest).
/// Filters starting with a wildcard never match topics starting with `$` (MQTT 4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && starts_wild(filter) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic the filter `wanted` can receive is matched by `rule`: `a/#` covers
/// `a/+/b`; `a/+` does not cover `a/#`; a literal does not cover `+`.
pub fn covers(rule: &str, wanted: &str) -> bool {
    if wanted.starts_with('$') != rule.starts_with('$') && starts_wild(rule) {
        return false;
    }
    let mut r = rule.split('/');
    let mut w = wanted.split('/');
    loop {
        match (r.next(), w.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name matches both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    if (a.starts_with('$') && starts_wild(b)) || (b.starts_with('$') && starts_wild(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a/b", 8).is_ok());
        assert!(validate_name("/", 8).is_ok());
        assert_eq!(validate_name("", 8), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+", 8), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a/#", 8), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a\0", 8), Err(TopicError::Nul));
        assert_eq!(validate_name("a/b/c", 2), Err(TopicError::TooDeep));
        let long = "x".repeat(65536);
        assert_eq!(validate_name(&long, 8), Err(TopicError::TooLong));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/#", "a//b"] {
            assert!(validate_filter(ok, 8).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "#/a", "a/b#"] {
            assert!(validate_filter(bad, 8).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared() {
        let p = parse_filter("$share/g/a/+", 8).unwrap();
        assert_eq!(p.group, Some("g"));
        assert_eq!(p.filter, "a/+");
        assert_eq!(parse_filter("$share/g", 8), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share//a", 8), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g+/a", 8), Err(TopicError::BadShare));
        assert_eq!(parse_filter("a/b", 8).unwrap().group, None);
        assert_eq!(split_share("$share/g/a/+"), (Some("g"), "a/+"));
        assert_eq!(split_share("a/+"), (None, "a/+"));
        assert_eq!(split_share("$share/g"), (None, "$share/g"));
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("+/+", "/a"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a//b", "a//b"));
    }

    #[test]
    fn covering() {
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/+/b", "a/+/b"));
        assert!(covers("a/+", "a/x"));
        assert!(!covers("a/+", "a/#"), "+ does not cover #");
        assert!(!covers("a/x", "a/+"), "a literal does not cover +");
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("a/b", "a/b/c"));
    }

    #[test]
    fn overlapping() {
        assert!(overlap("secret/#", "#"));
        assert!(overlap("secret/#", "+/x"));
        assert!(overlap("a/+/c", "a/b/+"));
        assert!(overlap("a/#", "a"));
        assert!(overlap("a", "a/#"));
        assert!(!overlap("a/b", "a/c"));
        assert!(!overlap("a/b", "a/b/c"));
        assert!(!overlap("$SYS/#", "#"));
        assert!(overlap("$SYS/#", "$SYS/+"));
    }
}
