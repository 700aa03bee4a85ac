//! The release statement: the text that is clear-signed, its rendering and its parsing.
//!
//! This module only deals with the *signed text*. [`Statement::parse`] must only ever be given
//! the bytes that the OpenPGP signature covers, as returned by the verifier (SPEC step 4); it
//! never sees the armour or anything outside the signed block. The format (SPEC.md,
//! "Statement") is line based:
//!
//! ```text
//! # comment lines (instructions for people; ignored, and skipped by sha512sum -c)
//! format: wireleap-release/1
//! product: wireleap-relay
//! version: 0.7.1
//! target: linux-x86_64
//! issued: 2026-11-22T03:30:00Z
//! expires: 2027-05-21T03:30:00Z
//! file: wireleap-relay_linux-x86_64 size=123456
//! <sha256 hex>  wireleap-relay_linux-x86_64
//! <sha512 hex>  wireleap-relay_linux-x86_64
//! ```
//!
//! Checksum lines are in coreutils format (`<hex>  <name>`), so `sha256sum -c` and
//! `sha512sum -c` check the files against the statement itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use semver::Version;
use sha2::{Digest as _, Sha256, Sha512};

use crate::Error;
use crate::error::clip;
use crate::layout::{Product, Target, check_file_name};
use crate::version::parse_version;

/// The value of the `format:` field this crate reads and writes.
pub const FORMAT: &str = "wireleap-release/1";

/// A parsed release statement: what a release is, and the size and digests of every file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The product, e.g. `wireleap-relay`.
    pub product: Product,
    /// The release's version.
    pub version: Version,
    /// The OS and architecture of the binary.
    pub target: Target,
    /// When the statement was signed (whole seconds).
    pub issued: SystemTime,
    /// After this instant the statement is refused (whole seconds).
    pub expires: SystemTime,
    /// Every file of the release for this target, in statement order.
    pub files: Vec<FileEntry>,
}

/// One file named by a statement.
#[derive(Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The plain file name.
    pub name: String,
    /// The size in bytes.
    pub size: u64,
    /// The SHA-256 digest (for `sha256sum -c` and people; the verifier checks SHA-512).
    pub sha256: [u8; 32],
    /// The SHA-512 digest.
    pub sha512: [u8; 64],
}

// === impl Statement ===

impl Statement {
    /// The entry for `name`, if the statement lists it.
    #[must_use]
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The statement text to be signed. `hint` is the statement's own file name, used in the
    /// instruction comments.
    #[must_use]
    pub fn render(&self, hint: &str) -> String {
        let mut s = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(s, "# Wireleap signed release statement.");
        let _ = writeln!(
            s,
            "# Only the text between the signature markers counts. Check it with:"
        );
        let _ = writeln!(s, "#   gpg --verify {hint}");
        let _ = writeln!(s, "#   sha512sum -c {hint}");
        let _ = writeln!(s, "format: {FORMAT}");
        let _ = writeln!(s, "product: {}", self.product);
        let _ = writeln!(s, "version: {}", self.version);
        let _ = writeln!(s, "target: {}", self.target);
        let _ = writeln!(s, "issued: {}", format_time(self.issued));
        let _ = writeln!(s, "expires: {}", format_time(self.expires));
        for f in &self.files {
            let _ = writeln!(s, "file: {} size={}", f.name, f.size);
        }
        for f in &self.files {
            let _ = writeln!(s, "{}  {}", hex::encode(f.sha256), f.name);
            let _ = writeln!(s, "{}  {}", hex::encode(f.sha512), f.name);
        }
        s
    }

    /// Parses the signed text of a statement (SPEC step 4).
    ///
    /// # Errors
    ///
    /// [`Error::MalformedStatement`] for a line outside the format or an inconsistency,
    /// [`Error::MissingField`], [`Error::UnsupportedFormat`], [`Error::UnsafeVersion`] and
    /// [`Error::UnsafeName`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut fields: BTreeMap<&'static str, (usize, &str)> = BTreeMap::new();
        let mut sizes: Vec<(usize, String, u64)> = Vec::new();
        let mut sha256: BTreeMap<String, [u8; 32]> = BTreeMap::new();
        let mut sha512: BTreeMap<String, [u8; 64]> = BTreeMap::new();

