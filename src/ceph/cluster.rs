//! The cluster connection (`rados_t`), pool I/O contexts (`rados_ioctx_t`), RBD namespaces and
//! mon commands.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use super::error::{CephError, Result};
use super::ffi::{self, check, cstring, rados, rbd};

/// How to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The ceph.conf to read (mon addresses, keyring, ...).
    pub conf_path: PathBuf,
    /// The cephx id without the `client.` prefix, e.g. `"admin"`.
    pub client_id: String,
    /// How long `connect` may wait for the monitors (librados' `client_mount_timeout`;
    /// its default of 300 s makes a bad key or a dead mon hang for five minutes).
    pub mount_timeout: Duration,
    /// Further configuration overrides (`rados_conf_set`), applied after the conf file.
    pub options: Vec<(String, String)>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            conf_path: PathBuf::from("/etc/ceph/ceph.conf"),
            client_id: "admin".to_string(),
            mount_timeout: Duration::from_secs(30),
            options: Vec::new(),
        }
    }
}

/// Owns the `rados_t`; shut down when the last [`Cluster`], [`IoCtx`] or image using it goes.
pub(crate) struct ClusterHandle {
    raw: rados::rados_t,
    client: String,
}

// SAFETY: a connected rados_t is documented as thread-safe: librados serialises access to the
// client internally, and this wrapper never changes its configuration after `connect`.
unsafe impl Send for ClusterHandle {}
// SAFETY: see Send; all shared-reference methods are thread-safe librados calls.
unsafe impl Sync for ClusterHandle {}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        // SAFETY: `raw` came from rados_create and is shut down exactly once; every IoCtx and
        // image holds an Arc to this handle, so none is alive any more.
        unsafe { rados::rados_shutdown(self.raw) };
    }
}

/// A connection to a Ceph cluster. Cheap to clone (shared handle), `Send + Sync`.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<ClusterHandle>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("client", &self.inner.client)
            .finish()
    }
}

impl Cluster {
    /// Reads the configuration and connects to the monitors.
    ///
    /// Fails with `ENOENT` for a missing conf file and with `ETIMEDOUT` (after
    /// `mount_timeout`) when the monitors do not answer or refuse the key.
    pub fn connect(config: ClusterConfig) -> Result<Cluster> {
        const OP: &str = "rados connect";
        let client = format!("client.{}", config.client_id);
        let target = format!("{client} ({})", config.conf_path.display());
        let id = cstring(OP, &target, &config.client_id)?;
        let conf = cstring(OP, &target, &config.conf_path.to_string_lossy())?;

        let mut raw: rados::rados_t = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer and `id` a NUL-terminated string.
        check("rados create", &target, unsafe {
            rados::rados_create(&mut raw, id.as_ptr())
        })?;
        // From here on the handle is shut down on every error path by its Drop.
        let handle = ClusterHandle { raw, client };

        // SAFETY: `raw` is a live, unconnected handle; `conf` is NUL-terminated.
        let r = unsafe { rados::rados_conf_read_file(raw, conf.as_ptr()) };
        check("rados read conf", &target, r)?;
        let timeout = format!("{}", config.mount_timeout.as_secs_f64().max(0.001));
        set_conf(raw, &target, "client_mount_timeout", &timeout)?;
        for (key, value) in &config.options {
            set_conf(raw, &target, key, value)?;
        }
        // SAFETY: `raw` is a configured, unconnected handle.
        check(OP, &target, unsafe { rados::rados_connect(raw) })?;
        super::process_exit::end_process_before_ceph_teardown();
        Ok(Cluster {
            inner: Arc::new(handle),
        })
    }

    pub(crate) fn raw(&self) -> rados::rados_t {
        self.inner.raw
    }

    /// The entity name of this connection, e.g. `client.admin`.
    pub fn client_name(&self) -> &str {
        &self.inner.client
    }

    /// The numeric id of this session (the `4123` of `client.4123` as lock owners show it).
    pub fn instance_id(&self) -> u64 {
        // SAFETY: connected handle; a read-only query.
        unsafe { rados::rados_get_instance_id(self.raw()) }
    }

    /// The address of this session as the OSDs see it, suitable for blocklisting
    /// (e.g. `127.0.0.1:0/3125394245`).
    pub fn client_address(&self) -> Result<String> {
        let mut addrs: *mut c_char = ptr::null_mut();
        // SAFETY: connected handle and a valid out-pointer; librados strdup()s the result.
        let r = unsafe { rados::rados_getaddrs(self.raw(), &mut addrs) };
        check("rados getaddrs", &self.inner.client, r)?;
        // SAFETY: on success `addrs` is a NUL-terminated string (or null).
        let out = unsafe { ffi::string_from_ptr(addrs) };
        // SAFETY: allocated with strdup() by librados, freed once.
        unsafe { libc::free(addrs.cast::<c_void>()) };
        Ok(out)
    }

