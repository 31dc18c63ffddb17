//! Empty on purpose: this lets the agent list the kernel crate as a build-dependency, so that edits to
//! the programs rebuild it. The programs themselves are the `sonde` binary of this crate (`main.rs`).
#![no_std]
