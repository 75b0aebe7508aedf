//! Locks and fencing: the managed exclusive lock (`exclusive-lock` feature), advisory locks
//! (`rbd lock add/ls/rm`) and the OSD blocklist.

use std::ffi::c_char;
use std::ptr;

use super::cluster::Cluster;
use super::error::{CephError, Result};
use super::ffi::{self, MAX_ERANGE_RETRIES, check, cstring, rados, rbd};
use super::image::Image;

/// Mode of the managed image lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Exclusive,
    Shared,
}

impl LockMode {
    fn raw(self) -> rbd::rbd_lock_mode_t {
        match self {
            LockMode::Exclusive => rbd::rbd_lock_mode_t::RBD_LOCK_MODE_EXCLUSIVE,
            LockMode::Shared => rbd::rbd_lock_mode_t::RBD_LOCK_MODE_SHARED,
        }
    }
}

/// Who holds the managed lock. Pacific reports each owner by its client address
/// (`127.0.0.1:0/3125394245`, as [`Cluster::client_address`] gives it), not its entity name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOwners {
    pub mode: LockMode,
    pub owners: Vec<String>,
}

/// One holder of an advisory lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locker {
    /// Entity name, e.g. `client.4123`.
    pub client: String,
    /// The cookie the lock was taken with.
    pub cookie: String,
    /// The holder's address (what to blocklist to fence it).
    pub address: String,
}

/// The advisory locks of an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lockers {
    /// Exclusive (one holder) or shared.
    pub exclusive: bool,
    /// Tag of a shared lock.
    pub tag: String,
    pub lockers: Vec<Locker>,
}

/// An entry of the OSD blocklist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlocklistEntry {
    /// Client address, e.g. `127.0.0.1:0/3125394245`.
    pub addr: String,
    /// Expiry as the mon prints it (e.g. `2026-11-23T16:08:01.123456+0000`).
    pub until: String,
}

impl Image {
    /// Takes the managed lock (needs the `exclusive-lock` feature, `EINVAL` without it) and keeps
    /// it until [`Image::lock_release`] or close: unlike the automatic lock, librbd then refuses
    /// to hand it over, so other clients' `lock_acquire` and writes fail with `EROFS` at once.
    pub fn lock_acquire(&self, mode: LockMode) -> Result<()> {
        // SAFETY: open image.
        check("rbd lock acquire", self.spec(), unsafe {
            rbd::rbd_lock_acquire(self.raw, mode.raw())
        })
        .map(drop)
    }

    /// Releases the managed lock taken with [`Image::lock_acquire`].
    pub fn lock_release(&self) -> Result<()> {
        // SAFETY: open image.
        check("rbd lock release", self.spec(), unsafe {
            rbd::rbd_lock_release(self.raw)
        })
        .map(drop)
    }

    /// Whether this handle holds the managed exclusive lock.
    pub fn is_exclusive_lock_owner(&self) -> Result<bool> {
        let mut owner = 0;
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { rbd::rbd_is_exclusive_lock_owner(self.raw, &mut owner) };
        check("rbd lock is owner", self.spec(), r)?;
        Ok(owner != 0)
    }

