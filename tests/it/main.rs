//! The integration tests, as one test binary: each module below was a test
//! binary of its own (tests/<name>.rs) and keeps its tests' names; they all
//! share `support`. One binary links the server library and the support code
//! once, not twenty times, and starts one throwaway PostgreSQL cluster (when
//! DATABASE_URL is unset), not one per binary.
//!
//! Every test begins by taking its module's turn (`support::serial`), so
//! that tests run beside the same tests as when each module was a binary of
//! its own: tests of one module side by side, never beside another module's.

mod support;

mod accept_loop;
mod api;
mod attack_command;
mod attacks;
mod bad_input;
mod combining;
mod db_stalls;
mod docs;
mod edge;
mod edge_failover;
mod faults;
mod handlers;
mod listings;
mod metrics;
mod pipelining;
mod release;
mod replicas;
mod rolling_start;
mod sale_windows;
mod shutdown;
mod slow_clients;
mod slow_readers;
mod startup;
