//! Domains: define, look up, start, stop, undefine, state, XML.

use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use quick_xml::events::Event;
use uuid::Uuid;
use virt::sys;

use super::error::{Error, Operation, Result, Target};

/// How often [`Domain::wait_for_shutoff`] and [`Domain::shutdown_with_timeout`] poll the state.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The state of a domain, mapped from libvirt's `virDomainState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainState {
    /// VIR_DOMAIN_NOSTATE, or a state this layer does not know.
    NoState,
    Running,
    Blocked,
    Paused,
    /// VIR_DOMAIN_SHUTDOWN: the guest is being shut down.
    ShuttingDown,
    ShutOff,
    Crashed,
    PmSuspended,
}

impl DomainState {
    fn from_raw(raw: u32) -> Self {
        match raw {
            sys::VIR_DOMAIN_RUNNING => DomainState::Running,
            sys::VIR_DOMAIN_BLOCKED => DomainState::Blocked,
            sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
            sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
            sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff,
            sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
            sys::VIR_DOMAIN_PMSUSPENDED => DomainState::PmSuspended,
            _ => DomainState::NoState,
        }
    }

    /// Whether the domain is (or may be) active, i.e. not shut off. A `Crashed` domain is
    /// active: libvirt keeps a crashed guest's process (on_crash = preserve) until destroyed.
    pub fn is_active(self) -> bool {
        self != DomainState::ShutOff
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainState::NoState => "no state",
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::ShuttingDown => "shutting down",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "pmsuspended",
        })
    }
}

/// A domain state plus libvirt's reason code for it (its meaning depends on the state, e.g.
/// for `ShutOff` 1 = shutdown, 2 = destroyed, 3 = crashed, 6 = failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateInfo {
    pub state: DomainState,
    /// libvirt's raw `virDomain<State>Reason` value.
    pub reason: i32,
}

impl StateInfo {
    /// libvirt's name of the reason, as `virsh domstate --reason` prints it ("booted",
    /// "destroyed", "ioerror", ...); "unknown" when libvirt gives none or one this layer does
    /// not know.
    pub fn reason_name(&self) -> &'static str {
        const RUNNING: &[&str] = &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from snapshot",
            "unpaused",
            "migration canceled",
            "save canceled",
            "event wakeup",
            "crashed",
            "post-copy",
            "post-copy failed",
        ];
        const PAUSED: &[&str] = &[
            "unknown",
            "user",
            "migrating",
            "saving",
            "dumping",
            "I/O error",
            "watchdog",
            "from snapshot",
            "shutting down",
            "creating snapshot",
            "crashed",
            "starting up",
            "post-copy",
            "post-copy failed",
            "api error",
        ];
        const SHUTDOWN: &[&str] = &["unknown", "user"];
        const SHUTOFF: &[&str] = &[
            "unknown",
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from snapshot",
            "daemon",
        ];
        const CRASHED: &[&str] = &["unknown", "panicked"];
        let table: &[&str] = match self.state {
            DomainState::Running => RUNNING,
            DomainState::Paused => PAUSED,
            DomainState::ShuttingDown => SHUTDOWN,
            DomainState::ShutOff => SHUTOFF,
            DomainState::Crashed => CRASHED,
            _ => &[],
        };
        usize::try_from(self.reason)
            .ok()
            .and_then(|i| table.get(i))
            .copied()
            .unwrap_or("unknown")
    }
}

impl fmt::Display for StateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.state, self.reason_name())
    }
}

/// Options of [`Hypervisor::define_domain`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefineOptions {
    /// Validate the XML against libvirt's RNG schema (VIR_DOMAIN_DEFINE_VALIDATE): unknown
    /// elements are then an error instead of being dropped silently.
    pub validate: bool,
}

impl DefineOptions {
    pub fn validated() -> Self {
        DefineOptions { validate: true }
    }
}

/// What [`Domain::undefine`] removes besides the definition. The test driver supports only
/// `managed_save` and `snapshots_metadata`; asking it for more fails with an invalid-argument
/// error ("unsupported flags").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UndefineOptions {
    /// Remove a managed-save image (VIR_DOMAIN_UNDEFINE_MANAGED_SAVE).
    pub managed_save: bool,
    /// Remove snapshot metadata (VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA).
    pub snapshots_metadata: bool,
    /// Remove checkpoint metadata (VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA).
    pub checkpoints_metadata: bool,
    /// Remove the UEFI NVRAM file (VIR_DOMAIN_UNDEFINE_NVRAM).
    pub nvram: bool,
}

impl UndefineOptions {
    /// Everything a QEMU domain can leave behind: managed save, snapshot and checkpoint
    /// metadata, NVRAM.
    pub fn everything() -> Self {
        UndefineOptions {
            managed_save: true,
            snapshots_metadata: true,
            checkpoints_metadata: true,
            nvram: true,
        }
    }

