//! Value formats of `config.json` (spec §2.2): Go-style durations and binary data sizes.
//!
//! Both parse strictly: a value that does not parse is an error that names what was expected
//! (spec §10 #6), unlike the reference, which silently keeps the default. Both also format back
//! in the reference's own notation, so a config we write reads the same to a Go relay.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a duration or a data size did not parse. The text is shown to operators after the key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

const NANOS_PER: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Parses a duration such as `5m0s`, `1d12h`, `1.5h`, `300ms` or `0`.
///
/// Accepts every form Go's `time.Duration` prints plus the reference's `d` (24 h) unit. Signs are
/// refused: a negative interval has no meaning in this config.
///
/// # Errors
/// Returns a [`FormatError`] naming the offending part.
pub fn parse_duration(text: &str) -> Result<Duration, FormatError> {
    let bad = |why: &str| {
        FormatError(format!(
            "invalid duration {text:?}: {why} (examples: \"5m0s\", \"1d12h\", \"1.5h\", \"300ms\")"
        ))
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') || s.starts_with('+') {
        return Err(bad("a sign is not allowed"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        if unit_len == 0 {
            return Err(bad("a number without a unit"));
        }
        let (unit, after) = after.split_at(unit_len);
        let per = NANOS_PER
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or_else(|| bad(&format!("unknown unit {unit:?}")))?;
        let (int_part, frac_part) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(bad(&format!("malformed number {num:?}")));
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad("number too large"))?
        };
        let mut nanos = int.checked_mul(per).ok_or_else(|| bad("too large"))?;
        // Fractions are exact to the nanosecond: digits past the unit's resolution are dropped.
        let mut scale = per;
        for digit in frac_part.chars() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
        }
        total = total.checked_add(nanos).ok_or_else(|| bad("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    // The remainder of a division by 10^9 always fits in u32.
    let sub = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Formats a duration as Go's `time.Duration.String()` does: `5m0s`, `48h0m0s`, `300ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (value, unit) = if nanos < 1_000 {
            (nanos as f64, "ns")
        } else if nanos < 1_000_000 {
            (nanos as f64 / 1e3, "µs")
        } else {
            (nanos as f64 / 1e6, "ms")
        };
        return format!("{}{unit}", trim_float(value));
    }
    let total_secs = d.as_secs();
    let hours = total_secs / 3600;
    let mins = (total_secs % 3600) / 60;
    let secs = total_secs % 60;
    let frac = d.subsec_nanos();
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || mins > 0 {
        let _ = write!(out, "{mins}m");
    }
    if frac == 0 {
        let _ = write!(out, "{secs}s");
    } else {
        let frac_text = format!("{frac:09}");
        let _ = write!(out, "{secs}.{}s", frac_text.trim_end_matches('0'));
    }
    out
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

const DATA_UNITS: &[(&[&str], u32)] = &[
    (&["", "b", "byte", "bytes"], 0),
    (&["k", "kb", "kilo", "kilobyte", "kilobytes"], 10),
    (&["m", "mb", "mega", "megabyte", "megabytes"], 20),
    (&["g", "gb", "giga", "gigabyte", "gigabytes"], 30),
    (&["t", "tb", "tera", "terabyte", "terabytes"], 40),
    (&["p", "pb", "peta", "petabyte", "petabytes"], 50),
    (&["e", "eb", "exa", "exabyte", "exabytes"], 60),
];

/// Parses a binary data size such as `50MB`, `2tb`, `1024` or `0B` (1 KB = 1024 B, as the
/// reference does). `Kb`, `Mb`… are refused because they read as bits.
///
/// # Errors
/// Returns a [`FormatError`] naming the offending part.
pub fn parse_datasize(text: &str) -> Result<u64, FormatError> {
    let bad = |why: &str| {
        FormatError(format!(
            "invalid data size {text:?}: {why} (examples: \"50MB\", \"2TB\", \"1024\")"
        ))
    };
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(bad("expected a whole number of bytes followed by a unit"));
    }
    let (num, unit) = s.split_at(digits);
    let unit = unit.trim_start();
    if unit.len() == 2 && unit.ends_with('b') && unit.starts_with(|c: char| c.is_ascii_uppercase())
    {
        return Err(bad(&format!(
            "{unit:?} means bits; write {}",
            unit.to_uppercase()
        )));
    }
    let lower = unit.to_ascii_lowercase();
    let shift = DATA_UNITS
        .iter()
        .find(|(names, _)| names.contains(&lower.as_str()))
        .map(|(_, shift)| *shift)
        .ok_or_else(|| bad(&format!("unknown unit {unit:?}")))?;
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| bad("too large"))
}

