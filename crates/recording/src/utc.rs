//! UTC calendar formatting of nanosecond Unix timestamps, for file names and the
//! `recordings ls` table. Small enough to own (days-to-civil, Howard Hinnant's
//! algorithm) rather than pull in a date crate for two formats.

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Broken-down UTC time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    nanos: u64,
}

fn civil(ts_ns: u64) -> Civil {
    let secs = ts_ns / NANOS_PER_SEC;
    let nanos = ts_ns % NANOS_PER_SEC;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month: u32::try_from(month).unwrap_or(1),
        day: u32::try_from(day).unwrap_or(1),
        hour: rem / 3_600,
        minute: rem % 3_600 / 60,
        second: rem % 60,
        nanos,
    }
}

/// `2024-05-01T12:34:56.789Z`: RFC 3339, UTC, milliseconds (truncated).
pub fn rfc3339_ms(ts_ns: u64) -> String {
    let c = civil(ts_ns);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanos / 1_000_000
    )
}

/// `20240501T123456.123456789Z`: the fixed-width form used in file names, so names
/// sort by time as plain strings.
pub fn compact_utc(ts_ns: u64) -> String {
    let c = civil(ts_ns);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:09}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.nanos
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T23:59:59.999999999Z (a leap day in a century leap year).
        assert_eq!(
            compact_utc(951_868_799_999_999_999),
            "20000229T235959.999999999Z"
        );
        // 2024-05-01T12:34:56.789Z
        assert_eq!(
            rfc3339_ms(1_714_566_896_789_000_123),
            "2024-05-01T12:34:56.789Z"
        );
        assert_eq!(
            compact_utc(1_714_566_896_789_000_123),
            "20240501T123456.789000123Z"
        );
        // The far end of u64 nanoseconds does not panic.
        assert_eq!(rfc3339_ms(u64::MAX), "2554-07-21T23:34:33.709Z");
    }
}
