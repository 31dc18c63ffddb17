//! Span assembly: a finished HTTP exchange, the connection it ran on and the process's resource
//! become one OTel span, with its trace context taken from `traceparent` when the caller sent one.
pub mod assemble;
pub mod clock;
pub mod model;
pub mod shed;

pub use assemble::{AssembleOptions, AssembleStats, Assembler};
