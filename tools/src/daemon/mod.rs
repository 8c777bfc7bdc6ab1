//! `omx daemon`: the per-node daemon.
//!
//! Loads everything first (config, map, key, load source) and refuses to
//! start on any error; then listens to other nodes, gossips this node's
//! load every step, and answers the user's commands on the control socket.
//! SIGHUP reloads the map; SIGTERM or SIGINT stops it cleanly.

mod balancer;
mod control;
mod control_tree;
mod metrics;
mod migration;
mod node;
mod settings;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use control_tree::ControlFiles;
use omx_dfsa::load::{CgroupLoad, LoadMeter, LoadProvider, MachineLoad, speed};
use omx_mfs::cluster_key::ClusterKey;
use omx_mfs::config::{KERNEL_CONTROL_TREE, LoadSource, NodeConfig};
use omx_mfs::fs::{Exporter, FsClient, Mfs, Squash, mount, server};
use omx_mfs::transport::Identity;
use omx_mfs::transport::listener::{self, ListenerSettings};
use omx_mfs::transport::outbox::Outbox;
use rand::RngExt;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

pub use migration::Migrations;
pub use node::Node;
pub use settings::Settings;

/// How long load figures are smoothed over.
pub(crate) const LOAD_SMOOTHING: Duration = Duration::from_secs(2);
/// The daemon's nice value.
const DAEMON_NICE: i32 = -10;
/// Peer connections kept open at once (an LRU beyond that).
const MAX_PEER_LINKS: usize = 64;

