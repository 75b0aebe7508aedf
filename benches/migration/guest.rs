//! The benchmark's QEMU guests: the boot-test guest of hack/lib/guest/init, booted from the
//! test bed's kernel and initramfs with its system disk in RBD, and what it writes on that disk
//! (read here through librbd): the counter (`SEAPATH-COUNT:<BOOT-ID>:<N>` at offset 0) and, in
//! dirty mode, its passes over the buffer (`SEAPATH-DIRTY:<BOOT-ID>:<PASSES>` at offset 4096).

use std::time::Instant;

use seapath_operator::api::VirtualMachine;
use seapath_operator::ceph::IoCtx;
use serde_json::json;

use crate::testbed::Testbed;

/// What a guest does besides running (kernel arguments of hack/lib/guest/init).
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    /// Counts on its disk every 0.2 s, nothing else (`seapath.counter=1`).
    Counting,
    /// Counts, and rewrites this many MiB of its RAM continuously (`seapath.dirty=MIB`).
    Dirtying { mib: u32 },
    /// Only stays up (`seapath.idle=1`): twenty of them on two CPUs cost no CPU but their boot.
    Idle,
}

impl Workload {
    fn kernel_arguments(self) -> String {
        match self {
            Workload::Counting => "seapath.counter=1".into(),
            Workload::Dirtying { mib } => format!("seapath.counter=1 seapath.dirty={mib}"),
            Workload::Idle => "seapath.idle=1".into(),
        }
    }
}

fn guest_path(name: &str) -> anyhow::Result<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
        anyhow::anyhow!(
            "{name} is not set: the test bed has no boot-test guest (hack/testbed.sh up --with-qemu)"
        )
    })
}

/// A VM of `memory_mib` running the boot-test guest, placed on `node` if it can.
/// `stopTimeoutSeconds: 2`: the guest's init ignores ACPI shutdown, so a stop always waits
/// for the timeout and then destroys it.
pub fn guest_vm(
    name: &str,
    node: &str,
    memory_mib: u32,
    workload: Workload,
) -> anyhow::Result<VirtualMachine> {
    let xml = format!(
        "<domain type='qemu'><name>x</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1 {}</cmdline></os><features><acpi/></features>\
         <on_poweroff>destroy</on_poweroff><devices><serial type='pty'/><memballoon model='none'/></devices></domain>",
        guest_path("SEAPATH_GUEST_KERNEL")?,
        guest_path("SEAPATH_GUEST_INITRD")?,
        workload.kernel_arguments(),
    );
    Ok(serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"xml": xml, "stopTimeoutSeconds": 2, "placement": {"preferredNode": node},
                 "systemDisk": {"source": {"blank": {}}, "size": "16Mi"}}
    }))?)
}

/// One line the guest wrote: its boot id and its count (counter or passes), and when the
/// harness read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub boot: String,
    pub count: u64,
    pub read_at: Instant,
}

/// Reads the guests' disks in RBD's default namespace of the pool (see `bed::NS`).
pub struct Disks(IoCtx);

impl Disks {
    pub async fn open(tb: &Testbed) -> anyhow::Result<Disks> {
        let tb = tb.clone();
        tokio::task::spawn_blocking(move || {
            let cluster = tb.ceph_cluster()?;
            Ok(Disks(cluster.io_context(&tb.pool, "")?))
        })
        .await?
    }

    /// librbd calls block: they run on this worker thread, the others go on meanwhile.
    fn read_mark(&self, vm: &str, offset: u64, prefix: &str) -> Option<Mark> {
        tokio::task::block_in_place(|| self.read_mark_blocking(vm, offset, prefix))
    }

    fn read_mark_blocking(&self, vm: &str, offset: u64, prefix: &str) -> Option<Mark> {
        let disk = self.0.open_image_read_only(&format!("system_{vm}"), None).ok()?;
        let mut buf = [0u8; 96];
        disk.read_at(offset, &mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let line = text.strip_prefix(prefix)?.lines().next()?.to_owned();
        let (boot, count) = line.rsplit_once(':')?;
        Some(Mark {
            boot: boot.to_owned(),
            count: count.parse().ok()?,
            read_at: Instant::now(),
        })
    }

    /// The counter of VM `vm`'s guest.
    pub fn counter(&self, vm: &str) -> Option<Mark> {
        self.read_mark(vm, 0, "SEAPATH-COUNT:")
    }

    /// The passes of VM `vm`'s guest over its dirty buffer.
    pub fn dirty_passes(&self, vm: &str) -> Option<Mark> {
        self.read_mark(vm, 4096, "SEAPATH-DIRTY:")
    }
}
