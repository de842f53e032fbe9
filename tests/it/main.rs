//! The integration tests, as one test binary: a module per subject, all
//! sharing `support`. One binary links the server library and the support
//! code once, and starts one throwaway PostgreSQL cluster for every test
//! (when DATABASE_URL is unset).
//!
//! Every test begins by taking a turn (`support::serial`): tests of one
//! module run side by side, never beside another module's, and the
//! heaviest (HAProxy in front of replicas, deadlines held against a stopped
//! database) take `serial::alone()` and run beside no other test.

mod support;

mod accept_loop;
mod api;
mod attack_command;
mod attack_report;
mod attacks;
mod bad_input;
mod combining;
mod db_stalls;
mod docs;
mod edge;
mod edge_failover;
mod faults;
mod handlers;
mod idempotency;
mod listings;
mod metrics;
mod monitoring;
mod pipelining;
mod release;
mod replicas;
mod rolling_start;
mod sale_windows;
mod shutdown;
mod slow_clients;
mod slow_readers;
mod startup;
