//! The default backend: fjall, an LSM tree with a write-ahead journal, one keyspace per
//! [`Space`]. A batch is one atomic fjall write batch (split before a prefix delete, which
//! must see the writes ahead of it); `flush` maps onto its persist modes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Backend, ScanFn, Space, StoreError, Write};

/// fjall database with one keyspace per space.
pub struct FjallBackend {
    db: Database,
    spaces: Vec<Keyspace>,
    path: PathBuf,
}

impl FjallBackend {
    /// Opens or creates the database in `dir`. An unreadable or corrupt directory is an
    /// error naming it, never a fresh start.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let err = |e: fjall::Error| StoreError::Backend {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let db = Database::builder(dir).open().map_err(err)?;
        let spaces = Space::ALL
            .iter()
            .map(|s| {
                db.keyspace(s.name(), KeyspaceCreateOptions::default)
                    .map_err(err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            db,
            spaces,
            path: dir.to_path_buf(),
        })
    }

    fn ks(&self, s: Space) -> &Keyspace {
        let i = Space::ALL.iter().position(|x| *x == s).unwrap_or(0);
        &self.spaces[i]
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }
}

impl Backend for FjallBackend {
    fn write(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        // Entries of one fjall batch share a sequence number, so two writes of the same key
        // in one batch have no defined order: start a new batch when a key repeats.
        let mut seen: HashSet<(u8, Vec<u8>)> = HashSet::new();
        let mut b = self.db.batch();
        for w in batch {
            let key = match &w {
                Write::Put(s, k, _) | Write::Delete(s, k) => Some((*s as u8, k.clone())),
                Write::DeletePrefix(..) => None,
            };
            if let Some(key) = key {
                if !seen.insert(key) {
                    std::mem::replace(&mut b, self.db.batch())
                        .commit()
                        .map_err(|e| self.err(e))?;
                    seen.clear();
                }
            }
            match w {
                Write::Put(s, k, v) => b.insert(self.ks(s), k, v),
                Write::Delete(s, k) => b.remove(self.ks(s), k),
                Write::DeletePrefix(s, p) => {
                    // Earlier writes of this batch must be visible to the prefix scan.
                    std::mem::replace(&mut b, self.db.batch())
                        .commit()
                        .map_err(|e| self.err(e))?;
                    seen.clear();
                    for kv in self.ks(s).prefix(&p) {
                        let k = kv.key().map_err(|e| self.err(e))?;
                        b.remove(self.ks(s), k);
                    }
                }
            }
        }
        b.commit().map_err(|e| self.err(e))
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.ks(space)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err(e))
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for kv in self.ks(space).prefix(prefix) {
            let (k, v) = kv.into_inner().map_err(|e| self.err(e))?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self, durable: bool) -> Result<(), StoreError> {
        let mode = if durable {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        self.db.persist(mode).map_err(|e| self.err(e))
    }

    fn scan(&self, space: Space, f: ScanFn<'_>) -> Result<(), StoreError> {
        for kv in self.ks(space).iter() {
            let (k, v) = kv.into_inner().map_err(|e| self.err(e))?;
            f(&k, &v)?;
        }
        Ok(())
    }
}
