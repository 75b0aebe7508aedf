//! The same snapshot operations without the operator: direct librbd calls through the operator's
//! safe layer (`seapath_operator::ceph`) from this process, and the `rbd` CLI as one process per
//! operation, on images of their own RBD namespaces. Work is split in lanes, one per image,
//! each lane's operations one after the other and the lanes at once: the shape of the operator's
//! work (it serialises the Ceph work on one VM's disks and runs VMs concurrently).

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use seapath_operator::ceph::{Cluster, ImageOptions, IoCtx, SnapNamespace};

use crate::testbed::Testbed;

/// `(image, snapshot)` operations of one lane, in order.
pub type Lane = Vec<(String, String)>;

/// Per-operation latencies and the wall time of a run, µs.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub latency: Vec<i64>,
    pub wall: i64,
}

#[derive(Clone, Copy, Debug)]
pub enum SnapOp {
    Create,
    Rollback,
    Remove,
}

impl SnapOp {
    fn cli_verb(self) -> &'static str {
        match self {
            SnapOp::Create => "create",
            SnapOp::Rollback => "rollback",
            SnapOp::Remove => "rm",
        }
    }
}

/// Runs every lane on its own thread, timing each operation.
fn run_lanes(lanes: &[Lane], op: impl Fn(&str, &str) -> anyhow::Result<()> + Sync) -> anyhow::Result<Run> {
    let out = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::<anyhow::Error>::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for lane in lanes {
            let (op, out, errors) = (&op, &out, &errors);
            s.spawn(move || {
                for (image, snap) in lane {
                    let t0 = Instant::now();
                    match op(image, snap) {
                        Ok(()) => out
                            .lock()
                            .expect("lane results")
                            .push(t0.elapsed().as_micros() as i64),
                        Err(e) => {
                            errors
                                .lock()
                                .expect("lane errors")
                                .push(e.context(format!("{image}@{snap}")));
                            return;
                        }
                    }
                }
            });
        }
    });
    let wall = start.elapsed().as_micros() as i64;
    if let Some(e) = errors.into_inner().expect("lane errors").into_iter().next() {
        return Err(e);
    }
    Ok(Run {
        latency: out.into_inner().expect("lane results"),
        wall,
    })
}

/// One librbd operation per snapshot: open the image, the call, close (what a one-shot tool
/// and the operator's reconcile both do: neither keeps images open between operations).
pub fn librbd(io: &IoCtx, lanes: &[Lane], op: SnapOp) -> anyhow::Result<Run> {
    run_lanes(lanes, |image, snap| {
        let mut opened = io.open_image(image)?;
        match op {
            SnapOp::Create => opened.snap_create(snap)?,
            SnapOp::Rollback => opened.snap_rollback(snap)?,
            SnapOp::Remove => opened.snap_remove(snap)?,
        }
        Ok(())
    })
}

/// One `rbd snap create|rollback|rm POOL/NAMESPACE/IMAGE@SNAP` process per snapshot.
pub fn cli(tb: &Testbed, namespace: &str, lanes: &[Lane], op: SnapOp) -> anyhow::Result<Run> {
    // The test bed's client; its keyring is named in the conf file.
    let common = [
        "--conf".to_owned(),
        tb.ceph_conf.display().to_string(),
        "--id".to_owned(),
        tb.ceph_client.clone(),
    ];
    run_lanes(lanes, |image, snap| {
        let out = Command::new("rbd")
            .args(&common)
            .args(["snap", op.cli_verb(), "--no-progress"])
            .arg(format!("{}/{namespace}/{image}@{snap}", tb.pool))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("running rbd: {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "rbd snap {} failed: {}",
            op.cli_verb(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    })
}

/// Creates RBD namespace `namespace` (if missing) and a blank image of `size` bytes for each of
/// `images`, with the options the operator uses for a blank disk.
pub fn make_images(
    cluster: &Cluster,
    pool: &str,
    namespace: &str,
    images: &[String],
    size: u64,
) -> anyhow::Result<IoCtx> {
    let root = cluster.io_context(pool, "")?;
    if !root.namespace_exists(namespace)? {
        root.create_namespace(namespace)?;
    }
    let io = cluster.io_context(pool, namespace)?;
    for image in images {
        io.create_image(image, size, &ImageOptions::default())?;
    }
    Ok(io)
}

/// User snapshots on `images` of `namespace`, all together.
pub fn count_snaps(
    cluster: &Cluster,
    pool: &str,
    namespace: &str,
    images: &[String],
) -> anyhow::Result<usize> {
    let io = cluster.io_context(pool, namespace)?;
    let mut n = 0;
    for image in images {
        n += io
            .open_image_read_only(image, None)?
            .snap_list()?
            .iter()
            .filter(|s| s.namespace == SnapNamespace::User)
            .count();
    }
    Ok(n)
}
