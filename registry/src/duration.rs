//! Go duration strings (`5s`, `1m30s`, `250ms`, `1.5h`, `0`), as Consul's config entries take
//! them. meshd has its own copy for its configuration; the registry cannot depend on meshd.

use std::time::Duration;

/// Parses a Go duration; negative and unit-less values (except a bare `0`) are refused. The
/// error says what is wrong, for a message that already names the field.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let bad = |why: &str| format!("invalid duration {input:?}: {why} (e.g. 5s, 1m30s, 500ms)");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit"))?;
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let per = match &rest[..unit_len] {
            "ns" => 1e0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad("unknown unit")),
        };
        nanos += value * per;
        rest = &rest[unit_len..];
    }
    if !nanos.is_finite() || nanos > 1e18 {
        return Err(bad("too large"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Formats a duration as Go prints the common cases: `5s`, `1m30s`, `250ms`, `0s`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}ns", d.as_nanos());
    }
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s}s"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for s in ["5s", "1m30s", "250ms", "1h0m0s", "0s"] {
            assert_eq!(parse(s).map(format).as_deref(), Ok(s));
        }
        for bad in ["", "5", "-1s", "5x", "s", "1e400h", "..s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
