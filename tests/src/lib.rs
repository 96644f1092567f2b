//! Harness for Lotse's end-to-end suites: real `lotse` processes on 127.0.0.1, real receivers,
//! real corpus files, a real RabbitMQ when one answers.
//!
//! Modules:
//! - [`process`]: start `lotse serve` with a config in a temp dir, read its `listening` line,
//!   `kill -9` it, restart it on the same data dir, show its log when a test fails.
//! - [`api`]: small HTTP helpers for the partner and admin APIs (submit, poll status).
//! - [`corpus`]: where `../shared/corpus` is, the skip-or-fail rule, the G2G message list, and
//!   an independent header scan (reader key, message UUID) to build routes from.
//! - [`fixtures`]: the project's own synthetic XÖV-shaped messages in `tests/fixtures/`.
//! - [`amqp`]: [`amqp::require_rabbitmq`], the run-or-skip-or-fail rule for broker tests.
//!
//! Suites (`tests/tests/*.rs`) get the `lotse` binary from [`lotse_bin!`], which must expand in
//! the suite: only integration tests see `CARGO_BIN_EXE_*`.

pub mod amqp;
pub mod api;
pub mod corpus;
pub mod fixtures;
pub mod process;

pub use amqp::require_rabbitmq;
pub use api::Api;
pub use process::{Hub, HubDir};

/// The `lotse` binary under test: `$LOTSE_BIN` when set, else this package's `lotse-e2e`
/// (the hub's `main.rs`, built fresh by cargo before the suites run).
#[macro_export]
macro_rules! lotse_bin {
    () => {
        $crate::process::resolve_bin(env!("CARGO_BIN_EXE_lotse-e2e"))
    };
}

/// True when running under CI (`CI=true`): missing corpus or broker is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The repository root (the folder holding the workspace `Cargo.toml`).
pub fn repo_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// A config for one test: both listeners on port 0, `data_dir` in the hub's temp folder, short
/// retry backoffs (`50ms`..`200ms`, 5 attempts), the given endpoints (`name`, `url`), raw
/// `[[routes]]` TOML, and any extra TOML (partners, limits).
pub fn config(endpoints: &[(&str, String)], routes: &str, extra: &str) -> String {
    let mut text = String::from(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{data_dir}\"\n\n\
         [retry]\nmax_attempts = 5\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n",
    );
    for (name, url) in endpoints {
        text.push_str(&format!(
            "\n[[endpoints]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{url}\"\ntimeout = \"5s\"\n"
        ));
    }
    text.push('\n');
    text.push_str(routes);
    text.push('\n');
    text.push_str(extra);
    text
}