        for (idx, raw) in text.lines().enumerate() {
            let n = idx + 1;
            // The clear-signature framework ignores trailing whitespace, so it carries no
            // meaning here either.
            let line = raw.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((hexpart, name)) = line.split_once("  ")
                && !hexpart.is_empty()
                && hexpart.bytes().all(|b| b.is_ascii_hexdigit())
            {
                parse_checksum(n, hexpart, name, &mut sha256, &mut sha512)?;
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| Error::malformed(n, "not a field, checksum or comment line"))?;
            let key: &'static str = match key {
                "format" => "format",
                "product" => "product",
                "version" => "version",
                "target" => "target",
                "issued" => "issued",
                "expires" => "expires",
                "file" => {
                    let (name, size) = parse_file_line(n, value)?;
                    if sizes.iter().any(|(_, other, _)| *other == name) {
                        return Err(Error::malformed(n, "file listed twice"));
                    }
                    sizes.push((n, name, size));
                    continue;
                }
                other => {
                    return Err(Error::malformed(
                        n,
                        format!("unknown field {:?}", clip(other)),
                    ));
                }
            };
            if fields.insert(key, (n, value)).is_some() {
                return Err(Error::malformed(n, format!("field `{key}` given twice")));
            }
        }

        let field = |name: &'static str| {
            fields
                .get(name)
                .copied()
                .ok_or(Error::MissingField { field: name })
        };
        // The format first: a statement of a future format is reported as such, not as
        // whatever field it happens to lack.
        let (_, format) = field("format")?;
        if format != FORMAT {
            return Err(Error::UnsupportedFormat {
                found: clip(format),
            });
        }
        let product = Product::try_new(field("product")?.1)?;
        let version = parse_version(field("version")?.1)?;
        let target = Target::parse(field("target")?.1)?;
        let (issued_line, issued) = field("issued")?;
        let issued =
            parse_time(issued).ok_or_else(|| Error::malformed(issued_line, "bad `issued` time"))?;
        let (expires_line, expires) = field("expires")?;
        let expires = parse_time(expires)
            .ok_or_else(|| Error::malformed(expires_line, "bad `expires` time"))?;
        if expires <= issued {
            return Err(Error::malformed(
                expires_line,
                "expires before it is issued",
            ));
        }
        if sizes.is_empty() {
            return Err(Error::MissingField { field: "file" });
        }
        let mut files = Vec::with_capacity(sizes.len());
        for (n, name, size) in sizes {
            let (Some(s256), Some(s512)) = (sha256.remove(&name), sha512.remove(&name)) else {
                return Err(Error::malformed(
                    n,
                    "file lacks its SHA-256 or SHA-512 line",
                ));
            };
            files.push(FileEntry {
                name,
                size,
                sha256: s256,
                sha512: s512,
            });
        }
        if let Some(name) = sha256.keys().chain(sha512.keys()).next() {
            return Err(Error::malformed(
                0,
                format!("checksum for unlisted file {:?}", clip(name)),
            ));
        }
        Ok(Self {
            product,
            version,
            target,
            issued,
            expires,
            files,
        })
    }
}

// === impl FileEntry ===

impl FileEntry {
    /// Reads `reader` to its end and records its size and digests under `name`.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] for an unsafe name, [`Error::Io`] when reading fails (`path` is
    /// only used in that error).
    pub fn digest(
        name: &str,
        mut reader: impl Read,
        path: &std::path::Path,
    ) -> Result<Self, Error> {
        check_file_name(name)?;
        let mut h256 = Sha256::new();
        let mut h512 = Sha512::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", path, e)),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            h256.update(chunk);
            h512.update(chunk);
            size += n as u64;
        }
        Ok(Self {
            name: name.to_owned(),
            size,
            sha256: h256.finalize().into(),
            sha512: h512.finalize().into(),
        })
    }
}

impl std::fmt::Debug for FileEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEntry")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("sha512", &hex::encode(self.sha512))
            .finish_non_exhaustive()
    }
}

fn parse_checksum(
    n: usize,
    hexpart: &str,
    name: &str,
    sha256: &mut BTreeMap<String, [u8; 32]>,
    sha512: &mut BTreeMap<String, [u8; 64]>,
) -> Result<(), Error> {
    check_file_name(name)?;
    // Lowercase only: exactly what we write and what coreutils prints.
    if hexpart.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Error::malformed(n, "uppercase hex digest"));
    }
    let bytes = hex::decode(hexpart).map_err(|_| Error::malformed(n, "bad hex digest"))?;
    let dup = match bytes.len() {
        32 => {
            let mut d = [0u8; 32];
            d.copy_from_slice(&bytes);
            sha256.insert(name.to_owned(), d).is_some()
        }
        64 => {
            let mut d = [0u8; 64];
            d.copy_from_slice(&bytes);
            sha512.insert(name.to_owned(), d).is_some()
        }
        _ => return Err(Error::malformed(n, "digest is neither SHA-256 nor SHA-512")),
    };
    if dup {
        return Err(Error::malformed(n, "digest given twice"));
    }
    Ok(())
}

