//! The `/info` documents of a service contract (spec §5.1) and of a directory (spec §4.7).
//!
//! Lenient on purpose: the relay only uses `pubkey` and `directory.endpoint` of the contract
//! info and `upgrade_channels.relay` of the directory info, so the other sections are kept as
//! raw JSON values (passed through unchanged) or defaulted when absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;

fn is_null(v: &serde_json::Value) -> bool {
    v.is_null()
}

/// The `directory` section of a contract's info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRef {
    /// Directory base URL; `/relays` is path-joined onto it, `/info` string-appended.
    pub endpoint: String,
    /// The directory's public key (signs the relay list). The relay never uses it, so an
    /// absent, `null` or empty value is accepted as `None` (only clients need it).
    #[serde(
        default,
        deserialize_with = "lenient_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub public_key: Option<PublicKey>,
}

fn lenient_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PublicKey>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => PublicKey::try_from_b64(t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A contract's `/info` (spec §5.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractInfo {
    /// The contract's public key: the contract id.
    pub pubkey: PublicKey,
    /// The contract software version (semver text).
    #[serde(default)]
    pub version: String,
    /// Public URL of the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `proof_of_funding` section, passed through.
    #[serde(default, skip_serializing_if = "is_null")]
    pub proof_of_funding: serde_json::Value,
    /// `servicekey` section (`currency`, `value` as a string, `duration`), passed through.
    #[serde(default, skip_serializing_if = "is_null")]
    pub servicekey: serde_json::Value,
    /// `settlement` section (`fee_percent`, `submission_window`), passed through.
    #[serde(default, skip_serializing_if = "is_null")]
    pub settlement: serde_json::Value,
    /// `payout` section, passed through.
    #[serde(default, skip_serializing_if = "is_null")]
    pub payout: serde_json::Value,
    /// Where the contract's relays enroll.
    pub directory: DirectoryRef,
    /// `metadata` section, passed through.
    #[serde(default, skip_serializing_if = "is_null")]
    pub metadata: serde_json::Value,
}

impl ContractInfo {
    /// The directory's relay endpoint: `directory.endpoint` path-joined with `relays`
    /// (`http://dir:8081/` and `http://dir:8081` both give `http://dir:8081/relays`).
    pub fn relays_url(&self) -> String {
        join_path(&self.directory.endpoint, "relays")
    }

    /// The directory's info URL: `directory.endpoint` + `/info` (string concatenation, so a
    /// trailing slash yields `//info`, as in the reference).
    pub fn directory_info_url(&self) -> String {
        format!("{}/info", self.directory.endpoint)
    }
}

/// `base` path-joined with `seg` (one slash between them).
pub fn join_path(base: &str, seg: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        seg.trim_start_matches('/')
    )
}

/// Enrollment statistics of one role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    /// Enrolled relays.
    #[serde(default)]
    pub count: u64,
    /// Whether an enrollment key is required.
    #[serde(default)]
    pub restricted: bool,
}

/// The `enrollment` section of a directory's info.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// Fronting relays.
    #[serde(default)]
    pub fronting: RoleInfo,
    /// Entropic relays.
    #[serde(default)]
    pub entropic: RoleInfo,
    /// Backing relays.
    #[serde(default)]
    pub backing: RoleInfo,
}

/// `upgrade_channels`: per product (`relay`, `client`), channel → version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeChannels {
    /// Relay channels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relay: BTreeMap<String, String>,
    /// Client channels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub client: BTreeMap<String, String>,
}

impl UpgradeChannels {
    fn is_empty(&self) -> bool {
        self.relay.is_empty() && self.client.is_empty()
    }
}

/// A directory's `/info` (spec §4.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryInfo {
    /// The directory's public key.
    pub public_key: PublicKey,
    /// Directory software version.
    #[serde(default)]
    pub version: String,
    /// Directory URL.
    #[serde(default)]
    pub endpoint: String,
    /// Optional info URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    /// Enrollment statistics.
    #[serde(default)]
    pub enrollment: Enrollment,
    /// Deprecated flat channel map.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub update_channels: BTreeMap<String, String>,
    /// Channel versions per product.
    #[serde(default, skip_serializing_if = "UpgradeChannels::is_empty")]
    pub upgrade_channels: UpgradeChannels,
}

impl DirectoryInfo {
    /// The newest relay version of `channel`, if the directory names one.
    pub fn relay_channel_version(&self, channel: &str) -> Option<&str> {
        self.upgrade_channels.relay.get(channel).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_info_lenient_and_urls() {
        let pk = PublicKey::from_bytes([9; 32]);
        let json = format!(
            r#"{{"pubkey":"{pk}","version":"0.5.0","servicekey":{{"currency":"usd","value":"1000","duration":"10m"}},
               "directory":{{"endpoint":"http://dir:8081/","public_key":"{pk}"}},"unknown":1}}"#
        );
        let ci: ContractInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(ci.pubkey, pk);
        assert_eq!(ci.relays_url(), "http://dir:8081/relays");
        assert_eq!(ci.directory_info_url(), "http://dir:8081//info");
        assert_eq!(ci.servicekey["value"], "1000");
        assert_eq!(ci.directory.public_key, Some(pk));
        let no_key: ContractInfo = serde_json::from_str(&format!(
            r#"{{"pubkey":"{pk}","directory":{{"endpoint":"http://d","public_key":""}}}}"#
        ))
        .unwrap();
        assert_eq!(no_key.directory.public_key, None);
        let out = serde_json::to_string(&ci).unwrap();
        assert!(!out.contains("payout"));
    }

    #[test]
    fn directory_info_channels() {
        let pk = PublicKey::from_bytes([9; 32]);
        let json = format!(
            r#"{{"public_key":"{pk}","version":"0.1.0","endpoint":"http://d",
               "upgrade_channels":{{"relay":{{"default":"0.6.1"}},"client":{{"default":"0.6.3"}}}}}}"#
        );
        let di: DirectoryInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(di.relay_channel_version("default"), Some("0.6.1"));
        assert_eq!(di.relay_channel_version("beta"), None);
        assert_eq!(di.enrollment.backing.count, 0);
    }
}
