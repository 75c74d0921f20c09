//! .NET `TimeSpan` text as used in `host.json` and `function.json`: `hh:mm:ss`,
//! `d.hh:mm:ss`, each with optional fractional seconds (`00:00:01.500`).

/// Milliseconds of a `[d.]hh:mm:ss[.fffffff]` string, or `None` if it is not one.
pub fn parse_timespan_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let parts: Vec<&str> = text.split(':').collect();
    let [head, minutes, seconds] = parts.as_slice() else {
        return None;
    };
    let (days, hours) = match head.split_once('.') {
        Some((d, h)) => (number(d)?, number(h)?),
        None => (0, number(head)?),
    };
    let minutes = number(minutes)?;
    let (secs, frac_ms) = match seconds.split_once('.') {
        Some((s, f)) => {
            if f.is_empty() || f.len() > 7 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let padded = format!("{f:0<3}");
            (number(s)?, padded[..3].parse::<u64>().ok()?)
        }
        None => (number(seconds)?, 0),
    };
    if hours > 23 || minutes > 59 || secs > 59 {
        return None;
    }
    days.checked_mul(86_400_000)?
        .checked_add(((hours * 60 + minutes) * 60 + secs) * 1000 + frac_ms)
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dotnet_timespans() {
        assert_eq!(parse_timespan_ms("00:05:00"), Some(300_000));
        assert_eq!(parse_timespan_ms("1.02:00:00"), Some(93_600_000));
        assert_eq!(parse_timespan_ms("00:00:01.5"), Some(1_500));
    }

    #[test]
    fn refuses_other_text() {
        for bad in [
            "1:00",
            "",
            "-1",
            "24:00:00",
            "00:60:00",
            "a:b:c",
            "00:00:00.",
            "1:2:3:4",
        ] {
            assert_eq!(parse_timespan_ms(bad), None, "{bad}");
        }
    }
}
