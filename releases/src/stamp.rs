//! The version slot: a fixed-size block in the relay binary that `release-tool stamp` fills with
//! a release's version after the build, before the release is signed (like a linker's
//! `-X main.version=`). One build can so be released as several versions, and the signature
//! covers the stamped bytes.
//!
//! Layout, [`SLOT_LEN`] bytes: the 16-byte [`MARKER`], one length byte `n` (0 = not stamped),
//! `n` bytes of the version, zeros to the end. A slot is recognised only with this exact shape
//! (marker, `n` ≤ [`MAX_VERSION_LEN`], zero padding), so a stray copy of the marker elsewhere in a
//! binary does not count; stamping requires exactly one slot.

use semver::Version;

use crate::Error;

/// The slot's size in bytes.
pub const SLOT_LEN: usize = 64;
/// The slot's first bytes.
pub const MARKER: [u8; 16] = *b"\0wl-version-slot";
/// The longest version a slot holds.
pub const MAX_VERSION_LEN: usize = SLOT_LEN - MARKER.len() - 1;

/// An unstamped slot, for the binary's `static`.
pub const EMPTY_SLOT: [u8; SLOT_LEN] = {
    let mut slot = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < MARKER.len() {
        slot[i] = MARKER[i];
        i += 1;
    }
    slot
};

/// The version in a slot, if it is stamped with a valid one.
#[must_use]
pub fn read(slot: &[u8]) -> Option<&str> {
    let n = usize::from(*slot.get(MARKER.len())?);
    if !is_slot(slot) || n == 0 {
        return None;
    }
    let start = MARKER.len() + 1;
    std::str::from_utf8(slot.get(start..start + n)?).ok()
}

fn is_slot(bytes: &[u8]) -> bool {
    if bytes.len() < SLOT_LEN || bytes[..MARKER.len()] != MARKER {
        return false;
    }
    let n = usize::from(bytes[MARKER.len()]);
    n <= MAX_VERSION_LEN
        && bytes[MARKER.len() + 1 + n..SLOT_LEN]
            .iter()
            .all(|&b| b == 0)
}

/// The offsets of the version slots in `binary`.
fn slots(binary: &[u8]) -> Vec<usize> {
    binary
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MARKER)
        .map(|(i, _)| i)
        .filter(|&i| binary.get(i..).is_some_and(is_slot))
        .collect()
}

/// The version stamped into `binary`'s one slot; `None` when it has no slot, several, or an
/// unstamped one (it then reports the version it was built as).
#[must_use]
pub fn find(binary: &[u8]) -> Option<&str> {
    match slots(binary).as_slice() {
        [at] => read(binary.get(*at..)?),
        _ => None,
    }
}

/// Writes `version` into the one slot of `binary`.
///
/// # Errors
///
/// [`Error::Stamp`] when the binary has no slot or more than one, or the version is too long.
pub fn stamp(binary: &mut [u8], version: &Version) -> Result<(), Error> {
    let text = version.to_string();
    if text.len() > MAX_VERSION_LEN {
        return Err(Error::Stamp {
            reason: format!("version {text} is longer than {MAX_VERSION_LEN} bytes"),
        });
    }
    let at = match slots(binary).as_slice() {
        [at] => *at,
        [] => {
            return Err(Error::Stamp {
                reason: "the binary has no version slot (not a wireleap-relay build?)".into(),
            });
        }
        many => {
            return Err(Error::Stamp {
                reason: format!("the binary has {} version slots, expected one", many.len()),
            });
        }
    };
    let slot = &mut binary[at..at + SLOT_LEN];
    slot[MARKER.len()..].fill(0);
    // MAX_VERSION_LEN < 256, checked above.
    slot[MARKER.len()] = u8::try_from(text.len()).unwrap_or(0);
    slot[MARKER.len() + 1..MARKER.len() + 1 + text.len()].copy_from_slice(text.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn stamps_and_restamps_the_one_slot() {
        let mut bin = b"header".to_vec();
        bin.extend_from_slice(&MARKER); // a stray marker, not a slot
        bin.extend_from_slice(b"code");
        bin.extend_from_slice(&EMPTY_SLOT);
        bin.extend_from_slice(b"trailer");
        let at = bin.len() - 7 - SLOT_LEN;
        assert_eq!(read(&bin[at..]), None);
        stamp(&mut bin, &v("1.2.3-rc.1")).unwrap();
        assert_eq!(read(&bin[at..]), Some("1.2.3-rc.1"));
        stamp(&mut bin, &v("10.0.0")).unwrap();
        assert_eq!(read(&bin[at..]), Some("10.0.0"));
        assert_eq!(find(&bin), Some("10.0.0"));
        assert_eq!(find(b"no slot here"), None);
        assert!(bin.ends_with(b"trailer"));
    }

    #[test]
    fn refuses_no_slot_and_two_slots() {
        let mut none = b"plain binary".to_vec();
        assert!(matches!(
            stamp(&mut none, &v("1.0.0")),
            Err(Error::Stamp { .. })
        ));
        let mut two = [EMPTY_SLOT, EMPTY_SLOT].concat();
        let err = stamp(&mut two, &v("1.0.0")).unwrap_err();
        assert!(err.to_string().contains("2 version slots"), "{err}");
    }

    #[test]
    fn refuses_too_long_a_version() {
        let mut bin = EMPTY_SLOT.to_vec();
        let long = Version::parse(&format!("1.0.0-{}", "a".repeat(60))).unwrap();
        assert!(matches!(stamp(&mut bin, &long), Err(Error::Stamp { .. })));
        assert_eq!(read(&bin), None);
    }
}