fn parse_file_line(n: usize, value: &str) -> Result<(String, u64), Error> {
    let (name, size) = value
        .split_once(' ')
        .ok_or_else(|| Error::malformed(n, "expected `file: <name> size=<bytes>`"))?;
    check_file_name(name)?;
    let size = size
        .strip_prefix("size=")
        .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Error::malformed(n, "bad `size=`"))?;
    Ok((name.to_owned(), size))
}

// === time ===

/// Formats an instant as RFC 3339 UTC with whole seconds: `2026-11-22T03:30:00Z`.
/// Instants before 1970 are shown as the epoch.
#[must_use]
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses exactly the form [`format_time`] writes (`YYYY-MM-DDTHH:MM:SSZ`, years 1970-9999).
#[must_use]
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || b.get(10) != Some(&b'T')
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
        || b.get(19) != Some(&b'Z')
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        let s = text.get(from..to)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, s) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if y < 1970 || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Truncates an instant to whole seconds (what a statement can carry).
#[must_use]
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date (proleptic Gregorian, year >= 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let mut days = 0;
    for year in 1970..y {
        days += if is_leap(year) { 366 } else { 365 };
    }
    for month in 1..m {
        days += days_in_month(y, month);
    }
    days + d - 1
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(mut days: u64) -> (u64, u64, u64) {
    let mut y = 1970;
    loop {
        let len = if is_leap(y) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        y += 1;
    }
    let mut m = 1;
    loop {
        let len = days_in_month(y, m);
        if days < len {
            break;
        }
        days -= len;
        m += 1;
    }
    (y, m, days + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Statement {
        let data = b"hello";
        Statement {
            product: Product::relay(),
            version: Version::new(0, 7, 1),
            target: Target::try_new("linux", "x86_64").unwrap(),
            issued: parse_time("2026-11-22T03:30:00Z").unwrap(),
            expires: parse_time("2027-05-21T03:30:00Z").unwrap(),
            files: vec![
                FileEntry::digest(
                    "wireleap-relay_linux-x86_64",
                    &data[..],
                    std::path::Path::new("x"),
                )
                .unwrap(),
            ],
        }
    }

    #[test]
    fn time_round_trips() {
        for t in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2026-11-22T03:30:00Z",
            "2100-12-31T12:00:00Z",
        ] {
            assert_eq!(format_time(parse_time(t).unwrap()), t);
        }
        assert_eq!(
            parse_time("2026-11-22T03:30:00Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_795_318_200
        );
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-11-22 03:30:00Z",
            "2026-11-22T03:30:00+01:00",
            "+026-11-22T03:30:00Z",
            "2026-11-22T24:00:00Z",
        ] {
            assert!(parse_time(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn render_parse_round_trip() {
        let s = sample();
        let text = s.render("x.hash");
        assert_eq!(Statement::parse(&text).unwrap(), s);
    }

    #[test]
    fn checksum_lines_are_coreutils_format() {
        let text = sample().render("x.hash");
        let expected = hex::encode(Sha512::digest(b"hello"));
        assert!(text.contains(&format!("{expected}  wireleap-relay_linux-x86_64\n")));
    }

    #[test]
    fn parse_rejects_unknown_lines_and_duplicates() {
        let text = sample().render("x.hash");
        let with = |extra: &str| format!("{text}{extra}\n");
        assert!(matches!(
            Statement::parse(&with("hello")),
            Err(Error::MalformedStatement { .. })
        ));
        assert!(matches!(
            Statement::parse(&with("channel: beta")),
            Err(Error::MalformedStatement { .. })
        ));
        assert!(matches!(
            Statement::parse(&with("version: 0.7.2")),
            Err(Error::MalformedStatement { .. })
        ));
        let fake = hex::encode([0u8; 64]);
        assert!(matches!(
            Statement::parse(&with(&format!("{fake}  wireleap-relay_linux-x86_64"))),
            Err(Error::MalformedStatement { .. })
        ));
        assert!(matches!(
            Statement::parse(&with(&format!("{fake}  other"))),
            Err(Error::MalformedStatement { .. })
        ));
        assert!(matches!(
            Statement::parse(&text.replace("format: wireleap-release/1", "format: x/2")),
            Err(Error::UnsupportedFormat { .. })
        ));
        assert!(matches!(
            Statement::parse(&text.replace("expires:", "# expires:")),
            Err(Error::MissingField { field: "expires" })
        ));
        assert!(matches!(
            Statement::parse(&text.replace("version: 0.7.1", "version: 0.7.1/..")),
            Err(Error::UnsafeVersion { .. })
        ));
        assert!(matches!(
            Statement::parse(&text.replace("_linux-x86_64", "_../x")),
            Err(Error::UnsafeName { .. })
        ));
    }
}
