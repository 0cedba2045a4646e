//! Cursor paging over sessions (EMQX's `clients_v2`): a page resumes after the last row
//! it showed, named by its tenant and insertion number, so sessions connecting or going
//! away between requests never shift a later page (EMQX #7870), a page costs what its
//! rows cost however deep it is, and the last page carries no cursor (EMQX #18531).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;

use super::query::{snapshot, Query, SessionSnapshot};
use super::Registry;

/// Where a cursor query resumes: after row `seq` of `tenant`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Tenant of the last row shown.
    pub tenant: String,
    /// Its insertion number in that tenant.
    pub seq: u64,
}

impl Cursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        B64.encode(format!("{}:{}", self.seq, self.tenant))
    }

    /// Parses [`Cursor::encode`]'s text; None for anything else.
    pub fn decode(text: &str) -> Option<Cursor> {
        Self::parse(&String::from_utf8(B64.decode(text).ok()?).ok()?)
    }

    fn parse(raw: &str) -> Option<Cursor> {
        let (seq, tenant) = raw.split_once(':')?;
        Some(Cursor {
            tenant: tenant.to_string(),
            seq: seq.parse().ok()?,
        })
    }
}

/// Where a cursor query over the nodes of a cluster resumes (nodes in name order): on
/// `node`, after `at` there, or from its first row when `at` is None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCursor {
    /// The node (names are letters, digits, `-` and `_`).
    pub node: String,
    /// Where on that node.
    pub at: Option<Cursor>,
}

impl NodeCursor {
    /// The opaque text handed to clients (`@node@seq:tenant`, base64url).
    pub fn encode(&self) -> String {
        let at = self
            .at
            .as_ref()
            .map_or(String::new(), |c| format!("{}:{}", c.seq, c.tenant));
        B64.encode(format!("@{}@{at}", self.node))
    }

    /// Parses [`NodeCursor::encode`]'s text; a node's own [`Cursor`] (from before the
    /// node joined a cluster) resumes on `here`. None for anything else.
    pub fn decode(text: &str, here: &str) -> Option<NodeCursor> {
        let raw = String::from_utf8(B64.decode(text).ok()?).ok()?;
        let Some(rest) = raw.strip_prefix('@') else {
            return Some(NodeCursor {
                node: here.to_string(),
                at: Some(Cursor::parse(&raw)?),
            });
        };
        let (node, at) = rest.split_once('@')?;
        Some(NodeCursor {
            node: node.to_string(),
            at: if at.is_empty() {
                None
            } else {
                Some(Cursor::parse(at)?)
            },
        })
    }
}

/// One page of a cursor query.
#[derive(Debug, Clone)]
pub struct CursorPage {
    /// The sessions on this page.
    pub items: Vec<SessionSnapshot>,
    /// Where the next page starts; None when no later session matches.
    pub next: Option<Cursor>,
}

impl Registry {
    /// Up to `limit` sessions matching `q` after `after` (tenants in name order, sessions
    /// in creation order). `next` is set only when one more session matches.
    pub fn query_after(
        &self,
        q: &Query,
        after: Option<&Cursor>,
        limit: usize,
        cfg: &crate::config::Config,
    ) -> CursorPage {
        let limit = limit.max(1);
        let map = self.tenants.read();
        let mut tenants: Vec<_> = match &q.tenant {
            Some(t) => map.get_key_value(t.as_str()).into_iter().collect(),
            None => map.iter().collect(),
        };
        tenants.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut last: Option<(&str, u64)> = None;
        for (name, t) in tenants {
            let from = match after {
                Some(c) if **name < *c.tenant => continue,
                Some(c) if **name == *c.tenant => Some(c.seq),
                _ => None,
            };
            for (seq, r) in q.rows(t, from).filter(|(_, r)| q.matches(r)) {
                if items.len() == limit {
                    let next = last.map(|(tenant, seq)| Cursor {
                        tenant: tenant.to_string(),
                        seq,
                    });
                    return CursorPage { items, next };
                }
                items.push(snapshot(&r.session, cfg));
                last = Some((name, seq));
            }
        }
        CursorPage { items, next: None }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::session::{ClientInfo, Session};

    fn add(r: &Registry, tenant: &str, id: &str, n: &mut u64) -> Arc<Session> {
        *n += 1;
        let s = Arc::new(Session::new(
            *n,
            tenant.into(),
            id.into(),
            ClientInfo::default(),
        ));
        r.insert(s.clone());
        s
    }

    #[test]
    fn node_cursors_round_trip_and_a_node_cursor_resumes_here() {
        let at = Cursor {
            tenant: "t:1".into(),
            seq: 7,
        };
        for c in [
            NodeCursor {
                node: "n-1".into(),
                at: Some(at.clone()),
            },
            NodeCursor {
                node: "n_2".into(),
                at: None,
            },
        ] {
            assert_eq!(NodeCursor::decode(&c.encode(), "x"), Some(c));
        }
        let own = NodeCursor::decode(&at.encode(), "here").unwrap();
        assert_eq!((own.node.as_str(), own.at), ("here", Some(at)));
        assert_eq!(NodeCursor::decode("@@", "x"), None);
        assert_eq!(NodeCursor::decode(&B64.encode("@n@x:t"), "x"), None);
    }

    fn ids(p: &CursorPage) -> Vec<String> {
        p.items.iter().map(|s| s.client_id.to_string()).collect()
    }

    #[test]
    fn pages_hold_still_while_sessions_come_and_go_and_the_last_has_no_cursor() {
        let r = Registry::default();
        let cfg = crate::config::Config::embedded();
        let mut n = 0;
        let s: Vec<_> = (0..6)
            .map(|i| add(&r, "a", &format!("c{i}"), &mut n))
            .collect();
        add(&r, "b", "b0", &mut n);
        let q = Query::default();
        let p1 = r.query_after(&q, None, 2, &cfg);
        assert_eq!(ids(&p1), ["c0", "c1"]);
        // c1 (shown) and c2 (not yet) go away, a new one arrives: the next page resumes
        // right after c1, skips nothing still there and repeats nothing.
        r.remove(&s[1]);
        r.remove(&s[2]);
        add(&r, "a", "late", &mut n);
        let c = Cursor::decode(&p1.next.unwrap().encode()).unwrap();
        let p2 = r.query_after(&q, Some(&c), 2, &cfg);
        assert_eq!(ids(&p2), ["c3", "c4"]);
        let p3 = r.query_after(&q, p2.next.as_ref(), 2, &cfg);
        assert_eq!(ids(&p3), ["c5", "late"]);
        let p4 = r.query_after(&q, p3.next.as_ref(), 2, &cfg);
        assert_eq!(ids(&p4), ["b0"]);
        assert!(p4.next.is_none(), "no phantom cursor on the last page");
        // Exactly filling the last page: still no cursor.
        let only_b = Query {
            tenant: Some("b".into()),
            ..Default::default()
        };
        assert!(r.query_after(&only_b, None, 1, &cfg).next.is_none());
        let one = Query {
            client_id: Some("c3".into()),
            ..Default::default()
        };
        assert_eq!(ids(&r.query_after(&one, None, 5, &cfg)), ["c3"]);
        assert!(r
            .query_after(&one, p2.next.as_ref(), 5, &cfg)
            .items
            .is_empty());
        assert!(Cursor::decode("not a cursor!").is_none());
    }
}
