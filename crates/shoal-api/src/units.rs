//! The units people type and read: durations (`500ms`, `10s`, `1m30s`, `90d`), byte sizes
//! (`512m`, `10MiB`, `1.5g`) and CPU counts (`0.5`). The CLI and the daemon both parse with these,
//! so a value means the same wherever it is written, and durations print the way they are typed.

/// Parses a duration: Go's syntax (`300ms`, `1.5s`, `1m30s`, `2h`) plus `d` for days; a bare `0`
/// is zero. Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 500ms, 10s, 1m30s, 2h or 90d");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        total += n * factor;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(total.round() as i64)
}

/// Formats milliseconds the way people write durations: the largest units first, zero parts
/// left out (`90d`, `1h30m`, `1m30s`, `1.5s`, `250ms`, `0s`). Sub-second parts of durations of a
/// minute or more are dropped.
pub fn format_duration_ms(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1_000 {
        return format!("{sign}{ms}ms");
    }
    if ms < 60_000 {
        let whole = ms / 1_000;
        let frac = ms % 1_000;
        if frac == 0 {
            return format!("{sign}{whole}s");
        }
        let frac = format!("{frac:03}");
        return format!("{sign}{whole}.{}s", frac.trim_end_matches('0'));
    }
    let mut secs = ms / 1_000;
    let mut out = String::from(sign);
    for (unit, size) in [("d", 86_400u64), ("h", 3_600), ("m", 60), ("s", 1)] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// Parses a byte size: a number (fractions allowed) with an optional unit `b`, `k`, `m`, `g`,
/// `t`, each also as `kb`/`kib` and in any case. Multiples are binary (`1k` = 1024), as Docker's.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use e.g. 512m, 1g, 10MiB, 64k or a number of bytes");
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || !(0.0..9.0e18).contains(&bytes) {
        return Err(format!("invalid size {s:?}: too large"));
    }
    Ok(bytes as u64)
}

/// Parses a CPU count (`1.5`) into nano-CPUs.
pub fn parse_nano_cpus(s: &str) -> Result<i64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("invalid cpu count {s:?}: use e.g. 0.5 or 2"))?;
    if !(0.0..=1.0e6).contains(&v) {
        return Err(format!("invalid cpu count {s:?}: must be between 0 and 1000000"));
    }
    Ok((v * 1e9).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_typed() {
        for (text, ms) in [
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("250ms", 250),
            ("1.5s", 1_500),
            ("0", 0),
            ("2h", 7_200_000),
            ("90d", 7_776_000_000),
            ("1d12h", 129_600_000),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
        for bad in ["10", "s", "10x", "", "1.2.3s", "-5s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_print_as_people_write_them() {
        for (ms, text) in [
            (0, "0s"),
            (250, "250ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (1_250, "1.25s"),
            (59_999, "59.999s"),
            (60_000, "1m"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (5_400_000, "1h30m"),
            (7_776_000_000, "90d"),
            (129_600_000, "1d12h"),
            (-1_500, "-1.5s"),
        ] {
            assert_eq!(format_duration_ms(ms), text, "{ms}");
        }
    }

    #[test]
    fn printed_durations_parse_back() {
        for ms in [1, 999, 1_000, 1_001, 61_000, 3_600_000, 7_776_000_000, 90_061_000] {
            assert_eq!(parse_duration_ms(&format_duration_ms(ms)), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn sizes_and_cpus() {
        for (text, bytes) in [
            ("512m", 512 << 20),
            ("1G", 1 << 30),
            ("1gb", 1 << 30),
            ("10MiB", 10 << 20),
            ("100", 100),
            ("1.5k", 1_536),
            ("2 GiB", 2 << 30),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        assert!(parse_bytes("lots").expect_err("word").contains("invalid size"));
        assert!(parse_bytes("10 parsecs").is_err());
        assert!(parse_bytes("99999999999t").expect_err("huge").contains("too large"));
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert!(parse_nano_cpus("-1").is_err());
    }
}
