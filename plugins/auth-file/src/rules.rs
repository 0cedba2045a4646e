//! ACL rules: first match wins, topics are MQTT filters that may use `%u` and `%c`.

use apiary_plugin_sdk::topic;
use serde::Deserialize;

/// allow | deny.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// What a rule applies to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// PUBLISH only.
    Publish,
    /// SUBSCRIBE only.
    Subscribe,
    /// Both.
    #[default]
    All,
}

/// One `[[config.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// allow or deny.
    pub permission: Permission,
    /// publish, subscribe or all (default all).
    #[serde(default)]
    pub action: RuleAction,
    /// Topic filter; `%u` is the username, `%c` the client id.
    pub topic: String,
    /// Only for this username.
    #[serde(default)]
    pub username: Option<String>,
    /// Only for this client id.
    #[serde(default)]
    pub clientid: Option<String>,
}

/// The request being decided.
pub struct Request<'a> {
    /// Publish (true) or subscribe.
    pub publish: bool,
    /// Topic name (publish) or filter (subscribe).
    pub topic: &'a str,
    /// Username, if any.
    pub username: Option<&'a str>,
    /// Client id.
    pub client_id: &'a str,
}

impl Rule {
    /// Whether this rule decides `r`.
    pub fn matches(&self, r: &Request) -> bool {
        let action_ok = match self.action {
            RuleAction::All => true,
            RuleAction::Publish => r.publish,
            RuleAction::Subscribe => !r.publish,
        };
        if !action_ok {
            return false;
        }
        if self
            .username
            .as_deref()
            .is_some_and(|u| Some(u) != r.username)
        {
            return false;
        }
        if self.clientid.as_deref().is_some_and(|c| c != r.client_id) {
            return false;
        }
        let Some(filter) = substitute(&self.topic, r.username, r.client_id) else {
            return false;
        };
        if r.publish {
            topic::matches(&filter, r.topic)
        } else if self.permission == Permission::Deny {
            // A subscription that could receive anything a deny rule names is refused:
            // `deny secret/#` stops a subscription to `#` or `+/x` too (ACL is checked at
            // SUBSCRIBE, not per delivery).
            topic::overlap(&filter, r.topic)
        } else {
            topic::covers(&filter, r.topic)
        }
    }
}

/// `%u` and `%c` replaced; None when the rule needs a value that is absent or that holds
/// a wildcard or a level separator (which would widen the rule), as Mosquitto does.
pub fn substitute(topic: &str, username: Option<&str>, client_id: &str) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['+', '#', '/']);
    let mut out = topic.to_string();
    if out.contains("%u") {
        let u = username.filter(|u| safe(u))?;
        out = out.replace("%u", u);
    }
    if out.contains("%c") {
        if !safe(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    Some(out)
}

/// The first rule that matches, with its index.
pub fn first_match<'r>(rules: &'r [Rule], r: &Request) -> Option<(usize, &'r Rule)> {
    rules.iter().enumerate().find(|(_, rule)| rule.matches(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: Permission, a: RuleAction, topic: &str) -> Rule {
        Rule {
            permission: p,
            action: a,
            topic: topic.into(),
            username: None,
            clientid: None,
        }
    }

    fn req<'a>(publish: bool, topic: &'a str, user: Option<&'a str>, cid: &'a str) -> Request<'a> {
        Request {
            publish,
            topic,
            username: user,
            client_id: cid,
        }
    }

    #[test]
    fn a_deny_rule_stops_wider_subscriptions() {
        let rules = vec![
            rule(Permission::Deny, RuleAction::Subscribe, "secret/#"),
            rule(Permission::Allow, RuleAction::All, "#"),
        ];
        let hit = |t: &str| first_match(&rules, &req(false, t, Some("u"), "c")).map(|(i, _)| i);
        assert_eq!(hit("#"), Some(0));
        assert_eq!(hit("+/x"), Some(0));
        assert_eq!(hit("public/#"), Some(1));
    }

    #[test]
    fn substitution_refuses_values_that_widen_the_rule() {
        assert_eq!(substitute("u/%u/%c", Some("al"), "c1").unwrap(), "u/al/c1");
        assert!(substitute("u/%u", None, "c").is_none());
        assert!(substitute("u/%u", Some("a/b"), "c").is_none());
        assert!(substitute("u/%u", Some("#"), "c").is_none());
        assert!(substitute("c/%c", Some("x"), "+").is_none());
        assert_eq!(substitute("plain", None, "").unwrap(), "plain");
    }

    #[test]
    fn first_match_wins_and_scopes_apply() {
        let mut scoped = rule(Permission::Allow, RuleAction::All, "admin/#");
        scoped.username = Some("root".into());
        let rules = vec![
            scoped,
            rule(Permission::Deny, RuleAction::All, "admin/#"),
            rule(Permission::Allow, RuleAction::Publish, "users/%u/#"),
            rule(Permission::Allow, RuleAction::Subscribe, "users/%u/+"),
            rule(Permission::Deny, RuleAction::All, "#"),
        ];
        let hit = |r: &Request| first_match(&rules, r).map(|(i, _)| i);
        assert_eq!(hit(&req(true, "admin/x", Some("root"), "c")), Some(0));
        assert_eq!(hit(&req(true, "admin/x", Some("bob"), "c")), Some(1));
        assert_eq!(hit(&req(true, "users/bob/a/b", Some("bob"), "c")), Some(2));
        assert_eq!(hit(&req(true, "users/eve/a", Some("bob"), "c")), Some(4));
        assert_eq!(hit(&req(false, "users/bob/x", Some("bob"), "c")), Some(3));
        assert_eq!(hit(&req(false, "users/bob/#", Some("bob"), "c")), Some(4));
        assert_eq!(
            hit(&req(true, "users/x/a", None, "c")),
            Some(4),
            "no username: %u rules skip"
        );
    }
}
