//! RFC 3339 timestamps with milliseconds, as EMQX prints them, and parsing of the time
//! filters (epoch seconds, epoch milliseconds, or RFC 3339).

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds as `2023-09-15T09:36:20.871+00:00`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` to Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = s.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let mut ms = String::from(&digits[..digits.len().min(3)]);
        while ms.len() < 3 {
            ms.push('0');
        }
        frac_ms = ms.parse().ok()?;
    }
    let offset_secs = match s.get(i..)? {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let v = oh * 3600 + om * 60;
            if &rest[..1] == "-" {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let secs = days(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(secs * 1000 + frac_ms)
}

/// A time filter value: epoch seconds, epoch milliseconds (13+ digits), or RFC 3339.
pub fn parse_filter_time(v: &str) -> Option<i64> {
    if let Ok(n) = v.parse::<i64>() {
        return Some(if n.abs() >= 100_000_000_000 {
            n
        } else {
            n * 1000
        });
    }
    parse_rfc3339(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_emqx() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(rfc3339(1_694_770_580_871), "2023-09-15T09:36:20.871+00:00");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000+00:00");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for ms in [0, 1_694_770_580_871, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339("2023-09-15T17:36:20+08:00"),
            Some(1_694_770_580_000)
        );
        assert_eq!(
            parse_rfc3339("2023-09-15T09:36:20.8Z"),
            Some(1_694_770_580_800)
        );
        assert_eq!(parse_rfc3339("2023-09-15T09:36:20é1234"), None);
        for bad in [
            "",
            "2023-09-15",
            "2023-13-01T00:00:00Z",
            "2023-09-15T09:36:20",
            "x023-09-15T09:36:20Z",
            "2023-09-15T09:36:20.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn filter_times() {
        assert_eq!(parse_filter_time("1694770580"), Some(1_694_770_580_000));
        assert_eq!(parse_filter_time("1694770580871"), Some(1_694_770_580_871));
        assert_eq!(
            parse_filter_time("2023-09-15T09:36:20.871Z"),
            Some(1_694_770_580_871)
        );
        assert_eq!(parse_filter_time("yesterday"), None);
    }
}
