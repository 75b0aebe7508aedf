//! The agent's libvirt I/O: observe, define, start, stop, undefine, list marked domains.
//! Every function here blocks; the agent calls them through `Libvirt::run` (spawn_blocking).
//! Calls that change something are counted in [`AgentStats`].

use std::time::Duration;

use tracing::{debug, warn};
use uuid::Uuid;

use super::connection::AgentStats;
use super::domain_reconcile::{ObservedDomain, Ownership, StoredXml};
use super::error::AgentError;
use crate::domain_xml::{self, DomainOwner, OwnerMarker};
use crate::libvirt::{
    DefineOptions, Domain, HostInfo, Hypervisor, ShutdownOutcome, StateInfo, UndefineOptions, XmlSource,
};

/// Lowercase hexadecimal SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity of a stored XML: its UUID and digest.
pub fn stored_identity(xml: &str) -> Result<StoredXml, domain_xml::DomainXmlError> {
    Ok(StoredXml {
        uuid: domain_xml::extract_uuid(xml)?,
        sha256: sha256_hex(xml),
    })
}

/// The XML to define: the stored one, named `domain_name`, marked for `owner` with the
/// stored text's digest.
pub fn prepare_xml(
    stored: &str,
    domain_name: &str,
    owner: &DomainOwner,
) -> Result<String, domain_xml::DomainXmlError> {
    let marker = OwnerMarker::new(owner.clone()).with_xml_sha256(sha256_hex(stored));
    domain_xml::set_name_and_owner(stored, domain_name, &marker)
}

fn lv(context: &str) -> impl Fn(crate::libvirt::Error) -> AgentError + '_ {
    move |e| AgentError::libvirt(context, e)
}

/// What libvirt's undefine accepts on this connection (the test driver refuses NVRAM and
/// checkpoint flags).
fn undefine_options(hv: &Hypervisor) -> UndefineOptions {
    if hv.uri().starts_with("test:") {
        UndefineOptions::test_driver()
    } else {
        UndefineOptions::everything()
    }
}

/// The domain's owner marker, if it has a readable one.
fn marker_of(domain: &Domain) -> Result<Option<OwnerMarker>, crate::libvirt::Error> {
    let xml = domain.xml(XmlSource::Inactive)?;
    Ok(match domain_xml::extract_owner_marker(&xml) {
        Ok(marker) => marker,
        Err(e) => {
            warn!(
                domain = domain.name(),
                "unreadable owner marker, treating the domain as foreign: {e}"
            );
            None
        }
    })
}

/// The domain `name` and whose it is, relative to `owner`; `None` if there is none.
pub fn observe(
    hv: &Hypervisor,
    context: &str,
    name: &str,
    owner: &DomainOwner,
) -> Result<Option<ObservedDomain>, AgentError> {
    let Some(domain) = hv.find_domain(name).map_err(lv(context))? else {
        return Ok(None);
    };
    let state = match domain.state() {
        Ok(state) => state,
        Err(e) if e.is_no_domain() => return Ok(None),
        Err(e) => return Err(AgentError::libvirt(context, e)),
    };
    let marker = match marker_of(&domain) {
        Ok(marker) => marker,
        Err(e) if e.is_no_domain() => return Ok(None),
        Err(e) => return Err(AgentError::libvirt(context, e)),
    };
    let (ownership, xml_sha256) = match marker {
        None => (Ownership::Foreign, None),
        Some(m) if m.owner.uid == owner.uid => (Ownership::Ours, m.xml_sha256),
        Some(m) if m.owner.namespace == owner.namespace && m.owner.name == owner.name => {
            (Ownership::Stale, m.xml_sha256)
        }
        Some(m) => (Ownership::OtherVm(m.owner), m.xml_sha256),
    };
    Ok(Some(ObservedDomain {
        state,
        uuid: domain.uuid(),
        ownership,
        xml_sha256,
    }))
}

