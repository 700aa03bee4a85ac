//! Where release files live: names, URLs under a base URL, and the same tree on disk.
//!
//! The layout (SPEC.md "Layout") is
//! `<base>/v<VERSION>/<product>_<os>-<arch>`, its statement `<asset>.hash` beside it, the
//! changelog `<base>/v<VERSION>/changelog.md`, and `<base>/channels.json`. Every name that goes
//! into a path or URL is checked here first (SPEC step 4, "unsafe names"); this module never
//! performs I/O except reading and writing `channels.json` in a release root.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use semver::Version;
use url::Url;

use crate::Error;
use crate::error::clip;
use crate::version::parse_version;

/// The file name of the changelog in a version directory.
pub const CHANGELOG_NAME: &str = "changelog.md";
/// The file name of the channel map at the root of a release tree.
pub const CHANNELS_NAME: &str = "channels.json";
/// The suffix of a signed statement's name: `<asset>.hash` (as in the reference relay).
pub const STATEMENT_SUFFIX: &str = ".hash";
/// The longest file name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that `name` is a plain file name: 1 to 128 characters of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-` (so never `.`, `..`, a hidden file or an option).
///
/// # Errors
///
/// [`Error::UnsafeName`] otherwise.
pub fn check_file_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::UnsafeName { name: clip(name) })
    }
}

/// The asset (binary) name of `product` for `target`: `<product>_<os>-<arch>`.
#[must_use]
pub fn asset_name(product: &Product, target: &Target) -> String {
    format!("{product}_{target}")
}

/// The signed statement's name for `asset`: `<asset>.hash`.
#[must_use]
pub fn statement_name(asset: &str) -> String {
    format!("{asset}{STATEMENT_SUFFIX}")
}

/// The folder of published roots under a release tree's base.
pub const ROOTS_FOLDER: &str = "root";

/// `root/<N>.root`, relative to the base.
fn root_rel_path(n: u64) -> String {
    format!("{ROOTS_FOLDER}/{n}{}", crate::root::ROOT_SUFFIX)
}

/// The name of a version's directory: `v<VERSION>`.
#[must_use]
pub fn version_dir_name(version: &Version) -> String {
    format!("v{version}")
}

/// A product name such as `wireleap-relay`: lowercase ASCII letters, digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Product(String);

/// An OS and CPU architecture, named as Rust names them (`std::env::consts`): `linux-x86_64`,
/// `linux-aarch64`, `macos-aarch64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    os: String,
    arch: String,
}

/// Release URLs under a configurable base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    base: Url,
}

/// The same tree as [`Layout`], on disk (what `release-tool` writes and a static file server
/// serves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDir {
    root: PathBuf,
}

/// The channel map, `channels.json`: `{"<product key>": {"<channel>": "<version>"}}`, e.g.
/// `{"relay": {"default": "0.7.1"}}`. The product key is [`Product::channel_key`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channels {
    map: BTreeMap<String, BTreeMap<String, Version>>,
}

// === impl Product ===

impl Product {
    /// The relay: `wireleap-relay`.
    #[must_use]
    pub fn relay() -> Self {
        Self("wireleap-relay".to_owned())
    }

    /// Its supervisor, `wireleap-relay-supervisor`: a second file of a relay release's
    /// statement (`wireleap-relay-supervisor_<os>-<arch>`), verified with the relay's.
    #[must_use]
    pub fn supervisor() -> Self {
        Self("wireleap-relay-supervisor".to_owned())
    }

    /// Parses a product name.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] unless it is 1 to 64 characters of `[a-z0-9-]` starting with a
    /// letter.
    pub fn try_new(name: &str) -> Result<Self, Error> {
        let ok = (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::UnsafeName { name: clip(name) })
        }
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The product's key in `channels.json`, as the reference names repositories:
    /// `wireleap-relay` → `relay`, `wireleap` → `client`, anything else unchanged.
    #[must_use]
    pub fn channel_key(&self) -> &str {
        match self.0.as_str() {
            "wireleap" => "client",
            name => name.strip_prefix("wireleap-").unwrap_or(name),
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl Target ===

impl Target {
    /// The target this code was compiled for (`std::env::consts::{OS, ARCH}`).
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] if the platform's names are unusual (not expected on any
    /// platform Rust supports).
    pub fn host() -> Result<Self, Error> {
        Self::try_new(std::env::consts::OS, std::env::consts::ARCH)
    }

    /// A target from an OS and an architecture name.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] unless the OS is `[a-z0-9]+` and the architecture `[a-z0-9_]+`,
    /// each at most 32 characters.
    pub fn try_new(os: &str, arch: &str) -> Result<Self, Error> {
        let part_ok = |s: &str, underscore: bool| {
            (1..=32).contains(&s.len())
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || (underscore && b == b'_')
                })
        };
        // Neither part may hold `-`, so `<os>-<arch>` splits back unambiguously.
        if part_ok(os, false) && part_ok(arch, true) {
            Ok(Self {
                os: os.to_owned(),
                arch: arch.to_owned(),
            })
        } else {
            Err(Error::UnsafeName {
                name: clip(&format!("{os}-{arch}")),
            })
        }
    }

