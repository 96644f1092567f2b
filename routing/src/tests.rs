use super::*;

fn rule(name: &str, reader: Option<&str>, message_type: Option<&str>, endpoints: &[&str]) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        reader: reader.map(Into::into),
        message_type: message_type.map(Into::into),
        endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        ..RuleConfig::default()
    }
}

fn keys<'a>(reader: Option<&'a str>, message_type: Option<&'a str>) -> Keys<'a> {
    Keys { root: "baugenehmigung.antrag.0200", reader, message_type, ..Keys::default() }
}

#[test]
fn first_matching_rule_wins() {
    let rules = [
        rule("exact", Some("bab:09162000"), None, &["a"]),
        rule("wild", Some("bab:09*"), None, &["b"]),
        rule("all", None, None, &["c"]),
    ];
    let r = Router::new(&rules, &["a", "b", "c"]).expect("valid rules");
    assert_eq!(r.route(&keys(Some("bab:09162000"), None)).map(|r| r.name.as_str()), Some("exact"));
    assert_eq!(r.route(&keys(Some("bab:09111111"), None)).map(|r| r.name.as_str()), Some("wild"));
    assert_eq!(r.route(&keys(Some("bab:10000000"), None)).map(|r| r.name.as_str()), Some("all"));
    assert_eq!(r.route(&keys(None, None)).map(|r| r.name.as_str()), Some("all"));
}

#[test]
fn a_field_set_on_the_rule_requires_the_key_to_be_present() {
    let r = Router::new(&[rule("t", None, Some("*"), &["a"])], &["a"]).expect("valid");
    assert!(r.route(&keys(None, None)).is_none(), "`*` matches any present value, not a missing one");
    assert!(r.route(&keys(None, Some("0200"))).is_some());
}

#[test]
fn fan_out_keeps_every_endpoint_in_order() {
    let r = Router::new(&[rule("f", None, Some("0200"), &["b", "a"])], &["a", "b"]).expect("valid");
    let route = r.route(&keys(None, Some("0200"))).expect("matches");
    assert_eq!(route.endpoints, vec!["b".to_string(), "a".to_string()]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut bad = rule("x", Some("bab*:1"), None, &["nope"]);
    bad.author = Some(String::new());
    let errs = Router::new(&[bad, rule("x", None, None, &[])], &["a"]).expect_err("invalid");
    assert!(errs.iter().any(|e| matches!(e, RuleError::BadPattern { field: "reader", .. })), "{errs:?}");
    assert!(errs.iter().any(|e| matches!(e, RuleError::BadPattern { field: "author", .. })), "{errs:?}");
    assert!(errs.iter().any(|e| matches!(e, RuleError::UnknownEndpoint { .. })), "{errs:?}");
    assert!(errs.iter().any(|e| matches!(e, RuleError::NoEndpoints { .. })), "{errs:?}");
    assert!(errs.iter().any(|e| matches!(e, RuleError::DuplicateName { .. })), "{errs:?}");
}

#[test]
fn unknown_keys_in_a_rule_are_refused() {
    let err = toml::from_str::<RuleConfig>("name = 'r'\nendpoints = ['a']\nreaderr = 'x'\n").expect_err("unknown key");
    assert!(err.to_string().contains("readerr"), "{err}");
}

#[test]
fn trust_levels_are_ordered_and_parse_german_words() {
    assert!(TrustLevel::Low < TrustLevel::Substantial && TrustLevel::Substantial < TrustLevel::High);
    assert_eq!(TrustLevel::parse("substanziell"), Some(TrustLevel::Substantial));
    assert_eq!(TrustLevel::parse("HOCH"), Some(TrustLevel::High));
    assert_eq!(TrustLevel::parse("mittel"), None);
}

proptest::proptest! {
    #[test]
    fn prefix_pattern_matches_exactly_the_values_with_that_prefix(prefix in "[a-z:0-9]{0,6}", value in "[a-z:0-9]{0,10}") {
        let p = Pattern::parse(&format!("{prefix}*")).expect("valid");
        proptest::prop_assert_eq!(p.matches(&value), value.starts_with(&prefix));
        let exact = Pattern::parse(&value);
        if !value.is_empty() {
            proptest::prop_assert!(exact.expect("valid").matches(&value));
        }
    }
}
