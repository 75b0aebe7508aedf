//! The SEAPATH status of a VM, derived from what Ceph and the node agent observed — never from
//! the desired state alone.

use crate::api::{DesiredState, DomainState, DomainStatus, Phase};

/// What the controller knows of a VM when it computes the phase.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The RBD group and images exist.
    pub storage_exists: bool,
    /// The node the controller placed the VM on.
    pub placed_node: Option<&'a str>,
    /// The agent's last report.
    pub domain: Option<&'a DomainStatus>,
}

/// The domain state on the node the VM is placed on. A report from another node (an earlier
/// placement) says nothing about the current one.
fn domain_state_on_placed_node(observed: &Observed) -> DomainState {
    match (observed.domain, observed.placed_node) {
        (Some(domain), Some(node)) if domain.node == node => domain.state,
        _ => DomainState::Absent,
    }
}

/// A domain reported running (or still stopping) on a node the VM is no longer placed on.
fn running_elsewhere(observed: &Observed) -> bool {
    observed.domain.is_some_and(|d| {
        Some(d.node.as_str()) != observed.placed_node
            && matches!(
                d.state,
                DomainState::Running | DomainState::Paused | DomainState::ShuttingDown
            )
    })
}

pub fn derive(desired: DesiredState, observed: &Observed) -> Phase {
    if !observed.storage_exists {
        return Phase::Undefined;
    }
    if running_elsewhere(observed) {
        return Phase::Stopping;
    }
    let state = domain_state_on_placed_node(observed);
    match (desired, state) {
        (_, DomainState::Failed) => Phase::Failed,
        (DesiredState::Disabled, DomainState::Absent) => Phase::Disabled,
        (DesiredState::Disabled, _) => Phase::Stopping,
        (_, DomainState::ShuttingDown) => Phase::Stopping,
        (DesiredState::Started, DomainState::Running) => Phase::Started,
        (DesiredState::Started, _) => Phase::Starting,
        (DesiredState::Stopped, DomainState::Running | DomainState::Paused) => Phase::Stopping,
        (DesiredState::Stopped, DomainState::ShutOff | DomainState::Crashed) => Phase::Stopped,
        // Enabled but the agent has not defined the domain yet: not on the cluster so far.
        (DesiredState::Stopped, DomainState::Absent) => Phase::Disabled,
    }
}

/// The phase that means the desired state is reached.
pub fn target(desired: DesiredState) -> Phase {
    match desired {
        DesiredState::Started => Phase::Started,
        DesiredState::Stopped => Phase::Stopped,
        DesiredState::Disabled => Phase::Disabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(node: &str, state: DomainState) -> DomainStatus {
        DomainStatus {
            node: node.into(),
            name: "vm".into(),
            state,
            ..Default::default()
        }
    }

    fn phase(desired: DesiredState, storage: bool, node: Option<&str>, dom: Option<DomainStatus>) -> Phase {
        derive(
            desired,
            &Observed {
                storage_exists: storage,
                placed_node: node,
                domain: dom.as_ref(),
            },
        )
    }

    #[test]
    fn no_storage_is_undefined_whatever_is_desired() {
        assert_eq!(
            phase(DesiredState::Started, false, Some("hv1"), None),
            Phase::Undefined
        );
    }

    #[test]
    fn started_only_when_the_placed_node_reports_running() {
        use DesiredState::*;
        assert_eq!(phase(Started, true, None, None), Phase::Starting);
        assert_eq!(
            phase(
                Started,
                true,
                Some("hv1"),
                Some(domain("hv1", DomainState::ShutOff))
            ),
            Phase::Starting
        );
        assert_eq!(
            phase(
                Started,
                true,
                Some("hv1"),
                Some(domain("hv1", DomainState::Running))
            ),
            Phase::Started
        );
        // A report from the previous node is not about this placement.
        assert_eq!(
            phase(
                Started,
                true,
                Some("hv2"),
                Some(domain("hv1", DomainState::ShutOff))
            ),
            Phase::Starting
        );
        assert_eq!(
            phase(
                Started,
                true,
                Some("hv2"),
                Some(domain("hv1", DomainState::Running))
            ),
            Phase::Stopping
        );
        assert_eq!(
            phase(
                Started,
                true,
                Some("hv1"),
                Some(domain("hv1", DomainState::Failed))
            ),
            Phase::Failed
        );
    }

    #[test]
    fn stopped_and_disabled() {
        use DesiredState::*;
        assert_eq!(
            phase(
                Stopped,
                true,
                Some("hv1"),
                Some(domain("hv1", DomainState::Running))
            ),
            Phase::Stopping
        );
        assert_eq!(
            phase(
                Stopped,
                true,
                Some("hv1"),
                Some(domain("hv1", DomainState::ShutOff))
            ),
            Phase::Stopped
        );
        assert_eq!(phase(Stopped, true, Some("hv1"), None), Phase::Disabled);
        assert_eq!(
            phase(
                Disabled,
                true,
                Some("hv1"),
                Some(domain("hv1", DomainState::Running))
            ),
            Phase::Stopping
        );
        assert_eq!(
            phase(
                Disabled,
                true,
                Some("hv1"),
                Some(domain("hv1", DomainState::Absent))
            ),
            Phase::Disabled
        );
        assert_eq!(phase(Disabled, true, None, None), Phase::Disabled);
    }
}