/// Formats a data size with the largest unit that divides it evenly: `50MB`, `1TB`, `0B`.
pub fn format_datasize(bytes: u64) -> String {
    const NAMES: [&str; 7] = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    if bytes == 0 {
        return "0B".to_owned();
    }
    let mut idx = 0;
    let mut n = bytes;
    while idx + 1 < NAMES.len() && n.is_multiple_of(1024) {
        n /= 1024;
        idx += 1;
    }
    format!("{n}{}", NAMES[idx])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_in_every_documented_form() {
        let cases = [
            ("5m0s", 300_000),
            ("1d12h", 36 * 3_600_000),
            ("30d", 30 * 86_400_000),
            ("1.5h", 5_400_000),
            ("300ms", 300),
            ("0", 0),
            ("0s", 0),
            ("48h0m0s", 48 * 3_600_000),
            ("2.5s", 2_500),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(millis),
                "{text}"
            );
        }
        assert_eq!(
            parse_duration("1500us").unwrap(),
            Duration::from_micros(1500)
        );
        assert_eq!(parse_duration("7ns").unwrap(), Duration::from_nanos(7));
    }

    #[test]
    fn bad_durations_are_errors_that_quote_the_value() {
        for text in [
            "",
            "30",
            "-5m",
            "5 minutes",
            "m5",
            "1..5h",
            "5mm",
            "abc",
            "1.h2",
        ] {
            let err = parse_duration(text);
            assert!(err.is_err(), "{text:?} parsed as {err:?}");
        }
        let msg = parse_duration("30").unwrap_err().to_string();
        assert!(
            msg.contains("\"30\"") && msg.contains("without a unit"),
            "{msg}"
        );
    }

    #[test]
    fn durations_format_like_go() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_duration(Duration::from_secs(48 * 3600)), "48h0m0s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(3601)), "1h0m1s");
    }

    #[test]
    fn datasizes_are_binary_and_case_insensitive() {
        assert_eq!(parse_datasize("50MB").unwrap(), 50 << 20);
        assert_eq!(parse_datasize("20TB").unwrap(), 21_990_232_555_520);
        assert_eq!(parse_datasize("2tb").unwrap(), 2 << 40);
        assert_eq!(parse_datasize("1024").unwrap(), 1024);
        assert_eq!(parse_datasize("0B").unwrap(), 0);
        assert_eq!(parse_datasize("3 kilobytes").unwrap(), 3072);
        for text in [
            "",
            "MB",
            "1.5GB",
            "5Mb",
            "-1KB",
            "5XB",
            "99999999999999999999",
        ] {
            assert!(parse_datasize(text).is_err(), "{text:?}");
        }
        assert_eq!(format_datasize(50 << 20), "50MB");
        assert_eq!(format_datasize(0), "0B");
        assert_eq!(format_datasize(1000), "1000B");
    }

    proptest! {
        #[test]
        fn duration_format_parses_back(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }

        #[test]
        fn datasize_format_parses_back(n in 0u64..(1 << 50)) {
            prop_assert_eq!(parse_datasize(&format_datasize(n)).unwrap(), n);
        }
    }
}
