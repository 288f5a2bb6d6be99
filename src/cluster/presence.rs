use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a node says on `snaptrack.auth.nodes`: who it is and how far it has applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub node_id: String,
    pub applied_seq: u64,
    /// Sent once at graceful shutdown, so others stop counting the node as live at once.
    #[serde(default)]
    pub leaving: bool,
}

struct Peer {
    applied: u64,
    seen: Instant,
}

/// The other nodes this node has heard from.
pub struct Peers {
    own_id: String,
    /// A node unheard for this long is no longer live.
    timeout: Duration,
    /// A std mutex: held for a map operation, never across an `.await`.
    map: parking_lot::Mutex<HashMap<String, Peer>>,
    changed: tokio::sync::Notify,
}

impl Peers {
    pub fn new(own_id: String, timeout: Duration) -> Self {
        Peers {
            own_id,
            timeout,
            map: parking_lot::Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Records an announcement heard at `now`. Own announcements are ignored.
    pub fn heard(&self, a: Announcement, now: Instant) {
        if a.node_id == self.own_id {
            return;
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
    }

    /// Resolves at the next announcement.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Live peers (heard within the timeout) split into those that have applied `seq` and
    /// those that have not, each sorted by id.
    pub fn split_at(&self, seq: u64, now: Instant) -> (Vec<String>, Vec<String>) {
        let map = self.map.lock();
        let (mut done, mut pending): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for (id, p) in map.iter() {
            if now.saturating_duration_since(p.seen) > self.timeout {
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
            applied_seq: seq,
            leaving: false,
        }
    }

    #[test]
    fn splits_live_peers_by_applied_sequence() {
        let peers = Peers::new("a".into(), Duration::from_secs(1));
        let t = Instant::now();
        peers.heard(ann("a", 1), t);
        peers.heard(ann("b", 5), t);
        peers.heard(ann("c", 3), t);
        assert_eq!(peers.split_at(4, t), (vec!["b".into()], vec!["c".into()]));
        assert_eq!(peers.live_count(t), 3);
        // Sequences never go back.
        peers.heard(ann("b", 2), t);
        assert_eq!(peers.split_at(4, t).0, vec!["b".to_string()]);
    }

    #[test]
    fn silent_and_leaving_peers_are_not_live() {
        let peers = Peers::new("a".into(), Duration::from_secs(1));
        let t = Instant::now();
        peers.heard(ann("b", 5), t);
        peers.heard(ann("c", 5), t);
        let later = t + Duration::from_secs(2);
        assert_eq!(peers.split_at(1, later), (vec![], vec![]));
        peers.heard(
            Announcement {
                leaving: true,
                ..ann("c", 5)
            },
            t,
        );
        assert_eq!(peers.split_at(1, t).0, vec!["b".to_string()]);
        assert_eq!(peers.live_count(later), 1);
    }
}
