//! HTTP/2 (RFC 9113), as an observer of both directions of a connection sees it.
//!
//! * [`hpack`]: header blocks decoded, for connections joined late too.

pub mod hpack;
