//! Imports of `path` and `http` sources into a temporary RBD image.
//!
//! - raw: streamed with librbd writes in large blocks; all-zero 4 MiB chunks are skipped, so
//!   the image stays sparse. Over HTTP the body goes straight into RBD when the server gives a
//!   Content-Length (else it is downloaded to a scratch file first).
//! - qcow2: converted by `qemu-img convert -n --target-is-zero -f qcow2 -O raw SRC <rbd>`
//!   (qemu-img's rbd driver, package qemu-block-extra). Over HTTP the file is downloaded to a
//!   scratch file first: qemu's curl driver needs Range requests and reports errors poorly. A
//!   downloaded qcow2 may not name a backing or external data file (it could make qemu-img read
//!   any file of the controller into the disk).
//!
//! Before any byte is written the pool's free space is checked against the bytes the import
//! may write (the allocated size of a file, the Content-Length of a download).

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::error::{Result, StorageError};
use super::plan::{self, QemuImageInfo};
use super::rbd::{self, CephContext};
use super::{StorageContext, blocking, http};
use crate::api::{ImageFormat, ImportProgress};
use crate::ceph::{Image, IoCtx};

/// Bytes read and written per librbd call (librbd spreads one call over the objects it spans).
const BLOCK: usize = 16 << 20;
/// Granularity of the zero detection: the default RBD object size.
const CHUNK: usize = 4 << 20;
/// Minimum time between two progress reports.
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends throttled progress reports of one image.
pub(crate) struct Progress {
    tx: mpsc::UnboundedSender<ImportProgress>,
    image: String,
    total: Option<u64>,
    last: Option<Instant>,
}

impl Progress {
    pub fn new(tx: mpsc::UnboundedSender<ImportProgress>, image: &str) -> Progress {
        Progress {
            tx,
            image: image.to_string(),
            total: None,
            last: None,
        }
    }

    fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
        self.last = None;
    }

    fn send(&mut self, done: u64) {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let _ = self.tx.send(ImportProgress {
            image: self.image.clone(),
            bytes_done: to_i64(done),
            bytes_total: self.total.map(to_i64),
        });
        self.last = Some(Instant::now());
    }

    /// Reports at most once per [`PROGRESS_INTERVAL`] (the first call always).
    fn update(&mut self, done: u64) {
        if self.last.is_none_or(|l| l.elapsed() >= PROGRESS_INTERVAL) {
            self.send(done);
        }
    }

    /// Always reports (the end of a phase).
    fn finish(&mut self, done: u64) {
        self.send(done);
    }
}

/// Where an import writes: the temporary image, and how qemu-img reaches it.
pub(crate) struct Target<'a> {
    pub ctx: &'a StorageContext,
    pub io: IoCtx,
    pub tmp: String,
    /// The final image name (for messages and progress).
    pub image: String,
    pub cancel: Arc<AtomicBool>,
}

impl Target<'_> {
    fn failed(&self, from: &str, detail: impl Into<String>, retryable: bool) -> StorageError {
        StorageError::ImportFailed {
            image: self.io.spec(&self.image),
            from: from.to_string(),
            detail: detail.into(),
            retryable,
        }
    }

    async fn check_space(&self, needed: u64, what: &str) -> Result<()> {
        let cluster = self.ctx.cluster.clone();
        let pool = self.ctx.pool.clone();
        let available = blocking(move || rbd::pool_available(&cluster, &pool)).await?;
        plan::check_pool_space(&self.ctx.pool, needed, available, what)
    }

    async fn create(&self, size: u64) -> Result<()> {
        let io = self.io.clone();
        let tmp = self.tmp.clone();
        blocking(move || rbd::create_blank(&io, &tmp, size)).await
    }

    /// The qemu-img target: the temporary image.
    fn qemu_target(&self) -> String {
        qemu_rbd_target(
            self.io.pool(),
            self.io.namespace(),
            &self.tmp,
            &self.ctx.ceph_conf_path,
            &self.ctx.ceph_client_id,
        )
    }
}

