//! Password hashes and auth tokens: PBKDF2-HMAC-SHA256 (from `ring`) with a random salt per
//! password, and random tokens. Run by the member that takes the client's request, never by
//! the state machine: a password never enters the Raft log, only its hash does, and hashing
//! is deliberately slow.

use std::num::NonZeroU32;

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::KvError;
use crate::proto::dengine::kv::v1::{PasswordHash, password_hash::Algorithm};

/// PBKDF2 iterations for new passwords: OWASP's recommendation for PBKDF2-HMAC-SHA256
/// (2023). Each hash records its own count, so changing this affects new passwords only.
/// Measured: 0.15 s per hash or check on one core of the machines that run the tests, with
/// `ring` optimised (release builds, and debug builds through the workspace's
/// `[profile.dev.package.ring]`; unoptimised it takes 1.1 s).
pub const DEFAULT_PASSWORD_ITERATIONS: u32 = 600_000;

/// A stored hash asking for more iterations than this is refused rather than computed: a
/// corrupt or hostile entry must not make a member spin.
const MAX_ITERATIONS: u32 = 10_000_000;

const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
/// 192 random bits per token.
const TOKEN_BYTES: usize = 24;

fn random(bytes: &mut [u8]) -> Result<(), KvError> {
    SystemRandom::new()
        .fill(bytes)
        .map_err(|_| KvError::Internal("the system random number generator failed".into()))
}

/// Hashes `password` with a new random salt and `iterations` rounds.
pub(crate) fn hash_password(password: &str, iterations: u32) -> Result<PasswordHash, KvError> {
    let rounds = NonZeroU32::new(iterations.min(MAX_ITERATIONS))
        .ok_or_else(|| KvError::Internal("password hashing needs at least one iteration".into()))?;
    let mut salt = vec![0; SALT_BYTES];
    random(&mut salt)?;
    let mut hash = vec![0; HASH_BYTES];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    Ok(PasswordHash {
        algorithm: Algorithm::Pbkdf2HmacSha256 as i32,
        iterations: rounds.get(),
        salt: salt.into(),
        hash: hash.into(),
    })
}

/// Whether `password` matches `stored` (compared in constant time). An unknown algorithm or
/// an unreasonable iteration count matches nothing.
pub(crate) fn verify_password(stored: &PasswordHash, password: &str) -> bool {
    if stored.algorithm != Algorithm::Pbkdf2HmacSha256 as i32 || stored.iterations > MAX_ITERATIONS
    {
        return false;
    }
    let Some(rounds) = NonZeroU32::new(stored.iterations) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &stored.salt,
        password.as_bytes(),
        &stored.hash,
    )
    .is_ok()
}

/// A new random token: 48 hexadecimal characters (valid gRPC metadata).
pub(crate) fn new_token() -> Result<String, KvError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    random(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_their_password_only_and_salts_differ() {
        let a = hash_password("secret", 1000).unwrap();
        let b = hash_password("secret", 1000).unwrap();
        assert_eq!(a.iterations, 1000);
        assert_eq!((a.salt.len(), a.hash.len()), (SALT_BYTES, HASH_BYTES));
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.hash, b.hash);
        assert!(verify_password(&a, "secret"));
        assert!(verify_password(&b, "secret"));
        assert!(!verify_password(&a, "Secret"));
        assert!(!verify_password(&a, ""));
        let unknown = PasswordHash {
            algorithm: 0,
            ..a.clone()
        };
        assert!(!verify_password(&unknown, "secret"));
        let too_costly = PasswordHash {
            iterations: MAX_ITERATIONS + 1,
            ..a
        };
        assert!(!verify_password(&too_costly, "secret"));
        assert!(hash_password("x", 0).is_err());
    }

    #[test]
    fn tokens_are_random_hex() {
        let t = new_token().unwrap();
        assert_eq!(t.len(), 2 * TOKEN_BYTES);
        assert!(t.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, new_token().unwrap());
    }
}
