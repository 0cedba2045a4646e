//! The registry's per-tenant index: one compact row per session holding every field a
//! query filters on, inline (short strings need no pointer chase), in creation order.
//! A filtered scan of 100k sessions then reads ~15 MB sequentially instead of chasing
//! 100k session allocations (docs/decisions/0002-registry-index.md). Removal leaves a
//! tombstone so paging order stays stable; tombstones are compacted away in bulk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Its subscriptions, as last noted (`TenantIndex::note_subscriptions`).
    pub subs: AtomicU64,
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
            subs: AtomicU64::new(s.subscription_count() as u64),
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

/// Slots per block.
const BLOCK: usize = 1024;

/// Sums over `BLOCK` slots, so that a deep page skips whole blocks instead of walking
/// 100k rows (sessions) or locking 100k sessions (subscriptions).
#[derive(Debug, Default)]
struct Block {
    live: usize,
    subs: AtomicU64,
}

impl Block {
    fn add_subs(&self, old: u64, new: u64) {
        if new >= old {
            self.subs.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.subs.fetch_sub(old - new, Ordering::Relaxed);
        }
    }
}

/// Sessions of one tenant.
#[derive(Debug, Default)]
pub struct TenantIndex {
    by_id: HashMap<Arc<str>, usize>,
    rows: Vec<Slot>,
    dead: usize,
    /// Live rows and subscriptions per `BLOCK` slots.
    blocks: Vec<Block>,
    /// Live rows with a connection: counted here so that the figure costs no scan.
    connected: usize,
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

    /// Live rows from the `n`th on (0-based), skipping whole blocks to get there.
    pub fn rows_from(&self, n: usize) -> impl Iterator<Item = &Row> {
        let (mut left, mut b) = (n, 0);
        while b < self.blocks.len() && left >= self.blocks[b].live {
            left -= self.blocks[b].live;
            b += 1;
        }
        let start = (b * BLOCK).min(self.rows.len());
        self.rows[start..]
            .iter()
            .filter_map(|s| s.row.as_ref())
            .skip(left)
    }

    /// Subscriptions of every live row, as noted.
    pub fn subscription_total(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| b.subs.load(Ordering::Relaxed))
            .sum()
    }

    /// Live rows from the first whose subscriptions do not all come before the `n`th
    /// subscription, with how many subscriptions the rows skipped had.
    pub fn rows_from_subscription(&self, n: u64) -> (u64, impl Iterator<Item = &Row>) {
        let (mut before, mut b) = (0, 0);
        while b < self.blocks.len() {
            let subs = self.blocks[b].subs.load(Ordering::Relaxed);
            if before + subs > n {
                break;
            }
            before += subs;
            b += 1;
        }
        let start = (b * BLOCK).min(self.rows.len());
        (
            before,
            self.rows[start..].iter().filter_map(|s| s.row.as_ref()),
        )
    }

    /// Records `s`'s number of subscriptions in its row and block.
    pub fn note_subscriptions(&self, s: &Session) {
        let Some(&pos) = self.by_id.get(&s.client_id) else {
            return;
        };
        if let Some(r) = self.rows[pos].row.as_ref().filter(|r| r.session.id == s.id) {
            let new = s.subscription_count() as u64;
            let old = r.subs.swap(new, Ordering::Relaxed);
            self.blocks[pos / BLOCK].add_subs(old, new);
        }
    }

    /// Takes the row at `pos` out of its block's sums.
    fn unaccount(&mut self, pos: usize) {
        if let Some(r) = &self.rows[pos].row {
            self.connected -= usize::from(r.connected);
            let b = &mut self.blocks[pos / BLOCK];
            b.live -= 1;
            b.add_subs(r.subs.load(Ordering::Relaxed), 0);
        }
    }

    /// Adds the row at `pos` to its block's sums.
    fn account(&mut self, pos: usize) {
        while self.blocks.len() <= pos / BLOCK {
            self.blocks.push(Block::default());
        }
        if let Some(r) = &self.rows[pos].row {
            self.connected += usize::from(r.connected);
            let b = &mut self.blocks[pos / BLOCK];
            b.live += 1;
            b.add_subs(0, r.subs.load(Ordering::Relaxed));
        }
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

    /// Number of live sessions with a connection.
    pub fn connected(&self) -> usize {
        self.connected
    }

    /// Whether no session is left.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a session (at the end), returning the one registered under its id before.
    /// `seq` is its insertion number (rising across calls).
    pub fn insert(&mut self, s: Arc<Session>, seq: u64) -> Option<Arc<Session>> {
        let old = self.by_id.remove(&s.client_id).and_then(|pos| {
            self.dead += 1;
            self.unaccount(pos);
            self.rows[pos].row.take().map(|r| r.session)
        });
        let pos = self.rows.len();
        self.by_id.insert(s.client_id.clone(), pos);
        self.rows.push(Slot {
            seq,
            row: Some(Row::new(s)),
        });
        self.account(pos);
        self.maybe_compact();
        old
    }

    /// Re-reads a session's info into its row.
    pub fn refresh(&mut self, s: &Session) {
        if let Some(&pos) = self.by_id.get(&s.client_id) {
            if self.rows[pos]
                .row
                .as_ref()
                .is_some_and(|r| r.session.id == s.id)
            {
                self.unaccount(pos);
                let r = self.rows[pos].row.as_mut().expect("checked");
                *r = Row::new(r.session.clone());
                self.account(pos);
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
        self.unaccount(pos);
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
        self.blocks.clear();
        self.connected = 0;
        for pos in 0..self.rows.len() {
            self.account(pos);
        }
    }
}
