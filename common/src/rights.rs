//! API-key rights: what the broker's admin routes and every admin API plugin check, by
//! one set of names.

/// A right an API key can hold, by the names key files and APIs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Everything: every other right, and the native admin routes.
    Admin,
    /// Read sessions and subscriptions.
    ConnectionsRead,
    /// Kick, subscribe on behalf, expire.
    ConnectionsWrite,
    /// Publish as the broker.
    Publish,
    /// Scrape `/metrics` and nothing else (for a Prometheus job).
    MetricsRead,
}

impl Right {
    /// Every right, in the order documented.
    pub const ALL: [Right; 5] = [
        Right::Admin,
        Right::ConnectionsRead,
        Right::ConnectionsWrite,
        Right::Publish,
        Right::MetricsRead,
    ];

    /// The name in key files and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Admin => "admin",
            Right::ConnectionsRead => "connections:read",
            Right::ConnectionsWrite => "connections:write",
            Right::Publish => "publish",
            Right::MetricsRead => "metrics:read",
        }
    }

    /// Parses a right's name.
    pub fn parse(s: &str) -> Option<Right> {
        Right::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
