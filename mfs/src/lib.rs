//! omx-mfs: the bottom of the omx stack.
//!
//! Every node always runs this crate: it knows who the nodes of the cluster
//! are ([`cluster_map`], [`config`]), how they speak to each other
//! ([`wire`]: the one place the wire format is defined) and how a connection
//! between two nodes is authenticated and encrypted ([`transport`]).
//! On top of this layer, [`fs`] is MFS, the cluster file system.
#![deny(unsafe_code)]

pub mod cluster_key;
pub mod cluster_map;
pub mod config;
pub mod fs;
pub mod node_id;
pub mod transport;
pub mod wire;

pub use node_id::NodeId;