    /// What the test driver accepts: managed save and snapshot metadata.
    pub fn test_driver() -> Self {
        UndefineOptions {
            managed_save: true,
            snapshots_metadata: true,
            ..Default::default()
        }
    }

    fn flags(self) -> sys::virDomainUndefineFlagsValues {
        let mut flags = 0;
        if self.managed_save {
            flags |= sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
        }
        if self.snapshots_metadata {
            flags |= sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        }
        if self.checkpoints_metadata {
            flags |= sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
        }
        if self.nvram {
            flags |= sys::VIR_DOMAIN_UNDEFINE_NVRAM;
        }
        flags
    }
}

/// Which XML description [`Domain::xml`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmlSource {
    /// The live configuration of a running domain (the persistent one when it is shut off).
    Active,
    /// The persistent configuration used at the next start (VIR_DOMAIN_XML_INACTIVE).
    Inactive,
}

/// How [`Domain::shutdown_with_timeout`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The domain was not running.
    AlreadyOff,
    /// The guest shut down by itself within the timeout.
    Graceful,
    /// The guest did not shut down in time and was destroyed (powered off).
    Destroyed,
}

/// A domain on one hypervisor. Holds a reference to the connection; `Send + Sync`; all
/// methods block.
#[derive(Clone)]
pub struct Domain {
    pub(super) inner: virt::domain::Domain,
    name: String,
    uuid: Uuid,
    uri: Arc<str>,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("name", &self.name)
            .field("uuid", &self.uuid)
            .field("uri", &self.uri)
            .finish()
    }
}

impl Domain {
    /// Wraps a virt domain, reading its name and UUID (both kept client-side by libvirt).
    pub(crate) fn wrap(inner: virt::domain::Domain, uri: &Arc<str>, op: Operation) -> Result<Self> {
        let name = inner
            .name()
            .map_err(|e| Error::libvirt(op, Target::DomainXml, uri, e))?;
        let uuid = inner
            .uuid()
            .map_err(|e| Error::libvirt(op, Target::Domain(name.clone()), uri, e))?;
        Ok(Domain {
            inner,
            name,
            uuid,
            uri: Arc::clone(uri),
        })
    }

