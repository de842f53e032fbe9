//! Whether the database answers, for /healthz: a round trip on a connection
//! of the probe's own, so that a pool all busy with work does not read as a
//! database that does not answer. One probe runs at a time: the /healthz
//! requests that arrive while one runs take its result, so a burst of them
//! (every load balancer checking every replica) costs the database one
//! round trip.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Store;
use super::connector::Connector;
use super::deadline_client::DeadlineClient;
use crate::lock::lock;

/// How long a probe waits for the database before it counts as not
/// answering.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// The probe's connection and the probes running on it.
#[derive(Default)]
pub(crate) struct HealthProbe {
    /// Opened again whenever it is missing or broken.
    client: Mutex<Option<DeadlineClient>>,
    state: Mutex<ProbeState>,
    ended: Condvar,
}

#[derive(Default)]
struct ProbeState {
    running: bool,
    /// Probes ended so far, and the last one's result.
    ended: u64,
    answered: bool,
}

impl Store {
    /// True when the database answered a round trip within HEALTH_TIMEOUT:
    /// this caller's probe, or the one that was running when it asked (then
    /// waited for at most twice that).
    pub fn database_answers(&self) -> bool {
        let probe = &*self.health;
        let mut state = lock(&probe.state);
        if state.running {
            let this_one = state.ended;
            let deadline = Instant::now() + HEALTH_TIMEOUT * 2;
            while state.ended == this_one {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                state = probe
                    .ended
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            return state.answered;
        }
        state.running = true;
        drop(state);
        let answered = probe.ping(&self.connector, HEALTH_TIMEOUT);
        let mut state = lock(&probe.state);
        state.running = false;
        state.ended += 1;
        state.answered = answered;
        probe.ended.notify_all();
        answered
    }

    /// Whether the database answered the last probe that ended, without
    /// probing (never waits on the database): for /metrics, which must
    /// answer at once even while the database does not. True before the
    /// first probe, since start-up reached the database.
    pub fn database_answered_last_probe(&self) -> bool {
        let state = lock(&self.health.state);
        state.ended == 0 || state.answered
    }
}

impl HealthProbe {
    /// True when the database answers a round trip on the probe's own
    /// connection (opened again when needed), all within `timeout`,
    /// whatever the database does.
    fn ping(&self, connector: &Connector, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut client = lock(&self.client);
        if client.as_ref().is_none_or(DeadlineClient::is_broken) {
            *client = connector.open(timeout).ok();
        }
        let Some(open) = client.as_mut() else {
            return false;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let answered = open
            .run_within("the health probe", left, |c| c.simple_query(""))
            .is_ok();
        if !answered {
            *client = None;
        }
        answered
    }
}
