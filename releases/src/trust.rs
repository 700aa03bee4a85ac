//! What this relay trusts to sign its releases, from the build and its home directory. The
//! relay's Upgrader, the `upgrade` command, `version -v`, `check-config` and the supervisor all
//! load it here, from the same files.
//!
//! Sources, and which one decides:
//! - **The embedded root**: an official release build embeds a root given at build time
//!   (`WIRELEAP_TRUST_ROOT=<path to N.root> cargo build --release`, see `docs/releasing.md`). A
//!   build from source embeds nothing.
//! - **`<home>/trusted-keys/roots/<N>.root`**: the roots this relay accepted, newest last. The
//!   operator may put a first root there by hand (the anchor of a private network); the relay
//!   writes each newer root it follows there (rotation), and the embedded root when it is newer.
//!   Each file after the lowest must chain from the one before ([`Root::verify_next`]).
//! - **`<home>/trusted-keys/*.pub`**: without any root, each key file's keys may sign releases
//!   alone (threshold 1). Key files beside a root are refused: the root decides.
//!
//! The root in effect is the newest of the embedded one and the persisted ones; a root older than
//! the newest persisted one is never used again (rollback protection of the root itself).
//!
//! Every trust file and folder is refused, with its path and the reason, when it is group- or
//! world-writable or owned by another user than the relay's or root (OpenSSH's StrictModes,
//! apt's refusal of insecure key files).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Error;
use crate::durable;
use crate::keys::{TrustedKeys, describe_key, test_only_key};
use crate::layout::Product;
use crate::manifest::format_time;
use crate::root::{ROOT_SUFFIX, Role, Root};
use crate::verify::{Expected, ExpiryCheck};

/// The trust folder in the home directory.
pub const TRUST_DIR: &str = "trusted-keys";
/// The folder of accepted roots inside [`TRUST_DIR`].
pub const ROOTS_DIR: &str = "roots";
/// What an operator's key file's name ends with.
pub const KEY_SUFFIX: &str = ".pub";
/// How many root rotations one update follows at most (TUF clients cap this too).
pub const MAX_ROOT_STEPS: u64 = 64;

/// The root embedded at build time (empty when the build was given none).
const EMBEDDED_ROOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/embedded-root"));