    /// Parses `<os>-<arch>`, e.g. `linux-x86_64`.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] when it is not of that form.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (os, arch) = text
            .split_once('-')
            .ok_or_else(|| Error::UnsafeName { name: clip(text) })?;
        Self::try_new(os, arch)
    }

    /// The OS name.
    #[must_use]
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The architecture name.
    #[must_use]
    pub fn arch(&self) -> &str {
        &self.arch
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.os, self.arch)
    }
}

// === impl Layout ===

impl Layout {
    /// A layout under `base` (e.g. `https://releases.example/relay/`).
    ///
    /// # Errors
    ///
    /// [`Error::Url`] unless `base` is an `http` or `https` URL without credentials, query
    /// or fragment.
    pub fn try_new(base: &str) -> Result<Self, Error> {
        let mut url = Url::parse(base).map_err(|e| Error::Url {
            reason: format!("base URL does not parse: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Url {
                reason: format!("base URL scheme {:?} is not http or https", url.scheme()),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials would end up in logs and error messages.
            return Err(Error::Url {
                reason: "base URL must not hold credentials".to_owned(),
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::Url {
                reason: "base URL must not have a query or fragment".to_owned(),
            });
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self { base: url })
    }

    /// The base URL (always ends with `/`).
    #[must_use]
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `<base>/channels.json`.
    ///
    /// # Errors
    ///
    /// [`Error::Url`] if the URL cannot be joined (not expected with a checked base).
    pub fn channels_url(&self) -> Result<Url, Error> {
        self.join(CHANNELS_NAME)
    }

    /// `<base>/v<VERSION>/<name>` for a plain file name.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] for an unsafe name, [`Error::Url`] if joining fails.
    pub fn file_url(&self, version: &Version, name: &str) -> Result<Url, Error> {
        check_file_name(name)?;
        // Re-parse so that a Version built by hand with odd text is refused too.
        let version = parse_version(&version.to_string())?;
        self.join(&format!("{}/{name}", version_dir_name(&version)))
    }

    /// `<base>/v<VERSION>/<asset>`.
    ///
    /// # Errors
    ///
    /// As [`Layout::file_url`].
    pub fn asset_url(&self, version: &Version, asset: &str) -> Result<Url, Error> {
        self.file_url(version, asset)
    }

    /// `<base>/v<VERSION>/<asset>.hash`.
    ///
    /// # Errors
    ///
    /// As [`Layout::file_url`].
    pub fn statement_url(&self, version: &Version, asset: &str) -> Result<Url, Error> {
        check_file_name(asset)?;
        self.file_url(version, &statement_name(asset))
    }

    /// `<base>/v<VERSION>/changelog.md`.
    ///
    /// # Errors
    ///
    /// As [`Layout::file_url`].
    pub fn changelog_url(&self, version: &Version) -> Result<Url, Error> {
        self.file_url(version, CHANGELOG_NAME)
    }

    /// `<base>/root/<N>.root`: root version `n` (SPEC "Roots").
    ///
    /// # Errors
    ///
    /// [`Error::Url`] if joining fails.
    pub fn root_url(&self, n: u64) -> Result<Url, Error> {
        self.join(&root_rel_path(n))
    }

    fn join(&self, rel: &str) -> Result<Url, Error> {
        self.base.join(rel).map_err(|e| Error::Url {
            reason: format!("cannot join {rel:?}: {e}"),
        })
    }
}

// === impl ReleaseDir ===

impl ReleaseDir {
    /// A release tree rooted at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/v<VERSION>`.
    #[must_use]
    pub fn version_dir(&self, version: &Version) -> PathBuf {
        self.root.join(version_dir_name(version))
    }

    /// `<root>/v<VERSION>/<name>` for a plain file name.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] for an unsafe name or version.
    pub fn file_path(&self, version: &Version, name: &str) -> Result<PathBuf, Error> {
        check_file_name(name)?;
        let version = parse_version(&version.to_string())?;
        Ok(self.version_dir(&version).join(name))
    }

    /// `<root>/root/<N>.root`: where root version `n` is published.
    #[must_use]
    pub fn root_path(&self, n: u64) -> PathBuf {
        self.root.join(root_rel_path(n))
    }

    /// `<root>/channels.json`.
    #[must_use]
    pub fn channels_path(&self) -> PathBuf {
        self.root.join(CHANNELS_NAME)
    }
}

// === impl Channels ===

impl Channels {
    /// Parses `channels.json`. Every version must be a plain version.
    ///
    /// # Errors
    ///
    /// [`Error::Channels`] for bad JSON or shape, [`Error::UnsafeVersion`] /
    /// [`Error::UnsafeName`] for a bad version or channel name.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let raw: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_slice(bytes)
            .map_err(|e| Error::Channels {
                reason: format!(
                    "expected {{\"<product>\": {{\"<channel>\": \"<version>\"}}}}: {e}"
                ),
            })?;
        let mut map = BTreeMap::new();
        for (product, channels) in raw {
            check_file_name(&product)?;
            let mut parsed = BTreeMap::new();
            for (channel, version) in channels {
                check_file_name(&channel)?;
                parsed.insert(channel, parse_version(&version)?);
            }
            map.insert(product, parsed);
        }
        Ok(Self { map })
    }

    /// The version `channel` of `product` points at.
    #[must_use]
    pub fn version(&self, product: &Product, channel: &str) -> Option<&Version> {
        self.map.get(product.channel_key())?.get(channel)
    }

    /// Every channel of `product` with its version.
    #[must_use]
    pub fn channels(&self, product: &Product) -> Option<&BTreeMap<String, Version>> {
        self.map.get(product.channel_key())
    }

    /// Points `channel` of `product` at `version`.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] for an unsafe channel name.
    pub fn set(&mut self, product: &Product, channel: &str, version: Version) -> Result<(), Error> {
        check_file_name(channel)?;
        self.map
            .entry(product.channel_key().to_owned())
            .or_default()
            .insert(channel.to_owned(), version);
        Ok(())
    }

    /// The JSON text, pretty-printed, with a final newline.
    #[must_use]
    pub fn to_json(&self) -> String {
        let raw: BTreeMap<&str, BTreeMap<&str, String>> = self
            .map
            .iter()
            .map(|(p, chans)| {
                (
                    p.as_str(),
                    chans
                        .iter()
                        .map(|(c, v)| (c.as_str(), v.to_string()))
                        .collect(),
                )
            })
            .collect();
        // Serialising a map of strings cannot fail; fall back to an empty object regardless.
        let mut text = serde_json::to_string_pretty(&raw).unwrap_or_else(|_| "{}".to_owned());
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_target_matches_consts() {
        let t = Target::host().unwrap();
        assert_eq!(
            t.to_string(),
            format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
        );
        assert_eq!(Target::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn asset_name_carries_os_and_arch() {
        let t = Target::try_new("linux", "x86_64").unwrap();
        assert_eq!(
            asset_name(&Product::relay(), &t),
            "wireleap-relay_linux-x86_64"
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            "", ".", "..", "../x", "a/b", ".hidden", "-rf", "a b", "a\\b", "é",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(Target::parse("linux").is_err());
        assert!(Target::parse("linux-x86/64").is_err());
        assert!(Product::try_new("Wireleap").is_err());
    }

    #[test]
    fn urls_follow_the_layout() {
        let l = Layout::try_new("http://127.0.0.1:8080/rel").unwrap();
        let v = Version::new(0, 7, 1);
        assert_eq!(
            l.statement_url(&v, "wireleap-relay_linux-x86_64")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/rel/v0.7.1/wireleap-relay_linux-x86_64.hash"
        );
        assert_eq!(
            l.changelog_url(&v).unwrap().as_str(),
            "http://127.0.0.1:8080/rel/v0.7.1/changelog.md"
        );
        assert_eq!(
            l.channels_url().unwrap().as_str(),
            "http://127.0.0.1:8080/rel/channels.json"
        );
        assert!(l.asset_url(&v, "../x").is_err());
        assert!(Layout::try_new("http://u:p@host/").is_err());
        assert!(Layout::try_new("file:///tmp").is_err());
    }

    #[test]
    fn channels_round_trip() {
        let mut c = Channels::default();
        c.set(&Product::relay(), "default", Version::new(0, 7, 1))
            .unwrap();
        let json = c.to_json();
        assert!(json.contains("\"relay\""));
        let back = Channels::parse(json.as_bytes()).unwrap();
        assert_eq!(
            back.version(&Product::relay(), "default"),
            Some(&Version::new(0, 7, 1))
        );
        assert!(Channels::parse(br#"{"relay": {"default": "../1.0.0"}}"#).is_err());
        assert!(Channels::parse(br#"{"relay": ["x"]}"#).is_err());
    }
}
