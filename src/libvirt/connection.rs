//! The connection to one hypervisor (one libvirt URI).

use std::fmt;
use std::sync::{Arc, Once};

use uuid::Uuid;
use virt::connect::Connect;

use super::domain::{DefineOptions, Domain, StateInfo, domain_name_from_xml};
use super::error::{Error, Operation, Result, Target};

/// A libvirt version (`major.minor.release`), decoded from libvirt's
/// `major * 1_000_000 + minor * 1_000 + release` encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub release: u32,
}

impl Version {
    pub fn from_libvirt(encoded: u32) -> Self {
        Version {
            major: encoded / 1_000_000,
            minor: (encoded / 1_000) % 1_000,
            release: encoded % 1_000,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.release)
    }
}

/// What a hypervisor host reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The libvirt library version (of the daemon for remote URIs).
    pub libvirt_version: Version,
    /// The driver type: "QEMU", "TEST", ...
    pub hypervisor_type: String,
    /// The hypervisor version, e.g. QEMU 7.2.x; the test driver reports 0.0.2.
    pub hypervisor_version: Version,
    /// Active CPUs.
    pub cpus: u32,
    /// CPU model as reported by the node ("x86_64", "i686", ...).
    pub cpu_model: String,
    /// Expected CPU frequency in MHz (0 if unknown).
    pub cpu_mhz: u32,
    /// Memory size in KiB.
    pub memory_kib: u64,
    pub hostname: String,
}

/// One domain as listed by [`Hypervisor::list_domains`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSummary {
    pub name: String,
    pub uuid: Uuid,
    pub state: StateInfo,
}

/// A connection to one hypervisor through libvirt. `Send + Sync`; all methods block, so call
/// them from async code through `tokio::task::spawn_blocking`.
///
/// The connection is closed when the `Hypervisor` and every [`Domain`] and
/// [`Secret`](super::Secret) obtained from it are dropped.
#[derive(Clone)]
pub struct Hypervisor {
    pub(crate) conn: Connect,
    pub(crate) uri: Arc<str>,
}

impl fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hypervisor").field("uri", &self.uri).finish()
    }
}

static QUIET_ERRORS: Once = Once::new();

/// Stops libvirt from printing every error on stderr: the layer returns them instead.
fn silence_libvirt_errors() {
    QUIET_ERRORS.call_once(virt::error::clear_error_callback);
}

impl Hypervisor {
    /// Opens a read-write connection to `uri` (e.g. `qemu:///system`,
    /// `test:///path/to/node.xml`).
    pub fn connect(uri: &str) -> Result<Self> {
        silence_libvirt_errors();
        if uri.contains('\0') {
            return Err(Error::invalid(
                Operation::Connect,
                Target::Host,
                uri,
                "the URI contains a NUL byte",
            ));
        }
        let conn =
            Connect::open(Some(uri)).map_err(|e| Error::libvirt(Operation::Connect, Target::Host, uri, e))?;
        Ok(Hypervisor {
            conn,
            uri: Arc::from(uri),
        })
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Releases this handle. The underlying connection closes once the domains and secrets
    /// obtained from it are dropped as well.
    pub fn close(self) {
        drop(self)
    }

    /// Whether the connection still works (virConnectIsAlive): false after libvirtd went away,
    /// in which case every call fails with a connection error and the caller reconnects.
    pub fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    pub(crate) fn err(&self, op: Operation, target: Target, e: virt::error::Error) -> Error {
        Error::libvirt(op, target, &self.uri, e)
    }

    /// Versions, CPUs, memory and hostname of the host.
    pub fn host_info(&self) -> Result<HostInfo> {
        let err = |e| self.err(Operation::HostInfo, Target::Host, e);
        let node = self.conn.node_info().map_err(err)?;
        Ok(HostInfo {
            libvirt_version: Version::from_libvirt(self.conn.lib_version().map_err(err)?),
            hypervisor_type: self.conn.driver_type().map_err(err)?,
            hypervisor_version: Version::from_libvirt(self.conn.hyp_version().map_err(err)?),
            cpus: node.cpus,
            cpu_model: node.model,
            cpu_mhz: node.mhz,
            memory_kib: node.memory,
            hostname: self.conn.hostname().map_err(err)?,
        })
    }

    /// All domains, persistent or transient, running or not, sorted by name. A domain that
    /// disappears while listing is left out.
    pub fn list_domains(&self) -> Result<Vec<DomainSummary>> {
        let all = self
            .conn
            .list_all_domains(0)
            .map_err(|e| self.err(Operation::ListDomains, Target::Host, e))?;
        let mut out = Vec::with_capacity(all.len());
        for dom in all {
            let dom = Domain::wrap(dom, &self.uri, Operation::ListDomains)?;
            match dom.state() {
                Ok(state) => out.push(DomainSummary {
                    name: dom.name().to_owned(),
                    uuid: dom.uuid(),
                    state,
                }),
                Err(e) if e.is_no_domain() => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// The domains of the hypervisor, by name or UUID.
impl Hypervisor {
    /// Defines (or updates, when name and UUID match an existing one) a persistent domain.
    /// A name that exists with another UUID is an operation-failed error; malformed XML, or
    /// XML failing the schema with `validate`, is an invalid-XML error.
    pub fn define_domain(&self, xml: &str, options: DefineOptions) -> Result<Domain> {
        let target = || {
            domain_name_from_xml(xml)
                .map(Target::Domain)
                .unwrap_or(Target::DomainXml)
        };
        let flags = if options.validate {
            virt::sys::VIR_DOMAIN_DEFINE_VALIDATE
        } else {
            0
        };
        let dom = self
            .conn
            .define_domain_xml_flags(xml, flags)
            .map_err(|e| self.err(Operation::Define, target(), e))?;
        Domain::wrap(dom, &self.uri, Operation::Define)
    }

    /// The domain called `name`; a missing one is a no-domain error.
    pub fn lookup_domain(&self, name: &str) -> Result<Domain> {
        let dom = self
            .conn
            .lookup_domain_by_name(name)
            .map_err(|e| self.err(Operation::Lookup, Target::Domain(name.to_owned()), e))?;
        Domain::wrap(dom, &self.uri, Operation::Lookup)
    }

    /// The domain with this UUID; a missing one is a no-domain error.
    pub fn lookup_domain_by_uuid(&self, uuid: Uuid) -> Result<Domain> {
        let dom = self
            .conn
            .lookup_domain_by_uuid(uuid)
            .map_err(|e| self.err(Operation::Lookup, Target::DomainUuid(uuid), e))?;
        Domain::wrap(dom, &self.uri, Operation::Lookup)
    }

    /// Like [`Self::lookup_domain`], with `None` for a missing domain.
    pub fn find_domain(&self, name: &str) -> Result<Option<Domain>> {
        match self.lookup_domain(name) {
            Ok(dom) => Ok(Some(dom)),
            Err(e) if e.is_no_domain() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_decoding() {
        let v = Version::from_libvirt(9_000_000);
        assert_eq!(
            v,
            Version {
                major: 9,
                minor: 0,
                release: 0
            }
        );
        assert_eq!(Version::from_libvirt(7_002_022).to_string(), "7.2.22");
        assert_eq!(Version::from_libvirt(2).to_string(), "0.0.2");
    }

    #[test]
    fn hypervisor_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Hypervisor>();
        check::<Domain>();
        check::<super::super::Secret>();
    }
}
