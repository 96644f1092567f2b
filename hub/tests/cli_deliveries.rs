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
    for help in [&["deliveries", "--help"][..], &["deliveries", "replay", "--help"], &["endpoints", "pause", "--help"]]
    {
        let out = lotse(help, &url);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("LOTSE_ADMIN_URL"), "the variable is still named: {}", text(&out));
        assert!(!text(&out).contains(SECRET), "{help:?} shows the password: {}", text(&out));
    }
    for command in [&["deliveries", "list"][..], &["deliveries", "replay", "--reason", "r"], &["endpoints", "list"]] {
        let out = lotse(command, &url);
        assert!(!out.status.success(), "{command:?} against a closed port: {}", text(&out));
        let shown = text(&out);
        assert!(shown.contains("cannot reach the admin API at http://ops:***@127.0.0.1:"), "{shown}");
        assert!(!shown.contains(SECRET), "{command:?} prints the password: {shown}");
    }
}

/// A stand-in admin API whose `POST /v1/admin/replay` answers `status` and `body`; what the
/// command sent is kept in the returned list. Runs on its own thread until the test ends.
fn stand_in(
    status: u16,
    body: serde_json::Value,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use axum::http::{StatusCode, header};

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let kept = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/admin/replay",
                axum::routing::post(move |axum::Json(sent): axum::Json<serde_json::Value>| async move {
                    kept.lock().expect("not poisoned").push(sent);
                    let status = StatusCode::from_u16(status).expect("status");
                    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    (url, seen)
}

/// Regression: `replay --yes` without ids took the hub's 1,000 newest dead deliveries of 3,000
/// and exited 0 as if all were replayed. `--limit` reaches the hub, and an answer that says
/// more matched (`truncated`) is said on stderr with exit code 1, in a dry run too.
#[test]
fn a_replay_that_left_dead_deliveries_behind_says_so_and_fails() {
    for yes in [true, false] {
        let replayed = if yes { "replayed" } else { "would_replay" };
        let (url, seen) = stand_in(
            if yes { 202 } else { 200 },
            serde_json::json!({ replayed: ["d1", "d2"], "limit": 2, "truncated": true }),
        );
        let mut args = vec!["deliveries", "replay", "--reason", "r", "--limit", "2", "--admin", &url];
        if yes {
            args.push("--yes");
        }
        let out = lotse(&args, &url);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("more dead deliveries match than the 2 this run took"), "{stderr}");
        let sent = seen.lock().expect("not poisoned").clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((&sent[0]["limit"], &sent[0]["dry_run"]), (&serde_json::json!(2), &serde_json::json!(!yes)));
    }
    let (url, _) = stand_in(202, serde_json::json!({ "replayed": ["d1"], "limit": 1000, "truncated": false }));
    let out = lotse(&["deliveries", "replay", "--reason", "r", "--yes"], &url);
    assert_eq!(out.status.code(), Some(0), "everything taken: {}", text(&out));
}

/// A bulk replay the hub stopped part way (a store error) fails, and names those it replayed.
#[test]
fn a_replay_stopped_part_way_names_what_was_replayed() {
    let problem = serde_json::json!({ "type": "urn:lotse:problem:store-unavailable", "status": 503,
        "detail": "the store failed after 1 of 3 replays", "replayed": ["d1"] });
    let (url, _) = stand_in(503, problem);
    let out = lotse(&["deliveries", "replay", "--reason", "r", "--yes"], &url);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("d1: replayed"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("after 1 of 3"), "{}", text(&out));
}
