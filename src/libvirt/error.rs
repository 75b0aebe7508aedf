//! Typed errors of the libvirt layer: what failed (operation, object, URI) and why (libvirt's
//! error code and message).

use std::fmt;

use uuid::Uuid;
use virt::error::ErrorNumber;

/// Result of the libvirt layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Connect,
    HostInfo,
    ListDomains,
    Define,
    Lookup,
    Start,
    Shutdown,
    Destroy,
    Undefine,
    GetState,
    GetXml,
    SetValue,
    GetValue,
    ListSecrets,
    Inspect,
    Migrate,
    Job,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Connect => "connect",
            Operation::HostInfo => "get host info",
            Operation::ListDomains => "list domains",
            Operation::Define => "define",
            Operation::Lookup => "look up",
            Operation::Start => "start",
            Operation::Shutdown => "shut down",
            Operation::Destroy => "destroy",
            Operation::Undefine => "undefine",
            Operation::GetState => "get state of",
            Operation::GetXml => "get XML of",
            Operation::SetValue => "set value of",
            Operation::GetValue => "get value of",
            Operation::ListSecrets => "list secrets",
            Operation::Inspect => "inspect",
            Operation::Migrate => "migrate",
            Operation::Job => "control the job of",
        })
    }
}

/// The libvirt object an operation was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The connection or host as a whole.
    Host,
    /// A domain by name.
    Domain(String),
    /// A domain by UUID (name unknown).
    DomainUuid(Uuid),
    /// A domain defined from XML whose name could not be read from it.
    DomainXml,
    /// A Ceph secret by usage name.
    CephSecret(String),
    /// A secret by UUID.
    SecretUuid(Uuid),
}

impl Target {
    /// The domain name, when the target is a named domain.
    pub fn domain_name(&self) -> Option<&str> {
        match self {
            Target::Domain(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    /// Prints the target followed by a space ("" for the host), so that messages read
    /// "libvirt list domains on URI" and "libvirt start domain 'x' on URI".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host => Ok(()),
            Target::Domain(name) => write!(f, "domain '{name}' "),
            Target::DomainUuid(uuid) => write!(f, "domain with UUID {uuid} "),
            Target::DomainXml => f.write_str("domain from XML "),
            Target::CephSecret(usage) => write!(f, "ceph secret '{usage}' "),
            Target::SecretUuid(uuid) => write!(f, "secret with UUID {uuid} "),
        }
    }
}

/// Why the operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// libvirt reported an error.
    Libvirt {
        /// libvirt's `virErrorNumber` (e.g. 42 = VIR_ERR_NO_DOMAIN).
        code: i32,
        /// libvirt's `virErrorDomain` (the libvirt subsystem that raised it).
        domain: i32,
        /// libvirt's message, e.g. "Domain not found: no domain with matching name 'x'".
        message: String,
    },
    /// The layer refused the arguments before calling libvirt.
    InvalidArgument(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Libvirt { message, .. } => f.write_str(message),
            Cause::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
        }
    }
}

/// An error of the libvirt layer. Its Display reads e.g.
/// `libvirt define domain 'vm1' on test:///tmp/hv1.xml: operation failed: domain 'vm1' already
/// exists with uuid ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("libvirt {operation} {target}on {uri}: {cause}")]
pub struct Error {
    operation: Operation,
    target: Target,
    uri: String,
    cause: Cause,
}

impl Error {
    pub(crate) fn libvirt(operation: Operation, target: Target, uri: &str, err: virt::error::Error) -> Self {
        Error {
            operation,
            target,
            uri: uri.to_owned(),
            cause: Cause::Libvirt {
                code: err.code().to_raw() as i32,
                domain: err.domain().to_raw() as i32,
                message: err.message().to_owned(),
            },
        }
    }

    pub(crate) fn invalid(operation: Operation, target: Target, uri: &str, why: impl Into<String>) -> Self {
        Error {
            operation,
            target,
            uri: uri.to_owned(),
            cause: Cause::InvalidArgument(why.into()),
        }
    }

