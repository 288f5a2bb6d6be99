//! Prometheus metrics, hand-rolled: a few atomics and one text renderer are all the service
//! needs, and they keep the hot path to a relaxed atomic add.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency histograms, in seconds.
const BOUNDS: [f64; 14] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1, 1.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BOUNDS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Counters for one route, indexed by status code − 100: no hashing, no allocation.
struct RouteCounters {
    route: &'static str,
    by_status: Box<[AtomicU64]>,
}

pub struct Metrics {
    /// One entry per route pattern, plus "unmatched" last. Found by a short linear scan of
    /// the matched resource's name (the hot routes come first).
    requests: Vec<RouteCounters>,
    pub verify_latency: Histogram,
    /// Revoke call received → applied on every node that acknowledged it.
    pub revocation_propagation: Histogram,
}

impl Metrics {
    /// Counters for these route patterns (and "unmatched").
    pub fn new(routes: &[&'static str]) -> Self {
        let requests = routes
            .iter()
            .chain(std::iter::once(&"unmatched"))
            .map(|r| RouteCounters {
                route: r,
                by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            })
            .collect();
        Metrics {
            requests,
            verify_latency: Histogram::default(),
            revocation_propagation: Histogram::default(),
        }
    }

    /// Counts a response of `route` (the matched resource's name, which is its pattern).
    pub fn count_request(&self, route: Option<&str>, status: u16) {
        let last = self.requests.len() - 1;
        let i = route
            .and_then(|r| self.requests[..last].iter().position(|c| c.route == r))
            .unwrap_or(last);
        if let Some(n) = self.requests[i]
            .by_status
            .get(usize::from(status).wrapping_sub(100))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exposition text. `gauges` are (name, help, value) read at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP snaptrack_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE snaptrack_http_requests_total counter\n");
        for c in &self.requests {
            for (i, n) in c.by_status.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let (route, status) = (c.route, i + 100);
                let _ = writeln!(
                    out,
                    "snaptrack_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        self.verify_latency.render(
            "snaptrack_verify_duration_seconds",
            "Time to check a Bearer token (parse, hash, lookup, plan, rate limit).",
            &mut out,
        );
        self.revocation_propagation.render(
            "snaptrack_revocation_propagation_seconds",
            "Revoke call received until every acknowledging node applied it.",
            &mut out,
        );
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
