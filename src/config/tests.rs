use super::*;

fn problems(text: &str) -> Vec<Problem> {
    match parse(text.as_bytes()) {
        Err(Error::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn ok(text: &str) -> Config {
    match parse(text.as_bytes()) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("expected OK, got {e}"),
    }
}

/// A minimal config (one contract) with `"key": value` at the top level.
fn with_top_level(key: &str, value: &str) -> String {
    format!(
        r#"{{"address":"127.0.0.1:1","{key}":{value},"contracts":{{"https://a.example":
        {{"address":"wireleap://r:1","role":"backing"}}}}}}"#
    )
}

/// The spec's example (spec §2.1), with the `upgrade_channel` that §2.3 requires.
const SPEC_EXAMPLE: &str = r#"{
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
}"#;

#[test]
fn spec_example_loads_with_every_value() {
    let c = ok(SPEC_EXAMPLE);
    assert_eq!(c.address.to_string(), "0.0.0.0:13499");
    assert_eq!(c.archive_dir, Some(PathBuf::from("archive/sharetokens")));
    assert_eq!(c.auto_submit_interval, Some(Duration::from_secs(300)));
    let nu = c.network_usage.clone().unwrap();
    assert_eq!(nu.global_limit, Some(2 << 40));
    assert_eq!(nu.timeframe, Duration::from_secs(30 * 86_400));
    assert_eq!(c.contracts.len(), 2);
    let (url, channel) = c.upgrade_channel().unwrap();
    assert_eq!(
        (url.as_str(), channel),
        ("https://contract2.example.com", "default")
    );
    assert_eq!(
        c.rest_api,
        Some(RestApi {
            address: RestAddress::Unix("/run/wireleap".into()),
            socket_mode: 0o660
        })
    );
    assert!(c.auto_upgrade);
    assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    assert_eq!(c.bufsize.get(), DEFAULT_BUFSIZE);
    assert_eq!(c.maxtime, None);
}

#[test]
fn single_contract_follows_the_default_channel() {
    let c = ok(
        r#"{"address":"127.0.0.1:0","contracts":{"http://127.0.0.1:1":
        {"address":"wireleap://127.0.0.1:13499","role":"fronting"}}}"#,
    );
    assert_eq!(c.upgrade_channel().unwrap().1, "default");
}

/// What the reference relay's migration writes: every defaulted key, unset ones as `null`.
#[test]
fn config_written_by_a_reference_relay_loads_unchanged() {
    let text = r#"{
  "address": "0.0.0.0:13499",
  "auto_submit_interval": "5m0s",
  "archive_dir": null,
  "timeout": "5s",
  "bufsize": 4096,
  "network_usage": {
    "timeframe": "0s",
    "global_limit": "0B",
    "write_interval": null
  },
  "rest_api": {
    "address": null,
    "socket_umask": "600"
  },
  "contracts": {
    "https://contract.example.com": {
      "role": "fronting",
      "address": "wireleap://relay.example.com:13499",
      "pubkey": null,
      "version": null,
      "versions": {"software": "0.6.1"},
      "key": "fronting:fkey",
      "upgrade_channel": "default",
      "network_usage_limit": "0B"
    }
  },
  "auto_upgrade": true,
  "danger_zone": {}
}"#;
    let loaded = parse(text.as_bytes()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.network_usage, None);
    assert_eq!(c.rest_api, None);
    let contract = c.contracts.values().next().unwrap();
    assert_eq!(contract.key.as_ref().unwrap().expose(), "fronting:fkey");
    assert_eq!(contract.network_usage_limit, None);
}