/// A qemu-img target naming an RBD image through qemu's rbd driver, as a JSON spec (no escaping
/// of `:` or `@` needed, unlike the `rbd:` filename syntax).
pub fn qemu_rbd_target(
    pool: &str,
    namespace: &str,
    image: &str,
    ceph_conf: &Path,
    client_id: &str,
) -> String {
    let spec = serde_json::json!({
        "driver": "raw",
        "file": {
            "driver": "rbd",
            "pool": pool,
            "namespace": namespace,
            "image": image,
            "conf": ceph_conf.to_string_lossy(),
            "user": client_id,
        }
    });
    format!("json:{spec}")
}

/// The program a qcow2 import runs, looked up in `PATH` (the container image has it in
/// `/usr/bin`, see hack/image.sh).
pub const QEMU_IMG: &str = "qemu-img";

/// The arguments of `qemu-img info` on a qcow2 source (its sizes and external files, as JSON).
pub fn qemu_img_info_args(source: &Path) -> Vec<OsString> {
    vec![
        "info".into(),
        "--output=json".into(),
        "-f".into(),
        "qcow2".into(),
        source.as_os_str().to_owned(),
    ]
}

/// The arguments of the `qemu-img convert` of a qcow2 source into `target` (an existing, all-zero
/// raw image, see [`qemu_rbd_target`]), printing its progress.
pub fn qemu_img_convert_args(source: &Path, target: &str) -> Vec<OsString> {
    vec![
        "convert".into(),
        "-n".into(),
        "--target-is-zero".into(),
        "-p".into(),
        "-W".into(),
        "-f".into(),
        "qcow2".into(),
        "-O".into(),
        "raw".into(),
        source.as_os_str().to_owned(),
        target.into(),
    ]
}

/// Imports a file readable by the controller.
pub(crate) async fn import_path(
    target: &Target<'_>,
    path: &Path,
    format: ImageFormat,
    progress: &mut Progress,
) -> Result<()> {
    let from = format!("file {}", path.display());
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StorageError::SourceNotFound {
                what: from,
                detail: "no such file on the controller".to_string(),
            });
        }
        Err(e) => return Err(target.failed(&from, format!("cannot read it: {e}"), false)),
    };
    if !meta.is_file() {
        return Err(target.failed(&from, "it is not a regular file", false));
    }
    import_file(target, path, &from, format, true, progress).await
}

