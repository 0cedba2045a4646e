//! MQTT topics and filters as NATS subjects: `apiary.m.<tenant>.<level>.<level>...`.
//! A level (and the tenant) is one token: as it is when it is only `A-Z a-z 0-9 _ -`,
//! else `~` and its bytes in unpadded base64url (so empty levels, `.`, `*`, `>`, spaces
//! and non-ASCII survive, and no raw level can look like an encoded one). In filters `+`
//! is `*` and a trailing `#` is `>` (plus the parent subject, which MQTT's `#` also
//! matches). NATS only narrows what reaches a node; the node's router decides exactly.

use base64::Engine as _;

/// Prefix of message subjects.
const PREFIX: &str = "apiary.m";
/// Longest subject sent: NATS refuses control lines past 4 KiB; longer topics stay local.
pub const MAX_SUBJECT: usize = 2048;

fn plain(level: &str) -> bool {
    !level.is_empty()
        && level
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn push_token(out: &mut String, level: &str) {
    out.push('.');
    if plain(level) {
        out.push_str(level);
    } else {
        out.push('~');
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(level, out);
    }
}

/// The subject a message on `topic` is sent on (None: too long to send).
pub fn of_topic(tenant: &str, topic: &str) -> Option<String> {
    let mut s = String::with_capacity(PREFIX.len() + tenant.len() + topic.len() + 8);
    s.push_str(PREFIX);
    push_token(&mut s, tenant);
    for level in topic.split('/') {
        push_token(&mut s, level);
    }
    (s.len() <= MAX_SUBJECT).then_some(s)
}

/// The NATS queue group of the shared subscription `$share/<group>/<filter>`: one per
/// group and filter, as MQTT gives each such pair its copy. Encoded tokens only (no
/// wildcards), so every NATS server takes it.
pub fn queue_name(group: &str, filter: &str) -> String {
    let mut s = String::from("q");
    push_bounded(&mut s, group);
    push_bounded(&mut s, filter);
    s
}

/// Longest part of a queue name or will key kept as it is: a SUB or a KV put past
/// NATS's 4 KiB control line would make the server close the connection.
const MAX_PART: usize = 200;

/// [`push_token`], or `#` and a SHA-256 of `part` when its token would be longer than
/// [`MAX_PART`] (`#` never starts a token otherwise).
fn push_bounded(out: &mut String, part: &str) {
    use sha2::Digest as _;
    if part.len() * 4 / 3 + 2 <= MAX_PART {
        return push_token(out, part);
    }
    out.push_str(".#");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_string(sha2::Sha256::digest(part.as_bytes()), out);
}

/// The key of `topic`'s retained message in the cluster's KV bucket: the subject's
/// tokens after the prefix, `=` marking encoded ones (KV keys cannot carry `~`; `=` is
/// not in base64url, so the mapping stays one to one). None: too long.
pub fn retained_key(tenant: &str, topic: &str) -> Option<String> {
    let s = of_topic(tenant, topic)?;
    Some(s[PREFIX.len() + 1..].replace('~', "="))
}

/// Whether `topic` makes a subject short enough to send, without building it when the
/// longest it could be (every level encoded) already fits.
pub fn fits(tenant: &str, topic: &str) -> bool {
    let levels = topic.bytes().filter(|&b| b == b'/').count() + 2;
    let bound = PREFIX.len() + 4 * levels + (tenant.len() + topic.len()) * 4 / 3;
    bound <= MAX_SUBJECT || of_topic(tenant, topic).is_some()
}

/// The key of a session's pending will in the cluster's wills bucket:
/// `<node>.<tenant>.<client id>` (tokens as in subjects, `=` for `~`).
pub fn will_key(node: &str, tenant: &str, client_id: &str) -> String {
    let mut s = String::from(node);
    push_bounded(&mut s, tenant);
    push_bounded(&mut s, client_id);
    s.replace('~', "=").replace('#', "-h-")
}

/// The subjects a node listens on for subscribers of `filter` (without any `$share/`
/// prefix): one, or two for a trailing `#`. None: too long.
pub fn of_filter(tenant: &str, filter: &str) -> Option<Vec<String>> {
    let mut s = String::with_capacity(PREFIX.len() + tenant.len() + filter.len() + 8);
    s.push_str(PREFIX);
    push_token(&mut s, tenant);
    let levels: Vec<&str> = filter.split('/').collect();
    let mut out = Vec::with_capacity(2);
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "+" => s.push_str(".*"),
            "#" => {
                // `a/#` matches `a` too; `#` alone matches every topic (all have a level).
                if i > 0 {
                    out.push(s.clone());
                }
                s.push_str(".>");
            }
            l => push_token(&mut s, l),
        }
    }
    out.push(s);
    out.iter().all(|s| s.len() <= MAX_SUBJECT).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NATS matching, for checking the mapping against MQTT's.
    fn nats_matches(sub: &str, subject: &str) -> bool {
        let (f, t): (Vec<&str>, Vec<&str>) =
            (sub.split('.').collect(), subject.split('.').collect());
        for (i, tok) in f.iter().enumerate() {
            match *tok {
                ">" => return t.len() > i,
                "*" if i < t.len() => {}
                x if i < t.len() && t[i] == x => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    fn mqtt_matches(filter: &str, topic: &str) -> bool {
        crate::topic::matches(filter, topic)
    }

    #[test]
    fn tokens_are_nats_safe_and_distinct() {
        let s = of_topic("default", "a/b.c/ /*/>//~x/é").unwrap();
        assert!(s.starts_with("apiary.m.default.a."), "{s}");
        for tok in s.split('.') {
            assert!(!tok.is_empty() && !tok.contains([' ', '*', '>']), "{s}");
        }
        // A level that looks like an encoded one is encoded itself.
        assert_ne!(of_topic("t", "~YQ"), of_topic("t", "a"));
        assert_ne!(of_topic("t", "a/b"), of_topic("t", "a.b"));
        assert_ne!(of_topic("t", "a"), of_topic("u", "a"));
        assert!(of_topic("t", &"x".repeat(MAX_SUBJECT)).is_none());
    }

    #[test]
    fn fits_agrees_with_of_topic() {
        for n in [0, 10, 1000, 1400, 1530, 1600, 2040, 3000] {
            for t in [
                "x".repeat(n),
                "é".repeat(n / 2),
                "/".repeat(n),
                "a/".repeat(n / 2),
            ] {
                assert_eq!(
                    fits("default", &t),
                    of_topic("default", &t).is_some(),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn long_parts_are_hashed_to_a_bounded_name() {
        let long = "g".repeat(3000);
        let q = queue_name(&long, &"a/".repeat(900));
        assert!(q.len() < 2 * MAX_PART, "{}", q.len());
        assert!(!q.contains(['*', '>', ' ']));
        assert_ne!(q, queue_name(&"g".repeat(2999), &"a/".repeat(900)));
        let k = will_key("n", "default", &"c".repeat(3000));
        assert!(k.len() < 2 * MAX_PART, "{}", k.len());
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
            "{k}"
        );
        // Short ones are as before.
        assert_eq!(will_key("n", "default", "dev"), "n.default.dev");
    }

    #[test]
    fn queue_names_have_no_wildcards_and_are_distinct() {
        let q = queue_name("g", "a/+/#");
        assert!(!q.contains(['*', '>', ' ']), "{q}");
        assert_ne!(queue_name("g", "a/+"), queue_name("g", "a/#"));
        assert_ne!(queue_name("g", "a"), queue_name("h", "a"));
        assert_ne!(queue_name("g.a", "b"), queue_name("g", "a.b"));
    }

    #[test]
    fn retained_keys_are_valid_kv_keys_and_distinct() {
        // NATS KV keys: `[-/_=.a-zA-Z0-9]+`, no empty token.
        let k = retained_key("default", "a/b.c/ /*/>//~x/é").unwrap();
        assert!(k.starts_with("default.a."), "{k}");
        for tok in k.split('.') {
            assert!(!tok.is_empty(), "{k}");
            assert!(
                tok.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=".contains(&b)),
                "{k}"
            );
        }
        assert_ne!(retained_key("t", "~YQ"), retained_key("t", "a"));
        assert_ne!(retained_key("t", "=YQ"), retained_key("t", "a"));
        assert_ne!(retained_key("t", "a/b"), retained_key("t", "a.b"));
        assert_ne!(retained_key("t", "a"), retained_key("u", "a"));
    }

    #[test]
    fn nats_delivers_at_least_what_mqtt_matches() {
        let topics = [
            "a", "a/b", "a/b/c", "a//c", "/a", "b", "$SYS/x", "a/b.c", "a/+x",
        ];
        let filters = [
            "a", "a/#", "#", "a/+", "+/b", "a/+/c", "+", "a/b/#", "/#", "+/+",
        ];
        for f in filters {
            let subs = of_filter("t", f).unwrap();
            for topic in topics {
                let subject = of_topic("t", topic).unwrap();
                let nats = subs.iter().any(|s| nats_matches(s, &subject));
                // `#`/`+` first never match `$` topics in MQTT; the router drops those.
                if mqtt_matches(f, topic) {
                    assert!(nats, "{f} should reach {topic} ({subs:?} vs {subject})");
                } else if !topic.starts_with('$') {
                    assert!(
                        !nats,
                        "{f} should not reach {topic} ({subs:?} vs {subject})"
                    );
                }
            }
        }
    }
}