pub fn run(config_path: &Path, metrics_addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    let (me, map) = config.load_map()?;
    let key = ClusterKey::load(&config.key_path)?;
    let provider: Box<dyn LoadProvider> = match &config.load_source {
        LoadSource::Machine => Box::new(MachineLoad::new()),
        LoadSource::Cgroup { dirs } => Box::new(CgroupLoad::new(dirs.clone())?),
    };
    let listen_address = config
        .listen
        .or_else(|| map.address(me))
        .expect("this node is in the map");
    let speed = match config.speed {
        Some(speed) => speed,
        None => speed::calibrate(Duration::from_millis(500)),
    };
    let meter = LoadMeter::new(provider, speed, LOAD_SMOOTHING);
    // The daemon decides and serves for every process of the node: like
    // the kernel work it replaces, it must not wait behind them. Its
    // threads, started below, inherit this; keepers go back to 0.
    if let Err(e) = omx_migrate::sys::set_nice(DAEMON_NICE) {
        warn!("cannot raise the daemon's priority (nice {DAEMON_NICE}): {e}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind((listen_address, config.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {listen_address}:{}: is another omx daemon running on this node?",
                    config.port
                )
            })?;
        let control_socket = control::bind(&config.control_socket)?;
        let metrics_listener = match metrics_addr {
            Some(address) => Some(metrics::bind(address).await?),
            None => None,
        };
        let identity = Identity { node: me, key };
        let settings = Arc::new(Settings::default());
        let node = Arc::new(Node::new(me, config.clone(), map, meter, settings.clone()));
        let outbox = Outbox::new(identity.clone(), node.map_receiver(), config.port, MAX_PEER_LINKS);
        let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(256);
        let (links_tx, mut links_rx) = tokio::sync::mpsc::channel(64);
        let (fs_tx, fs_rx) = tokio::sync::mpsc::channel(64);
        let migrations = Arc::new(Migrations::new(
            me,
            config.clone(),
            node.map_receiver(),
            settings.clone(),
            node.own_report().cpus as usize,
        )?);
        let service = Arc::downgrade(&migrations);
        node.set_service_pids(Box::new(move || {
            let mut pids = vec![std::process::id()];
            if let Some(migrations) = service.upgrade() {
                pids.extend(migrations.service_pids());
            }
            pids
        }));
        let exporter = Arc::new(Exporter::new(&config.mfs.export)?);
        exporter.set_refuse_remote(config.mfs.nomfs);
        let squash = Squash {
            root: config.mfs.root_squash,
            uid: config.mfs.squash_uid,
            gid: config.mfs.squash_gid,
        };
        tokio::spawn(serve_mfs(fs_rx, exporter.clone(), squash));
        let client = Arc::new(FsClient::new(
            identity.clone(),
            node.map_receiver(),
            config.port,
            config.mfs.timeout,
            tokio::runtime::Handle::current(),
        ));
        let settings = Arc::new(ListenerSettings {
            identity,
            map: node.map_receiver(),
            check_peer_address: config.check_peer_address,
            idle_timeout: (config.gossip.interval * 30).max(Duration::from_secs(60)),
            links: links_tx,
            fs: fs_tx,
        });
        info!(
            "node {me} up: listening on {listen_address}:{}, {} nodes in the map, speed {speed}, control socket {}",
            config.port,
            node.map_len(),
            config.control_socket.display()
        );

        tokio::spawn(listener::serve(listener, settings, inbound_tx));
        let mut mfs_stats = None;
        let mounted = match &config.mfs.mount {
            Some(mountpoint) => {
                let mfs = Mfs::new(
                    me,
                    exporter.clone(),
                    client,
                    node.map_receiver(),
                    migrations.clone(),
                    squash,
                );
                mfs_stats = Some(mfs.stats());
                let threads = config.mfs.threads;
                let mounted = {
                    let mountpoint = mountpoint.clone();
                    tokio::task::spawn_blocking(move || mount::mount(mfs, &mountpoint, threads))
                        .await??
                };
                exporter.set_own_mount(mounted.dev(), mountpoint);
                Some(mounted)
            }
            None => None,
        };
        let balancer = Arc::new(balancer::Balancer::new(node.clone(), migrations.clone()));
        let control_files = Arc::new(ControlFiles::new(
            node.clone(),
            migrations.clone(),
            exporter.clone(),
            balancer.clone(),
            tokio::runtime::Handle::current(),
        ));
        let control_tree = match &config.control_tree {
            Some(fallback) => {
                let mut candidates = Vec::new();
                if Path::new(KERNEL_CONTROL_TREE).is_dir() {
                    candidates.push(PathBuf::from(KERNEL_CONTROL_TREE));
                }
                candidates.push(fallback.clone());
                let files = control_files.clone();
                Some(
                    tokio::task::spawn_blocking(move || control_tree::mount(files, &candidates))
                        .await??,
                )
            }
            None => None,
        };
        let leave = Arc::new(tokio::sync::Notify::new());
        if let Some(listener) = metrics_listener {
            tokio::spawn(metrics::serve(
                listener,
                metrics::Sources {
                    node: node.clone(),
                    migrations: migrations.clone(),
                    mfs: mfs_stats,
                },
            ));
        }
        tokio::spawn(node.clone().dispatch_inbound(inbound_rx, outbox.clone()));
        tokio::spawn(sample_load(node.clone()));
        tokio::spawn(balancer.clone().run());
        tokio::spawn(gossip(node.clone(), outbox));
        tokio::spawn(control::serve(
            control_socket,
            control::Served {
                node: node.clone(),
                migrations: migrations.clone(),
                files: control_files,
                leave: leave.clone(),
            },
        ));
        let link_migrations = migrations.clone();
        tokio::spawn(async move {
            while let Some(link) = links_rx.recv().await {
                let migrations = link_migrations.clone();
                tokio::spawn(async move { migrations.incoming_link(link).await });
            }
        });

        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    info!("SIGHUP: reloading the map from {}", config.map_path.display());
                    if let Err(e) = node.reload_map_file() {
                        error!("keeping the map in force: {e}");
                    }
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                () = leave.notified() => {
                    info!("leaving the cluster (setpe -off)");
                    break;
                }
            }
        }
        info!("node {me} stopping");
        drop(control_tree);
        drop(mounted);
        let _ = std::fs::remove_file(&config.control_socket);
        anyhow::Ok(())
    })
}

/// Serves other nodes' MFS connections.
async fn serve_mfs(
    mut connections: tokio::sync::mpsc::Receiver<listener::IncomingFs>,
    exporter: Arc<Exporter>,
    squash: Squash,
) {
    while let Some(incoming) = connections.recv().await {
        tokio::spawn(server::serve(
            incoming.channel,
            incoming.from,
            exporter.clone(),
            squash,
        ));
    }
}

/// Samples the load at the configured rate.
async fn sample_load(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(node.config().load_sample);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        match node.sample_load() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                warn!("cannot measure the load: {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// An announcement at the start (with a first load sample in it), then
/// one gossip step per interval, starting at a random phase so that the
/// nodes of a cluster do not send in lockstep.
async fn gossip(node: Arc<Node>, outbox: Outbox) {
    // The sampling task reports a failure to measure.
    let _ = node.sample_load();
    node.gossip_announce(&outbox);
    let interval = node.config().gossip.interval;
    let phase = rand::rng().random_range(0..interval.as_millis().max(1) as u64);
    tokio::time::sleep(Duration::from_millis(phase)).await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        node.gossip_step(&outbox);
        node.log_status_changes();
    }
}
