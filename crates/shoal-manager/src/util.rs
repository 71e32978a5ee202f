//! Small helpers every part uses: fresh ids and secrets, the wall clock stamped into commands.

/// A random non-zero u64 (a Raft id).
pub fn random_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// A fresh object id.
pub fn new_id() -> String {
    shoal_api::ids::id_from_bits(rand::random())
}

/// A fresh join-token secret.
pub fn new_secret() -> String {
    shoal_api::ids::id_from_bits(rand::random())
}

/// Wall clock in milliseconds, stamped into commands by the proposer.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
