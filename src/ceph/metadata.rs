//! Image metadata (`rbd image-meta`): string key/value pairs stored in the image header.

use std::collections::BTreeMap;
use std::ffi::c_char;

use super::error::{CephError, Result};
use super::ffi::{self, MAX_ERANGE_RETRIES, check, cstring, rbd};
use super::image::Image;

/// Keys fetched per `rbd_metadata_list` call.
const PAGE: u64 = 128;

impl Image {
    fn key_target(&self, key: &str) -> String {
        format!("{} key {key}", self.spec())
    }

    /// The value of `key` (`ENOENT` if unset).
    pub fn metadata_get(&self, key: &str) -> Result<String> {
        const OP: &str = "rbd metadata get";
        let target = self.key_target(key);
        let k = cstring(OP, &target, key)?;
        let (r, buf, _) = ffi::sized(OP, &target, 0u8, 256, |buf, len| {
            // SAFETY: open image; `buf` is writable for `len` bytes; on ERANGE librbd stores the
            // needed size (value + NUL) in `len`.
            unsafe { rbd::rbd_metadata_get(self.raw, k.as_ptr(), buf.as_mut_ptr().cast::<c_char>(), len) }
        })?;
        check(OP, &target, r)?;
        Ok(ffi::string_from_buf(&buf))
    }

    /// Sets `key` to `value` (creating or replacing it).
    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        const OP: &str = "rbd metadata set";
        let target = self.key_target(key);
        let k = cstring(OP, &target, key)?;
        let v = cstring(OP, &target, value)?;
        // SAFETY: open image, NUL-terminated key and value.
        check(OP, &target, unsafe {
            rbd::rbd_metadata_set(self.raw, k.as_ptr(), v.as_ptr())
        })
        .map(drop)
    }

    /// Removes `key` (`ENOENT` if unset).
    pub fn metadata_remove(&self, key: &str) -> Result<()> {
        const OP: &str = "rbd metadata remove";
        let target = self.key_target(key);
        let k = cstring(OP, &target, key)?;
        // SAFETY: open image, NUL-terminated key.
        check(OP, &target, unsafe {
            rbd::rbd_metadata_remove(self.raw, k.as_ptr())
        })
        .map(drop)
    }

    /// All metadata pairs (including librbd's own `conf_*` overrides).
    pub fn metadata_list(&self) -> Result<BTreeMap<String, String>> {
        let mut all = BTreeMap::new();
        let mut start = String::new();
        loop {
            let page = self.metadata_page(&start)?;
            let n = page.len() as u64;
            if let Some((last, _)) = page.last() {
                start = last.clone();
            }
            all.extend(page);
            if n < PAGE {
                return Ok(all);
            }
        }
    }

    /// Up to [`PAGE`] pairs with keys after `start` (`""` = from the first).
    fn metadata_page(&self, start: &str) -> Result<Vec<(String, String)>> {
        const OP: &str = "rbd metadata list";
        let target = self.spec().to_string();
        let start_c = cstring(OP, &target, start)?;
        let (mut key_size, mut val_size) = (4096usize, 4096usize);
        for _ in 0..MAX_ERANGE_RETRIES {
            let mut keys = vec![0u8; key_size];
            let mut vals = vec![0u8; val_size];
            let (mut key_len, mut val_len) = (keys.len(), vals.len());
            // SAFETY: open image; `start` is a valid C string (never null: librbd turns it into a
            // std::string, which throws on null); both buffers are writable for the lengths
            // passed; on ERANGE librbd stores the needed sizes.
            let r = unsafe {
                rbd::rbd_metadata_list(
                    self.raw,
                    start_c.as_ptr(),
                    PAGE,
                    keys.as_mut_ptr().cast::<c_char>(),
                    &mut key_len,
                    vals.as_mut_ptr().cast::<c_char>(),
                    &mut val_len,
                )
            };
            if r == -libc::ERANGE {
                key_size = key_len.max(key_size);
                val_size = val_len.max(val_size);
                if key_len <= keys.len() && val_len <= vals.len() {
                    key_size *= 2;
                    val_size *= 2;
                }
                continue;
            }
            check(OP, &target, r)?;
            return Ok(pair_up(
                &keys[..key_len.min(keys.len())],
                &vals[..val_len.min(vals.len())],
            ));
        }
        Err(CephError::new(OP, target, -i64::from(libc::ERANGE)))
    }
}

/// Pairs the NUL-separated key list with the value list; values may be empty, keys may not.
fn pair_up(keys: &[u8], vals: &[u8]) -> Vec<(String, String)> {
    let keys = ffi::split_nul_list(keys);
    let vals = vals
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    keys.into_iter()
        .zip(vals.chain(std::iter::repeat(String::new())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_keep_empty_values() {
        let pairs = pair_up(b"a\0b\0c\0", b"1\0\0three\0");
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("c".into(), "three".into())
            ]
        );
        assert!(pair_up(b"", b"").is_empty());
    }
}
