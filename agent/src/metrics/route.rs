//! `http.route` for RED metrics: a low-cardinality template of a request path, e.g.
//! `/users/123/orders?x=1` → `/users/{id}/orders`.
//!
//! Request paths are chosen by clients, attackers included, and every distinct route becomes a
//! metric series; so the mapping is total (any input gives a route, never a panic), its output is
//! bounded in length, and the number of distinct routes per service is capped.
//!
//! # Route of a path
//! User patterns ([`RoutePattern`]) are tried first, in order; the first match is the route, as
//! written in the pattern. Otherwise the route is the heuristic [`template`] of the path:
//!
//! 1. The query and fragment are cut at the first `?` or `#`. An absolute-form target
//!    (`http://host/a/b`) keeps only its path (`/a/b`); any other target is taken as a path. The
//!    path is split on `/` and empty segments (`//`, a trailing `/`) are dropped; none gives `/`.
//! 2. A segment becomes `{id}` when any of these holds:
//!    - it is longer than 64 bytes;
//!    - it has a byte other than printable ASCII (space, control character, raw non-ASCII), an `@`
//!      (e-mail addresses) or a `%` (percent-encoded data);
//!    - it is a UUID: 8-4-4-4-12 hex digits, or 32 hex digits without the dashes, any case;
//!    - it has a digit and no letter, only digits and `-_.:,` (`123`, `2024-01-31`, `1.5`, `12:30`);
//!    - it is at least 8 hex digits, at least one of them a decimal digit (`deadbeef01`, SHA
//!      hashes, Mongo ObjectIds); `deadbeef`, with no decimal digit, stays;
//!    - it is at least 16 bytes of letters, digits and `-_=~.`, with both a letter and a digit
//!      (tokens, base64-like ids, slugs with numbers);
//!    - it is at least 4 letters and digits, at least half of them digits (`u12345`, `ab12`).
//!
//!    Everything else stays as it is: `v1`, `api`, `html5`, `oauth2`, `page2`, `abc1`, `x86_64`,
//!    `v2.1`, `index.html`, `cafe`.
//! 3. At most 10 segments are kept, and the route is at most 256 bytes (cut before a segment); a
//!    cut path ends with `/**`, "the rest", as in patterns: `/a/b/…/j/k/l` → `/a/b/…/j/**`.
//!
//! # Patterns
//! A pattern starts with `/`; its segments are literals (matched exactly, case-sensitive; no `{`,
//! `}`, `*`, `?` or `#`), `{name}` (any one segment; name of `[A-Za-z0-9_]`), `*` (any one segment)
//! or, last only, `**` (zero or more segments). Like paths, patterns drop empty segments and a
//! trailing `/`, and paths are matched without their query: `/users//{id}/` reports `/users/{id}`
//! and matches `/users/42/?a=b`. At most 32 segments and 512 bytes.
//!
//! # Cap
//! [`Routes`] keeps the distinct heuristic routes of each service; once a service has
//! `max_per_service` of them, every new one is reported as [`OVERFLOW_ROUTE`]. Routes from user
//! patterns are not counted: the user chose them. At most 4096 services are tracked; a new service
//! beyond that clears all of them (they refill from traffic), which keeps memory bounded by
//! 4096 × `max_per_service` routes of at most 256 bytes.

