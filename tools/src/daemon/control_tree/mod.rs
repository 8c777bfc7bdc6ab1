//! The `/proc/openMosix`-style control tree: the node's switches, every
//! node's load, and per-process controls as files, served through FUSE
//! and, for `mosctl`, through the control socket.

mod entries;
mod files;
mod fuse;

pub use files::{Caller, ControlError, ControlFiles, ProcessFigures};
pub use fuse::mount;
