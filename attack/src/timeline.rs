//! A volley's answers over time, in bounded memory: for each time bucket
//! (counted from the moment the claims were released), the answers that
//! came in it by outcome, and a histogram of their latencies. Buckets start
//! [`FIRST_WIDTH`] wide; when a run outgrows [`MAX_BUCKETS`] of them, each
//! pair is merged into one twice as wide, so a run of any length keeps at
//! most [`MAX_BUCKETS`], each with a histogram of bounded size.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::client::Outcome;

pub const MAX_BUCKETS: usize = 200;
pub const FIRST_WIDTH: Duration = Duration::from_millis(1);
/// Latencies are kept in microseconds to 2 significant figures (within
/// 1%), up to an hour; a longer one counts as an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;
const SIGNIFICANT_FIGURES: u8 = 2;

/// What a claim came to, as the charts group it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// 2xx: a unit handed out (or its replay).
    Granted,
    /// 409 `already_claimed`.
    AlreadyClaimed,
    /// 400 `out_of_stock`.
    OutOfStock,
    /// 503, whatever the code: `busy`, `database_unavailable`, the edge's.
    Overloaded,
    /// Any other status.
    OtherAnswer,
    /// No answer: a timeout, a refused connection, a broken one.
    NoAnswer,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Granted,
        Class::AlreadyClaimed,
        Class::OutOfStock,
        Class::Overloaded,
        Class::OtherAnswer,
        Class::NoAnswer,
    ];

    /// The class of a claim that was sent; `None` for one never sent (the
    /// run's deadline had passed) or lost with its worker.
    pub fn of(outcome: &Outcome) -> Option<Class> {
        Some(match (outcome.status, outcome.code.as_str()) {
            (None, "not_sent_deadline" | "worker_lost") => return None,
            (None, _) => Class::NoAnswer,
            (Some(200..=299), _) => Class::Granted,
            (Some(409), "already_claimed") => Class::AlreadyClaimed,
            (Some(400), "out_of_stock") => Class::OutOfStock,
            (Some(503), _) => Class::Overloaded,
            (Some(_), _) => Class::OtherAnswer,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Granted => "granted (2xx)",
            Class::AlreadyClaimed => "409 already_claimed",
            Class::OutOfStock => "400 out_of_stock",
            Class::Overloaded => "503 overloaded",
            Class::OtherAnswer => "other answers",
            Class::NoAnswer => "no answer (errors)",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The answers that came in one time bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    counts: [u64; Class::ALL.len()],
    /// Latencies in microseconds.
    latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            counts: [0; Class::ALL.len()],
            latency: Histogram::new(SIGNIFICANT_FIGURES).expect("2 significant figures are valid"),
        }
    }

    pub fn count(&self, class: Class) -> u64 {
        self.counts[class.index()]
    }

    #[cfg(test)]
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency at `quantile` (0 to 1) of the answers in this bucket;
    /// `None` when none came in it.
    pub fn latency_at(&self, quantile: f64) -> Option<Duration> {
        (!self.latency.is_empty())
            .then(|| Duration::from_micros(self.latency.value_at_quantile(quantile)))
    }

    fn merge(&mut self, other: &Bucket) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        // Both histograms resize themselves, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// Buckets of one width, the first starting at the release.
#[derive(Debug, Clone)]
pub struct Timeline {
    width: Duration,
    buckets: Vec<Bucket>,
}

impl Default for Timeline {
    fn default() -> Timeline {
        Timeline {
            width: FIRST_WIDTH,
            buckets: Vec::new(),
        }
    }
}

impl Timeline {
    /// Counts an answer that came `at` after the release and took `latency`.
    pub fn record(&mut self, at: Duration, class: Class, latency: Duration) {
        let mut index = self.index_of(at);
        while index >= MAX_BUCKETS {
            self.coarsen();
            index = self.index_of(at);
        }
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, Bucket::new);
        }
        let bucket = &mut self.buckets[index];
        bucket.counts[class.index()] += 1;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // The histogram grows to hold the value (`saturating_record` would
        // clamp it to its current top instead); an hour at most always fits.
        let _ = bucket.latency.record(micros.clamp(1, MAX_LATENCY_US));
    }

    /// The width of every bucket.
    pub fn width(&self) -> Duration {
        self.width
    }

    /// The buckets from the release to the last answer; bucket `i` covers
    /// `i * width()` to `(i + 1) * width()`.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Answers counted over every bucket.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.buckets.iter().map(Bucket::total).sum()
    }

    fn index_of(&self, at: Duration) -> usize {
        usize::try_from(at.as_nanos() / self.width.as_nanos()).unwrap_or(usize::MAX)
    }

    /// Doubles the width: buckets 2i and 2i + 1 become bucket i.
    fn coarsen(&mut self) {
        self.width *= 2;
        let old = std::mem::take(&mut self.buckets);
        let mut pairs = old.into_iter();
        while let Some(mut first) = pairs.next() {
            if let Some(second) = pairs.next() {
                first.merge(&second);
            }
            self.buckets.push(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<u16>, code: &str) -> Outcome {
        Outcome {
            status,
            code: code.to_owned(),
            latency: Duration::from_millis(1),
            retries: 0,
        }
    }

    #[test]
    fn outcomes_are_classed_by_status_and_code() {
        let class = |status, code| Class::of(&outcome(status, code));
        assert_eq!(class(Some(200), ""), Some(Class::Granted));
        assert_eq!(
            class(Some(409), "already_claimed"),
            Some(Class::AlreadyClaimed)
        );
        assert_eq!(class(Some(400), "out_of_stock"), Some(Class::OutOfStock));
        assert_eq!(
            class(Some(400), "invalid_user_id"),
            Some(Class::OtherAnswer)
        );
        assert_eq!(class(Some(503), "busy"), Some(Class::Overloaded));
        assert_eq!(class(Some(503), ""), Some(Class::Overloaded));
        assert_eq!(class(Some(500), "internal"), Some(Class::OtherAnswer));
        assert_eq!(class(None, "timeout"), Some(Class::NoAnswer));
        assert_eq!(class(None, "not_sent_deadline"), None);
        assert_eq!(class(None, "worker_lost"), None);
    }

    #[test]
    fn answers_land_in_the_bucket_of_their_time() {
        let mut t = Timeline::default();
        t.record(
            Duration::from_micros(500),
            Class::Granted,
            Duration::from_millis(2),
        );
        t.record(
            Duration::from_micros(2500),
            Class::OutOfStock,
            Duration::from_millis(4),
        );
        t.record(
            Duration::from_micros(2900),
            Class::OutOfStock,
            Duration::from_millis(8),
        );
        assert_eq!(t.width(), Duration::from_millis(1));
        let b = t.buckets();
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].count(Class::Granted), b[0].total()), (1, 1));
        assert_eq!(b[1].total(), 0);
        assert_eq!(b[1].latency_at(0.5), None);
        assert_eq!(b[2].count(Class::OutOfStock), 2);
        let p50 = b[2].latency_at(0.5).unwrap();
        let p99 = b[2].latency_at(0.99).unwrap();
        assert!(
            p50.abs_diff(Duration::from_millis(4)) < Duration::from_micros(50),
            "{p50:?} {p99:?}"
        );
        assert!(p99.abs_diff(Duration::from_millis(8)) < Duration::from_micros(100));
    }

    #[test]
    fn a_long_run_keeps_at_most_max_buckets_and_every_answer() {
        let mut t = Timeline::default();
        // One answer every 7 ms for 100 s: 14,286 answers.
        let mut at = Duration::ZERO;
        let mut sent = 0;
        while at < Duration::from_secs(100) {
            let class = if sent % 3 == 0 {
                Class::Granted
            } else {
                Class::OutOfStock
            };
            t.record(at, class, Duration::from_micros(100 + sent % 900));
            at += Duration::from_millis(7);
            sent += 1;
        }
        assert!(t.buckets().len() <= MAX_BUCKETS, "{}", t.buckets().len());
        assert!(t.buckets().len() > MAX_BUCKETS / 2, "{}", t.buckets().len());
        // 1 ms doubled until 100 s fits in 200 buckets: 512 ms.
        assert_eq!(t.width(), Duration::from_millis(512));
        assert_eq!(t.total(), sent);
        let granted: u64 = t.buckets().iter().map(|b| b.count(Class::Granted)).sum();
        assert_eq!(granted, sent.div_ceil(3));
        let latencies: u64 = t.buckets().iter().map(|b| b.latency.len()).sum();
        assert_eq!(latencies, sent);
    }

    #[test]
    fn a_latency_past_an_hour_counts_as_an_hour() {
        let mut t = Timeline::default();
        t.record(Duration::ZERO, Class::NoAnswer, Duration::from_secs(7200));
        let p = t.buckets()[0].latency_at(1.0).unwrap();
        assert!(
            p.abs_diff(Duration::from_secs(3600)) < Duration::from_secs(40),
            "{p:?}"
        );
    }
}
