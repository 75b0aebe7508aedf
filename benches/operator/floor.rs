//! The floor: the librbd and libvirt calls that make a VM, made directly from this process
//! through the operator's safe layers, without Kubernetes: create the group, create the image,
//! write its metadata, add it to the group, define and start the domain on a test-driver node.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use seapath_operator::ceph::{CloneFormat, Cluster, ImageOptions, IoCtx};
use seapath_operator::domain_xml::{
    self, CephAccess, CephAuthRef, DevicePolicy, DiskBus, DiskSpec, DomainOwner,
};
use seapath_operator::libvirt::{DefineOptions, Hypervisor};
use uuid::Uuid;

use crate::testbed::Testbed;
use crate::timeline::base_xml;

/// RBD namespace of the floor's images.
pub const NAMESPACE: &str = "floor";
const SIZE: u64 = 16 << 20;

pub struct Floor {
    pub cluster: Cluster,
    pub io: IoCtx,
    hvs: Vec<Hypervisor>,
    tb: Testbed,
}

/// Per-VM results of a floor run.
#[derive(Default)]
pub struct FloorRun {
    /// From the start of the run to the VM's domain running, µs.
    pub latency: Vec<i64>,
    /// The Ceph calls of the VM, µs.
    pub ceph: Vec<i64>,
    /// define + start, µs.
    pub libvirt: Vec<i64>,
}

fn micros(d: Duration) -> i64 {
    d.as_micros() as i64
}

impl Floor {
    pub fn connect(tb: &Testbed) -> anyhow::Result<Floor> {
        let cluster = tb.ceph_cluster()?;
        let pool = cluster.io_context(&tb.pool, "")?;
        if !pool.namespace_exists(NAMESPACE)? {
            pool.create_namespace(NAMESPACE)?;
        }
        let io = cluster.io_context(&tb.pool, NAMESPACE)?;
        // Own connections: with the test driver each connection is its own simulated host, so
        // these domains never meet the agents'.
        let hvs = tb
            .nodes
            .iter()
            .map(|(_, uri)| Hypervisor::connect(uri))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Floor {
            cluster,
            io,
            hvs,
            tb: tb.clone(),
        })
    }

    /// The domain XML and the system image metadata the operator would write for `name`
    /// (rendered before the clock starts: it is CPU work of microseconds).
    fn prepare(&self, name: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
        let image = format!("system_{name}");
        let uid = Uuid::new_v4().to_string();
        let base = base_xml(name, 16);
        let owner = DomainOwner {
            namespace: NAMESPACE.into(),
            name: name.into(),
            uid: uid.clone(),
        };
        let rendered = domain_xml::render_domain_xml_with_uuid(
            &base,
            &format!("{NAMESPACE}_{name}"),
            Uuid::new_v4(),
            &[DiskSpec {
                pool: self.tb.pool.clone(),
                namespace: Some(NAMESPACE.into()),
                image,
                bus: DiskBus::Virtio,
            }],
            &CephAccess {
                monitors: vec![(self.tb.mon_host.clone(), self.tb.mon_port)],
                auth: self.tb.secret_uuid.map(|secret_uuid| CephAuthRef {
                    username: "libvirt".into(),
                    secret_uuid,
                }),
            },
            &DevicePolicy::default(),
            Some(&owner),
        )?;
        let metadata = vec![
            ("_k8s_owner_uid".to_owned(), uid),
            ("_k8s_owner".to_owned(), format!("{NAMESPACE}/{name}")),
            ("_disk_bus".to_owned(), "virtio".to_owned()),
            ("_stop_timeout".to_owned(), "5".to_owned()),
            ("_base_xml".to_owned(), base),
            ("xml".to_owned(), rendered.xml.clone()),
            ("vm_name".to_owned(), name.to_owned()),
        ];
        Ok((rendered.xml, metadata))
    }

    /// The Ceph part of one VM: group, image (blank, or a clone of `golden`), metadata, group
    /// membership.
    fn make_storage(
        &self,
        name: &str,
        metadata: &[(String, String)],
        golden: Option<(&IoCtx, &str, &str)>,
    ) -> anyhow::Result<()> {
        let image = format!("system_{name}");
        self.io.group_create(name)?;
        match golden {
            None => self.io.create_image(&image, SIZE, &ImageOptions::default())?,
            Some((parent_io, parent, snap)) => parent_io.clone_image(
                parent,
                snap,
                &self.io,
                &image,
                &ImageOptions {
                    clone_format: Some(CloneFormat::V2),
                    ..Default::default()
                },
            )?,
        }
        {
            let opened = self.io.open_image(&image)?;
            for (k, v) in metadata {
                opened.metadata_set(k, v)?;
            }
        }
        self.io.group_image_add(name, &self.io, &image)?;
        Ok(())
    }

    /// Makes `n` VMs named `{prefix}{i}` with `threads` workers (the controller's default
    /// concurrency is 16); VM i goes to hypervisor i mod 2.
    pub fn run(&self, prefix: &str, n: usize, threads: usize) -> anyhow::Result<FloorRun> {
        let prepared = (0..n)
            .map(|i| {
                let name = format!("{prefix}{i}");
                self.prepare(&name).map(|(xml, meta)| (name, xml, meta))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let next = AtomicUsize::new(0);
        let out = Mutex::new(FloorRun::default());
        let errors = Mutex::new(Vec::<anyhow::Error>::new());
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, n.max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, xml, meta)) = prepared.get(i) else {
                            break;
                        };
                        let hv = &self.hvs[i % self.hvs.len()];
                        let t0 = Instant::now();
                        let result = self.make_storage(name, meta, None).and_then(|()| {
                            let t1 = Instant::now();
                            hv.define_domain(xml, DefineOptions::default())?.start()?;
                            Ok(t1)
                        });
                        match result {
                            Ok(t1) => {
                                let end = Instant::now();
                                let mut out = out.lock().expect("floor results");
                                out.latency.push(micros(end - start));
                                out.ceph.push(micros(t1 - t0));
                                out.libvirt.push(micros(end - t1));
                            }
                            Err(e) => errors.lock().expect("floor errors").push(e),
                        }
                    }
                });
            }
        });
        if let Some(e) = errors.into_inner().expect("floor errors").into_iter().next() {
            return Err(e.context("floor run"));
        }
        Ok(out.into_inner().expect("floor results"))
    }

    /// The Ceph part of a VM whose disk is a layered clone of `golden@snap` (default RBD
    /// namespace), µs.
    pub fn clone_storage(&self, name: &str, golden: &str, snap: &str) -> anyhow::Result<i64> {
        let (_, meta) = self.prepare(name)?;
        let parent_io = self.cluster.io_context(&self.tb.pool, "")?;
        let t0 = Instant::now();
        self.make_storage(name, &meta, Some((&parent_io, golden, snap)))?;
        Ok(micros(t0.elapsed()))
    }
}
