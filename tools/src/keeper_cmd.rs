//! The hidden keeper commands: the daemon starts one keeper process per
//! migrated process (`omx __home-keeper` at home, `omx __remote-keeper`
//! where it runs), handing it its channels as inherited descriptors.

use std::net::{IpAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use omx_mfs::NodeId;
use omx_mfs::cluster_key::ClusterKey;
use omx_mfs::transport::Identity;
use omx_migrate::keeper::home::{self, Destination, HomeArgs};
use omx_migrate::keeper::remote::{self, RemoteArgs};
use omx_migrate::sys::inherited_fd;

#[derive(Args, Debug)]
pub struct HomeKeeperArgs {
    #[arg(long)]
    pid: i32,
    #[arg(long)]
    session: u64,
    /// This node.
    #[arg(long)]
    node: NodeId,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    to: NodeId,
    #[arg(long)]
    address: IpAddr,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// The root of what this node exports as /mfs/<node> (`mfs.export`):
    /// the process's files beneath it are reopened where it runs (DFSA).
    #[arg(long, default_value = "/")]
    export: PathBuf,
    /// Where MFS is mounted on this node (`mfs.mount`).
    #[arg(long, default_value = "/mfs")]
    mfs: PathBuf,
    /// The placement engine asked for this move (the target may refuse it).
    #[arg(long)]
    from_placement: bool,
    #[arg(long)]
    daemon_fd: i32,
}

#[derive(Args, Debug)]
pub struct RemoteKeeperArgs {
    #[arg(long)]
    node: NodeId,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    home_node: NodeId,
    #[arg(long)]
    home_address: IpAddr,
    #[arg(long)]
    port: u16,
    #[arg(long)]
    home_pid: i32,
    #[arg(long)]
    session: u64,
    #[arg(long)]
    sender: NodeId,
    #[arg(long)]
    guest_uid: u32,
    #[arg(long)]
    guest_gid: u32,
    #[arg(long)]
    guest_root: PathBuf,
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// Where MFS is mounted on this node (`mfs.mount`): the process's
    /// files are reopened under it (DFSA).
    #[arg(long, default_value = "/mfs")]
    mfs: PathBuf,
    #[arg(long)]
    daemon_fd: i32,
    #[arg(long)]
    link_fd: i32,
}

fn identity(node: NodeId, key: &std::path::Path) -> anyhow::Result<Identity> {
    Ok(Identity {
        node,
        key: ClusterKey::load(key)?,
    })
}

pub fn run_home(args: HomeKeeperArgs) -> anyhow::Result<ExitCode> {
    let daemon = UnixStream::from(inherited_fd(args.daemon_fd).context("the daemon channel")?);
    let code = home::run(
        HomeArgs {
            pid: args.pid,
            session: args.session,
            identity: identity(args.node, &args.key)?,
            destination: Destination {
                node: args.to,
                address: args.address,
                port: args.port,
            },
            spin: Duration::from_micros(args.spin_us),
            export: args.export,
            mfs: args.mfs,
            from_placement: args.from_placement,
        },
        daemon,
    );
    Ok(ExitCode::from(code as u8))
}

/// Keepers keep the daemon's priority: they do the work the kernel did in
/// openMosix (moving a process, serving its forwarded calls) while the
/// node's jobs run (at their priority, a move out of a busy node of 1/6
/// CPU kept the process frozen for seconds). The guest itself runs at a
/// process's priority (`omx_migrate::keeper::remote`).
pub fn run_remote(args: RemoteKeeperArgs) -> anyhow::Result<ExitCode> {
    let daemon = UnixStream::from(inherited_fd(args.daemon_fd).context("the daemon channel")?);
    let link = TcpStream::from(inherited_fd(args.link_fd).context("the link")?);
    let code = remote::run(
        RemoteArgs {
            identity: identity(args.node, &args.key)?,
            home_node: args.home_node,
            home_address: args.home_address,
            port: args.port,
            home_pid: args.home_pid,
            session: args.session,
            sender: args.sender,
            guest_uid: args.guest_uid,
            guest_gid: args.guest_gid,
            empty_root: args.guest_root,
            spin: Duration::from_micros(args.spin_us),
            mfs: args.mfs,
        },
        link,
        daemon,
    );
    Ok(ExitCode::from(code as u8))
}
