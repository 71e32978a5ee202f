//! Parsing of the units users type: durations (`10s`, `1m30s`, `250ms`), sizes (`512M`, `1g`)
//! and CPU counts (`0.5`), as `docker service create` accepts them.

/// Parses a Go-style duration into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 500ms, 10s, 1m30s, 2h");
    if s == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
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

/// Formats milliseconds as a short duration (`1.5s`, `2m0s`).
pub fn format_duration_ms(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = ms as f64 / 1000.0;
        format!("{}s", trim_float(s))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Parses a byte size: plain bytes or with a b/k/m/g/t suffix (binary multiples, as Docker).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid size {s:?}: use e.g. 512m, 1g, 64k or a number of bytes");
    let t = s.trim().to_ascii_lowercase();
    let t =
        t.strip_suffix('b').filter(|x| !x.is_empty() && x.ends_with(|c: char| c.is_ascii_alphabetic())).unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..9.0e18).contains(&(n * mult as f64)) {
        return Err(bad());
    }
    Ok((n * mult as f64) as i64)
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
    fn durations() {
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("10").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("10x").is_err());
        assert_eq!(format_duration_ms(1_500), "1.5s");
        assert_eq!(format_duration_ms(90_000), "1m30s");
    }

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("1gb"), Ok(1 << 30));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert!(parse_nano_cpus("-1").is_err());
    }
}