use foldhash::{HashMap, HashMapExt as _, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The route every new path of a service collapses to once it has `max_per_service` distinct routes.
pub const OVERFLOW_ROUTE: &str = "/{overflow}";
/// The route of a request that may not add a route (see [`Routes::route`]) and whose template the
/// service has not had before.
pub const UNMATCHED_ROUTE: &str = "/{unmatched}";
/// Placeholder for a path segment that looks like an identifier.
pub const ID: &str = "{id}";

/// Marks a template cut short, like `**` ends a pattern.
const REST: &str = "/**";
const MAX_SEGMENTS: usize = 10;
const MAX_SEGMENT_LEN: usize = 64;
const MAX_ROUTE_LEN: usize = 256;
const MAX_PATTERN_LEN: usize = 512;
const MAX_PATTERN_SEGMENTS: usize = 32;
const MAX_SERVICES: usize = 4096;

/// Why a route pattern is rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    Empty,
    NoLeadingSlash { pattern: String },
    TooLong { pattern: String },
    TooManySegments { pattern: String },
    BadPlaceholder { pattern: String, segment: String },
    BadLiteral { pattern: String, segment: String },
    DoubleStarNotLast { pattern: String },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RouteError::*;
        let pattern = match self {
            Empty => "",
            NoLeadingSlash { pattern } | TooLong { pattern } | TooManySegments { pattern } => pattern,
            BadPlaceholder { pattern, .. } | BadLiteral { pattern, .. } | DoubleStarNotLast { pattern } => {
                pattern
            }
        };
        write!(f, "route pattern {pattern:?}: ")?;
        match self {
            Empty => f.write_str("must not be empty"),
            NoLeadingSlash { .. } => f.write_str("must start with '/'"),
            TooLong { .. } => write!(f, "longer than {MAX_PATTERN_LEN} bytes"),
            TooManySegments { .. } => write!(f, "more than {MAX_PATTERN_SEGMENTS} segments"),
            BadPlaceholder { segment, .. } => write!(
                f,
                "bad placeholder {segment:?}: a placeholder is a whole segment {{name}}, name of [A-Za-z0-9_]"
            ),
            BadLiteral { segment, .. } => write!(
                f,
                "segment {segment:?} may not contain '*', '?' or '#' ('*' and '**' must be whole segments)"
            ),
            DoubleStarNotLast { .. } => f.write_str("'**' must be the last segment"),
        }
    }
}

impl std::error::Error for RouteError {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Literal(Box<str>),
    /// `{name}` or `*`.
    One,
    /// `**`: zero or more segments.
    Rest,
}

/// A user-given route pattern, e.g. `/users/{id}/orders/{order}` or `/static/**`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    segs: Vec<Seg>,
}

impl RoutePattern {
    /// Parses a pattern (syntax in the module doc); the error names the pattern and its fault.
    pub fn parse(pattern: &str) -> Result<RoutePattern, RouteError> {
        let owned = || pattern.to_owned();
        if pattern.is_empty() {
            return Err(RouteError::Empty);
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(RouteError::TooLong { pattern: owned() });
        }
        if !pattern.starts_with('/') {
            return Err(RouteError::NoLeadingSlash { pattern: owned() });
        }
        let mut text = String::with_capacity(pattern.len());
        let mut segs = Vec::new();
        for s in pattern.split('/').filter(|s| !s.is_empty()) {
            if segs.last() == Some(&Seg::Rest) {
                return Err(RouteError::DoubleStarNotLast { pattern: owned() });
            }
            if segs.len() == MAX_PATTERN_SEGMENTS {
                return Err(RouteError::TooManySegments { pattern: owned() });
            }
            let seg = match s {
                "**" => Seg::Rest,
                "*" => Seg::One,
                _ if s.contains(['{', '}']) => {
                    let name = s.strip_prefix('{').and_then(|n| n.strip_suffix('}')).unwrap_or("");
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(RouteError::BadPlaceholder { pattern: owned(), segment: s.to_owned() });
                    }
                    Seg::One
                }
                // A path never has '?' or '#' once its query is cut: such a literal could never match.
                _ if s.contains(['*', '?', '#']) => {
                    return Err(RouteError::BadLiteral { pattern: owned(), segment: s.to_owned() });
                }
                _ => Seg::Literal(s.into()),
            };
            segs.push(seg);
            text.push('/');
            text.push_str(s);
        }
        if text.is_empty() {
            text.push('/');
        }
        Ok(RoutePattern { text, segs })
    }

    /// Whether `path` matches; a query or fragment is ignored, as are empty segments.
    pub fn matches(&self, path: &str) -> bool {
        let mut segs = segments(path);
        for seg in &self.segs {
            match seg {
                Seg::Rest => return true,
                Seg::One if segs.next().is_none() => return false,
                Seg::Literal(lit) if segs.next() != Some(&**lit) => return false,
                _ => {}
            }
        }
        segs.next().is_none()
    }

    /// The route reported for matching paths: the pattern without empty segments or trailing slash.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for RoutePattern {
    type Err = RouteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The non-empty segments of a request target's path.
