//! Topic names and filters: validation, shared-subscription parsing and matching.
//! Kept apart from the router so every entry point (MQTT, registry operations, plugins)
//! validates the same way.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty string.
    #[error("empty topic")]
    Empty,
    /// A wildcard in a topic name, or a misplaced wildcard in a filter.
    #[error("misplaced wildcard")]
    Wildcard,
    /// NUL character.
    #[error("NUL character in topic")]
    Nul,
    /// Too many levels.
    #[error("too many topic levels")]
    TooDeep,
    /// Longer than an MQTT string can be (65535 bytes).
    #[error("topic longer than 65535 bytes")]
    TooLong,
    /// `$share/` without a group or a filter.
    #[error("malformed shared subscription")]
    BadShare,
}

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
            "#" => return Err(TopicError::Wildcard),
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

/// Whether `filter` matches `topic`. Filters starting with a wildcard never match
/// topics starting with `$` (MQTT 4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
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
    }
}
