//! The last lines each plugin logged (its `log` calls, and its loads and load failures),
//! kept in memory across reloads for `GET /plugins/{name}/logs` and `apiary ctl plugins
//! logs`, so an operator sees why a plugin misbehaves without the broker's whole log.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

/// Lines kept per plugin.
const KEEP: usize = 500;
/// Bytes kept of one line (a plugin cannot make the ring large).
const MAX_LINE: usize = 2048;
/// Plugins with a ring at most (load attempts name plugins that may not exist).
const MAX_RINGS: usize = 256;

/// One line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `trace` .. `error`.
    pub level: &'static str,
    /// The text (cut at 2 KiB).
    pub message: String,
}

/// One plugin's lines, oldest first.
#[derive(Debug, Default)]
pub struct Ring {
    lines: Mutex<VecDeque<LogLine>>,
}

impl Ring {
    /// Adds a line, dropping the oldest past [`KEEP`].
    pub fn push(&self, level: &'static str, message: &str) {
        let mut message = message.to_string();
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut lines = self.lines.lock();
        if lines.len() == KEEP {
            lines.pop_front();
        }
        lines.push_back(LogLine {
            at_ms,
            level,
            message,
        });
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let lines = self.lines.lock();
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// Every plugin's ring, by name.
#[derive(Debug, Default)]
pub struct Logs {
    rings: Mutex<HashMap<String, Arc<Ring>>>,
}

impl Logs {
    /// The ring of `name`, made if needed (a shared dummy past [`MAX_RINGS`] plugins).
    pub fn of(&self, name: &str) -> Arc<Ring> {
        let mut rings = self.rings.lock();
        if let Some(r) = rings.get(name) {
            return r.clone();
        }
        let r = Arc::new(Ring::default());
        if rings.len() < MAX_RINGS {
            rings.insert(name.to_string(), r.clone());
        }
        r
    }

    /// The ring of `name`, if it ever logged or loaded.
    pub fn get(&self, name: &str) -> Option<Arc<Ring>> {
        self.rings.lock().get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded_in_lines_bytes_and_plugins() {
        let logs = Logs::default();
        let r = logs.of("p");
        for i in 0..KEEP + 10 {
            r.push("info", &format!("line {i}"));
        }
        let t = logs.get("p").unwrap().tail(3);
        let texts: Vec<&str> = t.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(texts, ["line 507", "line 508", "line 509"]);
        assert_eq!(r.tail(usize::MAX).len(), KEEP);
        r.push("warn", &"é".repeat(MAX_LINE));
        assert!(r.tail(1)[0].message.len() <= MAX_LINE + '…'.len_utf8());
        for i in 0..MAX_RINGS + 5 {
            logs.of(&format!("x{i}"));
        }
        assert!(logs.rings.lock().len() <= MAX_RINGS);
        assert!(logs.get("nope").is_none());
    }
}
