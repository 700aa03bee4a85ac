//! `check-config`: every mistake reported at once with its key path; the spec's examples pass.

use crate::support::Home;

#[test]
fn every_mistake_is_printed_with_its_key_path() {
    let home = Home::new();
    home.write(
        "config.json",
        r#"{
  "auto_submit_interval": "5 minutes",
  "network_usage": {"timeframe": "30d", "global_limit": "2 terabits"},
  "rest_api": {"adress": "http://127.0.0.1:8080"},
  "contracts": {
    "https://c1.example.com": {"address": "wireleap://relay.example.com:13499",
                                "role": "middle", "upgrade_channel": "default"},
    "https://c2.example.com": {"address": "http://relay.example.com:13499",
                                "role": "backing", "upgrade_channel": "beta"}
  }
}"#,
    );
    let run = home.run(&["check-config"]);
    assert_eq!(run.code, 1, "{run}");
    let expected = [
        ("address", "'address' has to be set"),
        ("auto_submit_interval", "invalid duration \"5 minutes\""),
        (
            "network_usage.global_limit",
            "invalid data size \"2 terabits\"",
        ),
        ("rest_api.adress", "did you mean \"address\""),
        (
            r#"contracts["https://c1.example.com"].role"#,
            "invalid relay role: middle",
        ),
        (
            r#"contracts["https://c2.example.com"].address"#,
            "invalid relay URL scheme: http",
        ),
        (
            "contracts",
            "only 1 contract in 'contracts' can have an 'upgrade_channel' field set",
        ),
    ];
    for (path, message) in expected {
        let line = format!("  - {path}: ");
        let found = run.stdout.lines().find(|l| l.starts_with(&line));
        let found = found.unwrap_or_else(|| panic!("no problem reported for {path}:\n{run}"));
        assert!(
            found.contains(message),
            "{path}: expected {message:?} in {found:?}"
        );
    }
    // On stdout, as the reference prints it.
    assert!(run.stdout.contains("has 7 problems"), "{run}");
    assert!(!run.stdout.contains("OK"), "{run}");
}

#[test]
fn the_specs_examples_print_ok() {
    let examples = [
        // Spec §2.1, with the upgrade_channel that §2.3 requires for two contracts.
        r#"{
    "address": "0.0.0.0:13499",
    "archive_dir": "archive/sharetokens",
    "auto_submit_interval": "5m0s",
    "network_usage": {"global_limit": "2TB", "timeframe": "30d",
                      "write_interval": "5m0s", "archive_dir": "archive/netstats"},
    "contracts": {
        "https://contract1.example.com": {
            "address": "wireleap://relay1.example.com:13499",
            "role": "backing", "key": "backing:secretkey"},
        "https://contract2.example.com": {
            "address": "wireleap://relay1.example.com:13499",
            "role": "entropic", "network_usage_limit": "1TB",
            "upgrade_channel": "default"}
    },
    "rest_api": {"address": "file:///run/wireleap", "socket_umask": "660"},
    "auto_upgrade": true
}"#,
        // One contract: the channel defaults to "default".
        r#"{"address": "127.0.0.1:13499", "timeout": "300ms", "maxtime": "1d12h",
            "contracts": {"https://c.example.com": {"address": "wireleap://r.example.com:443/wireleap",
                                                    "role": "fronting", "upgrade_channel": "beta"}}}"#,
    ];
    for text in examples {
        let home = Home::new();
        home.write("config.json", text);
        let run = home.run(&["check-config"]);
        assert_eq!((run.code, run.stdout.trim()), (0, "OK"), "{run}");
    }
}

#[test]
fn json_syntax_errors_name_line_and_column() {
    let home = Home::new();
    home.write("config.json", "{\n  \"address\": \"127.0.0.1:1\",\n}\n");
    let run = home.run(&["check-config"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("line 3, column 1"), "{run}");
}

#[test]
fn missing_config_is_a_clear_error() {
    let home = Home::new();
    let run = home.run(&["check-config"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("config.json") && run.stdout.contains("No such file"),
        "{run}"
    );
}
