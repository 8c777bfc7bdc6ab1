//! omx-mfs: the bottom of the omx stack.
//!
//! Every node always runs this crate: it knows who the nodes of the cluster
//! are ([`cluster_map`], [`config`]), how they speak to each other
//! ([`wire`]: the one place the wire format is defined) and how a connection
//! between two nodes is authenticated and encrypted ([`transport`]).
//! The MFS cluster file system itself arrives on top of this layer.
#![forbid(unsafe_code)]

pub mod cluster_key;
pub mod cluster_map;
pub mod config;
pub mod node_id;
pub mod transport;
pub mod wire;

pub use node_id::NodeId;
