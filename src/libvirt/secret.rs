//! libvirt secrets, in particular the Ceph secret QEMU uses to authenticate to RBD.
//!
//! The test driver has no secret driver: every call here fails on `test:///` URIs with an
//! unsupported error (`Error::is_unsupported`).

use std::fmt;
use std::sync::Arc;

use quick_xml::escape::escape;
use uuid::Uuid;
use virt::sys;

use super::connection::Hypervisor;
use super::error::{Error, Operation, Result, Target};
use super::ffi;

/// What a secret is used for (libvirt's `virSecretUsageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretUsage {
    None,
    Volume,
    Ceph,
    Iscsi,
    Tls,
    Vtpm,
    Other(i32),
}

impl SecretUsage {
    fn from_raw(raw: u32) -> Self {
        match raw {
            sys::VIR_SECRET_USAGE_TYPE_NONE => SecretUsage::None,
            sys::VIR_SECRET_USAGE_TYPE_VOLUME => SecretUsage::Volume,
            sys::VIR_SECRET_USAGE_TYPE_CEPH => SecretUsage::Ceph,
            sys::VIR_SECRET_USAGE_TYPE_ISCSI => SecretUsage::Iscsi,
            sys::VIR_SECRET_USAGE_TYPE_TLS => SecretUsage::Tls,
            sys::VIR_SECRET_USAGE_TYPE_VTPM => SecretUsage::Vtpm,
            other => SecretUsage::Other(other as i32),
        }
    }
}

impl fmt::Display for SecretUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretUsage::None => f.write_str("none"),
            SecretUsage::Volume => f.write_str("volume"),
            SecretUsage::Ceph => f.write_str("ceph"),
            SecretUsage::Iscsi => f.write_str("iscsi"),
            SecretUsage::Tls => f.write_str("tls"),
            SecretUsage::Vtpm => f.write_str("vtpm"),
            SecretUsage::Other(n) => write!(f, "usage type {n}"),
        }
    }
}

/// One secret as listed by [`Hypervisor::list_secrets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSummary {
    pub uuid: Uuid,
    pub usage: SecretUsage,
    /// The usage name (for Ceph, e.g. "client.libvirt secret"); `None` for usage none.
    pub usage_id: Option<String>,
}

/// A Ceph secret to define: `<usage type='ceph'><name>USAGE_NAME</name></usage>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephSecretSpec {
    /// The usage name, unique per host among Ceph secrets, e.g. "client.libvirt secret".
    pub usage_name: String,
    /// The UUID domain XML refers to (`<secret type='ceph' uuid='...'/>`); generated when
    /// `None`.
    pub uuid: Option<Uuid>,
    pub description: Option<String>,
    /// A private secret's value cannot be read back through libvirt's API (default: true).
    pub private: bool,
}

impl CephSecretSpec {
    /// A private Ceph secret with a generated UUID.
    pub fn new(usage_name: impl Into<String>) -> Self {
        CephSecretSpec {
            usage_name: usage_name.into(),
            uuid: None,
            description: None,
            private: true,
        }
    }

    pub fn with_uuid(mut self, uuid: Uuid) -> Self {
        self.uuid = Some(uuid);
        self
    }

    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    pub fn with_private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    fn to_xml(&self, uuid: Uuid) -> String {
        let mut xml = format!(
            "<secret ephemeral='no' private='{}'>\n  <uuid>{uuid}</uuid>\n",
            if self.private { "yes" } else { "no" }
        );
        if let Some(d) = &self.description {
            xml.push_str(&format!("  <description>{}</description>\n", escape(d.as_str())));
        }
        xml.push_str(&format!(
            "  <usage type='ceph'>\n    <name>{}</name>\n  </usage>\n</secret>\n",
            escape(self.usage_name.as_str())
        ));
        xml
    }
}

/// A libvirt secret. `Send + Sync`; all methods block.
#[derive(Clone)]
pub struct Secret {
    inner: virt::secret::Secret,
    uuid: Uuid,
    usage: SecretUsage,
    usage_id: Option<String>,
    uri: Arc<str>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("uuid", &self.uuid)
            .field("usage", &self.usage)
            .field("usage_id", &self.usage_id)
            .field("uri", &self.uri)
            .finish()
    }
}

