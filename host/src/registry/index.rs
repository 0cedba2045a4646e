//! The registry's per-tenant index: one compact row per session holding every field a
//! query filters on, inline (short strings need no pointer chase), in creation order.
//! A filtered scan of 100k sessions then reads ~15 MB sequentially instead of chasing
//! 100k session allocations (docs/decisions/0002-registry-index.md). Removal leaves a
//! tombstone so paging order stays stable; tombstones are compacted away in bulk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use compact_str::CompactString;

use crate::session::{Session, Transport};

/// What a query can filter on, copied out of a session.
#[derive(Debug)]
pub struct Row {
    /// The session itself (snapshots of the page are built from it).
    pub session: Arc<Session>,
    /// Client id.
    pub client_id: CompactString,
    /// Username.
    pub username: Option<CompactString>,
    /// User id.
    pub user_id: Option<CompactString>,
    /// Peer IP.
    pub ip: Option<IpAddr>,
    /// Protocol version.
    pub proto_ver: u8,
    /// Protocol name.
    pub proto_name: &'static str,
    /// Transport.
    pub transport: Transport,
    /// Online.
    pub connected: bool,
    /// Clean start.
    pub clean_start: bool,
    /// Created.
    pub created_at: SystemTime,
    /// Last connected.
    pub connected_at: Option<SystemTime>,
}

impl Row {
    fn new(s: Arc<Session>) -> Self {
        let i = s.info.read();
        let row = Row {
            client_id: CompactString::from(&*s.client_id),
            username: i.username.as_deref().map(CompactString::from),
            user_id: i.user_id.as_deref().map(CompactString::from),
            ip: i.peer.map(|p| p.ip()),
            proto_ver: i.proto_ver,
            proto_name: i.proto_name,
            transport: i.transport,
            connected: i.connected,
            clean_start: i.clean_start,
            created_at: s.created_at,
            connected_at: i.connected_at,
            session: s.clone(),
        };
        drop(i);
        row
    }
}

/// A row's place: its insertion number (rising; cursors name it) and the row, or a
/// tombstone.
#[derive(Debug)]
struct Slot {
    seq: u64,
    row: Option<Row>,
}

/// Sessions of one tenant.
#[derive(Debug, Default)]
pub struct TenantIndex {
    by_id: HashMap<Arc<str>, usize>,
    rows: Vec<Slot>,
    dead: usize,
    /// The next row's insertion number.
    next_seq: u64,
}

impl TenantIndex {
    /// The session with this client id.
    pub fn get(&self, client_id: &str) -> Option<&Arc<Session>> {
        let pos = *self.by_id.get(client_id)?;
        self.rows[pos].row.as_ref().map(|r| &r.session)
    }

    /// Live rows in creation order.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter_map(|s| s.row.as_ref())
    }

    /// Live rows inserted after insertion number `seq`, with theirs, in creation order:
    /// what a cursor resumes from, however many rows came or went since.
    pub fn rows_after(&self, seq: Option<u64>) -> impl Iterator<Item = (u64, &Row)> {
        let start = seq.map_or(0, |q| self.rows.partition_point(|s| s.seq <= q));
        self.rows[start..]
            .iter()
            .filter_map(|s| s.row.as_ref().map(|r| (s.seq, r)))
    }

    /// The live row for this client id, with its insertion number.
    pub fn row_seq(&self, client_id: &str) -> Option<(u64, &Row)> {
        let slot = &self.rows[*self.by_id.get(client_id)?];
        slot.row.as_ref().map(|r| (slot.seq, r))
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no session is left.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a session (at the end), returning the one registered under its id before.
    pub fn insert(&mut self, s: Arc<Session>) -> Option<Arc<Session>> {
        let old = self.by_id.remove(&s.client_id).and_then(|pos| {
            self.dead += 1;
            self.rows[pos].row.take().map(|r| r.session)
        });
        self.by_id.insert(s.client_id.clone(), self.rows.len());
        self.rows.push(Slot {
            seq: self.next_seq,
            row: Some(Row::new(s)),
        });
        self.next_seq += 1;
        self.maybe_compact();
        old
    }

    /// Re-reads a session's info into its row.
    pub fn refresh(&mut self, s: &Session) {
        if let Some(&pos) = self.by_id.get(&s.client_id) {
            if let Some(r) = self.rows[pos].row.as_mut().filter(|r| r.session.id == s.id) {
                *r = Row::new(r.session.clone());
            }
        }
    }

    /// Removes `s` if it is the registered session for its id.
    pub fn remove(&mut self, s: &Session) -> bool {
        let Some(&pos) = self.by_id.get(&s.client_id) else {
            return false;
        };
        if self.rows[pos]
            .row
            .as_ref()
            .is_none_or(|r| r.session.id != s.id)
        {
            return false;
        }
        self.rows[pos].row = None;
        self.by_id.remove(&s.client_id);
        self.dead += 1;
        self.maybe_compact();
        true
    }

    /// Drops tombstones once they are a quarter of the rows (amortised O(1) per removal).
    fn maybe_compact(&mut self) {
        if self.dead < 64 || self.dead * 4 < self.rows.len() {
            return;
        }
        self.rows.retain(|s| s.row.is_some());
        for (i, s) in self.rows.iter().enumerate() {
            if let Some(r) = &s.row {
                if let Some(p) = self.by_id.get_mut(&*r.session.client_id) {
                    *p = i;
                }
            }
        }
        self.dead = 0;
    }
}