/// Where a trusted key or root came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Embedded in this binary at build time.
    Embedded,
    /// A file in the home directory.
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("embedded in this build"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One trusted key, for `version -v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The primary key's fingerprint, uppercase hex.
    pub fingerprint: String,
    /// What it may sign.
    pub roles: Vec<Role>,
    /// Where it came from.
    pub source: Source,
    /// The name of a public test key (anyone can sign with it), if it is one.
    pub test_only: Option<&'static str>,
}

/// The release trust of one home directory.
#[derive(Debug, Clone)]
pub struct Trust {
    dir: PathBuf,
    /// The root in effect and where it came from.
    root: Option<(Root, Source)>,
    /// The newest persisted root's version.
    persisted: Option<u64>,
    /// Keys of older persisted roots that the root in effect no longer has, with the first
    /// version without them.
    retired: Vec<(sequoia_openpgp::Cert, u64)>,
    /// Without a root: the keys of `*.pub` files, each with its file.
    key_files: Vec<(TrustedKeys, PathBuf)>,
    /// Why the embedded root is not in effect, when the home's roots decide instead.
    ignored_embedded: Option<String>,
}

impl Trust {
    /// Loads the trust of `home` and the embedded root.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeTrustFile`] for a file or folder others may change; [`Error::Io`];
    /// [`Error::Key`] for a key file that holds no key; the root errors for a persisted or
    /// embedded root that does not verify or chain; [`Error::Trust`] for key files beside a
    /// root, or two different roots with one version.
    pub fn load(home: &Path) -> Result<Self, Error> {
        Self::load_with(home, EMBEDDED_ROOT)
    }

    /// [`Self::load`] with `embedded` as the build's root (empty: none).
    ///
    /// # Errors
    ///
    /// As [`Self::load`].
    pub fn load_with(home: &Path, embedded: &[u8]) -> Result<Self, Error> {
        let dir = home.join(TRUST_DIR);
        let now = SystemTime::now();
        let mut trust = Self {
            dir: dir.clone(),
            root: None,
            persisted: None,
            retired: Vec::new(),
            key_files: Vec::new(),
            ignored_embedded: None,
        };
        let mut key_paths = Vec::new();
        let mut chain: Vec<(Root, PathBuf)> = Vec::new();
        if safe_dir(&dir)? {
            let roots_dir = dir.join(ROOTS_DIR);
            for path in list(&dir)? {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.as_deref().is_some_and(|n| n.ends_with(KEY_SUFFIX)) {
                    key_paths.push(path);
                }
            }
            if safe_dir(&roots_dir)? {
                let mut numbered = Vec::new();
                for path in list(&roots_dir)? {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let Some(stem) = name.strip_suffix(ROOT_SUFFIX) else {
                        continue;
                    };
                    let version: u64 = stem.parse().map_err(|_| Error::Trust {
                        reason: format!(
                            "{}: a root file is named <version>{ROOT_SUFFIX}, e.g. 1{ROOT_SUFFIX}",
                            path.display()
                        ),
                    })?;
                    numbered.push((version, path));
                }
                numbered.sort();
                for (version, path) in numbered {
                    let bytes =
                        read_safe(&path, crate::root::MAX_ROOT_SIZE).map_err(|e| match e {
                            Error::Trust { .. } => Error::RootTooLarge {
                                limit: crate::root::MAX_ROOT_SIZE,
                            },
                            other => other,
                        })?;
                    let root = match chain.last() {
                        None => Root::verify_anchor(&bytes, now),
                        Some((previous, _)) => previous.verify_next(&bytes, now),
                    }
                    .map_err(|e| Error::Trust {
                        reason: format!("{}: {e}", path.display()),
                    })?;
                    if root.version() != version {
                        return Err(Error::Trust {
                            reason: format!(
                                "{} holds root version {}",
                                path.display(),
                                root.version()
                            ),
                        });
                    }
                    chain.push((root, path));
                }
            }
        }
        trust.persisted = chain.last().map(|(r, _)| r.version());
        trust.root = match (embedded_root(embedded, now)?, chain.last().cloned()) {
            (Some(e), None) => Some((e, Source::Embedded)),
            (None, Some((p, path))) => Some((p, Source::File(path))),
            (None, None) => None,
            (Some(e), Some((p, path))) => {
                // The home's roots decide; the embedded root only if it is the very next
                // version of their chain (a binary released with the next root).
                let follows = e
                    .signed_bytes()
                    .is_some_and(|bytes| p.verify_next(bytes, now).is_ok());
                if follows {
                    Some((e, Source::Embedded))
                } else {
                    if e.signed_bytes() != p.signed_bytes() {
                        trust.ignored_embedded = Some(format!(
                            "the root embedded in this build (version {}) is not used: it does not follow {} (version {}); the relay follows rotations from the release server",
                            e.version(),
                            path.display(),
                            p.version()
                        ));
                    }
                    Some((p, Source::File(path)))
                }
            }
        };
        if let Some((root, _)) = &trust.root {
            if let Some(path) = key_paths.first() {
                return Err(Error::Trust {
                    reason: format!(
                        "{} is a key file beside root version {}: with a root, the root alone decides; add the key to the next root (release-tool root rotate) or remove the file",
                        path.display(),
                        root.version()
                    ),
                });
            }
            for (older, _) in &chain {
                for (fpr, cert) in older.certs() {
                    if !root.certs().contains_key(fpr) {
                        let removed_in = chain
                            .iter()
                            .map(|(r, _)| r)
                            .chain(std::iter::once(root))
                            .find(|r| r.version() > older.version() && !r.certs().contains_key(fpr))
                            .map_or(root.version(), Root::version);
                        trust.retired.push((cert.clone(), removed_in));
                    }
                }
            }
        } else {
            key_paths.sort();
            for path in key_paths {
                let bytes = read_safe(&path, MAX_KEY_FILE)?;
                let keys =
                    TrustedKeys::empty().with_armored(&bytes, &path.display().to_string())?;
                trust.key_files.push((keys, path));
            }
        }
        Ok(trust)
    }

    /// The keys that may sign release statements, with the threshold. Empty when nothing is
    /// trusted (verification then fails with [`Error::NothingTrusted`]).
    ///
    /// # Errors
    ///
    /// [`Error::RootExpired`] when the root in effect has expired at the check time (re-checking
    /// an installed release with [`ExpiryCheck::UnsafeIgnore`] ignores it).
    pub fn release_keys(&self, expiry: ExpiryCheck) -> Result<TrustedKeys, Error> {
        let Some((root, _)) = &self.root else {
            let mut keys = TrustedKeys::empty();
            for (file_keys, _) in &self.key_files {
                for cert in file_keys.certs() {
                    keys.add(cert.clone());
                }
            }
            return Ok(keys);
        };
        if let ExpiryCheck::At(now) = expiry {
            root.check_expiry(now)?;
        }
        let mut keys = root.keys_for(Role::Release);
        for (cert, removed_in) in &self.retired {
            keys.add_retired(cert.clone(), *removed_in);
        }
        Ok(keys)
    }

    /// The keys that may sign rollout documents, with the threshold: the root's `rollout`
    /// role. Empty without a root or without that role (no rollout document is then trusted:
    /// [`crate::rollout::verify`] says [`Error::NoRolloutRole`]).
    ///
    /// # Errors
    ///
    /// [`Error::RootExpired`] when the root in effect has expired at `now`.
    pub fn rollout_keys(&self, now: SystemTime) -> Result<TrustedKeys, Error> {
        let Some((root, _)) = &self.root else {
            return Ok(TrustedKeys::empty().with_role(Role::Rollout));
        };
        root.check_expiry(now)?;
        Ok(root.keys_for(Role::Rollout))
    }

    /// The root in effect, if any.
    #[must_use]
    pub fn root(&self) -> Option<&Root> {
        self.root.as_ref().map(|(r, _)| r)
    }

    /// Where the root in effect came from.
    #[must_use]
    pub fn root_source(&self) -> Option<&Source> {
        self.root.as_ref().map(|(_, s)| s)
    }

    /// Whether no key at all is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.root.is_none() && self.key_files.is_empty()
    }

    /// Every trusted key with its roles and source, for `version -v`.
    #[must_use]
    pub fn keys(&self) -> Vec<KeyInfo> {
        let info = |fpr: String, roles: Vec<Role>, source: Source| KeyInfo {
            test_only: test_only_key(&fpr).map(|(name, _)| name),
            fingerprint: fpr,
            roles,
            source,
        };
        match &self.root {
            Some((root, source)) => root
                .certs()
                .keys()
                .map(|fpr| info(fpr.clone(), root.roles_of(fpr), source.clone()))
                .collect(),
            None => self
                .key_files
                .iter()
                .flat_map(|(keys, path)| {
                    keys.fingerprints()
                        .into_iter()
                        .map(|fpr| info(fpr, vec![Role::Release], Source::File(path.clone())))
                })
                .collect(),
        }
    }

    /// Lines for `version -v`: the root (or its absence) and every trusted key.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match &self.root {
            Some((root, source)) => lines.push(format!(
                "release trust: root version {} ({source}), expires {}; a release needs {} of its {} release keys",
                root.version(),
                format_time(root.expires()),
                root.threshold(Role::Release),
                root.keys_for(Role::Release).fingerprints().len(),
            )),
            None if self.key_files.is_empty() => lines.push(format!(
                "release trust: none; this relay installs no release until a root is put in {} or a key in {} (docs/releasing.md)",
                self.dir.join(ROOTS_DIR).display(),
                self.dir.display()
            )),
            None => lines.push(format!(
                "release trust: key files in {} (no root); any one of these keys may sign a release",
                self.dir.display()
            )),
        }
        if let Some(why) = &self.ignored_embedded {
            lines.push(format!("note: {why}"));
        }
        let keys = self.keys();
        if keys.is_empty() {
            lines.push("trusted release keys: none".to_owned());
        }
        for k in keys {
            let roles: Vec<&str> = k.roles.iter().map(|r| r.as_str()).collect();
            let warning = if k.test_only.is_some() {
                format!("  WARNING: {}", describe_key(&k.fingerprint))
            } else {
                String::new()
            };
            lines.push(format!(
                "trusted key {} roles {} from {}{warning}",
                k.fingerprint,
                if roles.is_empty() {
                    "none".to_owned()
                } else {
                    roles.join(",")
                },
                k.source
            ));
        }
        lines
    }

    /// Warnings for `check-config` and the log: public test keys trusted, an expired root.
    #[must_use]
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        let mut out = Vec::new();
        for k in self.keys() {
            if k.test_only.is_some() {
                out.push(format!(
                    "{} trusts {}: only for tests and the demo network",
                    k.source,
                    describe_key(&k.fingerprint)
                ));
            }
        }
        if let Some((root, _)) = &self.root
            && let Err(e) = root.check_expiry(now)
        {
            out.push(e.to_string());
        }
        out.extend(self.ignored_embedded.clone());
        out
    }

    /// The folder of accepted roots.
    #[must_use]
    pub fn roots_dir(&self) -> PathBuf {
        self.dir.join(ROOTS_DIR)
    }

    /// Writes the embedded root to the roots folder when it is in effect and not there yet, so
    /// that running an older binary later cannot bring an older root back.
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub fn persist_embedded(&mut self) -> Result<(), Error> {
        if let Some((root, Source::Embedded)) = &self.root
            && self.persisted.is_none_or(|p| p < root.version())
        {
            let path = self.persist(root)?;
            self.persisted = Some(root.version());
            if let Some((_, source)) = &mut self.root {
                *source = Source::File(path);
            }
        }
        Ok(())
    }

    /// Follows one rotation: `bytes` must be root version N+1 signed by the current root's
    /// threshold and its own. It is written to the roots folder (durably) and is in effect from
    /// now on; the keys it removed are retired.
    ///
    /// # Errors
    ///
    /// [`Error::Trust`] without a current root; the errors of [`Root::verify_next`];
    /// [`Error::Io`].
    pub fn accept_next(&mut self, bytes: &[u8], now: SystemTime) -> Result<&Root, Error> {
        let Some((current, _)) = &self.root else {
            return Err(Error::Trust {
                reason: "no root is trusted here to follow a rotation from".to_owned(),
            });
        };
        let next = current.verify_next(bytes, now)?;
        let removed: Vec<sequoia_openpgp::Cert> = current
            .certs()
            .iter()
            .filter(|(fpr, _)| !next.certs().contains_key(*fpr))
            .map(|(_, cert)| cert.clone())
            .collect();
        self.persist_embedded()?;
        let path = self.persist(&next)?;
        self.retired
            .extend(removed.into_iter().map(|cert| (cert, next.version())));
        self.retired
            .retain(|(c, _)| !next.certs().contains_key(&c.fingerprint().to_hex()));
        self.persisted = Some(next.version());
        Ok(&self.root.insert((next, Source::File(path))).0)
    }

    /// Writes `root` to the roots folder; when this process may not (privilege separation: the
    /// folder is the supervisor's), to [`wireleap_home::files::ROOTS_STAGED`] beside it, for
    /// the supervisor to check and move in.
    fn persist(&self, root: &Root) -> Result<PathBuf, Error> {
        match self.persist_in_roots(root) {
            Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                let staged = self.dir.with_file_name(wireleap_home::files::ROOTS_STAGED);
                if !staged.is_dir() {
                    use std::os::unix::fs::DirBuilderExt as _;
                    std::fs::DirBuilder::new()
                        .mode(0o770)
                        .create(&staged)
                        .map_err(|e| Error::io("create", &staged, e))?;
                }
                // Whatever the umask it was made with: the supervisor (in this user's group,
                // not root) reads what is staged and removes it. Not this user's folder: the
                // write below says what is wrong.
                use std::os::unix::fs::PermissionsExt as _;
                let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o770));
                let path = staged.join(format!("{}{ROOT_SUFFIX}", root.version()));
                let bytes = root.signed_bytes().ok_or_else(|| Error::Trust {
                    reason: "an unsigned root cannot be trusted".to_owned(),
                })?;
                durable::write_file(&path, bytes, 0o644)?;
                Ok(path)
            }
            other => other,
        }
    }

    /// Moves in the roots a relay staged ([`wireleap_home::files::ROOTS_STAGED`]) that follow
    /// the current root as valid rotations, in order; the first that does not is refused (and
    /// the ones after it). The folder is opened without following a link and read through that
    /// descriptor; only regular files named `<N>.root` in it are read, and only those removed.
    #[must_use]
    pub fn import_staged(&mut self, now: SystemTime) -> Imported {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut out = Imported::default();
        let staged = self.dir.with_file_name(wireleap_home::files::ROOTS_STAGED);
        let dir = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | wireleap_home::durable::NO_FOLLOW_NO_BLOCK)
            .open(&staged)
        {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(e) => {
                out.refused = Some(format!(
                    "{}: not a folder that can be read without following a link ({e})",
                    staged.display()
                ));
                return out;
            }
        };
        // Everything below goes through the descriptor: the folder the name led to when
        // opened, whatever the name leads to now.
        let through = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let mut found: Vec<(u64, String)> = match std::fs::read_dir(&through) {
            Ok(entries) => entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    if !e.file_type().ok()?.is_file() {
                        return None;
                    }
                    let name = e.file_name().to_str()?.to_owned();
                    let n = name.strip_suffix(ROOT_SUFFIX)?.parse().ok()?;
                    Some((n, name))
                })
                .collect(),
            Err(e) => {
                out.refused = Some(format!("{}: {e}", staged.display()));
                return out;
            }
        };
        found.sort();
        for (n, name) in &found {
            let path = through.join(name);
            let current = self.root().map_or(0, Root::version);
            if out.refused.is_none() && *n > current {
                let accepted = if *n == current + 1 {
                    read_staged(&path)
                        .and_then(|bytes| self.accept_next(&bytes, now).map(Root::version))
                } else {
                    Err(Error::Trust {
                        reason: format!("root version {current} is trusted here, not {}", n - 1),
                    })
                };
                match accepted {
                    Ok(v) => out.accepted.push(v),
                    Err(e) => out.refused = Some(format!("{}: {e}", staged.join(name).display())),
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        out
    }

    fn persist_in_roots(&self, root: &Root) -> Result<PathBuf, Error> {
        let roots = self.roots_dir();
        for dir in [&self.dir, &roots] {
            if !safe_dir(dir)? {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| Error::io("create", dir, e))?;
                // The new folder's entry survives a crash too.
                if let Some(parent) = dir.parent() {
                    wireleap_home::durable::sync_dir(parent)
                        .map_err(|e| Error::io("fsync", parent, e))?;
                }
            }
        }
        let path = roots.join(format!("{}{ROOT_SUFFIX}", root.version()));
        let bytes = root.signed_bytes().ok_or_else(|| Error::Trust {
            reason: "an unsigned root cannot be trusted".to_owned(),
        })?;
        durable::write_file(&path, bytes, 0o644)?;
        Ok(path)
    }
}

