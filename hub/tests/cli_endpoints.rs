//! `lotse endpoints list | pause | resume`, run as the built binary against a real hub (embedded
//! store, admin API on 127.0.0.1).

use std::process::Output;

use hub::config::Config;

/// A hub with one file endpoint, `ablage`, its admin API on a port of its own.
async fn start_hub(dir: &std::path::Path) -> hub::app::Running {
    let config = Config::parse(&format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "{data}"
[schemas]
validate = false
[[endpoints]]
name = "ablage"
kind = "file"
path = "{out}"
[[routes]]
name = "all"
endpoints = ["ablage"]
"#,
        data = dir.join("data").display(),
        out = dir.join("out").display(),
    ))
    .expect("valid test config");
    let partner = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let store = hub::app::open_store(&config).await.expect("store");
    hub::app::start(config, store, partner, admin).await.expect("hub starts")
}

async fn lotse(args: &[&str], hub: &hub::app::Running) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_lotse"))
        .args(args)
        .env("LOTSE_ADMIN_URL", format!("http://{}", hub.admin_addr))
        .output()
        .await
        .expect("lotse runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The line of `lotse endpoints list` that names `ablage`.
async fn listed(hub: &hub::app::Running) -> String {
    let out = lotse(&["endpoints", "list"], hub).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.starts_with("ablage "))
        .unwrap_or_else(|| panic!("ablage not listed: {stdout}"))
        .to_owned()
}

/// An operator on call pauses an agency's endpoint and resumes it without curl; the list shows
/// who paused it and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_paused_from_the_cli_is_listed_paused_until_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = start_hub(dir.path()).await;
    let line = listed(&hub).await;
    assert!(line.contains(" file ") && line.contains(" no "), "{line}");

    let out =
        lotse(&["endpoints", "pause", "ablage", "--reason", "Wartung beim Bauamt", "--actor", "alice"], &hub).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("endpoint `ablage` paused by alice"), "{}", text(&out));
    let line = listed(&hub).await;
    assert!(line.contains(" yes ") && line.contains("by alice: Wartung beim Bauamt"), "{line}");

    let out = lotse(&["endpoints", "resume", "ablage", "--reason", "Wartung vorbei"], &hub).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("endpoint `ablage` resumed"), "{}", text(&out));
    let line = listed(&hub).await;
    assert!(line.contains(" no ") && !line.contains("alice"), "{line}");
    hub.stop().await;
}

/// A typo in the endpoint's name is an error naming it (exit 1), not a silent success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_an_unknown_endpoint_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = start_hub(dir.path()).await;
    for args in [&["endpoints", "pause", "ablgae", "--reason", "r"][..], &["endpoints", "resume", "ablgae"]] {
        let out = lotse(args, &hub).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no endpoint `ablgae`"), "{}", text(&out));
    }
    hub.stop().await;
}

/// `--reason` is required for a pause: it is what the next operator on call reads in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_needs_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = start_hub(dir.path()).await;
    let out = lotse(&["endpoints", "pause", "ablage"], &hub).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason"), "{}", text(&out));
    assert!(!listed(&hub).await.contains(" yes "), "not paused");
    hub.stop().await;
}

/// Without `--actor`, the pause is recorded under the login name: `USER`, or `LOGNAME` where
/// only that is set (cron, some service managers), never an empty name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_defaults_to_the_login_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = start_hub(dir.path()).await;
    for (user, logname, shown) in
        [(Some("bob"), Some("carol"), "bob"), (None, Some("carol"), "carol"), (Some(" "), None, "operator")]
    {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lotse"));
        command.args(["endpoints", "pause", "ablage", "--reason", "r"]);
        command.env("LOTSE_ADMIN_URL", format!("http://{}", hub.admin_addr)).env_remove("USER").env_remove("LOGNAME");
        if let Some(u) = user {
            command.env("USER", u);
        }
        if let Some(l) = logname {
            command.env("LOGNAME", l);
        }
        let out = command.output().await.expect("lotse runs");
        assert!(out.status.success(), "{}", text(&out));
        let expected = format!("endpoint `ablage` paused by {shown}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&expected), "{user:?}/{logname:?}: {}", text(&out));
    }
    hub.stop().await;
}
