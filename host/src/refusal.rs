//! Why the broker refuses a publish or a subscription, whichever protocol or admin API
//! asked: one set of refusals, each with the MQTT 5 reason code it maps to.

use crate::topic::TopicError;

/// Why the broker refused a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefused {
    /// A retained message over its tenant's retained limits.
    #[error(transparent)]
    Retained(#[from] crate::router::retained::RetainedRefused),
    /// A message interceptor dropped it, with this reason code.
    #[error("dropped by a message interceptor (reason code {0:#04x})")]
    Intercepted(u8),
}

impl PublishRefused {
    /// The MQTT 5 PUBACK/PUBREC reason code.
    pub fn reason_code(self) -> u8 {
        match self {
            PublishRefused::Retained(_) => 0x97,
            PublishRefused::Intercepted(code) => code,
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The filter is not valid.
    #[error("invalid topic filter: {0}")]
    InvalidFilter(#[from] TopicError),
    /// Shared subscriptions are disabled.
    #[error("shared subscriptions are not supported")]
    SharedNotSupported,
    /// Wildcards are disabled.
    #[error("wildcard subscriptions are not supported")]
    WildcardNotSupported,
    /// The session has as many subscriptions as allowed.
    #[error("subscription quota exceeded")]
    QuotaExceeded,
    /// The session ended (while the subscription was being made).
    #[error("the session has ended")]
    SessionEnded,
}

impl SubscribeError {
    /// The MQTT 5 SUBACK reason code for this refusal.
    pub fn reason_code(self) -> u8 {
        match self {
            SubscribeError::InvalidFilter(_) => 0x8F,
            SubscribeError::SharedNotSupported => 0x9E,
            SubscribeError::WildcardNotSupported => 0xA2,
            SubscribeError::QuotaExceeded => 0x97,
            SubscribeError::SessionEnded => 0x80,
        }
    }
}