/// Defines (or redefines in place) the domain from prepared XML.
pub fn define(hv: &Hypervisor, stats: &AgentStats, context: &str, xml: &str) -> Result<Uuid, AgentError> {
    stats.libvirt_write("define");
    let domain = hv
        .define_domain(xml, DefineOptions::default())
        .map_err(lv(context))?;
    debug!(domain = domain.name(), "defined");
    Ok(domain.uuid())
}

/// Starts the domain `name`.
pub fn start(hv: &Hypervisor, stats: &AgentStats, context: &str, name: &str) -> Result<(), AgentError> {
    let domain = hv.lookup_domain(name).map_err(lv(context))?;
    stats.libvirt_write("start");
    domain.start().map_err(lv(context))
}

/// Shuts the domain down gracefully within `timeout`, then destroys it. A missing domain is
/// already off.
pub fn stop(
    hv: &Hypervisor,
    stats: &AgentStats,
    context: &str,
    name: &str,
    timeout: Duration,
) -> Result<ShutdownOutcome, AgentError> {
    let Some(domain) = hv.find_domain(name).map_err(lv(context))? else {
        return Ok(ShutdownOutcome::AlreadyOff);
    };
    stats.libvirt_write("shutdown");
    domain.shutdown_with_timeout(timeout).map_err(lv(context))
}

/// Powers the domain off at once; one that is not running is fine.
pub fn destroy(hv: &Hypervisor, stats: &AgentStats, context: &str, name: &str) -> Result<(), AgentError> {
    let Some(domain) = hv.find_domain(name).map_err(lv(context))? else {
        return Ok(());
    };
    stats.libvirt_write("destroy");
    match domain.destroy() {
        Ok(()) => Ok(()),
        Err(e) if e.is_operation_invalid() && !domain.state().map_err(lv(context))?.state.is_active() => {
            Ok(())
        }
        Err(e) => Err(AgentError::libvirt(context, e)),
    }
}

/// Removes the domain's definition; a missing domain is fine.
pub fn undefine(hv: &Hypervisor, stats: &AgentStats, context: &str, name: &str) -> Result<(), AgentError> {
    let Some(domain) = hv.find_domain(name).map_err(lv(context))? else {
        return Ok(());
    };
    stats.libvirt_write("undefine");
    match domain.undefine(undefine_options(hv)) {
        Ok(()) => Ok(()),
        Err(e) if e.is_no_domain() => Ok(()),
        Err(e) => Err(AgentError::libvirt(context, e)),
    }
}

/// A domain of this host carrying the operator's owner marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkedDomain {
    pub name: String,
    pub uuid: Uuid,
    pub state: StateInfo,
    pub owner: DomainOwner,
    /// Memory of its persistent definition in KiB (0 if unreadable).
    pub memory_kib: u64,
    /// Its marker has no digest: the agent did not define it. It was started from the XML the
    /// controller stores in RBD, as vm_manager and Pacemaker's VirtualDomain start it.
    pub started_outside: bool,
}

impl MarkedDomain {
    /// `namespace/name` of its VM.
    pub fn owner_key(&self) -> String {
        format!("{}/{}", self.owner.namespace, self.owner.name)
    }
}

/// The domains of a host as the agent sorts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostDomains {
    /// Every domain carrying an owner marker, sorted by name.
    pub marked: Vec<MarkedDomain>,
    /// Names of the running domains the agent did not define (no marker, or a marker without
    /// its digest): vm_manager's and Pacemaker's guests, sorted.
    pub started_outside: Vec<String>,
    /// `namespace/name` of the VMs the agent's cache assigns to this host, domain or not: the
    /// agent may still define them (see `Context::assignment_gate`).
    pub assigned: Vec<String>,
    /// When the listing was read.
    pub seen_at: k8s_openapi::jiff::Timestamp,
}