/// What [`Trust::import_staged`] did.
#[derive(Debug, Default)]
pub struct Imported {
    /// The root versions moved in.
    pub accepted: Vec<u64>,
    /// Why a staged root was refused (the first one).
    pub refused: Option<String>,
}

/// What a release of `version` is checked against on this host, by the relay's Upgrader, its
/// `upgrade` command and the supervisor alike: the release keys of `trust`, and the expectations
/// for the host's target with the floor (above `running` and the highest committed version of
/// `home`).
///
/// # Errors
/// [`Error::RootExpired`]; an unusable host target.
pub fn release_check(
    trust: &Trust,
    home: &Path,
    version: &semver::Version,
    running: &semver::Version,
) -> Result<(TrustedKeys, Expected), Error> {
    check_home(home)?;
    let expected = Expected::for_host(
        Product::relay(),
        version.clone(),
        running.clone(),
        wireleap_home::state::highest_committed(home).map_err(|reason| Error::Trust { reason })?,
    )?;
    let keys = trust.release_keys(expected.expiry)?;
    Ok((keys, expected))
}

/// The root embedded at build time, verified; it may not trust a public test key.
fn embedded_root(embedded: &[u8], now: SystemTime) -> Result<Option<Root>, Error> {
    if embedded.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| Error::Trust {
        reason: format!("the root embedded in this build {reason} (a build defect)"),
    };
    let root = Root::verify_anchor(embedded, now).map_err(|e| bad(format!("is invalid: {e}")))?;
    if let Some(fpr) = root.certs().keys().find(|f| test_only_key(f).is_some()) {
        return Err(bad(format!("trusts {}", describe_key(fpr))));
    }
    Ok(Some(root))
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read folder", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The largest key file read (a keyring of a few keys is a few KiB).
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// Whether the trust folder `dir` exists, and if so that it is safe: a real folder (not a
/// symbolic link, whose target's folders would go unchecked), not group- or world-writable, owned
/// by this user or root. An error other than "not found" fails closed.
///
/// # Errors
///
/// [`Error::UnsafeTrustFile`], [`Error::Io`].
fn safe_dir(dir: &Path) -> Result<bool, Error> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("stat", dir, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(Error::UnsafeTrustFile {
            path: dir.to_path_buf(),
            reason: "it is a symbolic link: put the folder itself there".to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(Error::UnsafeTrustFile {
            path: dir.to_path_buf(),
            reason: "it is not a folder".to_owned(),
        });
    }
    check_meta(dir, &meta)?;
    Ok(true)
}

/// The home holds the trust folder: whoever may rename entries in it may put a trust folder of
/// their own in its place. Refused when it is group- or world-writable without the sticky bit
/// (with it, as under privilege separation's 1770, only an entry's owner may rename it), or is a
/// folder others may change higher up (a world-writable ancestor without the sticky bit).
///
/// Checked before a new release is accepted ([`release_check`]), and reported by
/// `check-config`; not when the installed binary is checked against its statement at start, so
/// such a home refuses upgrades but never stops a relay that already runs.
///
/// # Errors
/// [`Error::UnsafeTrustFile`] naming the folder and the fix.
pub fn check_home(home: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt as _;
    const STICKY: u32 = 0o1000;
    let refuse = |path: &Path, mode: u32, who: &str| Error::UnsafeTrustFile {
        path: path.to_path_buf(),
        reason: format!(
            "its mode {mode:04o} lets {who} replace the trust folder in it (chmod go-w {}, or \
             chmod +t to let only each file's owner rename it)",
            path.display()
        ),
    };
    let meta = match std::fs::metadata(home) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", home, e)),
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        let who = if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        return Err(refuse(home, mode, who));
    }
    for dir in home.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o002 != 0 && mode & STICKY == 0 {
            return Err(refuse(dir, mode, "everyone"));
        }
    }
    Ok(())
}

