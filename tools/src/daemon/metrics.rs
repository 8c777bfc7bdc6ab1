//! Prometheus metrics (`omx daemon --metrics-addr ADDR`, off by default):
//! every node's load and memory as this node sees them, the age of that
//! information, migrations in and out, forwarded calls, and MFS operations
//! and bytes. Served at `/metrics` over plain HTTP; anything else is 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use omx_mfs::fs::FsStats;
use omx_mfs::wire::NodeState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{Migrations, Node};

/// What the metrics are taken from.
#[derive(Clone)]
pub struct Sources {
    pub node: Arc<Node>,
    pub migrations: Arc<Migrations>,
    /// MFS's counters, if this node mounts MFS.
    pub mfs: Option<Arc<FsStats>>,
}

/// A request head larger than this is refused.
const MAX_REQUEST_HEAD: usize = 8192;
/// A client that does not send its request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!("cannot serve metrics on {address}: choose another --metrics-addr")
    })
}

pub async fn serve(listener: TcpListener, sources: Sources) {
    if let Ok(address) = listener.local_addr() {
        info!("metrics at http://{address}/metrics");
    }
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let sources = sources.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &sources).await {
                        debug!("metrics client {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("no request in time"))??;
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", render(sources)),
        (Some("GET"), Some(_)) => ("404 Not Found", "only /metrics is served\n".into()),
        _ => ("400 Bad Request", "send GET /metrics\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request up to its blank line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics text, taken now.
pub fn render(sources: &Sources) -> String {
    let mut registry = Registry::with_prefix("omx");
    let view = sources.node.view();

    let node_family = || Family::<Labels, FloatGauge>::default();
    let load = node_family();
    let speed = node_family();
    let cpus = node_family();
    let util = node_family();
    let mem_free = node_family();
    let mem_raw_free = node_family();
    let mem_total = node_family();
    let up = node_family();
    let age = node_family();
    for node in &view.nodes {
        let labels = vec![("node".to_string(), node.node.to_string())];
        let is_up = matches!(node.state, NodeState::Local | NodeState::Up);
        up.get_or_create(&labels).set(if is_up { 1.0 } else { 0.0 });
        if let Some(ms) = node.age_ms {
            age.get_or_create(&labels).set(ms as f64 / 1000.0);
        }
        if let Some(report) = &node.load {
            load.get_or_create(&labels).set(f64::from(report.load));
            speed.get_or_create(&labels).set(f64::from(report.speed));
            cpus.get_or_create(&labels).set(f64::from(report.cpus));
            util.get_or_create(&labels)
                .set(f64::from(report.util_permille) / 1000.0);
            mem_free.get_or_create(&labels).set(report.mem_free as f64);
            mem_raw_free
                .get_or_create(&labels)
                .set(report.mem_raw_free as f64);
            mem_total
                .get_or_create(&labels)
                .set(report.mem_total as f64);
        }
    }
    registry.register(
        "node_load",
        "openMosix load of each node (100 = one busy reference CPU)",
        load,
    );
    registry.register(
        "node_speed",
        "speed of each node's CPUs (10000 = reference)",
        speed,
    );
    registry.register("node_cpus", "CPUs of each node", cpus);
    registry.register(
        "node_utilisation",
        "CPU utilisation of each node, 0 to 1",
        util,
    );
    registry.register(
        "node_memory_available_bytes",
        "memory available to processes on each node",
        mem_free,
    );
    registry.register(
        "node_memory_raw_free_bytes",
        "memory not used at all (page cache counted as used) on each node",
        mem_raw_free,
    );
    registry.register("node_memory_total_bytes", "memory of each node", mem_total);
    registry.register("node_up", "1 if the node is up as this node sees it", up);
    registry.register(
        "gossip_age_seconds",
        "age of the freshest load information about each node",
        age,
    );

    let counters = sources.migrations.counters();
    let counter = |value: &AtomicU64| {
        let counter: Counter = Counter::default();
        counter.inc_by(value.load(Ordering::Relaxed));
        counter
    };
    registry.register(
        "migrations_out",
        "moves of this node's processes to other nodes",
        counter(&counters.moves_out),
    );
    registry.register(
        "migrations_home",
        "this node's processes that came home",
        counter(&counters.moves_home),
    );
    registry.register(
        "migrations_in",
        "guests (processes of other nodes) taken in",
        counter(&counters.guests_in),
    );
    registry.register(
        "forwarded_calls",
        "system calls of this node's processes forwarded home",
        counter(&counters.forwarded_calls),
    );
    let gauge = |value: usize| {
        let gauge: Gauge = Gauge::default();
        gauge.set(value as i64);
        gauge
    };
    registry.register(
        "processes_away",
        "this node's processes running elsewhere",
        gauge(sources.migrations.away().len()),
    );
    registry.register(
        "guests",
        "processes of other nodes running here",
        gauge(sources.migrations.guest_list().len()),
    );

    if let Some(mfs) = &sources.mfs {
        let ops = Family::<Labels, Counter>::default();
        ops.get_or_create(&vec![("owner".into(), "local".into())])
            .inc_by(mfs.local_ops.load(Ordering::Relaxed));
        ops.get_or_create(&vec![("owner".into(), "remote".into())])
            .inc_by(mfs.remote_ops.load(Ordering::Relaxed));
        registry.register(
            "mfs_operations",
            "MFS operations served by this node's daemon, by where the file is",
            ops,
        );
        registry.register(
            "mfs_read_bytes",
            "bytes read through MFS by this node's daemon (not passthrough)",
            counter(&mfs.bytes_read),
        );
        registry.register(
            "mfs_written_bytes",
            "bytes written through MFS by this node's daemon (not passthrough)",
            counter(&mfs.bytes_written),
        );
        registry.register(
            "mfs_written_behind_bytes",
            "of those, bytes of writes that returned before the owner answered them, under its \
             write lease",
            counter(&mfs.bytes_written_behind),
        );
    }

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