impl Secret {
    fn wrap(inner: virt::secret::Secret, uri: &Arc<str>, target: Target) -> Result<Self> {
        let err = |e| Error::libvirt(Operation::Inspect, target.clone(), uri, e);
        let uuid = inner.uuid().map_err(err)?;
        let usage = SecretUsage::from_raw(inner.usage_type().map_err(err)?);
        let usage_id = match usage {
            SecretUsage::None => None,
            _ => Some(ffi::secret_usage_id(&inner).map_err(err)?),
        };
        Ok(Secret {
            inner,
            uuid,
            usage,
            usage_id,
            uri: Arc::clone(uri),
        })
    }

    fn target(&self) -> Target {
        match (&self.usage, &self.usage_id) {
            (SecretUsage::Ceph, Some(usage)) => Target::CephSecret(usage.clone()),
            _ => Target::SecretUuid(self.uuid),
        }
    }

    fn err(&self, op: Operation, e: virt::error::Error) -> Error {
        Error::libvirt(op, self.target(), &self.uri, e)
    }

    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    pub fn usage(&self) -> SecretUsage {
        self.usage
    }

    /// The usage name, e.g. "client.libvirt secret" for a Ceph secret.
    pub fn usage_id(&self) -> Option<&str> {
        self.usage_id.as_deref()
    }

    /// Sets the raw secret value. For Ceph this is the decoded key (see
    /// [`Self::set_ceph_key`]), not its base64 text.
    pub fn set_value(&self, value: &[u8]) -> Result<()> {
        self.inner
            .set_value(value, 0)
            .map_err(|e| self.err(Operation::SetValue, e))
    }

    /// Sets the value from a Ceph key as Ceph prints it (base64, e.g. from
    /// `ceph auth get-key client.libvirt`): libvirt stores the decoded bytes.
    pub fn set_ceph_key(&self, key_base64: &str) -> Result<()> {
        let mut key = decode_ceph_key(key_base64)
            .map_err(|why| Error::invalid(Operation::SetValue, self.target(), &self.uri, why))?;
        let result = self.set_value(&key);
        key.fill(0);
        std::hint::black_box(&key);
        result
    }

    /// The raw value (libvirt's copy is wiped and freed). Fails for private secrets.
    pub fn value(&self) -> Result<Vec<u8>> {
        ffi::secret_value(&self.inner).map_err(|e| self.err(Operation::GetValue, e))
    }

    /// Removes the secret.
    pub fn undefine(&self) -> Result<()> {
        self.inner
            .undefine()
            .map_err(|e| self.err(Operation::Undefine, e))
    }
}

/// Decodes a Ceph key (standard base64 with padding, surrounding whitespace ignored).
pub fn decode_ceph_key(key_base64: &str) -> Result<Vec<u8>, String> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let invalid = || "the Ceph key is not valid base64".to_owned();
    let text = key_base64.trim().as_bytes();
    if text.is_empty() {
        return Err("the Ceph key is empty".to_owned());
    }
    if !text.len().is_multiple_of(4) {
        return Err(invalid());
    }
    let chunks = text.len() / 4;
    let mut out = Vec::with_capacity(chunks * 3);
    for (i, chunk) in text.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return Err(invalid());
        }
        let mut v = 0u32;
        for &c in &chunk[..4 - pad] {
            v = (v << 6) | value(c).ok_or_else(invalid)?;
        }
        v <<= 6 * pad as u32;
        out.extend_from_slice(&v.to_be_bytes()[1..4 - pad]);
    }
    Ok(out)
}

impl Hypervisor {
    /// Defines a Ceph secret (no value yet: see [`Secret::set_ceph_key`]). Defining it again
    /// with the same UUID updates it; the same usage name with another UUID is an error.
    pub fn define_ceph_secret(&self, spec: &CephSecretSpec) -> Result<Secret> {
        let target = Target::CephSecret(spec.usage_name.clone());
        let uuid = spec.uuid.unwrap_or_else(Uuid::new_v4);
        let secret = self
            .conn
            .define_secret_xml(&spec.to_xml(uuid), 0)
            .map_err(|e| self.err(Operation::Define, target.clone(), e))?;
        Secret::wrap(secret, &self.uri, target)
    }

