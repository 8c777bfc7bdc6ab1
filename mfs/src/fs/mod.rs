//! MFS, the cluster file system: every node mounts `/mfs`, where
//! `/mfs/<N>/` is node N's exported tree, the same for every process on
//! every node at every moment.
//!
//! - [`export`]: the owner's side, operations on this node's files run as
//!   the caller ([`creds`]); it lets other nodes keep attributes under
//!   [`attr_grants`].
//! - [`server`]: serves other nodes' MFS connections with it.
//! - [`client`]: asks other nodes, keeping what it read ahead of a file
//!   while the owner's read [`lease`] lasts, and letting large writes go
//!   on behind their program while its write lease lasts
//!   ([`write_behind`]).
//! - [`fuse`]: the tree the kernel sees, dispatching each operation to the
//!   owner; [`mount`] puts it at `/mfs`.

pub mod attr_grants;
pub mod client;
pub mod creds;
pub mod export;
pub mod fuse;
pub mod kept_attrs;
#[allow(unsafe_code)]
pub mod lease;
pub mod look_ahead;
pub mod mount;
pub mod mounts;
pub mod server;
pub mod stats;
#[allow(unsafe_code)]
mod sys;
pub mod write_behind;
mod writeback;

pub use client::FsClient;
pub use creds::Squash;
pub use export::Exporter;
pub use fuse::{Mfs, Place, Stationary, Whereabouts, inode_number};
pub use mount::Mounted;
pub use stats::FsStats;
