//! flash-coupons: a flash-sale coupon service. `main.rs` only reads the
//! configuration and starts a [`Server`]; tests start the same server.

pub mod claims;
pub mod config;
pub mod context;
pub mod domain;
#[macro_use]
pub mod failure_log;
pub mod http;
pub mod listener;
pub mod lock;
pub mod metrics;
pub mod server;
pub mod sockets;
pub mod store;
pub mod workers;

pub use config::Config;
pub use server::{Server, StartError};