    /// The holders of the managed lock; `None` when nobody holds it.
    pub fn lock_owners(&self) -> Result<Option<LockOwners>> {
        const OP: &str = "rbd lock owners";
        let mut mode = rbd::rbd_lock_mode_t::RBD_LOCK_MODE_EXCLUSIVE;
        let (r, mut owners, n) = ffi::sized(OP, self.spec(), ptr::null_mut::<c_char>(), 8, |owners, n| {
            // SAFETY: open image; `owners` has room for `n` pointers; librbd strdup()s each
            // owner or asks for more with ERANGE.
            unsafe { rbd::rbd_lock_get_owners(self.raw, &mut mode, owners.as_mut_ptr(), n) }
        })?;
        if r == -libc::ENOENT {
            return Ok(None);
        }
        check(OP, self.spec(), r)?;
        // SAFETY: the first `n` pointers are strdup'd strings.
        let names: Vec<String> = owners[..n]
            .iter()
            .map(|&p| unsafe { ffi::string_from_ptr(p) })
            .collect();
        // SAFETY: frees exactly the `n` strings, once.
        unsafe { rbd::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), n) };
        if names.is_empty() {
            return Ok(None);
        }
        let mode = if mode == rbd::rbd_lock_mode_t::RBD_LOCK_MODE_SHARED {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        Ok(Some(LockOwners { mode, owners: names }))
    }

    /// Addresses of the clients watching the image (every process that has it open for
    /// writing, QEMU included, whether or not it holds the lock yet), as `rbd status` shows.
    pub fn watchers(&self) -> Result<Vec<String>> {
        const OP: &str = "rbd watchers list";
        let empty = rbd::rbd_image_watcher_t {
            addr: ptr::null_mut(),
            id: 0,
            cookie: 0,
        };
        let (r, mut watchers, n) = ffi::sized(OP, self.spec(), empty, 8, |watchers, n| {
            // SAFETY: open image; `watchers` has room for `n` entries; librbd fills the first
            // `n` (strdup'd addresses) or asks for more with ERANGE.
            unsafe { rbd::rbd_watchers_list(self.raw, watchers.as_mut_ptr(), n) }
        })?;
        check(OP, self.spec(), r)?;
        // SAFETY: the first `n` entries hold strdup'd strings.
        let addresses = watchers[..n]
            .iter()
            .map(|w| unsafe { ffi::string_from_ptr(w.addr) })
            .collect();
        // SAFETY: frees exactly the `n` filled entries, once.
        unsafe { rbd::rbd_watchers_list_cleanup(watchers.as_mut_ptr(), n) };
        Ok(addresses)
    }

    /// Breaks the managed lock held by `owner` (an address as given by [`Image::lock_owners`]).
    /// With the default `rbd_blocklist_on_break_lock = true`, librbd first blocklists the old
    /// holder, whose next write then fails with `ESHUTDOWN`. `EBUSY` if `owner` does not hold
    /// it, `ENOENT` if nobody does.
    pub fn lock_break(&self, mode: LockMode, owner: &str) -> Result<()> {
        const OP: &str = "rbd lock break";
        let target = format!("{} (owner {owner})", self.spec());
        let o = cstring(OP, &target, owner)?;
        // SAFETY: open image, NUL-terminated owner.
        check(OP, &target, unsafe {
            rbd::rbd_lock_break(self.raw, mode.raw(), o.as_ptr())
        })
        .map(drop)
    }

    /// Takes an advisory exclusive lock with `cookie` (`EBUSY` if another holds a lock,
    /// `EEXIST` if this client holds it with that cookie).
    pub fn lock_exclusive(&self, cookie: &str) -> Result<()> {
        const OP: &str = "rbd advisory lock exclusive";
        let target = format!("{} (cookie {cookie})", self.spec());
        let c = cstring(OP, &target, cookie)?;
        // SAFETY: open image, NUL-terminated cookie.
        check(OP, &target, unsafe {
            rbd::rbd_lock_exclusive(self.raw, c.as_ptr())
        })
        .map(drop)
    }

    /// Takes an advisory shared lock with `cookie` and `tag`.
    pub fn lock_shared(&self, cookie: &str, tag: &str) -> Result<()> {
        const OP: &str = "rbd advisory lock shared";
        let target = format!("{} (cookie {cookie})", self.spec());
        let c = cstring(OP, &target, cookie)?;
        let t = cstring(OP, &target, tag)?;
        // SAFETY: open image, NUL-terminated cookie and tag.
        check(OP, &target, unsafe {
            rbd::rbd_lock_shared(self.raw, c.as_ptr(), t.as_ptr())
        })
        .map(drop)
    }

    /// Releases this client's advisory lock with `cookie` (`ENOENT` if it holds none).
    pub fn unlock(&self, cookie: &str) -> Result<()> {
        const OP: &str = "rbd advisory unlock";
        let target = format!("{} (cookie {cookie})", self.spec());
        let c = cstring(OP, &target, cookie)?;
        // SAFETY: open image, NUL-terminated cookie.
        check(OP, &target, unsafe { rbd::rbd_unlock(self.raw, c.as_ptr()) }).map(drop)
    }

    /// Breaks a client's advisory lock (`client` and `cookie` as [`Image::list_lockers`] gives
    /// them; `ENOENT` if no such lock). With the default `rbd_blocklist_on_break_lock = true`,
    /// librbd first blocklists the holder's address, fencing that whole client connection.
    pub fn break_lock(&self, client: &str, cookie: &str) -> Result<()> {
        const OP: &str = "rbd advisory break lock";
        let target = format!("{} ({client} cookie {cookie})", self.spec());
        let cl = cstring(OP, &target, client)?;
        let co = cstring(OP, &target, cookie)?;
        // SAFETY: open image, NUL-terminated strings.
        check(OP, &target, unsafe {
            rbd::rbd_break_lock(self.raw, cl.as_ptr(), co.as_ptr())
        })
        .map(drop)
    }

    /// The advisory locks of the image.
    pub fn list_lockers(&self) -> Result<Lockers> {
        // SAFETY: open image; `read_lockers` passes buffers writable for the lengths given.
        read_lockers(
            "rbd advisory list lockers",
            self.spec(),
            |exclusive, [tag, clients, cookies, addrs]| unsafe {
                rbd::rbd_list_lockers(
                    self.raw, exclusive, tag.0, tag.1, clients.0, clients.1, cookies.0, cookies.1, addrs.0,
                    addrs.1,
                )
            },
        )
    }
}

