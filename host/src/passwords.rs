//! Password hashes checked natively: argon2 (any variant its PHC string names) and
//! bcrypt, on a pool no larger than the machine's cores, so a flood of CONNECTs with a
//! known username costs a bounded share of the CPU. A check that cannot get a worker
//! within its deadline is answered "busy" at once; the caller refuses the CONNECT as
//! "server unavailable", and the clients that keep trying get in as workers free up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Why a check could not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a PHC string this broker knows.
    #[error("malformed password hash: {0}")]
    Malformed(String),
    /// Every worker stayed busy past the caller's deadline.
    #[error("password checks are saturated; try again")]
    Busy,
}

/// The pool and its counters.
#[derive(Debug)]
pub struct Passwords {
    workers: Semaphore,
    /// Checks run.
    pub verified: AtomicU64,
    /// Checks refused because the pool was saturated.
    pub busy: AtomicU64,
}

impl Default for Passwords {
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            workers: Semaphore::new(n),
            verified: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }
}

impl Passwords {
    /// Checks `password` against `hash` on the pool, waiting at most `wait` for a worker.
    pub async fn verify(
        &self,
        hash: String,
        password: Vec<u8>,
        wait: Duration,
    ) -> Result<bool, VerifyError> {
        let Ok(Ok(permit)) = tokio::time::timeout(wait, self.workers.acquire()).await else {
            self.busy.fetch_add(1, Relaxed);
            return Err(VerifyError::Busy);
        };
        self.verified.fetch_add(1, Relaxed);
        let r = tokio::task::spawn_blocking(move || verify_phc(&hash, &password)).await;
        drop(permit);
        r.unwrap_or_else(|e| Err(VerifyError::Malformed(format!("check failed: {e}"))))
    }
}

/// Checks a password against a PHC string, on the calling thread.
pub fn verify_phc(hash: &str, password: &[u8]) -> Result<bool, VerifyError> {
    if hash.starts_with("$argon2") {
        use argon2::PasswordVerifier;
        let ph =
            argon2::PasswordHash::new(hash).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        return Ok(argon2::Argon2::default()
            .verify_password(password, &ph)
            .is_ok());
    }
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
        return bcrypt::verify(password, hash).map_err(|e| VerifyError::Malformed(e.to_string()));
    }
    Err(VerifyError::Malformed(
        "not an argon2 ($argon2id$...) or bcrypt ($2b$...) PHC string".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_and_bcrypt() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let h = argon2::Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert_eq!(verify_phc(&h, b"pw"), Ok(true));
        assert_eq!(verify_phc(&h, b"px"), Ok(false));
        let b = bcrypt::hash_with_salt("pw", 4, *b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert_eq!(verify_phc(&b, b"pw"), Ok(true));
        assert_eq!(verify_phc(&b, b"pW"), Ok(false));
        assert!(matches!(
            verify_phc("md5:x", b"pw"),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_saturated_pool_answers_busy() {
        let p = Passwords {
            workers: Semaphore::new(0),
            ..Passwords::default()
        };
        let r = p
            .verify("$2b$04$x".into(), b"pw".to_vec(), Duration::from_millis(10))
            .await;
        assert_eq!(r, Err(VerifyError::Busy));
        assert_eq!(p.busy.load(Relaxed), 1);
    }
}
