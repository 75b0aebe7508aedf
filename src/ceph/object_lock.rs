//! Advisory locks on plain RADOS objects (`rados lock ...`), which the controller uses as a
//! guard held across processes (see `controller/guard.rs`).

use super::cluster::IoCtx;
use super::error::Result;
use super::ffi::{check, cstring, rados};
use super::lock::{Lockers, read_lockers};

impl IoCtx {
    /// Takes the exclusive lock `name` of object `oid` (created if missing) with `cookie`,
    /// for ever (no duration: it lasts until released or broken). `EBUSY` if another
    /// (client, cookie) holds it, `EEXIST` if this one does.
    pub fn object_lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
    ) -> Result<()> {
        const OP: &str = "rados lock exclusive";
        let target = self.spec(oid);
        let (o, n) = (cstring(OP, &target, oid)?, cstring(OP, &target, name)?);
        let (c, d) = (cstring(OP, &target, cookie)?, cstring(OP, &target, description)?);
        // SAFETY: valid ioctx, NUL-terminated strings; a null duration means no expiry.
        check(OP, &target, unsafe {
            rados::rados_lock_exclusive(
                self.raw(),
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                d.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        })
        .map(drop)
    }

    /// Releases this client's lock `name` of object `oid` taken with `cookie` (`ENOENT` if it
    /// holds none).
    pub fn object_unlock(&self, oid: &str, name: &str, cookie: &str) -> Result<()> {
        const OP: &str = "rados unlock";
        let target = self.spec(oid);
        let (o, n, c) = (
            cstring(OP, &target, oid)?,
            cstring(OP, &target, name)?,
            cstring(OP, &target, cookie)?,
        );
        // SAFETY: valid ioctx, NUL-terminated strings.
        check(OP, &target, unsafe {
            rados::rados_unlock(self.raw(), o.as_ptr(), n.as_ptr(), c.as_ptr())
        })
        .map(drop)
    }

    /// The holders of lock `name` of object `oid` (none if the object does not exist), their
    /// addresses as [`crate::ceph::Cluster::client_address`] gives them.
    pub fn object_lockers(&self, oid: &str, name: &str) -> Result<Lockers> {
        const OP: &str = "rados lock list";
        let target = self.spec(oid);
        let (o, n) = (cstring(OP, &target, oid)?, cstring(OP, &target, name)?);
        let listed = read_lockers(OP, &target, |exclusive, [tag, clients, cookies, addrs]| {
            // SAFETY: valid ioctx and strings; `read_lockers` passes buffers writable for the
            // lengths given.
            unsafe {
                rados::rados_list_lockers(
                    self.raw(),
                    o.as_ptr(),
                    n.as_ptr(),
                    exclusive,
                    tag.0,
                    tag.1,
                    clients.0,
                    clients.1,
                    cookies.0,
                    cookies.1,
                    addrs.0,
                    addrs.1,
                )
            }
        });
        match listed {
            Err(e) if e.is_not_found() => Ok(Lockers::default()),
            Err(e) => Err(e),
            Ok(mut listed) => {
                for locker in &mut listed.lockers {
                    locker.address = without_protocol(&locker.address).to_owned();
                }
                Ok(listed)
            }
        }
    }

    /// Breaks the lock `name` of object `oid` held by `client` (`client.N`) with `cookie`
    /// (`ENOENT` if that holder does not hold it). Unlike librbd, librados does not blocklist
    /// the holder: blocklist it first to fence it.
    pub fn object_break_lock(&self, oid: &str, name: &str, client: &str, cookie: &str) -> Result<()> {
        const OP: &str = "rados lock break";
        let target = self.spec(oid);
        let (o, n) = (cstring(OP, &target, oid)?, cstring(OP, &target, name)?);
        let (cl, c) = (cstring(OP, &target, client)?, cstring(OP, &target, cookie)?);
        // SAFETY: valid ioctx, NUL-terminated strings.
        check(OP, &target, unsafe {
            rados::rados_break_lock(self.raw(), o.as_ptr(), n.as_ptr(), cl.as_ptr(), c.as_ptr())
        })
        .map(drop)
    }
}

/// An address without the messenger protocol librados puts before it (`v1:127.0.0.1:0/42`).
fn without_protocol(address: &str) -> &str {
    ["v1:", "v2:", "any:"]
        .iter()
        .find_map(|p| address.strip_prefix(p))
        .unwrap_or(address)
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_lose_their_protocol() {
        assert_eq!(super::without_protocol("v1:127.0.0.1:0/42"), "127.0.0.1:0/42");
        assert_eq!(super::without_protocol("v2:[::1]:0/42"), "[::1]:0/42");
        assert_eq!(super::without_protocol("127.0.0.1:0/42"), "127.0.0.1:0/42");
    }
}