    pub fn operation(&self) -> Operation {
        self.operation
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The domain name the failed operation was about, if known.
    pub fn domain_name(&self) -> Option<&str> {
        self.target.domain_name()
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// libvirt's raw `virErrorNumber`, when libvirt reported the error.
    pub fn raw_code(&self) -> Option<i32> {
        match self.cause {
            Cause::Libvirt { code, .. } => Some(code),
            Cause::InvalidArgument(_) => None,
        }
    }

    /// libvirt's error number, when libvirt reported the error and the number is known to the
    /// `virt` crate.
    pub fn code(&self) -> Option<ErrorNumber> {
        let raw = self.raw_code()?;
        virt::error::ErrorNumberEnum::from_raw(raw as virt::sys::virErrorNumber).known()
    }

    /// libvirt's message (or the layer's reason for an invalid argument).
    pub fn message(&self) -> String {
        self.cause.to_string()
    }

    fn code_is(&self, want: &[ErrorNumber]) -> bool {
        self.code().is_some_and(|c| want.contains(&c))
    }

    /// No such domain (VIR_ERR_NO_DOMAIN).
    pub fn is_no_domain(&self) -> bool {
        self.code_is(&[ErrorNumber::NoDomain])
    }

    /// No such secret (VIR_ERR_NO_SECRET).
    pub fn is_no_secret(&self) -> bool {
        self.code_is(&[ErrorNumber::NoSecret])
    }

    /// The XML was malformed or failed validation (VIR_ERR_XML_ERROR, VIR_ERR_XML_DETAIL,
    /// VIR_ERR_XML_INVALID_SCHEMA).
    pub fn is_invalid_xml(&self) -> bool {
        self.code_is(&[
            ErrorNumber::XmlError,
            ErrorNumber::XmlDetail,
            ErrorNumber::XmlInvalidSchema,
        ])
    }

    /// The operation is not valid in the object's current state, e.g. starting a running
    /// domain or destroying a stopped one (VIR_ERR_OPERATION_INVALID).
    pub fn is_operation_invalid(&self) -> bool {
        self.code_is(&[ErrorNumber::OperationInvalid])
    }

    /// The operation failed, e.g. defining a domain whose name exists with another UUID
    /// (VIR_ERR_OPERATION_FAILED).
    pub fn is_operation_failed(&self) -> bool {
        self.code_is(&[ErrorNumber::OperationFailed])
    }

    /// The driver does not support this function (VIR_ERR_NO_SUPPORT), e.g. secrets on the
    /// test driver.
    pub fn is_unsupported(&self) -> bool {
        self.code_is(&[ErrorNumber::NoSupport])
    }

    /// libvirt refused an argument or flag (VIR_ERR_INVALID_ARG), or the layer did.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self.cause, Cause::InvalidArgument(_)) || self.code_is(&[ErrorNumber::InvalidArg])
    }

    /// The connection to libvirt failed or was lost (VIR_ERR_NO_CONNECT, VIR_ERR_SYSTEM_ERROR
    /// during connect, VIR_ERR_RPC, VIR_ERR_INVALID_CONN).
    pub fn is_connection_error(&self) -> bool {
        self.code_is(&[ErrorNumber::NoConnect, ErrorNumber::Rpc, ErrorNumber::InvalidConn])
            || (self.operation == Operation::Connect && self.raw_code().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_operation_target_uri_and_message() {
        let err = Error {
            operation: Operation::Define,
            target: Target::Domain("vm1".into()),
            uri: "test:///tmp/hv1.xml".into(),
            cause: Cause::Libvirt {
                code: virt::sys::VIR_ERR_OPERATION_FAILED as i32,
                domain: 0,
                message: "operation failed: domain 'vm1' already exists with uuid x".into(),
            },
        };
        assert_eq!(
            err.to_string(),
            "libvirt define domain 'vm1' on test:///tmp/hv1.xml: operation failed: domain 'vm1' \
             already exists with uuid x"
        );
        assert!(err.is_operation_failed());
        assert!(!err.is_no_domain());
        assert_eq!(err.domain_name(), Some("vm1"));

        let err = Error::invalid(Operation::ListDomains, Target::Host, "qemu:///system", "bad");
        assert_eq!(
            err.to_string(),
            "libvirt list domains on qemu:///system: invalid argument: bad"
        );
        assert!(err.is_invalid_argument());
        assert_eq!(err.raw_code(), None);
    }
}
