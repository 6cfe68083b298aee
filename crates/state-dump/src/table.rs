//! Aligned text tables and small formatting helpers for human output.

use cairn_core::{CodecIdentity, StateKind, BINCODE_V1, TTL_ENCODING_PREFIX};

/// Renders rows under headers as left-aligned columns separated by two spaces (the last
/// column is not padded).
pub(crate) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate().take(cols) {
            if i + 1 < cols {
                let pad = width.get(i).copied().unwrap_or(0);
                s.push_str(&format!("{cell:<pad$}  "));
            } else {
                s.push_str(cell);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A codec identity in short form: `type@vN`, plus the encoding when it is not the default;
/// a state with a TTL gets `(ttl)` (`(ttl, encoding)` when the inner encoding is not the
/// default).
pub(crate) fn codec(id: &CodecIdentity) -> String {
    let base = format!("{}@v{}", id.type_name, id.version);
    match id.encoding.strip_prefix(TTL_ENCODING_PREFIX) {
        Some(BINCODE_V1) => format!("{base} (ttl)"),
        Some(inner) => format!("{base} (ttl, {inner})"),
        None if id.encoding == BINCODE_V1 => base,
        None => format!("{base} ({})", id.encoding),
    }
}

/// A state kind in lowercase.
pub(crate) fn kind(k: StateKind) -> &'static str {
    match k {
        StateKind::Value => "value",
        StateKind::List => "list",
        StateKind::Map => "map",
        StateKind::Reducing => "reducing",
        StateKind::Aggregating => "aggregating",
    }
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time.
pub(crate) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(time(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn codecs_in_short_form() {
        let id = |encoding: &str| CodecIdentity {
            encoding: encoding.into(),
            type_name: "u64".into(),
            version: 2,
            schema: None,
        };
        assert_eq!(codec(&id(BINCODE_V1)), "u64@v2");
        assert_eq!(codec(&id("json")), "u64@v2 (json)");
        assert_eq!(codec(&id("cairn-ttl1+bincode1-fixint-le")), "u64@v2 (ttl)");
        assert_eq!(codec(&id("cairn-ttl1+json")), "u64@v2 (ttl, json)");
    }

    #[test]
    fn tables_align() {
        let t = render(
            &["A", "LONG"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
    }
}