/// Every domain of the host that carries an owner marker, sorted by name.
pub fn list_marked(hv: &Hypervisor) -> Result<Vec<MarkedDomain>, AgentError> {
    Ok(scan(hv)?.marked)
}

fn scan(hv: &Hypervisor) -> Result<HostDomains, AgentError> {
    let context = "list the host's domains";
    let mut out = HostDomains::default();
    for summary in hv.list_domains().map_err(lv(context))? {
        let domain = match hv.lookup_domain_by_uuid(summary.uuid) {
            Ok(d) => d,
            Err(e) if e.is_no_domain() => continue,
            Err(e) => return Err(AgentError::libvirt(context, e)),
        };
        let xml = match domain.xml(XmlSource::Inactive) {
            Ok(xml) => xml,
            Err(e) if e.is_no_domain() => continue,
            Err(e) => return Err(AgentError::libvirt(context, e)),
        };
        let marker = match domain_xml::extract_owner_marker(&xml) {
            Ok(marker) => marker,
            Err(e) => {
                warn!(domain = %summary.name, "unreadable owner marker, leaving the domain alone: {e}");
                continue;
            }
        };
        let started_outside = marker.as_ref().is_none_or(|m| m.xml_sha256.is_none());
        if started_outside && summary.state.state.is_active() {
            out.started_outside.push(summary.name.clone());
        }
        let Some(marker) = marker else {
            continue;
        };
        out.marked.push(MarkedDomain {
            name: summary.name,
            uuid: summary.uuid,
            state: summary.state,
            started_outside,
            owner: marker.owner,
            memory_kib: domain_xml::extract_memory_kib(&xml).unwrap_or(0),
        });
    }
    out.started_outside.sort();
    Ok(out)
}

/// The host's capacity and its domains.
pub fn host_snapshot(hv: &Hypervisor) -> Result<(HostInfo, HostDomains), AgentError> {
    let info = hv.host_info().map_err(lv("host information"))?;
    Ok((info, scan(hv)?))
}

/// Shuts down (within `timeout`) and undefines a marked domain, if it still carries the
/// marker of `owner` (checked again right before acting).
pub fn remove_marked(
    hv: &Hypervisor,
    stats: &AgentStats,
    name: &str,
    owner: &DomainOwner,
    timeout: Duration,
) -> Result<bool, AgentError> {
    let context = format!("remove domain '{name}' of VM {}/{}", owner.namespace, owner.name);
    let Some(domain) = hv.find_domain(name).map_err(lv(&context))? else {
        return Ok(false);
    };
    match marker_of(&domain) {
        Ok(Some(m)) if m.owner == *owner => {}
        Ok(_) => return Ok(false),
        Err(e) if e.is_no_domain() => return Ok(false),
        Err(e) => return Err(AgentError::libvirt(context, e)),
    }
    if timeout.is_zero() {
        destroy(hv, stats, &context, name)?;
    } else {
        stop(hv, stats, &context, name, timeout)?;
    }
    undefine(hv, stats, &context, name)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_identity() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let xml = "<domain><uuid>6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11</uuid><memory>1024</memory></domain>";
        let id = stored_identity(xml).unwrap();
        assert_eq!(
            id.uuid.unwrap().to_string(),
            "6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11"
        );
        assert_eq!(id.sha256, sha256_hex(xml));
    }

    #[test]
    fn prepared_xml_carries_name_marker_and_digest() {
        let stored = "<domain type='test'><name>guest0</name><memory>1024</memory></domain>";
        let owner = DomainOwner::new("prod", "guest0", "uid-1");
        let xml = prepare_xml(stored, "prod_guest0", &owner).unwrap();
        let marker = domain_xml::extract_owner_marker(&xml).unwrap().unwrap();
        assert_eq!(marker.owner, owner);
        assert_eq!(marker.xml_sha256.as_deref(), Some(sha256_hex(stored).as_str()));
        assert!(xml.contains("<name>prod_guest0</name>"), "{xml}");
    }
}
