//! The `sluice` binary's library: configuration loading, the in-process local cluster and the
//! benchmark. `main.rs` only parses arguments, installs logging, binds and calls into here or
//! into the master and worker libraries.
//!
//! - [`config`]: TOML file, environment and flag overrides, unknown keys rejected.
//! - [`local`]: [`local::LocalCluster`], a master and N workers in one process on loopback.
//! - [`bench`]: the load generator behind `sluice bench`.
//! - [`certs`]: development certificates (`sluice dev-certs`, `sluice local --secure`).
//! - [`records`]: self-checking records used by the benchmark and tests.
//! - [`reference`]: every config key with its default and doc comment, for `docs/config.md`
//!   and `sluice master --help` / `sluice worker --help`.
//! - [`admin`]: `sluice admin`, over the masters' gRPC and the admin ports' JSON, which
//!   [`http`] fetches.

pub mod admin;
pub mod bench;
pub mod certs;
pub mod config;
pub mod http;
pub mod local;
pub mod records;
pub mod reference;
