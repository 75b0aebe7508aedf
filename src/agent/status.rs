//! What the agent reports on a VirtualMachine: `status.domain` and `status.restarts`, written
//! with server-side apply (field manager `seapath-agent`) on the status subresource, only when
//! they changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::backoff::whole_seconds;
use super::domain_reconcile::{Note, ObservedDomain, Ownership, reported_state};
use super::error::AgentError;
use crate::api::{DomainState, DomainStatus, RestartStatus, VirtualMachine};
use crate::field_manager;

/// An operation that failed, reported with the observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase reason, e.g. `DefineFailed`.
    pub reason: &'static str,
    pub message: String,
}

/// The `status.domain` to report (without `observedTime`, set when written).
pub fn domain_status(
    node: &str,
    domain_name: &str,
    generation: Option<i64>,
    observed: Option<&ObservedDomain>,
    note: Option<&Note>,
    failure: Option<&Failure>,
) -> DomainStatus {
    let taken_over = note == Some(&Note::TakenOver);
    let ours = observed.filter(|d| taken_over || matches!(d.ownership, Ownership::Ours | Ownership::Stale));
    let mut state = ours.map_or(DomainState::Absent, |d| reported_state(d.state.state));
    let mut reason = ours.map(|d| d.state.reason_name().to_owned());
    let mut message = None;
    match note {
        None => {}
        Some(Note::WaitingForStorage) => {
            reason = Some("WaitingForStorage".into());
            message = Some("waiting for the VM's storage (condition StorageReady)".into());
        }
        Some(Note::NameConflict(owner)) => {
            reason = Some("NameConflict".into());
            message = Some(match owner {
                None => format!(
                    "a domain named '{domain_name}' that the operator did not define exists on this host; it is left alone"
                ),
                Some(o) => format!(
                    "the domain named '{domain_name}' on this host belongs to VirtualMachine {}/{}",
                    o.namespace, o.name
                ),
            });
        }
        Some(Note::RestartRequired) => {
            reason = Some("RestartRequired".into());
            message = Some(
                "the VM's XML changed; the running domain keeps its previous definition until it stops"
                    .into(),
            );
        }
        Some(Note::TakenOver) => {
            reason = Some("TakenOver".into());
            message = Some(
                "the domain was running, started outside the operator (by vm_manager or Pacemaker, from the XML stored in RBD); the agent took it over without restarting it"
                    .into(),
            );
        }
        Some(Note::BackingOff {
            failures,
            retry_after,
        }) => {
            reason = Some("BackingOff".into());
            message = Some(format!(
                "stopped unexpectedly or failed to start {failures} time(s) in a row; next start at {retry_after}"
            ));
        }
        Some(Note::GaveUp { failures }) => {
            state = DomainState::Failed;
            reason = Some("CrashLoop".into());
            message = Some(format!(
                "stopped unexpectedly or failed to start {failures} times in a row; not restarted until the VirtualMachine's spec changes"
            ));
        }
        Some(Note::MigratedAway) => {
            reason = Some("MigratedAway".into());
            message = Some("the domain left this host for the live migration's target".into());
        }
        Some(Note::Incoming) if ours.is_none() => reason = Some("Incoming".into()),
        Some(Note::Incoming) => {}
        Some(Note::Absent(why)) if ours.is_none() => reason = Some(why.as_str().into()),
        Some(Note::Absent(_)) => {}
    }
    if let Some(f) = failure {
        reason = Some(f.reason.into());
        message = Some(match message {
            Some(m) => format!("{}; {m}", f.message),
            None => f.message.clone(),
        });
    }
    DomainStatus {
        node: node.to_owned(),
        name: domain_name.to_owned(),
        state,
        reason,
        message,
        observed_generation: generation,
        observed_time: None,
        migration: None,
    }
}

/// Whether two reports say the same, `observedTime` aside.
pub fn same_report(a: &DomainStatus, b: &DomainStatus) -> bool {
    DomainStatus {
        observed_time: None,
        ..a.clone()
    } == DomainStatus {
        observed_time: None,
        ..b.clone()
    }
}

/// What a status write left on the server.
pub struct Written {
    pub domain: DomainStatus,
    /// The object's version after the write, for a later write conditional on it.
    pub resource_version: Option<String>,
}

