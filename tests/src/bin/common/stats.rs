//! Latency statistics shared by the benchmark binaries (`regbench`, `clusterbench`), included
//! with `#[path = "common/stats.rs"] mod stats;` (a directory without `main.rs` is not a bin).

use std::time::Duration;

/// The `p`-th percentile (0..=100) of sorted latencies, in milliseconds (nearest rank; 0 when
/// there are none).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// `x` rounded to 3 decimals (microseconds, for figures in milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
        assert_eq!(round3(1.23456), 1.235);
    }
}