/// Imports a local file (a `path` source, or a finished download).
async fn import_file(
    target: &Target<'_>,
    path: &Path,
    from: &str,
    format: ImageFormat,
    allow_external_files: bool,
    progress: &mut Progress,
) -> Result<()> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| target.failed(from, format!("cannot read it: {e}"), false))?;
    match format {
        ImageFormat::Qcow2 => {
            let info = qemu_img_info(path)
                .await
                .map_err(|e| target.failed(from, format!("it is not a qcow2 image: {e}"), false))?;
            if info.format != "qcow2" {
                return Err(target.failed(from, format!("it is a {} image, not qcow2", info.format), false));
            }
            if let Some(data_file) = &info.data_file {
                return Err(target.failed(
                    from,
                    format!("it keeps its data in an external file ({data_file}), which is not supported"),
                    false,
                ));
            }
            if let (Some(backing), false) = (&info.backing_file, allow_external_files) {
                return Err(target.failed(
                    from,
                    format!(
                        "it names a backing file ({backing}); a downloaded image must be \
                         self-contained (qemu-img convert -O qcow2 it first)"
                    ),
                    false,
                ));
            }
            let needed = info.actual_size.unwrap_or(info.virtual_size);
            target.check_space(needed, &format!("importing {from}")).await?;
            target.create(info.virtual_size).await?;
            qemu_img_convert(target, path, from, &info, progress).await
        }
        ImageFormat::Raw => {
            let len = meta.len();
            if len == 0 {
                return Err(target.failed(from, "the file is empty", false));
            }
            let mut head = [0u8; 4];
            let n = tokio::fs::File::open(path)
                .await
                .map_err(|e| target.failed(from, format!("cannot open it: {e}"), false))?
                .read(&mut head)
                .await
                .map_err(|e| target.failed(from, format!("cannot read it: {e}"), false))?;
            if plan::looks_like_qcow2(&head[..n]) {
                return Err(target.failed(
                    from,
                    "it is a qcow2 image, but the source says raw: set format qcow2",
                    false,
                ));
            }
            // Only allocated blocks can hold data; holes are skipped anyway.
            let needed = (meta.blocks() * 512).min(len);
            target.check_space(needed, &format!("importing {from}")).await?;
            target.create(len).await?;
            progress.set_total(Some(len));
            progress.update(0);
            let io = target.io.clone();
            let tmp = target.tmp.clone();
            let path = path.to_path_buf();
            let cancel = target.cancel.clone();
            let tx_progress = Progress {
                tx: progress.tx.clone(),
                image: progress.image.clone(),
                total: Some(len),
                last: progress.last,
            };
            let from_owned = from.to_string();
            let image_spec = target.io.spec(&target.image);
            blocking(move || {
                let mut writer = RawWriter::open(&io, &tmp, tx_progress, cancel)?;
                let mut file = std::fs::File::open(&path).map_err(|e| StorageError::ImportFailed {
                    image: image_spec.clone(),
                    from: from_owned.clone(),
                    detail: format!("cannot open it: {e}"),
                    retryable: false,
                })?;
                let mut buf = vec![0u8; BLOCK];
                loop {
                    let n = read_full(&mut file, &mut buf).map_err(|e| StorageError::ImportFailed {
                        image: image_spec.clone(),
                        from: from_owned.clone(),
                        detail: format!("reading it failed: {e}"),
                        retryable: true,
                    })?;
                    if n == 0 {
                        break;
                    }
                    writer.write_block(&buf[..n])?;
                }
                writer.finish()
            })
            .await
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Sequential writer into a fresh (all-zero) image: skips all-zero chunks, merges runs of data
/// chunks into one librbd write.
struct RawWriter {
    image: Image,
    offset: u64,
    progress: Progress,
    cancel: Arc<AtomicBool>,
}

impl RawWriter {
    fn open(io: &IoCtx, tmp: &str, progress: Progress, cancel: Arc<AtomicBool>) -> Result<RawWriter> {
        let image = io.open_image(tmp).ctx(|| format!("opening {}", io.spec(tmp)))?;
        Ok(RawWriter {
            image,
            offset: 0,
            progress,
            cancel,
        })
    }

    fn write_block(&mut self, data: &[u8]) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(StorageError::internal("import cancelled"));
        }
        // Chunks are aligned on image offsets (blocks are multiples of CHUNK except the last).
        let mut run: Option<(usize, usize)> = None;
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + CHUNK).min(data.len());
            if plan::is_all_zero(&data[pos..end]) {
                if let Some((s, e)) = run.take() {
                    self.write_run(s, &data[s..e])?;
                }
            } else {
                run = Some(match run {
                    Some((s, _)) => (s, end),
                    None => (pos, end),
                });
            }
            pos = end;
        }
        if let Some((s, e)) = run {
            self.write_run(s, &data[s..e])?;
        }
        self.offset += data.len() as u64;
        self.progress.update(self.offset);
        Ok(())
    }

    fn write_run(&mut self, start: usize, data: &[u8]) -> Result<()> {
        let at = self.offset + start as u64;
        self.image.write_at(at, data).ctx(|| {
            format!(
                "writing {} bytes at offset {at} of {}",
                data.len(),
                self.image.spec()
            )
        })
    }

    fn finish(mut self) -> Result<()> {
        self.image
            .flush()
            .ctx(|| format!("flushing {}", self.image.spec()))?;
        self.progress.finish(self.offset);
        Ok(())
    }
}

