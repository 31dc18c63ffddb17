//! The request-target of an HTTP/1.x request line (RFC 9112 §3.2), parsed here for every use:
//! `url.path`/`url.query` and `url.full` of spans, `http.route` of metrics, and the checks made on
//! paths (an OTLP export, say).

/// A request-target, split. The fragment, which a client should never send, is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// `scheme://authority` of an absolute-form target (a request to a proxy); None for the
    /// origin form (`/a?b`), the asterisk form (`*`) and the authority form (`host:port`).
    pub origin: Option<&'a str>,
    /// The path: `/` when an absolute-form target has none; the target itself in the asterisk
    /// and authority forms.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl<'a> Target<'a> {
    pub fn parse(target: &'a str) -> Self {
        // Byte searches: this runs for every request, on short strings, where `str`'s pattern
        // searchers cost more to set up than to run.
        let position = |s: &str, byte: u8| s.bytes().position(|b| b == byte);
        let target = position(target, b'#').map_or(target, |end| &target[..end]);
        // Only a target that does not start with '/' can be absolute: `/login?next=http://x/a`
        // and `/redirect/http://x/1` are paths, whatever they hold after the first '/'.
        let scheme_end = if target.starts_with('/') { None } else { target.find("://") };
        let (origin, rest) = match scheme_end {
            Some(i) => {
                let after = i + 3;
                let end = target[after..].find(['/', '?']).map_or(target.len(), |p| after + p);
                (Some(&target[..end]), &target[end..])
            }
            None => (None, target),
        };
        let (path, query) = match position(rest, b'?') {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let path = if path.is_empty() && origin.is_some() { "/" } else { path };
        Self { origin, path, query }
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    type Parts<'a> = (Option<&'a str>, &'a str, Option<&'a str>);

    fn parts(target: &str) -> Parts<'_> {
        let t = Target::parse(target);
        (t.origin, t.path, t.query)
    }

    #[test]
    fn every_form_of_target() {
        let cases: &[(&str, Parts<'_>)] = &[
            ("/", (None, "/", None)),
            ("/p?q#f", (None, "/p", Some("q"))),
            ("/p#f?x", (None, "/p", None)),
            ("*", (None, "*", None)),
            ("example.com:443", (None, "example.com:443", None)),
            ("http://h", (Some("http://h"), "/", None)),
            ("http://h?x=1", (Some("http://h"), "/", Some("x=1"))),
            ("https://h:8443/a?b", (Some("https://h:8443"), "/a", Some("b"))),
            ("/login?next=http://x/a/b", (None, "/login", Some("next=http://x/a/b"))),
            ("/redirect/http://x/1", (None, "/redirect/http://x/1", None)),
            ("", (None, "", None)),
        ];
        for (target, want) in cases {
            assert_eq!(parts(target), *want, "target {target:?}");
        }
    }
}
