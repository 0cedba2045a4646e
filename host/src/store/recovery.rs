//! Startup recovery: read every stored session, inbox, QoS 2 state and retained message,
//! and rebuild the registry, the router, the session queues and the retained set before
//! any listener opens. A record that cannot be decoded stops startup with its location.

use std::collections::HashMap;
use std::time::Duration;

use super::records::{
    decode, split_key, to_ms, InboxRecord, MessageRecord, SessionRecord, SubRecord, WillRecord,
};
use super::{Op, Space, Store, StoreError};
use crate::session::{Session, SessionState, SubOptions};

/// The stored form of one subscription.
pub fn sub_record(filter: &str, o: &SubOptions) -> SubRecord {
    SubRecord {
        filter: filter.to_string(),
        qos: o.qos.value(),
        nl: o.no_local,
        rap: o.retain_as_published,
        rh: o.retain_handling,
        sub_id: o.sub_id.map(|i| i.get()),
    }
}

/// The stored record of a session as it is now (its subscriptions are keys of their
/// own). Built under the session's state lock, which the caller holds, so records are
/// submitted in the order the session changed.
pub fn session_record(s: &Session, st: &SessionState) -> SessionRecord {
    let i = s.info.read().clone();
    let last_pid = st.last_pid;
    let will = s.will.lock().as_ref().map(|w| WillRecord {
        msg: MessageRecord::from_message(&w.msg),
        delay_secs: w.delay_secs,
        expiry_secs: w.expiry.map(|e| e.get()),
    });
    SessionRecord {
        created_ms: to_ms(s.created_at),
        username: i.username.as_deref().map(str::to_string),
        user_id: i.user_id.as_deref().map(str::to_string),
        proto_ver: i.proto_ver,
        transport: i.transport.as_str().to_string(),
        peer: i.peer.map(|p| p.to_string()),
        keepalive: i.keepalive,
        clean_start: i.clean_start,
        superuser: i.superuser,
        expiry_interval: i.expiry_interval,
        connected_ms: i.connected_at.map(to_ms),
        disconnected_ms: if i.connected {
            None
        } else {
            i.disconnected_at.map(to_ms)
        },
        subscriptions: Vec::new(),
        will,
        last_pid,
    }
}

/// One stored session with its inbox and QoS 2 state.
#[derive(Debug)]
pub struct StoredSession {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// The record.
    pub record: SessionRecord,
    /// Its subscriptions.
    pub subs: Vec<SubRecord>,
    /// Inbox entries in sequence order.
    pub inbox: Vec<(u64, InboxRecord)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub rel: Vec<u16>,
}

/// Everything read at startup.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Sessions.
    pub sessions: Vec<StoredSession>,
    /// Retained messages by tenant.
    pub retained: Vec<(String, MessageRecord)>,
    /// Inbox or QoS 2 entries without a session (removed).
    pub orphans: usize,
}

/// What recovery rebuilt, for the startup log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoveryStats {
    /// Sessions restored.
    pub sessions: usize,
    /// Inbox messages restored (queued + inflight).
    pub messages: usize,
    /// Retained messages restored.
    pub retained: usize,
    /// Subscriptions restored.
    pub subscriptions: usize,
    /// Orphaned entries removed.
    pub orphans: usize,
    /// Sessions whose subscriptions were moved out of their record (older layout).
    pub migrated: usize,
    /// Time taken.
    pub elapsed: Duration,
}

fn corrupt(store: &Store, space: Space, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: store.path.clone(),
        space: space.name(),
        detail: e.to_string(),
    }
}

/// Reads everything stored.
pub fn load(store: &Store) -> Result<Recovered, StoreError> {
    let b = store.backend();
    let mut rec = Recovered::default();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    b.scan(Space::Sessions, &mut |k, v| {
        let (t, c, rest) = split_key(k).map_err(|e| corrupt(store, Space::Sessions, e))?;
        if !rest.is_empty() {
            return Err(corrupt(store, Space::Sessions, "trailing key bytes"));
        }
        let record: SessionRecord =
            decode(v).map_err(|e| corrupt(store, Space::Sessions, format!("{t}/{c}: {e}")))?;
        index.insert((t.to_string(), c.to_string()), rec.sessions.len());
        rec.sessions.push(StoredSession {
            tenant: t.to_string(),
            client_id: c.to_string(),
            record,
            subs: Vec::new(),
            inbox: Vec::new(),
            rel: Vec::new(),
        });
        Ok(())
    })?;
    let mut orphans = Vec::new();
    b.scan(Space::Subs, &mut |k, v| {
        let (t, c, filter) = split_key(k).map_err(|e| corrupt(store, Space::Subs, e))?;
        let filter = std::str::from_utf8(filter)
            .map_err(|_| corrupt(store, Space::Subs, "filter not UTF-8"))?;
        match index.get(&(t.to_string(), c.to_string())) {
            Some(&i) => {
                let r: SubRecord = decode(v)
                    .map_err(|e| corrupt(store, Space::Subs, format!("{t}/{c} {filter}: {e}")))?;
                rec.sessions[i].subs.push(r);
            }
            None => orphans.push(Op::DeleteSub(t.into(), c.into(), filter.to_string())),
        }
        Ok(())
    })?;
    b.scan(Space::Inbox, &mut |k, v| {
        let (t, c, rest) = split_key(k).map_err(|e| corrupt(store, Space::Inbox, e))?;
        let seq = u64::from_be_bytes(
            rest.try_into()
                .map_err(|_| corrupt(store, Space::Inbox, "bad sequence"))?,
        );
        match index.get(&(t.to_string(), c.to_string())) {
            Some(&i) => {
                let r: InboxRecord = decode(v)
                    .map_err(|e| corrupt(store, Space::Inbox, format!("{t}/{c}#{seq}: {e}")))?;
                rec.sessions[i].inbox.push((seq, r));
            }
            None => orphans.push(Op::DeleteInbox(t.into(), c.into(), seq)),
        }
        Ok(())
    })?;
    b.scan(Space::Rel, &mut |k, _| {
        let (t, c, rest) = split_key(k).map_err(|e| corrupt(store, Space::Rel, e))?;
        let pid = u16::from_be_bytes(
            rest.try_into()
                .map_err(|_| corrupt(store, Space::Rel, "bad packet id"))?,
        );
        match index.get(&(t.to_string(), c.to_string())) {
            Some(&i) => rec.sessions[i].rel.push(pid),
            None => orphans.push(Op::DeleteRel(t.into(), c.into(), pid)),
        }
        Ok(())
    })?;
    b.scan(Space::Retained, &mut |k, v| {
        let (t, topic, _) = split_key(k).map_err(|e| corrupt(store, Space::Retained, e))?;
        let m: MessageRecord =
            decode(v).map_err(|e| corrupt(store, Space::Retained, format!("{t}/{topic}: {e}")))?;
        rec.retained.push((t.to_string(), m));
        Ok(())
    })?;
    rec.orphans = orphans.len();
    for op in orphans {
        store.submit(op);
    }
    Ok(rec)
}
