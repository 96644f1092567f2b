//! The Lotse hub: accepts XÖV submissions from partners, stores them durably, routes them and
//! delivers them to agencies' endpoints, with status and replay for operators.
//!
//! Modules:
//! - [`cli`]: the `lotse` commands (`serve`, `demo`, `submit`, `bench`, `validate`, ...).
//! - [`config`]: `lotse.toml` as written ([`config::RawConfig`]) and validated ([`config::Config`]).
//! - [`app`]: wires store, router, API and workers together: [`app::serve`] and [`app::start`].
//! - [`api`]: the partner API (submissions, status) and the admin API, problem+json errors.
//! - [`intake`]: read -> validate -> route -> render -> store, the path of one submission.
//! - [`delivery`]: per-endpoint workers, transports and the retry policy.
//! - [`store`]: the [`store::Store`] trait and its backends (embedded redb, RabbitMQ).
//! - [`receiver`]: a sample agency receiver (demo, tests, benchmarks).
//! - [`bench`](mod@bench): the load tool behind `lotse bench`.
//! - [`check`]: `lotse validate | convert | inspect`.

pub mod api;
pub mod app;
pub mod bench;
pub mod check;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod fetch;
pub mod intake;
pub mod receiver;
pub mod store;
pub mod submit;
pub mod telemetry;
#[cfg(test)]
mod testing_pki;