fn segments(target: &str) -> impl Iterator<Item = &str> {
    crate::semconv::Target::parse(target).path.split('/').filter(|s| !s.is_empty())
}

fn is_uuid(b: &[u8]) -> bool {
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

/// Whether a (non-empty) segment looks like an identifier; the rules are in the module doc.
fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.len() > MAX_SEGMENT_LEN || b.iter().any(|&c| !c.is_ascii_graphic() || c == b'@' || c == b'%') {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    if digits == 0 {
        return false;
    }
    let only = |extra: &[u8]| b.iter().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    (letters == 0 && b.iter().all(|c| c.is_ascii_digit() || b"-_.:,".contains(c)))
        || (b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit))
        || (b.len() >= 16 && letters > 0 && only(b"-_=~."))
        || (b.len() >= 4 && digits * 2 >= b.len() && only(b""))
}

/// Writes the heuristic template of `path` into `out` (cleared first), so a caller can reuse one
/// buffer and allocate only for routes it has not seen.
fn template_into(path: &str, out: &mut String) {
    out.clear();
    let mut segs = segments(path).peekable();
    let mut kept = 0;
    while let Some(seg) = segs.next() {
        let piece = if is_id(seg) { ID } else { seg };
        // Unless this is the last segment, leave room for the `/**` a later cut appends.
        let room = if segs.peek().is_none() { MAX_ROUTE_LEN } else { MAX_ROUTE_LEN - REST.len() };
        if kept == MAX_SEGMENTS || out.len() + 1 + piece.len() > room {
            out.push_str(REST);
            return;
        }
        out.push('/');
        out.push_str(piece);
        kept += 1;
    }
    if out.is_empty() {
        out.push('/');
    }
}

/// Heuristic template of one path; see the module doc for the rules.
pub fn template(path: &str) -> String {
    let mut out = String::new();
    template_into(path, &mut out);
    out
}

/// Routes per service: user patterns first (first match wins), else the heuristic, with a
/// per-service cap on distinct heuristic routes.
#[derive(Debug)]
pub struct Routes {
    /// Each pattern with its route, allocated once and shared by all services.
    patterns: Vec<(Arc<str>, RoutePattern)>,
    max_per_service: usize,
    services: HashMap<Box<str>, HashSet<Arc<str>>>,
    overflow: Arc<str>,
    unmatched: Arc<str>,
    overflowed: u64,
    buf: String,
}

impl Routes {
    pub fn new(patterns: Vec<RoutePattern>, max_per_service: usize) -> Routes {
        Routes {
            patterns: patterns.into_iter().map(|p| (Arc::from(p.as_str()), p)).collect(),
            max_per_service,
            services: HashMap::new(),
            overflow: Arc::from(OVERFLOW_ROUTE),
            unmatched: Arc::from(UNMATCHED_ROUTE),
            overflowed: 0,
            buf: String::with_capacity(MAX_ROUTE_LEN),
        }
    }

    /// The route of `path` for service `service`: the same `Arc` each time for the same route of a
    /// service, so callers can key maps with it cheaply. Allocates only for a new route or service.
    ///
    /// With `admit` false (the request got a 4xx, or no answer) a template the service has not had
    /// before is reported as [`UNMATCHED_ROUTE`] and not kept: scanners and mistyped URLs neither
    /// mint series nor use up the cap that real routes need.
    pub fn route(&mut self, service: &str, path: &str, admit: bool) -> Arc<str> {
        if let Some((route, _)) = self.patterns.iter().find(|(_, p)| p.matches(path)) {
            return route.clone();
        }
        template_into(path, &mut self.buf);
        let routes = match self.services.get_mut(service) {
            Some(routes) => routes,
            None => {
                if self.services.len() >= MAX_SERVICES {
                    self.services.clear();
                }
                self.services.entry(service.into()).or_default()
            }
        };
        if let Some(route) = routes.get(self.buf.as_str()) {
            return route.clone();
        }
        if !admit {
            return self.unmatched.clone();
        }
        if routes.len() >= self.max_per_service {
            self.overflowed += 1;
            return self.overflow.clone();
        }
        let route: Arc<str> = Arc::from(self.buf.as_str());
        routes.insert(route.clone());
        route
    }

