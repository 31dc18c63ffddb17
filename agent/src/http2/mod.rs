//! HTTP/2 (RFC 9113), as an observer of both directions of a connection sees it.
//!
//! * [`frame`]: one direction's bytes, as captured, become frames: header blocks, DATA lengths,
//!   stream resets, GOAWAY, the header table size.
//! * [`hpack`]: header blocks decoded, for connections joined late too.
//! * `connection`: [`Http2Connection`], the public face: streams, each a request and its
//!   response, with the fields sonde reads and how the stream ended.
//! * [`grpc`]: which streams are gRPC calls, and their service, method and status as the RPC
//!   conventions name them.
//!
//! Everything here is pure, like `http/`: no I/O, no clock, no global state, bounded memory
//! whatever the bytes say.

mod connection;
pub mod frame;
pub mod grpc;
pub mod hpack;

pub use connection::{
    Ending, Http2Connection, Http2Stats, MAX_OPEN_STREAMS, RequestHeaders, ResponseHeaders, StreamExchange,
    StreamRequest, StreamResponse, StreamStarted,
};

#[cfg(test)]
mod tests;
