//! The caller's `tracestate` (W3C Trace Context §3.3), which goes on with its trace: to the span
//! it parents, and to that span's children. Checked before it is carried on: list members with
//! their optional whitespace trimmed and empty ones dropped (§3.3.1.1), keys and values checked
//! by opentelemetry's `TraceState`, and the whole value discarded when any member is invalid, a
//! key repeats, or there are more than 32 members — as the specification says a parser must.

use opentelemetry::trace::TraceState;

/// At most this many list members (§3.3.1.1).
const MAX_MEMBERS: usize = 32;

/// The `tracestate` to carry on (empty: none). `Err(())` when the caller sent one that is
/// invalid, for the caller to count.
pub fn carried(raw: Option<&str>) -> Result<String, ()> {
    match raw {
        None => Ok(String::new()),
        Some(raw) => parse(raw).map(|state| state.header()).ok_or(()),
    }
}

fn parse(raw: &str) -> Option<TraceState> {
    let members: Vec<(&str, &str)> = raw
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
        .filter(|member| !member.is_empty())
        .map(|member| member.split_once('='))
        .collect::<Option<_>>()?;
    if members.len() > MAX_MEMBERS {
        return None;
    }
    // A value is printable ASCII other than ',' and '=', and does not end in a space
    // (§3.3.1.3.2); `TraceState` checks only the two separators.
    let printable =
        |v: &str| !v.is_empty() && !v.ends_with(' ') && v.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if !members.iter().all(|(_, value)| printable(value)) {
        return None;
    }
    // "Keys MUST be unique" (§3.3.1.2): with one repeated, which one holds cannot be known.
    if members.iter().enumerate().any(|(i, (key, _))| members[..i].iter().any(|(k, _)| k == key)) {
        return None;
    }
    TraceState::from_key_value(members).ok()
}

#[cfg(test)]
mod tests {
    use super::carried;

    #[test]
    fn valid_states_go_on_normalised() {
        assert_eq!(carried(None), Ok(String::new()));
        assert_eq!(carried(Some("rojo=00f067aa0ba902b7")).as_deref(), Ok("rojo=00f067aa0ba902b7"));
        // Optional whitespace around members and empty members (two joined header lines).
        assert_eq!(carried(Some("a=1 ,\tb=x y, ,")).as_deref(), Ok("a=1,b=x y"));
        assert_eq!(carried(Some("t61rcWkgMzE@vendor=x,1a-2f@ada=7")).as_deref(), Err(&()), "uppercase key");
        assert_eq!(
            carried(Some("tenant@vendor=x,1a-2f@ada=7")).as_deref(),
            Ok("tenant@vendor=x,1a-2f@ada=7")
        );
        let many: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(carried(Some(&many.join(","))).is_ok());
    }

    #[test]
    fn invalid_states_are_discarded_whole() {
        for bad in [
            "novalue",
            "a=1,b",
            "a=",
            "a=1,a=2",
            "A=1",
            "a=caf\u{e9}",
            "a=tab\there",
            &(0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(","),
        ] {
            assert_eq!(carried(Some(bad)), Err(()), "{bad:?}");
        }
    }
}