    /// An I/O context on `pool`, scoped to the RBD namespace `namespace` (`""` = default).
    ///
    /// Fails with `ENOENT` if the pool or (non-default) namespace does not exist.
    pub fn io_context(&self, pool: &str, namespace: &str) -> Result<IoCtx> {
        const OP: &str = "rados ioctx create";
        let target = spec(pool, namespace, None);
        let pool_c = cstring(OP, &target, pool)?;
        let ns_c = cstring(OP, &target, namespace)?;
        let mut raw: rados::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected handle, NUL-terminated pool name, valid out-pointer.
        let r = unsafe { rados::rados_ioctx_create(self.raw(), pool_c.as_ptr(), &mut raw) };
        check(OP, &target, r)?;
        // SAFETY: `raw` is a fresh ioctx no other thread can see yet; librados copies the name.
        unsafe { rados::rados_ioctx_set_namespace(raw, ns_c.as_ptr()) };
        let ioctx = IoCtx {
            inner: Arc::new(IoCtxHandle {
                raw,
                cluster: self.inner.clone(),
                pool: pool.to_string(),
                namespace: namespace.to_string(),
            }),
        };
        if !namespace.is_empty() && !ioctx.namespace_exists(namespace)? {
            return Err(
                CephError::new(OP, target, -i64::from(libc::ENOENT)).with_detail(format!(
                    "RBD namespace '{namespace}' does not exist in pool '{pool}'"
                )),
            );
        }
        Ok(ioctx)
    }

    /// Sends a mon command (`{"prefix": "...", ...}`) and returns its output buffer and status
    /// string. A failure carries the status string as detail.
    pub fn mon_command(&self, json: &str) -> Result<(Vec<u8>, String)> {
        self.mon_command_with_input(json, &[])
    }

    /// [`Cluster::mon_command`] with an input buffer (e.g. a crush map).
    pub fn mon_command_with_input(&self, json: &str, input: &[u8]) -> Result<(Vec<u8>, String)> {
        const OP: &str = "mon command";
        let target = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("prefix").and_then(|p| p.as_str()).map(str::to_string))
            .unwrap_or_else(|| json.to_string());
        let cmd = cstring(OP, &target, json)?;
        let mut cmds = [cmd.as_ptr()];
        let mut outbuf: *mut c_char = ptr::null_mut();
        let mut outbuf_len = 0usize;
        let mut outs: *mut c_char = ptr::null_mut();
        let mut outs_len = 0usize;
        // SAFETY: one valid command string; the input slice is valid for its length; the out
        // pointers are valid and librados allocates the buffers (freed below).
        let r = unsafe {
            rados::rados_mon_command(
                self.raw(),
                cmds.as_mut_ptr(),
                1,
                input.as_ptr().cast::<c_char>(),
                input.len(),
                &mut outbuf,
                &mut outbuf_len,
                &mut outs,
                &mut outs_len,
            )
        };
        // SAFETY: when non-null the buffers hold exactly the reported lengths.
        let (out, status) = unsafe { (take_buffer(outbuf, outbuf_len), take_buffer(outs, outs_len)) };
        let status = String::from_utf8_lossy(&status).trim_end().to_string();
        check(OP, &target, r).map_err(|e| e.with_detail(status.clone()))?;
        Ok((out, status))
    }
}

/// Copies and frees a librados-allocated output buffer.
///
/// # Safety
/// `buf` must be null or a buffer from librados of at least `len` bytes, not used afterwards.
unsafe fn take_buffer(buf: *mut c_char, len: usize) -> Vec<u8> {
    if buf.is_null() {
        return Vec::new();
    }
    // SAFETY: per contract `buf` holds `len` readable bytes.
    let out = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec();
    // SAFETY: allocated by librados, released with its own free function exactly once.
    unsafe { rados::rados_buffer_free(buf) };
    out
}

fn set_conf(raw: rados::rados_t, target: &str, key: &str, value: &str) -> Result<()> {
    const OP: &str = "rados conf set";
    let k = cstring(OP, target, key)?;
    let v = cstring(OP, target, value)?;
    // SAFETY: `raw` is a live handle (the caller owns it); both strings are NUL-terminated.
    let r = unsafe { rados::rados_conf_set(raw, k.as_ptr(), v.as_ptr()) };
    check(OP, target, r)
        .map(drop)
        .map_err(|e| e.with_detail(format!("{key} = {value}")))
}

/// `pool/namespace/name`, `pool/name` in the default namespace, or `pool[/namespace]` alone.
pub(crate) fn spec(pool: &str, namespace: &str, name: Option<&str>) -> String {
    let mut s = pool.to_string();
    if !namespace.is_empty() {
        s.push('/');
        s.push_str(namespace);
    }
    if let Some(name) = name {
        s.push('/');
        s.push_str(name);
    }
    s
}

