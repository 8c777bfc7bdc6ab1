//! omx-dfsa: the placement engine.
//!
//! It decides; it never touches a process. So far: each node measures its
//! own load ([`load`]) and learns everyone else's by gossip ([`gossip`]),
//! the same gossip code runs in a discrete-event simulator of thousands of
//! nodes ([`sim`]), and [`gossip::closed_form`] gives the figures the theory
//! predicts for it.
#![forbid(unsafe_code)]

pub mod gossip;
pub mod load;
pub mod placement;
pub mod sim;
pub mod stats;
