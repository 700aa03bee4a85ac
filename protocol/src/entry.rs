//! The relay entry (enrollment body, spec §4.4) and the directory's relay list (§4.8).
//!
//! Key order and omission follow the reference encoder: `role`, `address`, `pubkey`,
//! `versions`, `key`, `update_channel`, `upgrade_channel`, `network_usage_limit`, empty
//! values left out. Unlike relay 0.6.x, our relay sends `upgrade_channel` (spec §10 #5).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;
use crate::version;

/// A relay's role in circuits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// First hop, the one clients talk to.
    Fronting,
    /// Middle hops.
    Entropic,
    /// Last hop, dials targets.
    Backing,
}

impl Role {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fronting => "fronting",
            Self::Entropic => "entropic",
            Self::Backing => "backing",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid relay role: {0}")]
pub struct RoleError(pub String);

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fronting" => Ok(Self::Fronting),
            "entropic" => Ok(Self::Entropic),
            "backing" => Ok(Self::Backing),
            other => Err(RoleError(other.to_owned())),
        }
    }
}

/// The `versions` object of an entry. Each key is omitted when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// Software version of the relay, e.g. `0.7.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
    /// client-relay interface version.
    #[serde(
        rename = "client-relay",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_relay: Option<String>,
    /// relay-relay interface version.
    #[serde(
        rename = "relay-relay",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub relay_relay: Option<String>,
    /// relay-dir interface version.
    #[serde(rename = "relay-dir", default, skip_serializing_if = "Option::is_none")]
    pub relay_dir: Option<String>,
    /// relay-contract interface version.
    #[serde(
        rename = "relay-contract",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub relay_contract: Option<String>,
}

impl Versions {
    /// What this relay advertises: its software version and the four interface versions.
    pub fn relay(software: &str) -> Self {
        Self {
            software: Some(software.to_owned()),
            client_relay: Some(version::CLIENT_RELAY.to_string()),
            relay_relay: Some(version::RELAY_RELAY.to_string()),
            relay_dir: Some(version::RELAY_DIR.to_string()),
            relay_contract: Some(version::RELAY_CONTRACT.to_string()),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A relay entry: the body of enroll / heartbeat / disenroll, and an item of the relay list.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayEntry {
    /// Role in circuits.
    pub role: Role,
    /// Public address, `wireleap://host:port[/path]`.
    pub address: String,
    /// The relay's public key; equals the request's signing key.
    pub pubkey: PublicKey,
    /// Software and interface versions.
    #[serde(default, skip_serializing_if = "Versions::is_empty")]
    pub versions: Versions,
    /// Enrollment key (`user:password` by convention). Omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Deprecated channel key. Omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub update_channel: String,
    /// Channel whose version the relay follows. Omitted when empty (the directory then
    /// uses `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upgrade_channel: String,
    /// Per-contract usage cap as datasize text (e.g. `50MB`). Omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network_usage_limit: String,
}

impl RelayEntry {
    /// The channel the directory should use for upgrade notices: `upgrade_channel`, else
    /// `update_channel`, else `default`.
    pub fn channel(&self) -> &str {
        if !self.upgrade_channel.is_empty() {
            &self.upgrade_channel
        } else if !self.update_channel.is_empty() {
            &self.update_channel
        } else {
            "default"
        }
    }

    /// Compact JSON (the exact signed request body).
    pub fn to_json(&self) -> String {
        // Strings and enums only: serialization into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Debug for RelayEntry {
    // The enrollment key is a secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayEntry")
            .field("role", &self.role)
            .field("address", &self.address)
            .field("pubkey", &self.pubkey)
            .field("versions", &self.versions)
            .field(
                "key",
                &if self.key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("update_channel", &self.update_channel)
            .field("upgrade_channel", &self.upgrade_channel)
            .field("network_usage_limit", &self.network_usage_limit)
            .finish()
    }
}

/// The directory's relay list: relay address → entry (spec §4.8).
pub type RelayList = BTreeMap<String, RelayEntry>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    #[test]
    fn entry_key_order_and_omitempty() {
        let pk = PublicKey::from(&SigningKey::from_bytes(&[7; 32]));
        let mut e = RelayEntry {
            role: Role::Fronting,
            address: "wireleap://127.0.0.1:13499".into(),
            pubkey: pk,
            versions: Versions::relay("0.6.1"),
            key: "fronting:fkey".into(),
            update_channel: String::new(),
            upgrade_channel: String::new(),
            network_usage_limit: "50MB".into(),
        };
        assert_eq!(
            e.to_json(),
            format!(
                concat!(
                    r#"{{"role":"fronting","address":"wireleap://127.0.0.1:13499","pubkey":"{}","#,
                    r#""versions":{{"software":"0.6.1","client-relay":"0.2.0","relay-relay":"0.2.0","#,
                    r#""relay-dir":"0.2.0","relay-contract":"0.1.0"}},"key":"fronting:fkey","#,
                    r#""network_usage_limit":"50MB"}}"#
                ),
                pk
            )
        );
        assert_eq!(e.channel(), "default");
        e.key.clear();
        e.network_usage_limit.clear();
        e.upgrade_channel = "beta".into();
        let j = e.to_json();
        assert!(
            j.ends_with(r#""relay-contract":"0.1.0"},"upgrade_channel":"beta"}"#),
            "{j}"
        );
        assert_eq!(e.channel(), "beta");
        let back: RelayEntry = serde_json::from_str(&j).unwrap();
        assert_eq!(back, e);
        assert!(!format!("{e:?}").contains("fkey"));
    }

    #[test]
    fn role_parse() {
        assert_eq!("backing".parse::<Role>().unwrap(), Role::Backing);
        assert_eq!(
            "x".parse::<Role>().unwrap_err().to_string(),
            "invalid relay role: x"
        );
        assert!(serde_json::from_str::<Role>(r#""nope""#).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn role() -> impl Strategy<Value = Role> {
            prop_oneof![
                Just(Role::Fronting),
                Just(Role::Entropic),
                Just(Role::Backing)
            ]
        }

        proptest! {
            #[test]
            fn entry_round_trip(
                role in role(), port in 1u16.., seed in any::<[u8; 32]>(),
                software in proptest::option::of("[0-9]\\.[0-9]\\.[0-9]"),
                key in "[a-z:]{0,12}", channel in "[a-z]{0,8}", limit in "([0-9]{1,4}(MB|GB))?",
            ) {
                let e = RelayEntry {
                    role,
                    address: format!("wireleap://relay.example:{port}"),
                    pubkey: PublicKey::from(&SigningKey::from_bytes(&seed)),
                    versions: software.map(|s| Versions::relay(&s)).unwrap_or_default(),
                    key,
                    update_channel: String::new(),
                    upgrade_channel: channel,
                    network_usage_limit: limit,
                };
                let j = e.to_json();
                let back: RelayEntry = serde_json::from_str(&j).unwrap();
                prop_assert_eq!(&back, &e);
                prop_assert_eq!(back.to_json(), j);
            }
        }
    }
}
