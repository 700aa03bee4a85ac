//! The systemd units in `systemd/` pass `systemd-analyze verify`.

use std::process::Command;

use crate::support::process::relay_bin;

#[test]
fn the_units_verify() {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the supervisor this run built.
    let supervisor = relay_bin().with_file_name("wireleap-relay-supervisor");
    assert!(
        supervisor.exists(),
        "run `cargo build --workspace --bins` first"
    );
    for name in ["wireleap-relay.service", "wireleap-relay.socket"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        let text = text
            .replace(
                "/opt/wireleap-relay/wireleap-relay-supervisor",
                supervisor.to_str().unwrap(),
            )
            .replace(
                "/opt/wireleap-relay/wireleap-relay reload",
                &format!("{} reload", relay_bin().display()),
            );
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        // The man pages the unit documents come with the package: the package test
        // (package.rs) verifies the installed unit with them.
        .arg("--man=no")
        .args(["wireleap-relay.service", "wireleap-relay.socket"])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze is missing: apt-get install systemd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("wireleap-relay"),
        "warnings about our units:\n{stderr}"
    );
    // systemd itself cannot run here: what keeps it restarting a failing supervisor is read
    // from the unit. Its default start limit would leave the unit failed after 5 quick tries.
    let service = std::fs::read_to_string(units.join("wireleap-relay.service")).unwrap();
    let unit_section = service.split("[Service]").next().unwrap_or_default();
    assert!(
        unit_section
            .lines()
            .any(|l| l.trim() == "StartLimitIntervalSec=0"),
        "the service gives up after systemd's default start limit"
    );
    assert!(service.lines().any(|l| l.trim() == "Restart=on-failure"));
}