    pub(super) fn err(&self, op: Operation, e: virt::error::Error) -> Error {
        Error::libvirt(op, Target::Domain(self.name.clone()), &self.uri, e)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The URI of the hypervisor this domain lives on.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Starts the defined domain (virDomainCreate). Starting a running domain is an
    /// operation-invalid error.
    pub fn start(&self) -> Result<()> {
        self.inner.create().map_err(|e| self.err(Operation::Start, e))
    }

    /// Asks the guest to shut down (ACPI power button for QEMU) and returns at once. The test
    /// driver shuts the domain off immediately.
    pub fn shutdown(&self) -> Result<()> {
        self.inner
            .shutdown()
            .map_err(|e| self.err(Operation::Shutdown, e))
    }

    /// Powers the domain off at once (virDomainDestroy). Destroying a domain that is not
    /// running is an operation-invalid error.
    pub fn destroy(&self) -> Result<()> {
        self.inner.destroy().map_err(|e| self.err(Operation::Destroy, e))
    }

    /// Removes the persistent definition (a running domain keeps running as a transient one).
    pub fn undefine(&self, options: UndefineOptions) -> Result<()> {
        self.inner
            .undefine_flags(options.flags())
            .map_err(|e| self.err(Operation::Undefine, e))
    }

    /// The current state and its reason.
    pub fn state(&self) -> Result<StateInfo> {
        let (state, reason) = self.inner.state().map_err(|e| self.err(Operation::GetState, e))?;
        // virt 0.5.0's Domain::state() drops the error of virDomainGetState and returns the
        // untouched state -1 instead. libvirt never reports a negative state on success, so -1
        // means the call failed, and virGetLastError (Error::last_error) still holds that
        // call's error: it is per thread and nothing else ran in between.
        let state_raw = state.to_raw();
        if state_raw as i32 == -1 {
            return Err(self.err(Operation::GetState, virt::error::Error::last_error()));
        }
        Ok(StateInfo {
            state: DomainState::from_raw(state_raw),
            reason: raw_reason(reason),
        })
    }

    /// The domain's XML description.
    pub fn xml(&self, source: XmlSource) -> Result<String> {
        let flags = match source {
            XmlSource::Active => 0,
            XmlSource::Inactive => sys::VIR_DOMAIN_XML_INACTIVE,
        };
        self.inner
            .xml_desc(flags)
            .map_err(|e| self.err(Operation::GetXml, e))
    }

    /// Waits until the domain is shut off, polling every 100 ms. Returns the
    /// final state, or `None` when `timeout` passed first.
    pub fn wait_for_shutoff(&self, timeout: Duration) -> Result<Option<StateInfo>> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state()?;
            if !state.state.is_active() {
                return Ok(Some(state));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Shuts the domain down gracefully and, if it is still running after `timeout`, destroys
    /// it. A domain that cannot take the request at all (e.g. paused: libvirt refuses the
    /// shutdown) is destroyed at once. Blocks for up to `timeout` (plus the destroy): from async
    /// code, run it in `tokio::task::spawn_blocking`.
    pub fn shutdown_with_timeout(&self, timeout: Duration) -> Result<ShutdownOutcome> {
        if !self.state()?.state.is_active() {
            return Ok(ShutdownOutcome::AlreadyOff);
        }
        if let Err(e) = self.shutdown() {
            // It may have stopped between the state check and the request.
            if e.is_operation_invalid() && !self.state()?.state.is_active() {
                return Ok(ShutdownOutcome::AlreadyOff);
            }
            // A guest that ignores or cannot take the request is powered off below.
            if !e.is_operation_invalid() && !e.is_unsupported() && !e.is_operation_failed() {
                return Err(e);
            }
        } else if self.wait_for_shutoff(timeout)?.is_some() {
            return Ok(ShutdownOutcome::Graceful);
        }
        match self.destroy() {
            Ok(()) => Ok(ShutdownOutcome::Destroyed),
            // It stopped by itself right at the deadline.
            Err(e) if e.is_operation_invalid() && !self.state()?.state.is_active() => {
                Ok(ShutdownOutcome::Graceful)
            }
            Err(e) => Err(e),
        }
    }
}

/// libvirt's raw reason code from virt's typed reason.
fn raw_reason(reason: virt::domain::DomainStateReasonEnum) -> i32 {
    use virt::domain::DomainStateReason as R;
    use virt::enumutil::Enum;
    match reason {
        Enum::Known(R::NoState(r)) => r.to_raw() as i32,
        Enum::Known(R::Running(r)) => r.to_raw() as i32,
        Enum::Known(R::Blocked(r)) => r.to_raw() as i32,
        Enum::Known(R::Paused(r)) => r.to_raw() as i32,
        Enum::Known(R::Shutdown(r)) => r.to_raw() as i32,
        Enum::Known(R::Shutoff(r)) => r.to_raw() as i32,
        Enum::Known(R::Crashed(r)) => r.to_raw() as i32,
        Enum::Known(R::PMSuspended(r)) => r.to_raw() as i32,
        Enum::Unknown(r) => r,
    }
}

/// The `<name>` of a `<domain>` document, best effort (used to name the domain in errors).
pub(super) fn domain_name_from_xml(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut in_name = false;
    let mut name = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                depth += 1;
                let tag = e.name();
                if depth == 1 && tag.as_ref() != "domain" {
                    return None;
                }
                in_name = depth == 2 && tag.as_ref() == "name";
            }
            Event::End(_) => {
                if in_name {
                    let name = name.trim();
                    return (!name.is_empty()).then(|| name.to_owned());
                }
                depth = depth.checked_sub(1)?;
            }
            Event::Text(t) if in_name => name.push_str(&t.xml10_content()),
            Event::CData(t) if in_name => name.push_str(&t),
            Event::GeneralRef(r) if in_name => {
                let c = match r.resolve_char_ref().ok()? {
                    Some(c) => c,
                    None => quick_xml::escape::resolve_xml_entity(&r)?.chars().next()?,
                };
                name.push(c);
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_from_xml() {
        assert_eq!(
            domain_name_from_xml("<domain type='kvm'><uuid>x</uuid><name> vm&amp;1 </name></domain>")
                .as_deref(),
            Some("vm&1")
        );
        assert_eq!(
            domain_name_from_xml(
                "<?xml version='1.0'?>\n<domain><devices><name>no</name></devices><name>ok</name></domain>"
            )
            .as_deref(),
            Some("ok")
        );
        assert_eq!(domain_name_from_xml("<network><name>n</name></network>"), None);
        assert_eq!(domain_name_from_xml("not xml <"), None);
    }

    #[test]
    fn state_reason_names() {
        let s = StateInfo {
            state: DomainState::ShutOff,
            reason: 2,
        };
        assert_eq!(s.reason_name(), "destroyed");
        assert_eq!(s.to_string(), "shut off (destroyed)");
        let s = StateInfo {
            state: DomainState::Running,
            reason: 99,
        };
        assert_eq!(s.reason_name(), "unknown");
        assert!(DomainState::Paused.is_active());
        assert!(DomainState::Crashed.is_active());
        assert!(!DomainState::ShutOff.is_active());
    }

    #[test]
    fn undefine_flags() {
        assert_eq!(UndefineOptions::default().flags(), 0);
        assert_eq!(UndefineOptions::test_driver().flags(), 3);
        assert_eq!(UndefineOptions::everything().flags(), 1 | 2 | 4 | 16);
    }
}