    /// Paths reported as [`OVERFLOW_ROUTE`] so far (all services).
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Services tracked: those with a path not matched by a user pattern since they were last forgotten.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Forgets the services `keep` says no to (no process of theirs has series any more),
    /// freeing their routes and their share of the cap.
    pub fn retain_services(&mut self, keep: impl Fn(&str) -> bool) {
        self.services.retain(|service, _| keep(service));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let long_seg = "a".repeat(65);
        let cases: &[(&str, &str)] = &[
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("?", "/"),
            ("/users/", "/users"),
            ("//users//42//", "/users/{id}"),
            ("/users/42?sort=asc#top", "/users/{id}"),
            ("/a#frag?x", "/a"),
            ("http://example.com/users/42?x=1", "/users/{id}"),
            ("https://example.com", "/"),
            ("/redirect/http://x/1", "/redirect/http:/x/{id}"),
            ("/orders/123/items/0", "/orders/{id}/items/{id}"),
            ("/days/2024-01-31", "/days/{id}"),
            ("/v/1.5/12:30/1,2/-1", "/v/{id}/{id}/{id}/{id}"),
            ("/u/550e8400-e29b-41d4-a716-446655440000", "/u/{id}"),
            ("/u/550E8400-E29B-41D4-A716-446655440000", "/u/{id}"),
            ("/u/550e8400e29b41d4a716446655440000", "/u/{id}"),
            ("/u/ABCDEFABCDEFABCDEFABCDEFABCDEFAB", "/u/{id}"),
            ("/u/550e8400-e29b-41d4-a716-44665544000g", "/u/{id}"), // not a UUID, but a long token
            ("/blob/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "/blob/{id}"),
            ("/doc/507f1f77bcf86cd799439011", "/doc/{id}"),
            ("/hex/deadbeef01/deadbeef/cafe/beef/add/a1b2c3d4", "/hex/{id}/deadbeef/cafe/beef/add/{id}"),
            ("/api/v1/v2/html5/oauth2/x86_64/v2.1", "/api/v1/v2/html5/oauth2/x86_64/v2.1"),
            ("/index.html", "/index.html"),
            ("/favicon.ico", "/favicon.ico"),
            ("/p/u12345/ab12/abc1/page2/mp3", "/p/{id}/{id}/abc1/page2/mp3"),
            ("/users/jane.doe@example.com", "/users/{id}"),
            ("/q/caf%C3%A9", "/q/{id}"),
            ("/t/aGVsbG8gd29ybGQ1234/my-post-title-2024", "/t/{id}/{id}"),
            ("/how-to-train-your-dragon", "/how-to-train-your-dragon"),
            ("/a b/c\td/é", "/{id}/{id}/{id}"),
            (&format!("/x/{long_seg}/y"), "/x/{id}/y"),
            ("/1/2/3/4/5/6/7/8/9/10", "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}"),
            ("/a/b/c/d/e/f/g/h/i/j/k/l", "/a/b/c/d/e/f/g/h/i/j/**"),
            ("/a/b/c/d/e/f/g/h/i/j/", "/a/b/c/d/e/f/g/h/i/j"),
        ];
        for (path, want) in cases {
            assert_eq!(template(path), *want, "path {path:?}");
        }
    }

    #[test]
    fn long_templates_cut_at_a_segment() {
        let seg = "s".repeat(60); // 61 bytes with its '/'
        let path = format!("/{seg}/{seg}/{seg}/{seg}/{seg}");
        assert_eq!(template(&path), format!("/{seg}/{seg}/{seg}/{seg}/**"));
        // A last segment may use the room a cut would need for `/**`.
        let last = "e".repeat(256 - 4 * 61 - 1);
        let path = format!("/{seg}/{seg}/{seg}/{seg}/{last}");
        assert_eq!(template(&path), path);
        assert_eq!(template(&format!("{path}e")), format!("/{seg}/{seg}/{seg}/{seg}/**"));
    }

    #[test]
    fn pattern_errors() {
        let long = format!("/{}", "a".repeat(MAX_PATTERN_LEN));
        let many = "/a".repeat(MAX_PATTERN_SEGMENTS + 1);
        let placeholder =
            |p: &str, s: &str| RouteError::BadPlaceholder { pattern: p.into(), segment: s.into() };
        let literal = |p: &str, s: &str| RouteError::BadLiteral { pattern: p.into(), segment: s.into() };
        let cases: &[(&str, RouteError, &str)] = &[
            ("", RouteError::Empty, "must not be empty"),
            ("users/x", RouteError::NoLeadingSlash { pattern: "users/x".into() }, "must start with '/'"),
            (&long, RouteError::TooLong { pattern: long.clone() }, "longer than 512 bytes"),
            (&many, RouteError::TooManySegments { pattern: many.clone() }, "more than 32 segments"),
            ("/a/{}", placeholder("/a/{}", "{}"), "bad placeholder \"{}\""),
            ("/{a-b}", placeholder("/{a-b}", "{a-b}"), "bad placeholder \"{a-b}\""),
            ("/x{id}", placeholder("/x{id}", "x{id}"), "bad placeholder \"x{id}\""),
            ("/{id", placeholder("/{id", "{id"), "bad placeholder \"{id\""),
            ("/*.js", literal("/*.js", "*.js"), "segment \"*.js\" may not contain"),
            ("/s?q=1", literal("/s?q=1", "s?q=1"), "segment \"s?q=1\" may not contain"),
            ("/**/a", RouteError::DoubleStarNotLast { pattern: "/**/a".into() }, "must be the last"),
            ("/**/**", RouteError::DoubleStarNotLast { pattern: "/**/**".into() }, "must be the last"),
        ];
        for (pattern, want, fragment) in cases {
            let err = RoutePattern::parse(pattern).unwrap_err();
            assert_eq!(&err, want);
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("route pattern {pattern:?}: ")), "{msg}");
            assert!(msg.contains(fragment), "{msg}");
        }
        assert_eq!(
            RoutePattern::parse("users/x").unwrap_err().to_string(),
            r#"route pattern "users/x": must start with '/'"#
        );
        assert!("/a".repeat(MAX_PATTERN_SEGMENTS).parse::<RoutePattern>().is_ok());
    }

    #[test]
    fn pattern_matching() {
        for (pattern, text) in [("//users//{id}/", "/users/{id}"), ("/", "/"), ("//", "/"), ("/**/", "/**")] {
            assert_eq!(RoutePattern::parse(pattern).unwrap().as_str(), text);
        }
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("/", &["/", "", "//?x"], &["/a"]),
            (
                "/users/{id}",
                &["/users/42/", "//users//42?x#f", "http://h/users/42"],
                &["/users", "/users/4/x", "/Users/4"],
            ),
            ("/a/*/c", &["/a/b/c"], &["/a/c", "/a/b/c/d"]),
            ("/o/{order_ID2}/x", &["/o/7/x"], &["/o/7"]),
            ("/static/**", &["/static", "/static/js/app.js"], &["/statics/x", "/"]),
            ("/**", &["/", "/anything/at/all"], &[]),
        ];
        for (pattern, yes, no) in cases {
            let p: RoutePattern = pattern.parse().unwrap();
            assert_eq!(p.as_str(), *pattern);
            for path in *yes {
                assert!(p.matches(path), "{pattern:?} should match {path:?}");
            }
            for path in *no {
                assert!(!p.matches(path), "{pattern:?} should not match {path:?}");
            }
        }
    }

    fn patterns(list: &[&str]) -> Vec<RoutePattern> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn routes_patterns_win_and_arcs_are_shared() {
        let mut r = Routes::new(patterns(&["/users/{name}", "/users/**"]), 10);
        assert_eq!(&*r.route("svc", "/users/42", true), "/users/{name}");
        assert_eq!(&*r.route("svc", "/users/42/x", true), "/users/**");
        assert!(Arc::ptr_eq(&r.route("a", "/users/1", true), &r.route("b", "/users/2", true)));
        assert_eq!(r.services(), 0, "pattern routes track nothing");
        let first = r.route("svc", "/orders/1", true);
        assert_eq!(&*first, "/orders/{id}");
        assert!(Arc::ptr_eq(&first, &r.route("svc", "/orders/2?x", true)));
        assert_eq!(r.services(), 1);
    }

    #[test]
    fn failed_requests_do_not_add_routes() {
        let mut r = Routes::new(patterns(&["/fixed/*"]), 2);
        for scan in ["/aaaa", "/aaab", "/wp-admin", "/.env"] {
            assert_eq!(&*r.route("a", scan, false), UNMATCHED_ROUTE);
        }
        assert_eq!(r.overflowed(), 0, "not an overflow: nothing was kept");
        // Real routes still have the whole cap; once known, a failure keeps its route.
        assert_eq!(&*r.route("a", "/users/1", true), "/users/{id}");
        assert_eq!(&*r.route("a", "/users/2", false), "/users/{id}");
        assert_eq!(&*r.route("a", "/fixed/9", false), "/fixed/*", "patterns always apply");
        assert_eq!(&*r.route("a", "/orders", true), "/orders");
    }

    #[test]
    fn routes_cap() {
        let mut r = Routes::new(patterns(&["/fixed/*"]), 2);
        assert_eq!(&*r.route("a", "/x", true), "/x");
        assert_eq!(&*r.route("a", "/y", true), "/y");
        let over = r.route("a", "/z", true);
        assert_eq!(&*over, OVERFLOW_ROUTE);
        assert!(Arc::ptr_eq(&over, &r.route("a", "/w", true)));
        assert_eq!(r.overflowed(), 2);
        // Known routes and user-pattern routes still come through.
        assert_eq!(&*r.route("a", "/x/", true), "/x");
        assert_eq!(&*r.route("a", "/fixed/1", true), "/fixed/*");
        assert_eq!(&*r.route("a", "/fixed/2", true), "/fixed/*");
        // Another service has its own cap.
        assert_eq!(&*r.route("b", "/z", true), "/z");
        assert_eq!(r.services(), 2);
        assert_eq!(r.overflowed(), 2);
        r.retain_services(|s| s != "a");
        assert_eq!(r.services(), 1);
        assert_eq!(&*r.route("a", "/z", true), "/z");

        let mut none = Routes::new(Vec::new(), 0);
        assert_eq!(&*none.route("a", "/", true), OVERFLOW_ROUTE);
        assert_eq!(none.overflowed(), 1);
    }

    #[test]
    fn routes_service_bound() {
        let mut r = Routes::new(Vec::new(), 1);
        for i in 0..MAX_SERVICES {
            r.route(&format!("s{i}"), "/", true);
        }
        assert_eq!(r.services(), MAX_SERVICES);
        r.route("s0", "/", true);
        assert_eq!(r.services(), MAX_SERVICES);
        r.route("new", "/", true);
        assert_eq!(r.services(), 1);
    }

    #[test]
    fn never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALPHABET: &[u8] = b"///////?#{}**@%:.-_= aZbY0123456789fF\t\xff\xc3\xa9";
        let mut r = Routes::new(patterns(&["/a/{x}/**", "/*/b"]), 50);
        for i in 0..5000 {
            // Mostly short strings, which parse as patterns now and then; some long ones, which get cut.
            let len = (next() % if i % 4 == 0 { 700 } else { 40 }) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let n = next();
                    if n % 16 == 0 { n as u8 } else { ALPHABET[(n >> 8) as usize % ALPHABET.len()] }
                })
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let t = template(&s);
            assert!(t.starts_with('/') && t.len() <= MAX_ROUTE_LEN && !t.contains("//"), "{s:?} → {t:?}");
            assert!(t == "/" || !t.ends_with('/'), "{s:?} → {t:?}");
            assert!(t.split('/').filter(|x| !x.is_empty()).count() <= MAX_SEGMENTS + 1);
            assert_eq!(template(&t), t, "templates are fixed points");
            let route = r.route(&format!("svc{}", i % 7), &s, true);
            assert!(route.len() <= MAX_ROUTE_LEN);
            if let Ok(p) = RoutePattern::parse(&s) {
                assert!(p.as_str().starts_with('/'));
                p.matches(&s);
                p.matches(&t);
            }
        }
        assert!(r.services() <= 7);
    }
}