/// Owns the `rados_ioctx_t`; keeps the cluster connection alive.
pub(crate) struct IoCtxHandle {
    raw: rados::rados_ioctx_t,
    cluster: Arc<ClusterHandle>,
    pool: String,
    namespace: String,
}

// SAFETY: librados I/O contexts are thread-safe for I/O; only their settings (namespace, snap
// context, locator) are not, and this wrapper sets the namespace once before sharing it and
// never changes a setting afterwards.
unsafe impl Send for IoCtxHandle {}
// SAFETY: see Send.
unsafe impl Sync for IoCtxHandle {}

impl Drop for IoCtxHandle {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create, destroyed once, before the Arc'd cluster handle
        // (a field) can shut the client down. Images hold their own Arc to this handle.
        unsafe { rados::rados_ioctx_destroy(self.raw) };
    }
}

/// An I/O context on one pool and RBD namespace. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct IoCtx {
    pub(crate) inner: Arc<IoCtxHandle>,
}

impl std::fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.inner.pool)
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

impl IoCtx {
    pub(crate) fn raw(&self) -> rados::rados_ioctx_t {
        self.inner.raw
    }

    /// The pool name.
    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    /// The RBD namespace (`""` = default).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The pool's numeric id.
    pub fn pool_id(&self) -> i64 {
        // SAFETY: live ioctx, read-only query.
        unsafe { rados::rados_ioctx_get_id(self.raw()) }
    }

    /// The connection this context belongs to.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            inner: self.inner.cluster.clone(),
        }
    }

    /// `pool/namespace/name` for error messages and logs.
    pub fn spec(&self, name: &str) -> String {
        spec(self.pool(), self.namespace(), Some(name))
    }

    /// `pool` or `pool/namespace`, for error messages and logs.
    pub fn location(&self) -> String {
        spec(self.pool(), self.namespace(), None)
    }

    /// Creates an RBD namespace in this context's pool (`EEXIST` if it exists).
    pub fn create_namespace(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd namespace create";
        let target = spec(self.pool(), name, None);
        let c = cstring(OP, &target, name)?;
        // SAFETY: live ioctx and NUL-terminated name.
        check(OP, &target, unsafe {
            rbd::rbd_namespace_create(self.raw(), c.as_ptr())
        })
        .map(drop)
    }

    /// Removes an empty RBD namespace (`ENOENT` if missing, `EBUSY` while it holds images).
    pub fn remove_namespace(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd namespace remove";
        let target = spec(self.pool(), name, None);
        let c = cstring(OP, &target, name)?;
        // SAFETY: live ioctx and NUL-terminated name.
        check(OP, &target, unsafe {
            rbd::rbd_namespace_remove(self.raw(), c.as_ptr())
        })
        .map(drop)
    }

    /// Whether the RBD namespace exists in this context's pool.
    pub fn namespace_exists(&self, name: &str) -> Result<bool> {
        const OP: &str = "rbd namespace exists";
        let target = spec(self.pool(), name, None);
        let c = cstring(OP, &target, name)?;
        let mut exists = false;
        // SAFETY: live ioctx, NUL-terminated name, valid out-pointer.
        let r = unsafe { rbd::rbd_namespace_exists(self.raw(), c.as_ptr(), &mut exists) };
        check(OP, &target, r)?;
        Ok(exists)
    }

    /// The RBD namespaces of this context's pool.
    pub fn list_namespaces(&self) -> Result<Vec<String>> {
        const OP: &str = "rbd namespace list";
        let target = self.pool().to_string();
        let (r, buf, len) = ffi::sized(OP, &target, 0u8, 1024, |buf, len| {
            // SAFETY: `buf` is writable for `len` bytes; librbd reports the needed size on ERANGE.
            unsafe { rbd::rbd_namespace_list(self.raw(), buf.as_mut_ptr().cast(), len) }
        })?;
        check(OP, &target, r)?;
        Ok(ffi::split_nul_list(&buf[..len]))
    }

    /// Initialises the pool for RBD (`rbd pool init`); `force` also when it has another app.
    pub fn rbd_pool_init(&self, force: bool) -> Result<()> {
        const OP: &str = "rbd pool init";
        // SAFETY: live ioctx.
        check(OP, self.pool(), unsafe { rbd::rbd_pool_init(self.raw(), force) }).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_skip_the_default_namespace() {
        assert_eq!(spec("rbd", "", Some("img")), "rbd/img");
        assert_eq!(spec("rbd", "ns", Some("img")), "rbd/ns/img");
        assert_eq!(spec("rbd", "ns", None), "rbd/ns");
    }

    #[test]
    fn cluster_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Cluster>();
        assert_send_sync::<IoCtx>();
    }
}