#[test]
fn every_mistake_is_reported_with_its_key_path() {
    let text = r#"{
        "adress": "0.0.0.0:13499",
        "timeout": "5 seconds",
        "network_usage": {"timeframe": "30d", "global_limit": "2 terabits"},
        "contracts": {
            "https://c1.example.com": {"address": "http://relay.example.com:13499", "role": "middle",
                                        "upgrade_channel": "default"},
            "https://c2.example.com": {"address": "wireleap://relay.example.com:13499", "role": "backing",
                                        "upgrade_channel": "beta", "network_usage_limit": 5}
        }
    }"#;
    let found = problems(text);
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "adress",
        "address",
        "timeout",
        "network_usage.global_limit",
        r#"contracts["https://c1.example.com"].address"#,
        r#"contracts["https://c1.example.com"].role"#,
        r#"contracts["https://c2.example.com"].network_usage_limit"#,
    ] {
        assert!(paths.contains(&want), "missing {want} in {found:#?}");
    }
    let typo = found.iter().find(|p| p.path == "adress").unwrap();
    assert!(typo.message.contains("did you mean \"address\""), "{typo}");
}

#[test]
fn two_upgrade_channels_are_one_problem_naming_both() {
    let found = problems(
        r#"{"address":"127.0.0.1:1","contracts":{
        "https://a.example":{"address":"wireleap://r:1","role":"backing","upgrade_channel":"x"},
        "https://b.example":{"address":"wireleap://r:1","role":"backing","upgrade_channel":"y"}}}"#,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "contracts");
    assert!(found[0].message.contains("only 1 contract"), "{}", found[0]);
}

#[test]
fn no_upgrade_channel_with_two_contracts_is_a_problem() {
    let found = problems(
        r#"{"address":"127.0.0.1:1","contracts":{
        "https://a.example":{"address":"wireleap://r:1","role":"backing"},
        "https://b.example":{"address":"wireleap://r:1","role":"backing"}}}"#,
    );
    assert!(found[0].message.contains("no contract"), "{found:?}");
}

