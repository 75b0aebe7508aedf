//! The agent's error type: what failed, for which VM or object, and why.

use crate::ceph::CephError;
use crate::domain_xml::DomainXmlError;

/// An error of the node agent. Each variant carries a context naming the VM (`VM ns/name`),
/// the domain or the Kubernetes object, and the operation; its Display is the full sentence
/// (context, then the underlying error), which is what reaches logs and status messages.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// A libvirt call failed (its error names the operation, the domain and the URI).
    #[error("{context}: {error}")]
    Libvirt {
        context: String,
        error: crate::libvirt::Error,
    },
    /// A Ceph call failed (its error names the operation, the image and the errno).
    #[error("{context}: {error}")]
    Ceph { context: String, error: CephError },
    /// A domain XML could not be read or prepared.
    #[error("{context}: {error}")]
    DomainXml { context: String, error: DomainXmlError },
    /// A Kubernetes API call failed.
    #[error("{context}: {error}")]
    Kube { context: String, error: kube::Error },
    /// The VM left this node (the cache no longer assigns it here) before a define or start.
    #[error("{0}: no longer assigned to this node")]
    NotAssigned(String),
    /// A blocking libvirt/librbd task panicked or was cancelled.
    #[error("{context}: blocking task failed: {error}")]
    Blocking {
        context: String,
        error: tokio::task::JoinError,
    },
}

impl AgentError {
    pub(crate) fn libvirt(context: impl Into<String>, error: crate::libvirt::Error) -> Self {
        AgentError::Libvirt {
            context: context.into(),
            error,
        }
    }

    pub(crate) fn ceph(context: impl Into<String>, error: CephError) -> Self {
        AgentError::Ceph {
            context: context.into(),
            error,
        }
    }

    pub(crate) fn xml(context: impl Into<String>, error: DomainXmlError) -> Self {
        AgentError::DomainXml {
            context: context.into(),
            error,
        }
    }

    pub(crate) fn kube(context: impl Into<String>, error: kube::Error) -> Self {
        AgentError::Kube {
            context: context.into(),
            error,
        }
    }

    /// Whether libvirt itself is unreachable (as opposed to refusing one operation).
    /// The API server refused a write made on an older version of the object.
    pub fn is_conflict(&self) -> bool {
        matches!(self, AgentError::Kube { error: kube::Error::Api(s), .. } if s.code == 409)
    }

    pub fn is_libvirt_connection(&self) -> bool {
        matches!(self, AgentError::Libvirt { error, .. } if error.is_connection_error())
    }

    /// The libvirt error, if this is one.
    pub fn libvirt_error(&self) -> Option<&crate::libvirt::Error> {
        match self {
            AgentError::Libvirt { error, .. } => Some(error),
            _ => None,
        }
    }
}