/// A staged root: anyone may have written it (its signatures vouch for it), so only its size
/// is bounded and a link is not followed.
fn read_staged(path: &Path) -> Result<Vec<u8>, Error> {
    wireleap_home::durable::read_regular(path, crate::root::MAX_ROOT_SIZE, None).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData && e.to_string().contains("larger") {
            Error::RootTooLarge {
                limit: crate::root::MAX_ROOT_SIZE,
            }
        } else {
            Error::io("read", path, e)
        }
    })
}

/// Reads a trust file safely: opened without following a symbolic link, checked on the open
/// handle (so what is checked is what is read), at most `cap` bytes.
///
/// # Errors
///
/// [`Error::UnsafeTrustFile`] (a link, unsafe mode or owner), [`Error::Io`], [`Error::Trust`]
/// when it is larger than `cap`.
fn read_safe(path: &Path, cap: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                Error::UnsafeTrustFile {
                    path: path.to_path_buf(),
                    reason: "it is a symbolic link: put the file itself there".to_owned(),
                }
            } else {
                Error::io("open", path, e)
            }
        })?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::UnsafeTrustFile {
            path: path.to_path_buf(),
            reason: "it is not a regular file".to_owned(),
        });
    }
    check_meta(path, &meta)?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::Trust {
            reason: format!("{} is larger than {cap} bytes", path.display()),
        });
    }
    Ok(bytes)
}

