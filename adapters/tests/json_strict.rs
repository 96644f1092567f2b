//! `adapters::json::parse_strict`: partner JSON has one meaning, or is refused.

/// One module so that `cargo nextest run -p adapters json_strict` selects every test here.
mod json_strict {
    use adapters::json::parse_strict;
    use serde_json::Value;

    fn refused(json: &str) -> String {
        match parse_strict(json.as_bytes()) {
            Ok(v) => panic!("accepted {json}: {v}"),
            Err(e) => e,
        }
    }

    /// serde_json merges duplicate keys (last wins) while a `format = "json"` endpoint gets
    /// both: routing and the endpoint would read different documents.
    #[test]
    fn duplicate_key_is_refused_by_name() {
        let e = refused(r#"{"r":{"b":"1","c":"2","b":"3"}}"#);
        assert!(e.contains("duplicate key `b`"), "{e}");
        // Also at the top, and when the second spelling is escaped.
        let e = refused(r#"{"r":"1","\u0072":"2"}"#);
        assert!(e.contains("duplicate key `r`"), "{e}");
    }

    /// With `raw_value`, serde_json reads `{"$serde_json::private::RawValue": "<json>"}` as
    /// the JSON inside the string: routing saw `"bab:1"`, the endpoint an unvalidated object.
    #[test]
    fn raw_value_magic_key_is_refused() {
        let e = refused(r#"{"r":{"kennung":{"$serde_json::private::RawValue":"\"bab:1\""}}}"#);
        assert!(e.contains("reserved key `$serde_json::private::RawValue`"), "{e}");
        // serde_json compares the key after unescaping; so does the refusal.
        let e = refused(r#"{"r":{"kennung":{"$serde_json::private::Raw\u0056alue":"\"bab:1\""}}}"#);
        assert!(e.contains("reserved key `$serde_json::private::RawValue`"), "{e}");
        let e = refused(r#"{"$serde_json::private::RawValue":"{}"}"#);
        assert!(e.contains("reserved key"), "{e}");
    }

    /// Under the workspace's `arbitrary_precision`, serde_json hands each non-integer or big
    /// number to the visitor as `{"$serde_json::private::Number": "<text>"}`. The parser must
    /// take that for the number it is, and still refuse the same key written in the input
    /// (serde_json's own `Value` would read it as a number: routing would see `1`, a
    /// `format = "json"` endpoint an object).
    #[test]
    fn number_magic_key_is_refused_and_numbers_keep_their_text() {
        let e = refused(r#"{"r":{"betrag":{"$serde_json::private::Number":"1"}}}"#);
        assert!(e.contains("reserved key `$serde_json::private::Number`"), "{e}");
        let e = refused(r#"{"r":{"$serde_json::private::Numb\u0065r":"1.5"}}"#);
        assert!(e.contains("reserved key `$serde_json::private::Number`"), "{e}");
        let e = refused(r#"{"$serde_json::private::Number":"1"}"#);
        assert!(e.contains("reserved key"), "{e}");
        let doc = r#"{"r":[12345678901234567890123,1234567890.123456789012,-0,1.50,0.1,-7,18446744073709551615]}"#;
        let got = parse_strict(doc.as_bytes()).unwrap_or_else(|e| panic!("refused {doc}: {e}"));
        assert_eq!(got.to_string(), doc);
    }

    /// The magic key restarted serde_json's 128-level limit inside its string.
    #[test]
    fn raw_value_cannot_restart_the_depth_limit() {
        let inner = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let outer = format!(
            "{}{{\"$serde_json::private::RawValue\":{}}}{}",
            "[".repeat(100),
            serde_json::to_string(&inner).expect("a string serializes"),
            "]".repeat(100)
        );
        assert!(parse_strict(outer.as_bytes()).is_err());
    }

    #[test]
    fn ordinary_documents_parse_as_serde_json_parses_them() {
        let docs = [
            r#"{"xbau:baugenehmigung.antrag.0200":{"@xmlns:xbau":"urn:xoev-de:bauen:standard:xbau","nachrichtenkopf.g2g":{"leser":{"kennung":"bab:09"},"a":["1","2",{"b":[[],{}]}]},"n":-12,"u":18446744073709551615,"f":1.5e3,"t":true,"z":null,"s":"\u00e4\n\"x\""}}"#,
            r#"[]"#,
            r#""just a string""#,
            "  {\"a\" : { \"b\" : [ 1 , 2.25 , false ] } }\n",
            r#"{"a":{"a":{"a":"same key at other levels is fine"}}}"#,
        ];
        for doc in docs {
            let expected: Value = serde_json::from_str(doc).expect("valid test JSON");
            let got = parse_strict(doc.as_bytes()).unwrap_or_else(|e| panic!("refused {doc}: {e}"));
            assert_eq!(got, expected, "{doc}");
            // Key order too (the JSON form keeps document order).
            assert_eq!(got.to_string(), expected.to_string(), "{doc}");
        }
    }

    /// Nesting is bounded by serde_json's limit: an error, not a stack overflow.
    #[test]
    fn deep_nesting_is_an_error() {
        for doc in [
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200)),
            "[".repeat(100_000),
        ] {
            let e = parse_strict(doc.as_bytes()).expect_err("200 levels refused");
            assert!(e.contains("recursion limit"), "{e}");
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for doc in [r#"{"a":"1"} x"#, r#"{"a":"1"}{"a":"2"}"#, "[]]"] {
            let e = refused(doc);
            assert!(e.contains("trailing characters"), "{doc}: {e}");
        }
        // Whitespace after the value is fine.
        assert!(parse_strict(b"{\"a\":\"1\"} \n\t").is_ok());
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let e = refused("{\"a\":\n  tru}");
        assert!(e.contains("line 2"), "{e}");
        assert!(refused("").contains("EOF"));
    }
}
