use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a node says on `snaptrack.auth.nodes`: who it is and how far it has applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub node_id: String,
    /// Random per process: two processes announcing the same `node_id` are a misconfiguration
    /// that would break the barrier and the rate limits, and this tells them apart.
    #[serde(default)]
    pub instance: String,
    pub applied_seq: u64,
    /// Sent once at graceful shutdown, so others stop counting the node as live at once.
    #[serde(default)]
    pub leaving: bool,
    /// When it was sent (Unix milliseconds). A signed announcement replayed later, say one of
    /// a previous process of this node (which would look like a twin and stop it), is older
    /// than the staleness bound and ignored.
    #[serde(default)]
    pub sent_at_ms: i64,
    /// The node purged the stream's usage below this sequence (see `cluster::retention`):
    /// positions missing there are usage past its retention, which a node reading across
    /// them may pass over. Anywhere else a missing position stops the reader.
    #[serde(default)]
    pub usage_purged_below: u64,
}

impl Announcement {
    /// Whether it was sent within `bound` of `now_ms` (clocks of nodes agree far better).
    pub fn is_recent(&self, now_ms: i64, bound: Duration) -> bool {
        (now_ms - self.sent_at_ms).unsigned_abs() <= bound.as_millis() as u64
    }
}

struct Peer {
    applied: u64,
    seen: Instant,
}

/// Another process announced this node's id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("another process announces node id {0:?}: every node needs its own --node-id")]
pub struct DuplicateId(pub String);

/// The other nodes this node has heard from.
pub struct Peers {
    own_id: String,
    own_instance: String,
    /// A node unheard for this long no longer shares the rate limits.
    timeout: Duration,
    /// A node unheard for this long can no longer be serving (its staleness bound has
    /// passed): only then may a revoke stop waiting for it.
    barrier_timeout: Duration,
    /// A std mutex: held for a map operation, never across an `.await`.
    map: parking_lot::Mutex<HashMap<String, Peer>>,
    changed: tokio::sync::Notify,
}

impl Peers {
    pub fn new(
        own_id: String,
        own_instance: String,
        timeout: Duration,
        barrier_timeout: Duration,
    ) -> Self {
        Peers {
            own_id,
            own_instance,
            timeout,
            barrier_timeout,
            map: parking_lot::Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Records an announcement heard at `now`. Own announcements are ignored; another
    /// process's under this node's id is an error.
    pub fn heard(&self, a: Announcement, now: Instant) -> Result<(), DuplicateId> {
        if a.node_id == self.own_id {
            if a.instance != self.own_instance {
                return Err(DuplicateId(a.node_id));
            }
            return Ok(());
        }
        {
            let mut map = self.map.lock();
            if a.leaving {
                map.remove(&a.node_id);
            } else {
                let p = map.entry(a.node_id).or_insert(Peer {
                    applied: 0,
                    seen: now,
                });
                p.applied = p.applied.max(a.applied_seq);
                p.seen = now;
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Resolves at the next announcement.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The peers that may still be serving (heard within the barrier timeout) split into
    /// those that have applied `seq` and those that have not, each sorted by id.
    pub fn split_at(&self, seq: u64, now: Instant) -> (Vec<String>, Vec<String>) {
        let map = self.map.lock();
        let (mut done, mut pending): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for (id, p) in map.iter() {
            if now.saturating_duration_since(p.seen) > self.barrier_timeout {
                continue;
            }
            if p.applied >= seq {
                done.push(id.clone());
            } else {
                pending.push(id.clone());
            }
        }
        done.sort();
        pending.sort();
        (done, pending)
    }

    /// The smallest id among the live peers (this node not included).
    pub fn smallest_live(&self, now: Instant) -> Option<String> {
        let map = self.map.lock();
        map.iter()
            .filter(|(_, p)| now.saturating_duration_since(p.seen) <= self.timeout)
            .map(|(id, _)| id)
            .min()
            .cloned()
    }

    /// Live nodes, this one included.
    pub fn live_count(&self, now: Instant) -> usize {
        let map = self.map.lock();
        1 + map
            .values()
            .filter(|p| now.saturating_duration_since(p.seen) <= self.timeout)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(id: &str, seq: u64) -> Announcement {
        Announcement {
            node_id: id.into(),
            instance: format!("{id}-1"),
            applied_seq: seq,
            leaving: false,
            sent_at_ms: 0,
            usage_purged_below: 0,
        }
    }

    fn peers() -> Peers {
        Peers::new(
            "a".into(),
            "a-1".into(),
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
    }

    #[test]
    fn splits_live_peers_by_applied_sequence() {
        let peers = peers();
        let t = Instant::now();
        peers.heard(ann("a", 1), t).unwrap();
        peers.heard(ann("b", 5), t).unwrap();
        peers.heard(ann("c", 3), t).unwrap();
        assert_eq!(peers.split_at(4, t), (vec!["b".into()], vec!["c".into()]));
        assert_eq!(peers.live_count(t), 3);
        // Sequences never go back.
        peers.heard(ann("b", 2), t).unwrap();
        assert_eq!(peers.split_at(4, t).0, vec!["b".to_string()]);
    }

    #[test]
    fn silent_and_leaving_peers_are_not_live() {
        let peers = peers();
        let t = Instant::now();
        peers.heard(ann("b", 5), t).unwrap();
        peers.heard(ann("c", 0), t).unwrap();
        // Silent for longer than the live timeout: no longer sharing the limits, but a revoke
        // still waits for it until its staleness bound has passed.
        let later = t + Duration::from_secs(2);
        assert_eq!(peers.live_count(later), 1);
        assert_eq!(
            peers.split_at(1, later),
            (vec!["b".into()], vec!["c".into()])
        );
        let much_later = t + Duration::from_secs(4);
        assert_eq!(peers.split_at(1, much_later), (vec![], vec![]));
        peers
            .heard(
                Announcement {
                    leaving: true,
                    ..ann("c", 5)
                },
                t,
            )
            .unwrap();
        assert_eq!(peers.split_at(1, t), (vec!["b".into()], vec![]));
    }

    #[test]
    fn only_recent_announcements_count() {
        let a = Announcement {
            sent_at_ms: 10_000,
            ..ann("b", 1)
        };
        let bound = Duration::from_secs(5);
        assert!(a.is_recent(10_000, bound));
        assert!(a.is_recent(15_000, bound));
        assert!(a.is_recent(5_000, bound), "a clock a little behind");
        assert!(!a.is_recent(15_001, bound), "replayed later");
        assert!(!ann("b", 1).is_recent(10_000, bound), "no time at all");
    }

    #[test]
    fn another_process_with_this_node_id_is_an_error() {
        let peers = peers();
        let t = Instant::now();
        assert!(peers.heard(ann("a", 1), t).is_ok(), "own announcement");
        let twin = Announcement {
            instance: "a-2".into(),
            ..ann("a", 1)
        };
        assert_eq!(peers.heard(twin, t), Err(DuplicateId("a".into())));
    }
}
