//! Durations (`250ms`, `5s`, `1m`, `12h`, `30d`) and rates
//! (`{ requests, per, burst }`).

use std::num::NonZeroU32;
use std::time::Duration;

/// A sustained `requests` per `per`, with at most `burst` at once (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

impl Rate {
    /// The interval at which one request's worth of quota comes back.
    pub fn replenish_interval(&self) -> Duration {
        self.per / self.requests.get()
    }
}

/// Parses `250ms`, `5s`, `1m`, `12h` or `30d`. Zero is allowed here; callers
/// that need a positive value check it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a duration like 250ms, 5s, 1m, 12h or 30d"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is out of range"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is out of range"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "{s:?} has an unknown unit {unit:?} (use ms, s, m, h or d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_unit_parses() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
    }

    #[test]
    fn missing_or_unknown_units_are_errors() {
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5sec").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn replenish_interval_divides_the_period() {
        let r = Rate {
            requests: NonZeroU32::new(10).unwrap(),
            per: Duration::from_secs(1),
            burst: NonZeroU32::new(10).unwrap(),
        };
        assert_eq!(r.replenish_interval(), Duration::from_millis(100));
    }
}
