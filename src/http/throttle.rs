//! Throttling in fixed windows, in memory only (no event per attempt): failed token checks
//! and failed logins per client address, failed logins per account, token changes per
//! user. Other keys are unaffected.

use std::hash::Hash;
use std::net::IpAddr;

/// Entries beyond this many trigger a sweep of finished windows, so an attacker with many
/// addresses cannot grow the map without bound.
const SWEEP_ABOVE: usize = 100_000;

/// Counts per key (an address by default) in fixed windows.
pub struct FailureThrottle<K = IpAddr> {
    limit: u32,
    window_secs: i64,
    /// Key → (window start, count). A mutex per entry (parking_lot): held for two integer
    /// operations, never across an await.
    slots: papaya::HashMap<K, parking_lot::Mutex<(i64, u32)>>,
    /// The window of the last sweep: at most one sweep per window.
    swept: std::sync::atomic::AtomicI64,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> FailureThrottle<K> {
    pub fn new(limit: u32, window_secs: u32) -> Self {
        FailureThrottle {
            limit,
            window_secs: i64::from(window_secs.max(1)),
            slots: papaya::HashMap::new(),
            swept: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    fn window(&self, now: i64) -> i64 {
        now - now.rem_euclid(self.window_secs)
    }

    /// Seconds to wait when `ip` has used up its count in this window.
    pub fn blocked(&self, ip: Option<K>, now: i64) -> Option<i64> {
        let ip = ip?;
        let start = self.window(now);
        let slots = self.slots.pin();
        let slot = slots.get(&ip)?;
        let (w, n) = *slot.lock();
        (w == start && n >= self.limit).then(|| (start + self.window_secs - now).max(1))
    }

    /// Counts one failure of `ip`.
    pub fn record_failure(&self, ip: Option<K>, now: i64) {
        let Some(ip) = ip else { return };
        let _ = self.count(ip, now, u32::MAX);
    }

    /// Counts one attempt of `key` unless the window's count is used up: then nothing is
    /// counted and the seconds to wait are returned. Check and count are one step, so
    /// concurrent attempts cannot pass the limit together.
    pub fn try_count(&self, key: K, now: i64) -> Result<(), i64> {
        self.count(key, now, self.limit)
    }

    fn count(&self, key: K, now: i64, limit: u32) -> Result<(), i64> {
        let start = self.window(now);
        let slots = self.slots.pin();
        if slots.len() > SWEEP_ABOVE
            && self.swept.swap(start, std::sync::atomic::Ordering::Relaxed) != start
        {
            slots.retain(|_, v| v.lock().0 == start);
        }
        let slot = slots.get_or_insert_with(key, || parking_lot::Mutex::new((start, 0)));
        let mut s = slot.lock();
        if s.0 != start {
            *s = (start, 0);
        }
        if s.1 >= limit {
            return Err((start + self.window_secs - now).max(1));
        }
        s.1 = s.1.saturating_add(1);
        Ok(())
    }

    /// Takes back one count of `ip` in this window (an attempt counted up front that
    /// turned out to succeed).
    pub fn forgive(&self, ip: Option<K>, now: i64) {
        let Some(ip) = ip else { return };
        let start = self.window(now);
        let slots = self.slots.pin();
        if let Some(slot) = slots.get(&ip) {
            let mut s = slot.lock();
            if s.0 == start {
                s.1 = s.1.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_one_address_after_the_limit_and_only_that_address() {
        let t = FailureThrottle::new(3, 60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.blocked(Some(a), 120), None);
            t.record_failure(Some(a), 120);
        }
        assert_eq!(t.blocked(Some(a), 130), Some(50));
        assert_eq!(t.blocked(Some(b), 130), None);
        assert_eq!(t.blocked(Some(a), 180), None, "next window");
        t.record_failure(Some(b), 130);
        t.forgive(Some(b), 130);
        for _ in 0..2 {
            t.record_failure(Some(b), 130);
        }
        assert_eq!(
            t.blocked(Some(b), 130),
            None,
            "a forgiven attempt does not count"
        );
    }

    #[test]
    fn try_count_stops_at_the_limit_per_key() {
        let t: FailureThrottle<u64> = FailureThrottle::new(2, 60);
        assert_eq!(t.try_count(1, 0), Ok(()));
        assert_eq!(t.try_count(1, 10), Ok(()));
        assert_eq!(t.try_count(1, 20), Err(40));
        assert_eq!(t.try_count(2, 20), Ok(()), "another key");
        assert_eq!(t.try_count(1, 60), Ok(()), "next window");
    }
}