/// One buffer of a lockers query: where to write, and its length (updated by the callee).
pub(crate) type LockerBuffer = (*mut std::ffi::c_char, *mut usize);

/// Runs a lockers query of librbd or librados (tag, clients, cookies and addresses written
/// into four buffers), growing the buffers on `ERANGE`.
pub(crate) fn read_lockers(
    op: &'static str,
    target: &str,
    mut query: impl FnMut(&mut std::ffi::c_int, [LockerBuffer; 4]) -> isize,
) -> Result<Lockers> {
    let mut sizes = [256usize; 4];
    for _ in 0..MAX_ERANGE_RETRIES {
        let mut buffers = sizes.map(|s| vec![0u8; s]);
        let mut lens = sizes;
        let mut exclusive = 0;
        let [tag, clients, cookies, addrs] = &mut buffers;
        let [tag_len, clients_len, cookies_len, addrs_len] = &mut lens;
        let r = query(
            &mut exclusive,
            [
                (tag.as_mut_ptr().cast(), tag_len),
                (clients.as_mut_ptr().cast(), clients_len),
                (cookies.as_mut_ptr().cast(), cookies_len),
                (addrs.as_mut_ptr().cast(), addrs_len),
            ],
        );
        if r == -(libc::ERANGE as isize) {
            let grown = lens.iter().zip(sizes).any(|(&l, s)| l > s);
            sizes = std::array::from_fn(|i| {
                if grown {
                    lens[i].max(sizes[i])
                } else {
                    sizes[i] * 2
                }
            });
            continue;
        }
        let n = ffi::check_isize(op, target, r)?;
        let [tag, clients, cookies, addrs] = &buffers;
        let (clients, cookies, addrs) = (
            ffi::split_nul_list(clients),
            ffi::split_nul_list(cookies),
            ffi::split_nul_list(addrs),
        );
        let lockers = (0..n)
            .map(|i| Locker {
                client: clients.get(i).cloned().unwrap_or_default(),
                cookie: cookies.get(i).cloned().unwrap_or_default(),
                address: addrs.get(i).cloned().unwrap_or_default(),
            })
            .collect();
        return Ok(Lockers {
            exclusive: exclusive != 0,
            tag: ffi::string_from_buf(tag),
            lockers,
        });
    }
    Err(CephError::new(op, target, -i64::from(libc::ERANGE)))
}

impl Cluster {
    /// Blocklists a client address (as from [`Cluster::client_address`] or
    /// [`Locker::address`]) for `expire_secs` seconds (0 = the cluster default, one hour).
    /// A blocklisted client's writes fail with `ESHUTDOWN`.
    pub fn blocklist_add(&self, client_addr: &str, expire_secs: u32) -> Result<()> {
        const OP: &str = "osd blocklist add";
        let a = cstring(OP, client_addr, client_addr)?;
        // SAFETY: connected handle; librados only reads the (non-const in its prototype) string.
        let r = unsafe { rados::rados_blocklist_add(self.raw(), a.as_ptr().cast_mut(), expire_secs) };
        check(OP, client_addr, r).map(drop)
    }

    /// Removes an address from the blocklist (a mon command; succeeds if it was not listed).
    pub fn blocklist_remove(&self, client_addr: &str) -> Result<()> {
        let cmd = serde_json::json!({"prefix": "osd blocklist", "blocklistop": "rm", "addr": client_addr});
        self.mon_command(&cmd.to_string()).map(drop)
    }

    /// The current OSD blocklist.
    pub fn blocklist_list(&self) -> Result<Vec<BlocklistEntry>> {
        let (out, _) = self.mon_command(r#"{"prefix": "osd blocklist ls", "format": "json"}"#)?;
        // Pacific prints the address list, then the (range) list: `[...][]`. Take the first.
        let mut values = serde_json::Deserializer::from_slice(&out).into_iter::<Vec<serde_json::Value>>();
        let entries = match values.next() {
            None => Vec::new(),
            Some(parsed) => parsed.map_err(|e| {
                CephError::new("osd blocklist ls", "mon", -i64::from(libc::EBADMSG))
                    .with_detail(e.to_string())
            })?,
        };
        Ok(entries
            .iter()
            .map(|e| BlocklistEntry {
                addr: e
                    .get("addr")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                until: e
                    .get("until")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect())
    }
}
