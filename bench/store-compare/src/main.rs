//! fjall vs redb for Apiary's inbox workload: append small messages to per-session queues
//! and pop them in order, with group commit (one commit per batch of 64 messages), fsync'd
//! (`always`/group commit) or not (`never`). Run: `cargo run --release` in this folder.
//! Figures go into docs/decisions/0004-store.md.

use std::time::Instant;

const N: usize = 50_000;
const BATCH: usize = 64;
const SESSIONS: u64 = 100;

fn key(i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(i as u64 % SESSIONS).to_be_bytes());
    k[8..].copy_from_slice(&(i as u64).to_be_bytes());
    k
}

fn report(engine: &str, mode: &str, op: &str, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!("{engine:6} {mode:6} {op:6} {:>10.0} msg/s  ({s:.2} s for {N})", N as f64 / s);
}

fn fjall_run(sync: bool) {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let dir = tempfile::tempdir().unwrap();
    let db = Database::builder(dir.path()).open().unwrap();
    let ks = db.keyspace("inbox", KeyspaceCreateOptions::default).unwrap();
    let payload = vec![7u8; 100];
    let mode = if sync { "sync" } else { "nosync" };
    let t = Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(BATCH) {
        let mut b = db.batch();
        for &i in chunk {
            b.insert(&ks, key(i).to_vec(), payload.clone());
        }
        b.commit().unwrap();
        if sync {
            db.persist(PersistMode::SyncAll).unwrap();
        }
    }
    report("fjall", mode, "append", t);
    let t = Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(BATCH) {
        let mut b = db.batch();
        for &i in chunk {
            // Pop = read the head then delete it.
            let _ = ks.get(key(i)).unwrap().unwrap();
            b.remove(&ks, key(i).to_vec());
        }
        b.commit().unwrap();
        if sync {
            db.persist(PersistMode::SyncAll).unwrap();
        }
    }
    report("fjall", mode, "pop", t);
}

fn redb_run(sync: bool) {
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};
    const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inbox");
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("db.redb")).unwrap();
    let payload = vec![7u8; 100];
    let mode = if sync { "sync" } else { "nosync" };
    let dur = if sync { Durability::Immediate } else { Durability::None };
    let t = Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(BATCH) {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(dur).unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for &i in chunk {
                t.insert(&key(i)[..], &payload[..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    report("redb", mode, "append", t);
    let t = Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(BATCH) {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(dur).unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for &i in chunk {
                let _ = t.remove(&key(i)[..]).unwrap().unwrap();
            }
        }
        tx.commit().unwrap();
    }
    report("redb", mode, "pop", t);
    let _ = db.begin_read().unwrap();
}

fn main() {
    for sync in [true, false] {
        fjall_run(sync);
        redb_run(sync);
    }
}
