//! flash-coupons: a flash-sale coupon service. A shop opens a coupon with N
//! units; thousands of people claim it at once; exactly N get one, never two
//! the same person. `main.rs` reads the command line and the configuration
//! and starts a [`Server`]; the integration tests start the same server.
//!
//! # Map
//!
//! The folders are the layers, outermost first:
//!
//! - [`transport`]: everything that knows tiny_http, the HTTP server the
//!   service is built on: listening, keeping it accepting, one request at a
//!   time per connection, reading bodies, writing answers with deadlines.
//!   It hands each request on as an owned [`transport::Request`] and takes
//!   back a [`transport::Response`]. Its module doc lists, by number, the
//!   tiny_http defects it works around.
//! - [`http`]: the API on those owned values: which worker pool takes a
//!   request, routing, handlers, the one table of error answers, the admin
//!   token, the request log line.
//! - [`claims`]: deciding claims: combining concurrent claims on one coupon
//!   into one transaction, and answering claims on sold-out coupons from
//!   memory.
//! - [`domain`]: the types that cannot hold an invalid value (coupon names,
//!   user ids, amounts, sale windows) and the rule that decides a batch of
//!   claims in order. Knows neither HTTP nor SQL.
//! - [`store`]: everything that speaks SQL: start-up against the database
//!   and the schema, the pool of connections with deadlines, the
//!   transactions and their retry, the freshness listener.
//! - The wiring: [`server`] starts and stops the parts in order, [`config`]
//!   reads every setting from the environment in one place, [`context`] is
//!   what every handler can reach, [`workers`] the thread pools, [`metrics`]
//!   GET /metrics; [`failure_log`], [`lock`] and [`sockets`] are small tools
//!   the layers share.
//!
//! # Words this code uses in its own sense
//!
//! - **accept loop**, also **generation**: one `tiny_http::Server` running on
//!   the service's listening socket. tiny_http's loop ends for good at its
//!   first error, so a supervisor starts a new one (the next generation)
//!   whenever the accepting one ends; ended ones are *retired* and still
//!   drained of requests.
//! - **pump**: a thread that takes the requests out of accept loops and
//!   passes them to the admission.
//! - **admission**: where a request enters the service: its connection's
//!   order, its body, then the worker pools.
//! - **request in flight**: a connection's right
//!   to have one request worked on; it ends when that request's answer has
//!   been written, which starts the connection's next request.
//! - **cut**: a connection that gets no more answers (it sent too far
//!   ahead of them, or an answer could not be written).
//! - **worker pools**: the *database* pool (WORKERS threads, for requests
//!   that may wait on the database) and the *quick* pool (for /healthz,
//!   /metrics and refusals, answered even when every worker is stuck).
//! - **writers**: threads that only write answers to sockets.
//! - **response memory**: the memory, and the writers, that answers made
//!   whole before writing may hold at once.
//! - **batch**: claims on one coupon decided together in one transaction;
//!   its **leader** is the claim whose thread runs it.
//! - **sold-out memory**: what a server remembers of sold-out coupons and
//!   their holders, to answer claims on them without a transaction.
//! - **freshness listener**: the thread that hears (LISTEN) of every commit
//!   that may make that memory wrong.
//! - **one-message claim**: a claim alone on its coupon, decided in one
//!   round trip to the database.
//! - **claim lock**: the advisory lock on a coupon that makes its claim
//!   transactions take turns across every server on one database.
//! - **watchdog**: the thread that cuts a database connection whose
//!   operation outlived its deadline.
//! - **drain**: the time after SIGTERM during which /healthz fails while
//!   everything else is still served (SHUTDOWN_DRAIN_SECS).

pub mod claims;
pub mod cli;
pub mod config;
pub mod context;
pub mod domain;
#[macro_use]
pub mod failure_log;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod server;
pub mod sockets;
pub mod store;
pub mod transport;
pub mod workers;

pub use config::Config;
pub use server::{Server, StartError};