/// Writes `status.domain` (stamped now) and `status.restarts` (removed when `None`).
/// With `resource_version`, the write only succeeds on that version of the object.
pub async fn apply(
    api: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    mut domain: DomainStatus,
    restarts: Option<&RestartStatus>,
    resource_version: Option<String>,
) -> Result<Written, AgentError> {
    domain.observed_time = Some(Time(whole_seconds(Timestamp::now())));
    let mut status = json!({ "domain": &domain });
    if let Some(r) = restarts {
        status["restarts"] = json!(r);
    }
    let mut metadata = json!({ "name": vm.name_any() });
    if let Some(ns) = vm.namespace() {
        metadata["namespace"] = json!(ns);
    }
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let patch = json!({
        "apiVersion": VirtualMachine::api_version(&()),
        "kind": VirtualMachine::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    let params = PatchParams::apply(field_manager::AGENT).force();
    let written = api
        .patch_status(&vm.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| {
            AgentError::kube(
                format!(
                    "VM {}/{}: write status.domain",
                    vm.namespace().unwrap_or_default(),
                    vm.name_any()
                ),
                e,
            )
        })?;
    Ok(Written {
        domain,
        resource_version: written.resource_version(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::domain_reconcile::AbsentReason;
    use crate::domain_xml::DomainOwner;
    use crate::libvirt::{DomainState as Lv, StateInfo};

    fn observed(state: Lv, reason: i32, ownership: Ownership) -> ObservedDomain {
        ObservedDomain {
            state: StateInfo { state, reason },
            uuid: uuid::Uuid::nil(),
            ownership,
            xml_sha256: None,
        }
    }

    #[test]
    fn reports_the_observed_state_with_libvirt_reason() {
        let d = observed(Lv::Running, 1, Ownership::Ours);
        let s = domain_status("hv1", "ns_vm", Some(4), Some(&d), None, None);
        assert_eq!(s.state, DomainState::Running);
        assert_eq!(s.reason.as_deref(), Some("booted"));
        assert_eq!(s.message, None);
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!((s.node.as_str(), s.name.as_str()), ("hv1", "ns_vm"));
        let none = domain_status("hv1", "ns_vm", Some(4), None, None, None);
        assert_eq!(none.state, DomainState::Absent);
        assert_eq!(none.reason, None);
    }

    #[test]
    fn notes_and_failures() {
        let off = observed(Lv::ShutOff, 2, Ownership::Ours);
        let s = domain_status(
            "hv1",
            "d",
            None,
            Some(&off),
            Some(&Note::GaveUp { failures: 5 }),
            None,
        );
        assert_eq!(s.state, DomainState::Failed);
        assert_eq!(s.reason.as_deref(), Some("CrashLoop"));
        assert!(s.message.unwrap().contains("5 times"));

        let foreign = observed(Lv::Running, 1, Ownership::Foreign);
        let s = domain_status(
            "hv1",
            "d",
            None,
            Some(&foreign),
            Some(&Note::NameConflict(None)),
            None,
        );
        assert_eq!(s.state, DomainState::Absent);
        assert_eq!(s.reason.as_deref(), Some("NameConflict"));
        let other = Note::NameConflict(Some(DomainOwner::new("a", "b", "c")));
        let s = domain_status("hv1", "d", None, Some(&foreign), Some(&other), None);
        assert!(s.message.unwrap().contains("a/b"));

        let s = domain_status(
            "hv1",
            "d",
            None,
            None,
            Some(&Note::Absent(AbsentReason::Disabled)),
            None,
        );
        assert_eq!(
            (s.state, s.reason.as_deref()),
            (DomainState::Absent, Some("Disabled"))
        );

        let failure = Failure {
            reason: "StartFailed",
            message: "libvirt start: boom".into(),
        };
        let s = domain_status(
            "hv1",
            "d",
            None,
            Some(&off),
            Some(&Note::GaveUp { failures: 3 }),
            Some(&failure),
        );
        assert_eq!(s.state, DomainState::Failed);
        assert_eq!(s.reason.as_deref(), Some("StartFailed"));
        let message = s.message.unwrap();
        assert!(message.starts_with("libvirt start: boom; "), "{message}");
    }

    #[test]
    fn observed_time_does_not_count_as_a_change() {
        let a = domain_status("hv1", "d", Some(1), None, None, None);
        let mut b = a.clone();
        b.observed_time = Some(Time(Timestamp::now()));
        assert!(same_report(&a, &b));
        b.observed_generation = Some(2);
        assert!(!same_report(&a, &b));
    }
}
