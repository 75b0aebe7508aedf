//! Disk sources other than blank: a qcow2 import (operator vs `qemu-img convert` straight into
//! the pool) and layered clones of golden images (operator vs the direct librbd calls).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use seapath_operator::ceph::ImageOptions;

use crate::floor::Floor;
use crate::testbed::Testbed;

pub const GIB: u64 = 1 << 30;
const MIB: usize = 1 << 20;

/// xorshift64*: fast, reproducible, incompressible enough.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What the source image holds.
pub struct SourceImage {
    pub qcow2: PathBuf,
    /// Bytes of non-zero data in it.
    pub data_bytes: u64,
    pub qcow2_bytes: u64,
}

/// Writes a raw image of `size` bytes made of runs (1-8 MiB) of zeros and of random data,
/// about half each, and converts it to qcow2 with qemu-img. The raw file is removed.
pub fn make_qcow2(dir: &Path, size: u64) -> anyhow::Result<SourceImage> {
    std::fs::create_dir_all(dir)?;
    let raw = dir.join("source.raw");
    let qcow2 = dir.join("source.qcow2");
    let mut rng = Rng(0x5EA9_A7B0_0000_0001);
    let mut file = std::io::BufWriter::with_capacity(8 * MIB, std::fs::File::create(&raw)?);
    let mut buf = vec![0u8; MIB];
    let (mut written, mut data_bytes) = (0u64, 0u64);
    while written < size {
        let run = (1 + rng.next() % 8).min((size - written) / MIB as u64);
        let zero = rng.next().is_multiple_of(2);
        for _ in 0..run {
            if zero {
                buf.fill(0);
            } else {
                rng.fill(&mut buf);
                data_bytes += MIB as u64;
            }
            file.write_all(&buf)?;
        }
        written += run * MIB as u64;
    }
    file.flush()?;
    drop(file);
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()?;
    anyhow::ensure!(status.success(), "qemu-img convert to qcow2 failed");
    std::fs::remove_file(&raw)?;
    Ok(SourceImage {
        qcow2_bytes: std::fs::metadata(&qcow2)?.len(),
        qcow2,
        data_bytes,
    })
}

/// `qemu-img convert -f qcow2 -O raw SRC rbd:POOL/IMAGE` (qemu-img creates the image), in
/// seconds; the image is removed afterwards.
pub fn qemu_img_direct(tb: &Testbed, floor: &Floor, src: &Path, image: &str) -> anyhow::Result<f64> {
    let target = format!(
        "rbd:{}/{image}:conf={}:id={}",
        tb.pool,
        tb.ceph_conf.display(),
        tb.ceph_client
    );
    let t0 = Instant::now();
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(src)
        .arg(&target)
        .output()?;
    let seconds = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "qemu-img convert into {target} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    floor.cluster.io_context(&tb.pool, "")?.remove_image(image)?;
    Ok(seconds)
}

/// A golden image of `size` bytes in the default RBD namespace: sparse, with 8 MiB of data
/// written (4 MiB at the start, 4 MiB in the middle), snapshot `gold` taken and protected.
pub fn make_golden(tb: &Testbed, floor: &Floor, name: &str, size: u64) -> anyhow::Result<()> {
    let io = floor.cluster.io_context(&tb.pool, "")?;
    io.create_image(name, size, &ImageOptions::default())?;
    let mut image = io.open_image(name)?;
    let mut rng = Rng(size);
    let mut buf = vec![0u8; 4 * MIB];
    for offset in [0, (size / 2) & !(4 * MIB as u64 - 1)] {
        rng.fill(&mut buf);
        image.write_at(offset, &buf)?;
    }
    image.flush()?;
    image.snap_create("gold")?;
    image.snap_protect("gold")?;
    Ok(())
}