/// Runs qemu-img; on failure, the last lines it printed on stderr. With `progress`, its `-p`
/// output is turned into progress reports of `total` bytes.
async fn run_qemu_img(
    args: &[OsString],
    keyring: Option<&Path>,
    mut progress: Option<(&mut Progress, u64)>,
) -> Result<Vec<u8>, String> {
    let mut command = Command::new(QEMU_IMG);
    // qemu-img's rbd driver finds its key through ceph.conf or this variable, never through
    // the controller's own librados options.
    if let Some(keyring) = keyring {
        command.env("CEPH_KEYRING", keyring);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "qemu-img is not installed on the controller (Debian packages qemu-utils and \
                 qemu-block-extra)"
                    .to_string()
            } else {
                format!("cannot run qemu-img: {e}")
            }
        })?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading qemu-img's output: {e}"))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if let Some((p, total)) = progress.as_mut() {
            let tail = String::from_utf8_lossy(&out[out.len().saturating_sub(64)..]).into_owned();
            if let Some(pct) = plan::parse_qemu_progress(&tail) {
                p.update((pct / 100.0 * *total as f64) as u64);
            }
            // Only the tail matters for progress.
            if out.len() > 1 << 16 {
                out.drain(..out.len() - 64);
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for qemu-img: {e}"))?;
    let err = err_task.await.unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    let text = String::from_utf8_lossy(&err);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines[lines.len().saturating_sub(3)..].join("; ");
    Err(if last.is_empty() {
        format!("qemu-img failed ({status})")
    } else {
        last
    })
}

async fn qemu_img_info(path: &Path) -> Result<QemuImageInfo, String> {
    let out = run_qemu_img(&qemu_img_info_args(path), None, None).await?;
    plan::parse_qemu_img_info(&out)
}

async fn qemu_img_convert(
    target: &Target<'_>,
    path: &Path,
    from: &str,
    info: &QemuImageInfo,
    progress: &mut Progress,
) -> Result<()> {
    progress.set_total(Some(info.virtual_size));
    progress.update(0);
    let args = qemu_img_convert_args(path, &target.qemu_target());
    let keyring = target.ctx.ceph_keyring.as_deref();
    run_qemu_img(&args, keyring, Some((&mut *progress, info.virtual_size)))
        .await
        .map_err(|e| target.failed(from, format!("qemu-img convert: {e}"), false))?;
    progress.finish(info.virtual_size);
    Ok(())
}

/// Imports an image served over HTTP(S).
pub(crate) async fn import_http(
    target: &Target<'_>,
    url: &str,
    format: ImageFormat,
    scratch: PathBuf,
    progress: &mut Progress,
) -> Result<()> {
    let from = plan::redact_url(url);
    let mut download = http::get(url)
        .await
        .map_err(|e| target.failed(&from, e.message, e.retryable))?;
    if let Some(ct) = &download.content_type
        && ct.to_ascii_lowercase().starts_with("text/html")
    {
        return Err(target.failed(
            &from,
            format!("the server answered with a web page ({ct}), not a disk image"),
            false,
        ));
    }
    if let Some(len) = download.content_length {
        if len == 0 {
            return Err(target.failed(&from, "the server sent an empty file", false));
        }
        target.check_space(len, &format!("downloading {from}")).await?;
    }
    match (format, download.content_length) {
        (ImageFormat::Raw, Some(len)) => stream_raw(target, &from, &mut download, len, progress).await,
        _ => {
            let result = async {
                download_to_file(target, &from, &mut download, &scratch, progress).await?;
                import_file(target, &scratch, &from, format, false, progress).await
            }
            .await;
            if let Err(e) = tokio::fs::remove_file(&scratch).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %scratch.display(), error = %e, "cannot remove download scratch file");
            }
            result
        }
    }
}