    /// Makes sure the Ceph secret exists with this key: looks it up by usage name, defines it
    /// when missing, then sets the value. If it exists with another UUID than `spec.uuid`,
    /// fails (domains refer to secrets by UUID) and changes nothing.
    pub fn ensure_ceph_secret(&self, spec: &CephSecretSpec, key_base64: &str) -> Result<Secret> {
        let target = Target::CephSecret(spec.usage_name.clone());
        decode_ceph_key(key_base64)
            .map_err(|why| Error::invalid(Operation::SetValue, target.clone(), &self.uri, why))?;
        let secret = match self.find_ceph_secret(&spec.usage_name)? {
            Some(existing) => {
                if let Some(want) = spec.uuid.filter(|want| *want != existing.uuid()) {
                    return Err(Error::invalid(
                        Operation::Define,
                        target,
                        &self.uri,
                        format!(
                            "it exists with UUID {}, not the requested {want}",
                            existing.uuid()
                        ),
                    ));
                }
                existing
            }
            None => self.define_ceph_secret(spec)?,
        };
        secret.set_ceph_key(key_base64)?;
        Ok(secret)
    }

    /// The Ceph secret with this usage name; a missing one is a no-secret error.
    pub fn lookup_ceph_secret(&self, usage_name: &str) -> Result<Secret> {
        let target = Target::CephSecret(usage_name.to_owned());
        let secret = self
            .conn
            .lookup_secret_by_usage(sys::VIR_SECRET_USAGE_TYPE_CEPH as i32, usage_name)
            .map_err(|e| self.err(Operation::Lookup, target.clone(), e))?;
        Secret::wrap(secret, &self.uri, target)
    }

    /// Like [`Self::lookup_ceph_secret`], with `None` for a missing secret.
    pub fn find_ceph_secret(&self, usage_name: &str) -> Result<Option<Secret>> {
        match self.lookup_ceph_secret(usage_name) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_no_secret() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The secret with this UUID; a missing one is a no-secret error.
    pub fn lookup_secret_by_uuid(&self, uuid: Uuid) -> Result<Secret> {
        let target = Target::SecretUuid(uuid);
        let secret = self
            .conn
            .lookup_secret_by_uuid(uuid)
            .map_err(|e| self.err(Operation::Lookup, target.clone(), e))?;
        Secret::wrap(secret, &self.uri, target)
    }

    /// All secrets of the host, sorted by UUID. A secret removed while listing is left out.
    pub fn list_secrets(&self) -> Result<Vec<SecretSummary>> {
        let all = self
            .conn
            .list_all_secrets(0)
            .map_err(|e| self.err(Operation::ListSecrets, Target::Host, e))?;
        let mut out = Vec::with_capacity(all.len());
        for s in all {
            // Only client-side reads here; no RPC can fail with "no secret".
            let s = Secret::wrap(s, &self.uri, Target::Host)?;
            out.push(SecretSummary {
                uuid: s.uuid,
                usage: s.usage,
                usage_id: s.usage_id,
            });
        }
        out.sort_by_key(|s| s.uuid);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ceph_keys() {
        // A key as `ceph auth get-key` prints it: 28 bytes.
        let key = decode_ceph_key("AQBzKB1lAAAAABAAqPBQ3XSRNnE3PGVi2uYPfA==\n").unwrap();
        assert_eq!(key.len(), 28);
        assert_eq!(&key[..2], &[1, 0]);
        assert_eq!(decode_ceph_key("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_ceph_key("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(decode_ceph_key("aGk=").unwrap(), b"hi");
        assert_eq!(decode_ceph_key("aA==").unwrap(), b"h");
        for bad in ["", "   ", "aGVsbG8", "aGVs*G8=", "aA==aA==", "a===", "aGVsbG8=\0"] {
            assert!(decode_ceph_key(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn secret_xml_escapes() {
        let uuid = Uuid::nil();
        let xml = CephSecretSpec::new("client.<x> & 'y'")
            .with_description("d")
            .with_private(false)
            .to_xml(uuid);
        assert!(xml.contains("private='no'"));
        assert!(xml.contains("<uuid>00000000-0000-0000-0000-000000000000</uuid>"));
        assert!(xml.contains("<name>client.&lt;x&gt; &amp; &apos;y&apos;</name>"));
        assert!(xml.contains("<description>d</description>"));
    }
}