#[test]
fn secrets_are_never_echoed() {
    let found = problems(
        r#"{"address":"127.0.0.1:1","contracts":{"https://a.example":
        {"address":"wireleap://r:1","role":"backing","key":12345678}}}"#,
    );
    let text = format!("{found:?}");
    assert!(!text.contains("12345678"), "{text}");
    let c = ok(
        r#"{"address":"127.0.0.1:1","contracts":{"https://a.example":
        {"address":"wireleap://r:1","role":"backing","key":"user:hunter2"}}}"#,
    );
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn syntax_errors_give_line_and_column() {
    let err = parse(b"{\n  \"address\": \"x\",\n  }").unwrap_err();
    let Error::Syntax { line, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(line, 3);
}

#[test]
fn rest_api_forms() {
    let base = |value: &str| with_top_level("rest_api", value);
    let c = ok(&base(r#"{"address":"http://127.0.0.1:8080"}"#));
    assert_eq!(
        c.rest_api.unwrap().address,
        RestAddress::Http("127.0.0.1:8080".into())
    );
    let found = problems(&base(r#"{"address":"file://host/x"}"#));
    assert_eq!(found[0].path, "rest_api.address");
    let found = problems(&base(r#"{"address":"ftp://x","socket_umask":"999"}"#));
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn archive_paths_stay_under_home() {
    let c = ok(
        r#"{"address":"127.0.0.1:1","archive_dir":"/var/archive","contracts":{
        "https://a.example":{"address":"wireleap://r:1","role":"backing"}}}"#,
    );
    assert_eq!(c.archive_dir, Some(PathBuf::from("var/archive")));
    let found = problems(
        r#"{"address":"127.0.0.1:1","archive_dir":"../x","contracts":{
        "https://a.example":{"address":"wireleap://r:1","role":"backing"}}}"#,
    );
    assert_eq!(found[0].path, "archive_dir");
}

#[test]
fn nearest_key_suggestions() {
    assert_eq!(nearest("adress", TOP_KEYS), Some("address"));
    assert_eq!(nearest("maxtimeout", TOP_KEYS), None);
    assert_eq!(
        nearest("upgrade_chanel", CONTRACT_KEYS),
        Some("upgrade_channel")
    );
    assert_eq!(nearest("zzzzzz", TOP_KEYS), None);
}

#[test]
fn metrics_forms() {
    let base = |value: &str| with_top_level("metrics", value);
    let c = ok(&base(r#"{"address":"127.0.0.1:9101"}"#));
    assert_eq!(
        c.metrics.unwrap().address,
        "127.0.0.1:9101".parse().unwrap()
    );
    let c = ok(&base(r#"{"address":"[::1]:0"}"#));
    assert_eq!(c.metrics.unwrap().address.port(), 0);
    assert_eq!(ok(&base("{}")).metrics, None);
    assert_eq!(ok(&base("null")).metrics, None);
    let found = problems(&base(r#"{"address":"localhost:9101"}"#));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "metrics.address");
    assert!(found[0].message.contains("\"localhost:9101\""), "{found:?}");
    let found = problems(&base(r#"{"address":9101}"#));
    assert_eq!(found[0].path, "metrics.address");
    let found = problems(&base(r#"{"adress":"127.0.0.1:9101"}"#));
    assert_eq!(
        found[0].to_string(),
        r#"metrics.adress: unknown key (did you mean "address"?)"#
    );
    let found = problems(&base(r#""127.0.0.1:9101""#));
    assert_eq!(found[0].path, "metrics");
}

#[test]
fn supervisor_waits() {
    let base = |value: &str| with_top_level("supervisor", value);
    let c = ok(&base(r#"{"health_window":"2s","ready_timeout":"1m"}"#));
    assert_eq!(c.supervisor.health_window, Some(Duration::from_secs(2)));
    assert_eq!(c.supervisor.ready_timeout, Some(Duration::from_secs(60)));
    assert_eq!(
        ok(&base(r#"{"health_window":"0"}"#))
            .supervisor
            .health_window,
        Some(Duration::ZERO)
    );
    assert_eq!(ok(&base("{}")).supervisor, SupervisorSettings::default());
    assert_eq!(ok(&base("null")).supervisor, SupervisorSettings::default());
    let found = problems(&base(r#"{"ready_timeout":"0","health_window":"2h"}"#));
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["supervisor.health_window", "supervisor.ready_timeout"],
        "{found:?}"
    );
    let found = problems(&base(r#"{"health_window":30}"#));
    assert_eq!(found[0].path, "supervisor.health_window");
    let found = problems(&base(r#"{"health_windw":"1s"}"#));
    assert_eq!(
        found[0].to_string(),
        r#"supervisor.health_windw: unknown key (did you mean "health_window"?)"#
    );
    assert_eq!(
        ok(&base(r#"{"max_memory":"512MB"}"#)).supervisor.max_memory,
        Some(512 << 20)
    );
    for bad in [
        r#"{"max_memory":"1MB"}"#,
        r#"{"max_memory":1000}"#,
        r#"{"max_memory":"lots"}"#,
    ] {
        let found = problems(&base(bad));
        assert_eq!(found[0].path, "supervisor.max_memory", "{bad}: {found:?}");
    }
    let c = ok(&base(
        r#"{"liveness":"5s","probe_count":0,"refused_margin":25,"require_enrollment":false}"#,
    ));
    assert_eq!(c.supervisor.liveness, Some(Duration::from_secs(5)));
    assert_eq!(c.supervisor.probe_count, Some(0));
    assert_eq!(c.supervisor.refused_margin, Some(25));
    assert_eq!(c.supervisor.require_enrollment, Some(false));
    // What the supervisor reads back is what the relay parsed.
    assert_eq!(
        SupervisorSettings::from_json(c.supervisor.to_json().as_bytes()),
        c.supervisor
    );
    for (bad, path) in [
        (r#"{"probe_count":21}"#, "supervisor.probe_count"),
        (r#"{"probe_count":"3"}"#, "supervisor.probe_count"),
        (r#"{"refused_margin":101}"#, "supervisor.refused_margin"),
        (r#"{"refused_margin":-1}"#, "supervisor.refused_margin"),
        (
            r#"{"require_enrollment":"yes"}"#,
            "supervisor.require_enrollment",
        ),
        (r#"{"liveness":"2h"}"#, "supervisor.liveness"),
    ] {
        let found = problems(&base(bad));
        assert_eq!(found[0].path, path, "{bad}: {found:?}");
    }
}
