//! The daemon's state: this node's map, its gossip table and its load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use omx_dfsa::gossip::{
    GossipNode, GossipParams, GossipTransport, Membership, Millis, NodeStatus, Rumor,
    default_down_after,
};
use omx_dfsa::load::{LoadError, LoadMeter};
use omx_mfs::NodeId;
use omx_mfs::cluster_map::ClusterMap;
use omx_mfs::config::NodeConfig;
use omx_mfs::transport::listener::Inbound;
use omx_mfs::transport::outbox::Outbox;
use omx_mfs::wire::{
    ClusterView, GossipEntry, GossipPacket, LoadReport, NodeState, NodeView, PeerMessage,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::settings::Settings;

/// Everything the daemon's tasks share.
pub struct Node {
    me: NodeId,
    config: NodeConfig,
    started: Instant,
    map: watch::Sender<Arc<ClusterMap>>,
    gossip: Mutex<GossipNode<LoadReport>>,
    meter: Mutex<LoadMeter>,
    settings: Arc<Settings>,
    /// Last status logged per node, to log changes only.
    logged_status: Mutex<HashMap<NodeId, NodeStatus>>,
    /// Held while a map is being installed, so that two installs (SIGHUP
    /// and `setpe`) cannot interleave.
    installing: Mutex<()>,
}

impl Node {
    pub fn new(
        me: NodeId,
        config: NodeConfig,
        map: ClusterMap,
        meter: LoadMeter,
        settings: Arc<Settings>,
    ) -> Node {
        let params = gossip_params(&config, map.len());
        let gossip = GossipNode::new(me, Arc::new(Membership::new(map.node_ids())), params);
        let (map, _) = watch::channel(Arc::new(map));
        Node {
            me,
            config,
            started: Instant::now(),
            map,
            gossip: Mutex::new(gossip),
            meter: Mutex::new(meter),
            settings,
            logged_status: Mutex::new(HashMap::new()),
            installing: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn speed(&self) -> u32 {
        self.meter.lock().expect("meter lock").speed()
    }

    /// Sets this node's speed: its load figures and what it gossips change
    /// at once.
    pub fn set_speed(&self, speed: u32) {
        self.meter.lock().expect("meter lock").set_speed(speed);
    }

    pub fn map_receiver(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.map.subscribe()
    }

    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    /// Whether gossip says `node` is up (this node counts as up).
    pub fn is_up(&self, node: NodeId) -> bool {
        node == self.me
            || self
                .gossip
                .lock()
                .expect("gossip lock")
                .status(self.now(), node)
                == Some(NodeStatus::Up)
    }

    pub fn map_len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Milliseconds on this daemon's monotonic clock.
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// Names omx's own processes on this node, which the load counts by
    /// the CPU they use.
    pub fn set_service_pids(&self, pids: omx_dfsa::load::ServicePids) {
        self.meter.lock().expect("meter lock").set_service(pids);
    }

    pub fn sample_load(&self) -> Result<(), LoadError> {
        self.meter
            .lock()
            .expect("meter lock")
            .update(Instant::now())
    }

    /// Sends this node's load and window to one node, unless the node is
    /// quiet (then the others stop hearing of it, and after a while count
    /// it as down).
    pub fn gossip_step(&self, outbox: &Outbox) {
        if self.settings.get().quiet {
            return;
        }
        let own = self.own_report();
        let mut transport = OutboxTransport { outbox };
        let mut rng = rand::rng();
        self.gossip
            .lock()
            .expect("gossip lock")
            .step(self.now(), own, &mut rng, &mut transport);
    }

    /// Announces this node to a few members (all of a small cluster), as
    /// a starting daemon does; they answer with what they know. Nothing if
    /// the node is quiet.
    pub fn gossip_announce(&self, outbox: &Outbox) {
        if self.settings.get().quiet {
            return;
        }
        let own = self.own_report();
        let mut transport = OutboxTransport { outbox };
        let mut rng = rand::rng();
        let told = self.gossip.lock().expect("gossip lock").announce(
            self.now(),
            own,
            &mut rng,
            &mut transport,
        );
        debug!("announced this node to {} members", told.len());
    }

    /// This node's load, with its switches: whether it takes guests and
    /// whether automatic moves away from it are off.
    pub fn own_report(&self) -> LoadReport {
        let switches = self.settings.get();
        LoadReport {
            accepts_guests: !switches.block,
            guests_stay: switches.stay,
            ..self.meter.lock().expect("meter lock").report()
        }
    }

    /// What gossip says of the other nodes that are up: their load and
    /// how old that news is, in milliseconds.
    pub fn others_loads(&self) -> Vec<(NodeId, LoadReport, u64)> {
        let now = self.now();
        let gossip = self.gossip.lock().expect("gossip lock");
        gossip
            .members()
            .ids()
            .iter()
            .copied()
            .filter(|n| *n != self.me && gossip.status(now, *n) == Some(NodeStatus::Up))
            .filter_map(|n| gossip.entry(now, n).map(|(age, load)| (n, *load, age)))
            .collect()
    }

    /// Takes in messages from other nodes until the listener stops.
    /// Answers to gossip (to a node that just started) leave through
    /// `outbox`.
    pub async fn dispatch_inbound(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        outbox: Outbox,
    ) {
        while let Some(Inbound { from, message }) = inbound.recv().await {
            match message {
                PeerMessage::Gossip(packet) => self.receive_gossip(from, packet, &outbox),
                // The listener hands these over before they get here.
                PeerMessage::OpenLink(_) | PeerMessage::OpenFs => {}
            }
        }
    }

    fn receive_gossip(&self, from: NodeId, packet: GossipPacket, outbox: &Outbox) {
        // A packet leads with its sender's own entry; anything else is not
        // what our peers send.
        if packet.entries.first().map(|e| e.node) != Some(from.get()) {
            warn!(
                "ignoring gossip from node {from}: it does not start with node {from}'s own entry"
            );
            return;
        }
        let rumors: Vec<Rumor<LoadReport>> = packet
            .entries
            .into_iter()
            .filter_map(|entry| {
                Some(Rumor {
                    node: NodeId::new(entry.node)?,
                    age: Millis::from(entry.age_ms),
                    payload: entry.load,
                })
            })
            .collect();
        debug!("gossip from node {from}: {} entries", rumors.len());
        let mut gossip = self.gossip.lock().expect("gossip lock");
        if self.settings.get().quiet {
            gossip.receive(self.now(), rumors);
            return;
        }
        let own = self.own_report();
        let mut transport = OutboxTransport { outbox };
        if gossip.receive_and_welcome(self.now(), from, rumors, own, &mut transport) {
            debug!("answered node {from}, which was not up here");
        }
    }

    /// Logs nodes that went down or came (back) up since the last call.
    pub fn log_status_changes(&self) {
        let now = self.now();
        let gossip = self.gossip.lock().expect("gossip lock");
        let mut logged = self.logged_status.lock().expect("status lock");
        let down_after = gossip.params().down_after;
        for node in gossip
            .members()
            .ids()
            .iter()
            .copied()
            .filter(|n| *n != self.me)
        {
            let Some(status) = gossip.status(now, node) else {
                continue;
            };
            let previous = logged.insert(node, status);
            match (previous, status) {
                (Some(before), after) if before == after => {}
                (_, NodeStatus::Up) => info!("node {node} is up"),
                (_, NodeStatus::Down) => warn!(
                    "node {node} is down: no news of it for over {:.1} s",
                    down_after as f64 / 1000.0
                ),
                (_, NodeStatus::Unknown) => {}
            }
        }
        logged.retain(|node, _| gossip.members().slot(*node).is_some());
    }

    /// This node's view of the cluster, for `omx status`.
    pub fn view(&self) -> ClusterView {
        let now = self.now();
        let map = self.map();
        let gossip = self.gossip.lock().expect("gossip lock");
        let own = self.own_report();
        let nodes = map
            .nodes()
            .map(|(node, address)| {
                let entry = gossip.entry(now, node);
                let state = if node == self.me {
                    NodeState::Local
                } else {
                    match gossip.status(now, node) {
                        Some(NodeStatus::Up) => NodeState::Up,
                        Some(NodeStatus::Down) => NodeState::Down,
                        _ => NodeState::Unknown,
                    }
                };
                let (age_ms, load) = if node == self.me {
                    (Some(0), Some(own))
                } else {
                    (entry.map(|(age, _)| age), entry.map(|(_, load)| *load))
                };
                NodeView {
                    node: node.get(),
                    address: address.to_string(),
                    state,
                    age_ms,
                    load,
                }
            })
            .collect();
        ClusterView {
            this_node: self.me.get(),
            gossip_interval_ms: self.config.gossip.interval.as_millis() as u32,
            down_after_ms: gossip.params().down_after,
            nodes,
            away: Vec::new(),
            guests: Vec::new(),
        }
    }

    /// Installs a new map if this node is in it at the same address.
    /// Returns the number of nodes in it.
    pub fn install_map(&self, map: ClusterMap, origin: &str) -> Result<usize, String> {
        let _installing = self.installing.lock().expect("install lock");
        let current = self.map();
        let here = current
            .address(self.me)
            .expect("this node is in the map in force");
        match map.address(self.me) {
            None => {
                return Err(format!(
                    "{origin}: this node ({}) is not in it: a node cannot install a map without itself",
                    self.me
                ));
            }
            Some(address) if address != here => {
                return Err(format!(
                    "{origin}: it moves this node ({}) from {here} to {address}: change addresses by restarting the daemon",
                    self.me
                ));
            }
            Some(_) => {}
        }
        let added: Vec<String> = map
            .node_ids()
            .into_iter()
            .filter(|n| !current.contains(*n))
            .map(|n| n.to_string())
            .collect();
        let removed: Vec<String> = current
            .node_ids()
            .into_iter()
            .filter(|n| !map.contains(*n))
            .map(|n| n.to_string())
            .collect();
        let len = map.len();
        {
            let mut gossip = self.gossip.lock().expect("gossip lock");
            gossip.set_members(Arc::new(Membership::new(map.node_ids())));
            gossip.set_params(gossip_params(&self.config, len));
        }
        self.map.send_replace(Arc::new(map));
        info!(
            "installed the map from {origin}: {len} nodes; joined: [{}], left: [{}]",
            added.join(" "),
            removed.join(" ")
        );
        Ok(len)
    }

    /// Re-reads the map file named in the config.
    pub fn reload_map_file(&self) -> Result<usize, String> {
        let map = ClusterMap::load(&self.config.map_path).map_err(|e| e.to_string())?;
        self.install_map(map, &self.config.map_path.display().to_string())
    }
}

fn gossip_params(config: &NodeConfig, nodes: usize) -> GossipParams {
    let interval = config.gossip.interval.as_millis() as Millis;
    GossipParams {
        window: config.gossip.window,
        down_after: config
            .gossip
            .down_after
            .map(|d| d.as_millis() as Millis)
            .unwrap_or_else(|| default_down_after(nodes, config.gossip.window, interval)),
    }
}

/// Sends gossip messages through the outbox.
struct OutboxTransport<'a> {
    outbox: &'a Outbox,
}

impl GossipTransport<LoadReport> for OutboxTransport<'_> {
    fn send(&mut self, _from: NodeId, to: NodeId, rumors: Vec<Rumor<LoadReport>>) {
        let entries = rumors
            .into_iter()
            .map(|r| GossipEntry {
                node: r.node.get(),
                age_ms: u32::try_from(r.age).unwrap_or(u32::MAX),
                load: r.payload,
            })
            .collect();
        if let Err(e) = self
            .outbox
            .send(to, PeerMessage::Gossip(GossipPacket { entries }))
        {
            debug!("gossip to node {to} dropped: {e}");
        }
    }
}