/// The owner of the home directory `path` lies in (the folder holding [`TRUST_DIR`]). Under
/// privilege separation that is the supervisor's user, which owns the trust files; whoever owns
/// the home can replace its `trusted-keys/` anyway, so trusting their files adds no one.
fn home_owner(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let home = path
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == TRUST_DIR))?
        .parent()?;
    std::fs::metadata(home).ok().map(|m| m.uid())
}

/// Refuses a trust file or folder that someone other than this process's user, the home's
/// owner or root may change: group- or world-writable, or owned by another user.
fn check_meta(path: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt as _;
    let mode = meta.mode() & 0o7777;
    let me = nix::unistd::geteuid().as_raw();
    let unsafe_file = |reason: String| Error::UnsafeTrustFile {
        path: path.to_path_buf(),
        reason,
    };
    if mode & 0o022 != 0 {
        return Err(unsafe_file(format!(
            "its mode {mode:04o} lets {} change it (chmod go-w {})",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            path.display()
        )));
    }
    if meta.uid() != me && meta.uid() != 0 && Some(meta.uid()) != home_owner(path) {
        return Err(unsafe_file(format!(
            "it is owned by uid {}, not by this relay's user (uid {me}), the home's owner or root",
            meta.uid()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A home others may change lets them replace the trust folder in it: refused, naming it;
    /// the sticky bit (privilege separation's 1770) makes it safe.
    #[test]
    fn a_home_others_may_change_is_refused_unless_sticky() {
        let home = tempfile::tempdir().unwrap();
        for (mode, ok) in [(0o700, true), (0o755, true), (0o775, false), (0o777, false)] {
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let loaded = check_home(home.path());
            assert_eq!(loaded.is_ok(), ok, "{mode:o}: {loaded:?}");
            // The trust itself still loads: a relay that runs is not stopped by it.
            assert!(Trust::load(home.path()).is_ok(), "{mode:o}");
            if let Err(e) = loaded {
                assert!(
                    matches!(&e, Error::UnsafeTrustFile { path, .. } if path == home.path()),
                    "{e}"
                );
                assert!(e.to_string().contains("replace the trust folder"), "{e}");
            }
        }
        for mode in [0o1770, 0o1777] {
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(check_home(home.path()).is_ok(), "{mode:o}");
        }
        // A world-writable folder above it (not sticky) is refused too.
        let outer = tempfile::tempdir().unwrap();
        let inner = outer.path().join("home");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            matches!(check_home(&inner), Err(Error::UnsafeTrustFile { path, .. }) if path == outer.path())
        );
        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn nothing_is_trusted_by_default() {
        let home = tempfile::tempdir().unwrap();
        let trust = Trust::load(home.path()).unwrap();
        assert!(trust.is_empty(), "a build from source trusts no key");
        assert!(
            trust
                .release_keys(ExpiryCheck::UnsafeIgnore)
                .unwrap()
                .is_empty()
        );
        assert!(
            trust
                .describe()
                .iter()
                .any(|l| l == "trusted release keys: none")
        );
    }

    /// Roots signed by fresh keys (not the public test keys), as an official build has.
    struct Chain {
        keys: Vec<crate::SigningKey>,
    }

    impl Chain {
        fn new(n: usize) -> Self {
            let keys = (0..n)
                .map(|i| {
                    crate::SigningKey::generate_at(
                        &format!("k{i} <k{i}@example.invalid>"),
                        SystemTime::now() - std::time::Duration::from_secs(3600),
                    )
                    .unwrap()
                })
                .collect();
            Self { keys }
        }

        /// Root `version` with keys `members` (2 of them sign), signed by `signers`.
        fn root(&self, version: u64, members: &[usize], signers: &[usize]) -> Vec<u8> {
            let fprs: Vec<String> = members
                .iter()
                .map(|&i| self.keys[i].fingerprint())
                .collect();
            let role = || crate::root::RoleKeys {
                threshold: 2,
                keys: fprs.clone(),
            };
            let certs = members
                .iter()
                .map(|&i| self.keys[i].trusted().unwrap().certs()[0].clone())
                .collect();
            let now = SystemTime::now() - std::time::Duration::from_secs(60);
            let root = Root::new(
                version,
                now,
                now + std::time::Duration::from_secs(86_400),
                certs,
                std::collections::BTreeMap::from([(Role::Root, role()), (Role::Release, role())]),
            )
            .unwrap();
            let signers: Vec<crate::SigningKey> =
                signers.iter().map(|&i| self.keys[i].clone()).collect();
            crate::sign::clearsign_by(&signers, &root.render().unwrap(), now).unwrap()
        }
    }

    fn install(home: &Path, version: u64, bytes: &[u8]) {
        let dir = home.join(TRUST_DIR).join(ROOTS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{version}{ROOT_SUFFIX}")), bytes).unwrap();
    }

    #[test]
    fn an_embedded_root_is_used_then_persisted_so_it_never_goes_back() {
        let chain = Chain::new(3);
        let v1 = chain.root(1, &[0, 1, 2], &[0, 1]);
        let home = tempfile::tempdir().unwrap();
        let mut trust = Trust::load_with(home.path(), &v1).unwrap();
        assert_eq!(trust.root_source(), Some(&Source::Embedded));
        assert_eq!(
            trust
                .release_keys(ExpiryCheck::At(SystemTime::now()))
                .unwrap()
                .threshold(),
            2
        );
        trust.persist_embedded().unwrap();
        assert!(matches!(trust.root_source(), Some(Source::File(_))));
        // An older binary without the root still has it: the home keeps it.
        let without = Trust::load_with(home.path(), b"").unwrap();
        assert_eq!(without.root().unwrap().version(), 1);
        // A build whose embedded root is the next version of the chain uses it.
        let v2 = chain.root(2, &[0, 1], &[0, 1]);
        let next = Trust::load_with(home.path(), &v2).unwrap();
        assert_eq!(next.root().unwrap().version(), 2);
        assert_eq!(next.root_source(), Some(&Source::Embedded));
    }

    #[test]
    fn the_homes_roots_win_over_an_embedded_root_that_does_not_follow_them() {
        let official = Chain::new(3);
        let private = Chain::new(2);
        let home = tempfile::tempdir().unwrap();
        install(home.path(), 1, &private.root(1, &[0, 1], &[0, 1]));
        let embedded = official.root(2, &[0, 1, 2], &[0, 1]);
        let trust = Trust::load_with(home.path(), &embedded).unwrap();
        assert_eq!(trust.root().unwrap().version(), 1);
        assert!(matches!(trust.root_source(), Some(Source::File(_))));
        assert!(
            trust
                .warnings(SystemTime::now())
                .iter()
                .any(|w| w.contains("is not used")),
            "{:?}",
            trust.warnings(SystemTime::now())
        );
        // A gap (root 3 over root 1) is not a chain either.
        let gap = private.root(3, &[0, 1], &[0, 1]);
        assert_eq!(
            Trust::load_with(home.path(), &gap)
                .unwrap()
                .root()
                .unwrap()
                .version(),
            1
        );
    }

    #[test]
    fn an_embedded_root_with_a_public_test_key_is_refused() {
        let root =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/roots/1.root"))
                .unwrap();
        let home = tempfile::tempdir().unwrap();
        let err = Trust::load_with(home.path(), &root).unwrap_err();
        assert!(
            matches!(&err, Error::Trust { reason } if reason.contains("TEST-ONLY")),
            "{err:?}"
        );
    }

    #[test]
    fn writable_trust_folders_and_files_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(TRUST_DIR);
        std::fs::create_dir(&dir).unwrap();
        let key = dir.join("k.pub");
        std::fs::write(
            &key,
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keys/test-only-project.pub"),
            )
            .unwrap(),
        )
        .unwrap();
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(&dir, 0o755);
        set(&key, 0o644);
        assert_eq!(Trust::load(home.path()).unwrap().keys().len(), 1);
        set(&key, 0o666);
        let err = Trust::load(home.path()).unwrap_err();
        assert!(
            matches!(&err, Error::UnsafeTrustFile { path, .. } if *path == key),
            "{err:?}"
        );
        set(&key, 0o644);
        set(&dir, 0o777);
        let err = Trust::load(home.path()).unwrap_err();
        assert!(
            matches!(&err, Error::UnsafeTrustFile { path, .. } if *path == dir),
            "{err:?}"
        );
        assert!(err.to_string().contains("0777"), "{err}");
    }

    #[test]
    fn symbolic_links_in_the_trust_folder_are_refused_not_followed() {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let dir = home.path().join(TRUST_DIR);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = elsewhere.path().join("k.pub");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keys/test-only-project.pub"),
            &target,
        )
        .unwrap();
        let link = dir.join("k.pub");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Trust::load(home.path()).unwrap_err();
        assert!(
            matches!(&err, Error::UnsafeTrustFile { path, reason } if *path == link && reason.contains("symbolic link")),
            "{err:?}"
        );
        std::fs::remove_file(&link).unwrap();
        let roots = dir.join(ROOTS_DIR);
        std::os::unix::fs::symlink(elsewhere.path(), &roots).unwrap();
        let err = Trust::load(home.path()).unwrap_err();
        assert!(
            matches!(&err, Error::UnsafeTrustFile { path, .. } if *path == roots),
            "{err:?}"
        );
    }

    #[test]
    fn a_trust_file_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can hand a file to another user; CI runs as root.
            eprintln!("not root: the owner check is exercised in CI");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(TRUST_DIR);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = dir.join("k.pub");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keys/test-only-project.pub"),
            &key,
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = Trust::load(home.path()).unwrap_err();
        assert!(
            matches!(&err, Error::UnsafeTrustFile { path, reason } if *path == key && reason.contains("uid 65534")),
            "{err:?}"
        );
    }
}
