use super::*;

const MINIMAL: &str = r#"
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8081"
data_dir = "data"

[[endpoints]]
name = "bauamt"
kind = "http"
url = "http://127.0.0.1:9000/in"

[[routes]]
name = "xbau"
message_type = "0200"
endpoints = ["bauamt"]
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL).expect("valid");
    assert_eq!(c.raw.retry, RetryConfig::default());
    assert_eq!(c.raw.queue.kind, QueueKind::Embedded);
    let e = c.endpoint("bauamt").expect("endpoint");
    assert_eq!((e.format, e.concurrency, e.timeout), (Format::Original, 4, Duration::from_secs(30)));
    assert!(c.partner_tokens.is_empty());
}

#[test]
fn unknown_keys_are_refused() {
    let err = Config::parse(&MINIMAL.replace("data_dir", "data_dri")).expect_err("typo");
    assert!(format!("{err:#}").contains("data_dri"), "{err:#}");
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = r#"
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8080"
data_dir = "d"
[retry]
max_attempts = 0
[[endpoints]]
name = "a"
kind = "http"
url = "ftp://x"
concurrency = 0
[[routes]]
name = "r"
endpoints = ["missing"]
"#;
    let err = format!("{:#}", Config::parse(text).expect_err("invalid"));
    for needle in ["admin_listen", "max_attempts", "ftp", "concurrency", "missing"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

#[test]
fn partner_tokens_never_show_in_debug_output() {
    let text = format!("{MINIMAL}\n[[partners]]\nname = \"land-a\"\ntoken = \"s3cr3t-t0ken-value-123\"\n");
    let c = Config::parse(&text).expect("valid");
    let debug = format!("{:?}", c.raw.partners);
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert_eq!(c.partner_tokens.len(), 1);
}

/// An endpoint URL that cannot be parsed is refused without being echoed: it cannot be redacted,
/// and it may hold a password.
#[test]
fn an_unparsable_endpoint_url_is_not_echoed() {
    let text =
        format!("{MINIMAL}\n[[endpoints]]\nname = \"x\"\nkind = \"http\"\nurl = \"https://user:pa55word@[bad\"\n");
    let err = format!("{:#}", Config::parse(&text).expect_err("bad url"));
    assert!(err.contains("endpoint `x`"), "{err}");
    assert!(!err.contains("pa55word"), "the password is in the error: {err}");
}

/// A TOML error names the line and what is wrong, without quoting the line (a token there would
/// reach stderr and the journal).
#[test]
fn a_config_syntax_error_does_not_quote_a_secret() {
    let text = format!("{MINIMAL}\n[[partners]]\nname = \"land-a\"\ntokn = \"s3cr3t-t0ken-value-123\"\n");
    let err = format!("{:#}", Config::parse(&text).expect_err("unknown key"));
    assert!(err.contains("tokn") && err.contains("line "), "{err}");
    assert!(!err.contains("s3cr3t"), "the token is in the error: {err}");
    let broken = format!("{MINIMAL}\n[queue]\nkind = \"rabbitmq\"\nurl = \"amqp://lotse:pa55word@broker\n");
    let err = format!("{:#}", Config::parse(&broken).expect_err("unterminated string"));
    assert!(!err.contains("pa55word"), "the password is in the error: {err}");
}

#[test]
fn rabbitmq_needs_a_url() {
    let text = format!("{MINIMAL}\n[queue]\nkind = \"rabbitmq\"\n");
    let err = format!("{:#}", Config::parse(&text).expect_err("no url"));
    assert!(err.contains("queue.url"), "{err}");
}

#[test]
fn the_reference_config_in_docker_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/lotse.toml");
    let env = |k: &str| (k == "LOTSE_TOKEN_LAND_MUSTERLAND").then(|| "a-token-of-sufficient-length".to_owned());
    let c = Config::load_with_env(&path, &env).expect("docker/lotse.toml is valid");
    assert_eq!(c.partner_tokens.len(), 1);
    assert!(!c.raw.routes.is_empty());
}

/// TLS files of an endpoint: a client certificate needs its key, `tls_*` needs https, and at
/// load every file is read and parsed (relative to the config file), with every bad one named.
#[test]
fn endpoint_tls_files_are_checked_at_load() {
    let https = MINIMAL.replace("http://127.0.0.1:9000/in", "https://bauamt.example/in");
    let half = https.replace("url = ", "tls_client_cert = \"c.pem\"\nurl = ");
    let err = format!("{:#}", Config::parse(&half).expect_err("cert without key"));
    assert!(err.contains("`tls_client_cert` and `tls_client_key` go together"), "{err}");
    let plain = MINIMAL.replace("url = ", "tls_ca = \"ca.pem\"\nurl = ");
    let err = format!("{:#}", Config::parse(&plain).expect_err("tls over http"));
    assert!(err.contains("need an https url"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").expect("write");
    let files =
        https.replace("url = ", "tls_ca = \"ca.pem\"\ntls_client_cert = \"c.pem\"\ntls_client_key = \"c.key\"\nurl = ");
    let path = dir.path().join("lotse.toml");
    std::fs::write(&path, files).expect("write");
    let err = format!("{:#}", Config::load_with_env(&path, &|_| None).expect_err("bad TLS files"));
    assert!(err.contains("endpoint `bauamt`") && err.contains("ca.pem"), "{err}");
    assert!(err.contains(&dir.path().join("ca.pem").display().to_string()), "not resolved against the file: {err}");
}

/// TLS of the broker connection (`[queue]`) and of an `amqp` endpoint: only with amqps://, a
/// client certificate needs its key, and at load the files are read (relative to the config
/// file) and parsed, a bad one named; good files load.
#[test]
fn amqps_tls_files_are_checked_at_load() {
    let queue = |url: &str, extra: &str| {
        MINIMAL.replace(
            "[[endpoints]]",
            &format!("[queue]\nkind = \"rabbitmq\"\nurl = \"{url}\"\n{extra}\n\n[[endpoints]]"),
        )
    };
    let plain = queue("amqp://lotse:pw@broker.example/%2f", "tls_ca = \"ca.pem\"");
    let err = format!("{:#}", Config::parse(&plain).expect_err("tls over amqp://"));
    assert!(err.contains("`queue.tls_*` settings need an amqps:// url"), "{err}");
    let half = queue("amqps://lotse:pw@broker.example/%2f", "tls_client_key = \"c.key\"");
    let err = format!("{:#}", Config::parse(&half).expect_err("key without cert"));
    assert!(err.contains("`queue.tls_client_cert` and `queue.tls_client_key` go together"), "{err}");
    let embedded = MINIMAL.replace("[[endpoints]]", "[queue]\ntls_ca = \"ca.pem\"\n\n[[endpoints]]");
    let err = format!("{:#}", Config::parse(&embedded).expect_err("tls for the embedded store"));
    assert!(err.contains("are for `queue.kind = \"rabbitmq\"`"), "{err}");
    let amqp_endpoint = MINIMAL.replace(
        "kind = \"http\"\nurl = \"http://127.0.0.1:9000/in\"",
        "kind = \"amqp\"\nurl = \"amqp://lotse:pw@broker.example/%2f\"\nrouting_key = \"eingang\"\ntls_ca = \"ca.pem\"",
    );
    let err = format!("{:#}", Config::parse(&amqp_endpoint).expect_err("tls over amqp://"));
    assert!(err.contains("endpoint `bauamt`: `tls_*` settings need an amqps:// url"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = crate::testing_pki::Pki::new();
    let ca = std::fs::read(pki.file("ca.pem").expect("ca")).expect("read");
    std::fs::write(dir.path().join("ca.pem"), &ca).expect("write");
    std::fs::write(dir.path().join("c.pem"), std::fs::read(pki.file("client.pem").expect("c")).expect("read"))
        .expect("write");
    std::fs::write(dir.path().join("c.key"), std::fs::read(pki.file("client.key").expect("k")).expect("read"))
        .expect("write");
    std::fs::write(dir.path().join("broken.pem"), "not a certificate").expect("write");
    let files = "tls_ca = \"ca.pem\"\ntls_client_cert = \"c.pem\"\ntls_client_key = \"c.key\"";
    let path = dir.path().join("lotse.toml");
    let good = queue("amqps://lotse:pw@broker.example/%2f", files).replace(
        "kind = \"http\"\nurl = \"http://127.0.0.1:9000/in\"",
        &format!("kind = \"amqp\"\nurl = \"amqps://a@b.example/%2f\"\nrouting_key = \"k\"\n{files}"),
    );
    std::fs::write(&path, &good).expect("write");
    let c = Config::load_with_env(&path, &|_| None).expect("good TLS files load");
    assert_eq!(c.raw.queue.tls_ca, Some(dir.path().join("ca.pem")), "resolved against the config file");
    let tls = c.raw.queue.tls().expect("read");
    assert_eq!(tls.cert_chain.as_deref().map(str::as_bytes), Some(ca.as_slice()));
    assert!(tls.identity.is_some(), "the client certificate is used");
    assert!(c.endpoint("bauamt").expect("endpoint").amqp_tls().expect("read").identity.is_some());

    std::fs::write(&path, good.replacen("tls_ca = \"ca.pem\"", "tls_ca = \"broken.pem\"", 1)).expect("write");
    let err = format!("{:#}", Config::load_with_env(&path, &|_| None).expect_err("a broken CA file"));
    assert!(err.contains("`queue`") && err.contains("broken.pem") && err.contains("holds no certificate"), "{err}");
    std::fs::write(&path, good.replacen("tls_client_key = \"c.key\"", "tls_client_key = \"ca.pem\"", 1))
        .expect("write");
    let err = format!("{:#}", Config::load_with_env(&path, &|_| None).expect_err("a certificate as the key"));
    assert!(err.contains("is not a PEM private key"), "{err}");
}

/// A file endpoint needs a folder and no url; an http endpoint needs a url and no folder; the
/// folder is relative to the config file.
#[test]
fn file_endpoints_need_a_path_and_no_url() {
    let file =
        MINIMAL.replace("kind = \"http\"\nurl = \"http://127.0.0.1:9000/in\"", "kind = \"file\"\npath = \"ablage\"");
    let c = Config::parse(&file).expect("a file endpoint");
    assert_eq!(c.endpoint("bauamt").expect("endpoint").kind, EndpointKind::File);
    let err = format!("{:#}", Config::parse(&file.replace("path = \"ablage\"", "")).expect_err("no path"));
    assert!(err.contains("needs a `path`"), "{err}");
    let err = format!("{:#}", Config::parse(&file.replace("path =", "url = \"http://x/\"\npath =")).expect_err("url"));
    assert!(err.contains("`url` is for `kind = \"http\"`"), "{err}");
    let err = format!("{:#}", Config::parse(&MINIMAL.replace("url = ", "path = \"x\"\nurl = ")).expect_err("path"));
    assert!(err.contains("`path` is for `kind = \"file\"`"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lotse.toml");
    std::fs::write(&path, &file).expect("write");
    let c = Config::load_with_env(&path, &|_| None).expect("loads");
    assert_eq!(c.endpoint("bauamt").and_then(|e| e.path.clone()), Some(dir.path().join("ablage")));
}

/// An AMQP endpoint needs an amqp(s) url and a routing key; those keys belong to it alone.
#[test]
fn amqp_endpoints_need_a_broker_url_and_a_routing_key() {
    let amqp = MINIMAL.replace(
        "kind = \"http\"\nurl = \"http://127.0.0.1:9000/in\"",
        "kind = \"amqp\"\nurl = \"amqps://lotse:pw@broker.gewerbeamt.example/%2f\"\nrouting_key = \"eingang\"",
    );
    let c = Config::parse(&amqp).expect("an amqp endpoint");
    assert_eq!(c.endpoint("bauamt").and_then(|e| e.routing_key.clone()).as_deref(), Some("eingang"));
    let err = format!("{:#}", Config::parse(&amqp.replace("routing_key = \"eingang\"", "")).expect_err("no key"));
    assert!(err.contains("needs a `routing_key`"), "{err}");
    let err = format!("{:#}", Config::parse(&amqp.replace("amqps://", "http://")).expect_err("http url"));
    assert!(err.contains("needs an amqp:// or amqps:// url"), "{err}");
    let err =
        format!("{:#}", Config::parse(&MINIMAL.replace("url = ", "routing_key = \"x\"\nurl = ")).expect_err("key"));
    assert!(err.contains("are for `kind = \"amqp\"`"), "{err}");
}

#[test]
fn retention_is_read_and_checked() {
    let c = Config::parse(MINIMAL).expect("valid");
    assert_eq!(c.raw.retention, None, "nothing is deleted unless configured");
    let c = Config::parse(&format!("{MINIMAL}\n[retention]\ndelivered = \"30d\"\n")).expect("valid");
    let r = c.raw.retention.expect("retention");
    assert_eq!(
        (r.delivered, r.dead, r.check_every),
        (Some(Duration::from_secs(30 * 86_400)), None, Duration::from_secs(600))
    );

    let err =
        format!("{:#}", Config::parse(&format!("{MINIMAL}\n[retention]\ncheck_every = \"1m\"\n")).expect_err("empty"));
    assert!(err.contains("needs `delivered`, `dead` or both"), "{err}");
    let err = format!("{:#}", Config::parse(&format!("{MINIMAL}\n[retention]\ndead = \"0s\"\n")).expect_err("zero"));
    assert!(err.contains("greater than 0"), "{err}");
    let rabbit = format!(
        "{MINIMAL}\n[queue]\nkind = \"rabbitmq\"\nurl = \"amqp://127.0.0.1\"\n[retention]\ndelivered = \"30d\"\n"
    );
    let c = Config::parse(&rabbit).expect("retention on RabbitMQ");
    assert_eq!(c.raw.retention.and_then(|r| r.delivered), Some(Duration::from_secs(30 * 86_400)));
}

#[test]
fn mailboxes_need_their_own_token_and_no_url() {
    let mailbox = |extra: &str| format!("{MINIMAL}\n[[endpoints]]\nname = \"postfach\"\nkind = \"mailbox\"\n{extra}\n");
    let c = Config::parse(&mailbox("token = \"postfach-token-0123456789\"")).expect("valid");
    assert_eq!(c.mailbox_tokens, [("postfach-token-0123456789".to_owned(), "postfach".to_owned())]);
    assert!(!format!("{:?}", c.raw.endpoints).contains("postfach-token"), "the token shows in Debug output");
    let env = |k: &str| (k == "POSTFACH_TOKEN").then(|| "from-the-environment-123".to_owned());
    let raw: RawConfig = toml::from_str(&mailbox("token_env = \"POSTFACH_TOKEN\"")).expect("TOML");
    let c = raw.validate_with(&env).expect("valid");
    assert_eq!(c.mailbox_tokens[0].0, "from-the-environment-123");

    for (extra, want) in [
        ("", "set exactly one of `token` and `token_env`"),
        ("token = \"short\"", "at least 16 characters"),
        ("token = \"postfach-token-0123456789\"\nurl = \"http://127.0.0.1:9/x\"", "a mailbox has no `url` or `path`"),
    ] {
        let err = format!("{:#}", Config::parse(&mailbox(extra)).expect_err(want));
        assert!(err.contains(want), "{extra}: {err}");
    }
    let shared = format!(
        "{}\n[[partners]]\nname = \"land\"\ntoken = \"postfach-token-0123456789\"\n",
        mailbox("token = \"postfach-token-0123456789\"")
    );
    let err = format!("{:#}", Config::parse(&shared).expect_err("shared token"));
    assert!(err.contains("the same token"), "{err}");
    let on_http = MINIMAL.replace("kind = \"http\"", "kind = \"http\"\ntoken = \"postfach-token-0123456789\"");
    let err = format!("{:#}", Config::parse(&on_http).expect_err("token on http"));
    assert!(err.contains("are for `kind = \"mailbox\"`"), "{err}");
}

/// The broker's and an endpoint's URL, passwords included, can come from the environment
/// (`url_env`), so the config file holds no secret; one of `url` and `url_env`, and a variable
/// that is not set is named.
#[test]
fn urls_can_come_from_the_environment() {
    let text = format!(
        "{}\n[queue]\nkind = \"rabbitmq\"\nurl_env = \"LOTSE_AMQP_URL\"\n",
        MINIMAL.replace("url = \"http://127.0.0.1:9000/in\"", "url_env = \"BAUAMT_URL\"")
    );
    let env = |k: &str| match k {
        "LOTSE_AMQP_URL" => Some("amqp://lotse:geheim@rabbit.example:5672/%2f".to_owned()),
        "BAUAMT_URL" => Some("https://user:pw@bauamt.example/in".to_owned()),
        _ => None,
    };
    let raw: RawConfig = toml::from_str(&text).expect("TOML");
    let c = raw.validate_with(&env).expect("valid");
    assert_eq!(c.raw.queue.url.as_deref(), Some("amqp://lotse:geheim@rabbit.example:5672/%2f"));
    assert_eq!(c.endpoint("bauamt").expect("endpoint").url, "https://user:pw@bauamt.example/in");

    // Not set: named, for the queue and the endpoint alike.
    let raw: RawConfig = toml::from_str(&text).expect("TOML");
    let err = format!("{:#}", raw.validate_with(&|_| None).expect_err("no variables"));
    assert!(err.contains("environment variable `LOTSE_AMQP_URL` (`url_env`) is not set"), "{err}");
    assert!(err.contains("endpoint `bauamt`: environment variable `BAUAMT_URL`"), "{err}");
    // Both: refused.
    let both = text.replace("url_env = \"LOTSE_AMQP_URL\"", "url_env = \"LOTSE_AMQP_URL\"\nurl = \"amqp://x\"");
    let raw: RawConfig = toml::from_str(&both).expect("TOML");
    let err = format!("{:#}", raw.validate_with(&env).expect_err("both"));
    assert!(err.contains("`queue`: set one of `url` and `url_env`, not both"), "{err}");
    // A URL from the environment is checked like one in the file.
    let raw: RawConfig = toml::from_str(&text).expect("TOML");
    let bad = |k: &str| (k == "BAUAMT_URL").then(|| "ftp://bauamt.example/in".to_owned()).or_else(|| env(k));
    let err = format!("{:#}", raw.validate_with(&bad).expect_err("ftp"));
    assert!(err.contains("url scheme `ftp` is not http or https"), "{err}");
}