/// Streams a raw body of `len` bytes into the temporary image (a writer thread takes blocks
/// from a small channel: the download waits when RBD is slower).
async fn stream_raw(
    target: &Target<'_>,
    from: &str,
    download: &mut http::Download,
    len: u64,
    progress: &mut Progress,
) -> Result<()> {
    target.create(len).await?;
    progress.set_total(Some(len));
    progress.update(0);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let io = target.io.clone();
    let tmp = target.tmp.clone();
    let cancel = target.cancel.clone();
    let writer_progress = Progress {
        tx: progress.tx.clone(),
        image: progress.image.clone(),
        total: Some(len),
        last: None,
    };
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut writer = RawWriter::open(&io, &tmp, writer_progress, cancel)?;
        while let Some(block) = rx.blocking_recv() {
            writer.write_block(&block)?;
        }
        writer.finish()
    });
    let fed = async {
        let mut received = 0u64;
        let mut block = Vec::with_capacity(BLOCK);
        let mut checked = false;
        while let Some(chunk) = download
            .chunk()
            .await
            .map_err(|e| target.failed(from, e.message, e.retryable))?
        {
            received += chunk.len() as u64;
            if received > len {
                return Err(target.failed(
                    from,
                    format!("the server sent more than the {len} bytes it announced"),
                    true,
                ));
            }
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = (BLOCK - block.len()).min(rest.len());
                block.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if !checked && block.len() >= 4 {
                    checked = true;
                    if plan::looks_like_qcow2(&block) {
                        return Err(target.failed(
                            from,
                            "it is a qcow2 image, but the source says raw: set format qcow2",
                            false,
                        ));
                    }
                }
                if block.len() == BLOCK {
                    let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK));
                    if tx.send(full).await.is_err() {
                        // The writer failed: its error is reported below.
                        return Ok(());
                    }
                }
            }
        }
        if received < len {
            return Err(target.failed(
                from,
                format!("the download ended after {received} of {len} bytes"),
                true,
            ));
        }
        if !block.is_empty() {
            let _ = tx.send(block).await;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| StorageError::internal(format!("image writer failed: {e}")))?;
    // A download error explains a writer error caused by it (or comes alone).
    fed?;
    written
}

/// Downloads the body into `path` (a scratch file), reporting progress.
async fn download_to_file(
    target: &Target<'_>,
    from: &str,
    download: &mut http::Download,
    path: &Path,
    progress: &mut Progress,
) -> Result<()> {
    let mut file = tokio::fs::File::create(path).await.map_err(|e| {
        target.failed(
            from,
            format!("cannot create the scratch file {}: {e}", path.display()),
            true,
        )
    })?;
    progress.set_total(download.content_length);
    progress.update(0);
    let mut received = 0u64;
    while let Some(chunk) = download
        .chunk()
        .await
        .map_err(|e| target.failed(from, e.message, e.retryable))?
    {
        file.write_all(&chunk).await.map_err(|e| {
            target.failed(
                from,
                format!("writing the scratch file {} failed: {e}", path.display()),
                true,
            )
        })?;
        received += chunk.len() as u64;
        progress.update(received);
    }
    file.flush()
        .await
        .map_err(|e| target.failed(from, format!("writing the scratch file failed: {e}"), true))?;
    if let Some(len) = download.content_length
        && received != len
    {
        return Err(target.failed(
            from,
            format!("the download ended after {received} of {len} bytes"),
            true,
        ));
    }
    if received == 0 {
        return Err(target.failed(from, "the server sent an empty file", false));
    }
    progress.finish(received);
    Ok(())
}

/// Removes scratch files of this object left by an interrupted run.
pub(crate) async fn remove_own_scratch_files(dir: &Path, uid_key: &str) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        if plan::is_own_scratch_file(&name.to_string_lossy(), uid_key) {
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => tracing::info!(file = %entry.path().display(), "removed leftover download"),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove leftover download")
                }
            }
        }
    }
}
