//! `lotse deliveries`, run as the built binary against an admin API that is not there, or a
//! stand-in that answers what a hub would.

use std::process::{Command, Output};

/// The admin URL as an operator behind an authenticating proxy sets it: with a password.
const SECRET: &str = "s3cret-pw";

fn lotse(args: &[&str], admin_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lotse")).args(args).env("LOTSE_ADMIN_URL", admin_url).output().expect("lotse runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A port nobody listens on (bound, then let go), so a connection is refused at once.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// Regression: `--help` printed `[env: LOTSE_ADMIN_URL=https://ops:pw@...]` and "cannot reach
/// the admin API at ..." named the URL with its password; both go to terminals and CI logs.
#[test]
fn the_admin_urls_password_is_never_printed() {
    let url = format!("http://ops:{SECRET}@127.0.0.1:{}", closed_port());
    for help in [&["deliveries", "--help"][..], &["deliveries", "replay", "--help"]] {
        let out = lotse(help, &url);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("LOTSE_ADMIN_URL"), "the variable is still named: {}", text(&out));
        assert!(!text(&out).contains(SECRET), "{help:?} shows the password: {}", text(&out));
    }
    for command in [&["deliveries", "list"][..], &["deliveries", "replay", "--reason", "r"]] {
        let out = lotse(command, &url);
        assert!(!out.status.success(), "{command:?} against a closed port: {}", text(&out));
        let shown = text(&out);
        assert!(shown.contains("cannot reach the admin API at http://ops:***@127.0.0.1:"), "{shown}");
        assert!(!shown.contains(SECRET), "{command:?} prints the password: {shown}");
    }
}
