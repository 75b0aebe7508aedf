//! The owner marker: which Kubernetes object a libvirt domain belongs to.
//!
//! The operator marks every domain it defines with one element in libvirt's `<metadata>`:
//!
//! ```xml
//! <metadata>
//!   <seapath:owner xmlns:seapath="https://seapath.lfenergy.org/operator/v1"
//!                  namespace="NS" name="NAME" uid="UID"/>
//! </metadata>
//! ```
//!
//! The node agent finds its domains by this marker (a domain without it is never touched) and
//! records in the optional `xml-sha256` attribute a digest of the XML it defined the domain
//! from, so that a changed XML is noticed without comparing libvirt's normalised output.
//! libvirt keeps `<metadata>` content as written. Markers are matched by namespace URI and
//! local name, whatever prefix they use.

use super::tree::{self, Element, Node};
use super::{DomainXmlError, check_vm_name, write};

/// XML namespace of the operator's elements in a domain's `<metadata>`.
pub const OWNER_NAMESPACE: &str = "https://seapath.lfenergy.org/operator/v1";

/// Prefix the operator writes for [`OWNER_NAMESPACE`].
const OWNER_PREFIX: &str = "seapath";
/// Local name of the marker element.
const OWNER_ELEMENT: &str = "owner";
/// Attribute holding the digest of the XML a domain was defined from.
const DIGEST_ATTRIBUTE: &str = "xml-sha256";

/// The Kubernetes object a domain belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainOwner {
    /// Kubernetes namespace of the VirtualMachine.
    pub namespace: String,
    /// Name of the VirtualMachine.
    pub name: String,
    /// `metadata.uid` of the VirtualMachine: a re-created object with the same name is another
    /// owner.
    pub uid: String,
}

impl DomainOwner {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, uid: impl Into<String>) -> Self {
        DomainOwner {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn validate(&self) -> Result<(), DomainXmlError> {
        for (what, value) in [
            ("owner namespace", &self.namespace),
            ("owner name", &self.name),
            ("owner uid", &self.uid),
        ] {
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(DomainXmlError::InvalidInput {
                    what,
                    value: value.clone(),
                    reason: "it must be non-empty and without control characters",
                });
            }
        }
        Ok(())
    }
}

/// The full marker: the owner, and the digest of the XML the domain was defined from (the
/// node agent's bookkeeping; `None` in XML rendered by the controller).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerMarker {
    pub owner: DomainOwner,
    /// Lowercase hexadecimal SHA-256 of the source XML.
    pub xml_sha256: Option<String>,
}

impl OwnerMarker {
    pub fn new(owner: DomainOwner) -> Self {
        OwnerMarker {
            owner,
            xml_sha256: None,
        }
    }

    pub fn with_xml_sha256(mut self, digest: impl Into<String>) -> Self {
        self.xml_sha256 = Some(digest.into());
        self
    }

    fn validate(&self) -> Result<(), DomainXmlError> {
        self.owner.validate()?;
        if let Some(digest) = &self.xml_sha256
            && (digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(DomainXmlError::InvalidInput {
                what: "XML digest",
                value: digest.clone(),
                reason: "expected hexadecimal digits",
            });
        }
        Ok(())
    }

    /// The `<seapath:owner .../>` element.
    fn element(&self) -> Element<'static> {
        let qname = format!("{OWNER_PREFIX}:{OWNER_ELEMENT}");
        let mut element = Element::new(&qname)
            .with_attr(&format!("xmlns:{OWNER_PREFIX}"), OWNER_NAMESPACE)
            .with_attr("namespace", &self.owner.namespace)
            .with_attr("name", &self.owner.name)
            .with_attr("uid", &self.owner.uid);
        if let Some(digest) = &self.xml_sha256 {
            element = element.with_attr(DIGEST_ATTRIBUTE, digest);
        }
        element.ns = Some(OWNER_NAMESPACE.to_owned());
        element
    }
}

/// Whether an element is an owner marker (any prefix).
fn is_marker(e: &Element<'_>) -> bool {
    e.ns.as_deref() == Some(OWNER_NAMESPACE) && e.local_name() == OWNER_ELEMENT
}

/// Elements libvirt writes before `<metadata>`; a new `<metadata>` goes after the last of them.
const BEFORE_METADATA: &[&str] = &["name", "uuid", "genid", "title", "description"];

/// Replaces any owner marker of the domain by `marker`, creating `<metadata>` if needed.
pub(crate) fn set_marker(root: &mut Element<'_>, marker: &OwnerMarker) {
    let position = root
        .children
        .iter()
        .position(|c| matches!(c, Node::Element(e) if e.is_plain("metadata")));
    let position = position.unwrap_or_else(|| {
        let after = root
            .children
            .iter()
            .rposition(|c| matches!(c, Node::Element(e) if BEFORE_METADATA.iter().any(|n| e.is_plain(n))))
            .map_or(0, |i| i + 1);
        root.children
            .insert(after, Node::Element(Element::new("metadata")));
        after
    });
    if let Some(Node::Element(metadata)) = root.children.get_mut(position) {
        metadata
            .children
            .retain(|c| !matches!(c, Node::Element(e) if is_marker(e)));
        metadata.children.push(Node::Element(marker.element()));
    }
}

/// Reads the marker of a parsed domain.
fn find_marker(root: &Element<'_>) -> Result<Option<OwnerMarker>, DomainXmlError> {
    let Some(element) = root
        .elements()
        .filter(|e| e.is_plain("metadata"))
        .flat_map(|m| m.elements())
        .find(|e| is_marker(e))
    else {
        return Ok(None);
    };
    let attr = |key: &'static str| -> Result<String, DomainXmlError> {
        element
            .attr_exact(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| DomainXmlError::InvalidInput {
                what: "seapath owner marker",
                value: element.qname().to_owned(),
                reason: "it lacks one of the attributes namespace, name and uid",
            })
    };
    Ok(Some(OwnerMarker {
        owner: DomainOwner {
            namespace: attr("namespace")?,
            name: attr("name")?,
            uid: attr("uid")?,
        },
        xml_sha256: element.attr_exact(DIGEST_ATTRIBUTE).filter(|v| !v.is_empty()),
    }))
}

pub(crate) fn validate_marker(marker: &OwnerMarker) -> Result<(), DomainXmlError> {
    marker.validate()
}

/// The owner of a domain XML, from its marker; `None` if it has none. A marker without its
/// `namespace`, `name` or `uid` attribute is an error.
pub fn extract_owner(xml: &str) -> Result<Option<DomainOwner>, DomainXmlError> {
    Ok(extract_owner_marker(xml)?.map(|m| m.owner))
}

/// The full owner marker of a domain XML (owner and XML digest); `None` if it has none.
pub fn extract_owner_marker(xml: &str) -> Result<Option<OwnerMarker>, DomainXmlError> {
    let doc = tree::parse(xml)?;
    find_marker(&doc.root)
}

/// The domain XML the node agent defines: `xml` with `<name>` set to `name` and the owner
/// marker replaced by `marker` (any marker already there, e.g. one a user wrote into the base
/// XML, is dropped). Everything else is kept.
pub fn set_name_and_owner(xml: &str, name: &str, marker: &OwnerMarker) -> Result<String, DomainXmlError> {
    check_vm_name(name)?;
    marker.validate()?;
    let mut doc = tree::parse(xml)?;
    let root = &mut doc.root;
    let position = root
        .children
        .iter()
        .position(|c| matches!(c, Node::Element(e) if e.is_plain("name")))
        .unwrap_or(0);
    root.children
        .retain(|c| !matches!(c, Node::Element(e) if e.is_plain("name")));
    root.children.insert(
        position.min(root.children.len()),
        Node::Element(Element::new("name").with_text(name)),
    );
    set_marker(root, marker);
    Ok(write::write_document(&doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> DomainOwner {
        DomainOwner::new("prod", "guest0", "0b5c9a52-8a4f-4f3e-9d9c-1a2b3c4d5e6f")
    }

    const PLAIN: &str = "<domain type='test'>\n  <name>guest0</name>\n  <uuid>6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11</uuid>\n  <memory unit='MiB'>64</memory>\n</domain>\n";

    #[test]
    fn adds_metadata_after_name_and_uuid() {
        let marker = OwnerMarker::new(owner()).with_xml_sha256("00ff");
        let out = set_name_and_owner(PLAIN, "prod_guest0", &marker).unwrap();
        assert_eq!(
            out,
            "<domain type='test'>\n  <name>prod_guest0</name>\n  <uuid>6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11</uuid>\n  <metadata>\n    <seapath:owner xmlns:seapath=\"https://seapath.lfenergy.org/operator/v1\" namespace=\"prod\" name=\"guest0\" uid=\"0b5c9a52-8a4f-4f3e-9d9c-1a2b3c4d5e6f\" xml-sha256=\"00ff\"/>\n  </metadata>\n  <memory unit='MiB'>64</memory>\n</domain>\n"
        );
        assert_eq!(extract_owner(&out).unwrap(), Some(owner()));
        assert_eq!(extract_owner_marker(&out).unwrap(), Some(marker));
    }

    #[test]
    fn merges_into_existing_metadata_and_replaces_old_markers() {
        let xml = r#"<domain>
  <metadata>
    <app:info xmlns:app="urn:app">keep</app:info>
    <x:owner xmlns:x="https://seapath.lfenergy.org/operator/v1" namespace="victim" name="v" uid="1"/>
  </metadata>
  <name>n</name>
  <memory>1024</memory>
</domain>"#;
        let spoofed = extract_owner(xml).unwrap().unwrap();
        assert_eq!(spoofed.namespace, "victim");
        let out = set_name_and_owner(xml, "n2", &OwnerMarker::new(owner())).unwrap();
        assert_eq!(out.matches("<metadata>").count(), 1);
        assert!(
            out.contains(r#"<app:info xmlns:app="urn:app">keep</app:info>"#),
            "{out}"
        );
        assert!(!out.contains("victim"), "{out}");
        assert!(out.contains("<name>n2</name>"), "{out}");
        assert_eq!(
            extract_owner_marker(&out).unwrap(),
            Some(OwnerMarker::new(owner()))
        );
    }

    #[test]
    fn empty_metadata_and_missing_name() {
        let xml = "<domain><metadata/><memory>1024</memory></domain>";
        let out = set_name_and_owner(xml, "vm", &OwnerMarker::new(owner())).unwrap();
        assert!(
            out.starts_with("<domain>\n  <name>vm</name>\n  <metadata>\n    <seapath:owner "),
            "{out}"
        );
        assert_eq!(extract_owner(&out).unwrap(), Some(owner()));
    }

    #[test]
    fn escapes_values_and_reads_them_back() {
        let odd = DomainOwner::new("a\"b", "<n>&", "u'id");
        let out = set_name_and_owner(PLAIN, "vm", &OwnerMarker::new(odd.clone())).unwrap();
        assert!(out.contains("namespace=\"a&quot;b\""), "{out}");
        assert_eq!(extract_owner(&out).unwrap(), Some(odd));
    }

    #[test]
    fn no_marker_foreign_namespace_and_incomplete_marker() {
        assert_eq!(extract_owner(PLAIN).unwrap(), None);
        let other_ns = r#"<domain><metadata><seapath:owner xmlns:seapath="urn:other" namespace="a" name="b" uid="c"/></metadata></domain>"#;
        assert_eq!(extract_owner(other_ns).unwrap(), None);
        let nested = r#"<domain><devices><metadata><s:owner xmlns:s="https://seapath.lfenergy.org/operator/v1" namespace="a" name="b" uid="c"/></metadata></devices></domain>"#;
        assert_eq!(extract_owner(nested).unwrap(), None);
        let incomplete = r#"<domain><metadata><s:owner xmlns:s="https://seapath.lfenergy.org/operator/v1" namespace="a" name="b"/></metadata></domain>"#;
        assert!(matches!(
            extract_owner(incomplete),
            Err(DomainXmlError::InvalidInput {
                what: "seapath owner marker",
                ..
            })
        ));
        assert!(matches!(
            extract_owner("<domain>"),
            Err(DomainXmlError::Malformed { .. })
        ));
    }

    #[test]
    fn render_with_owner() {
        use super::super::{
            CephAccess, DevicePolicy, DiskBus, DiskSpec, RenderOptions, render_domain_xml,
            render_domain_xml_with,
        };
        let base = r#"<domain type="kvm">
  <name>x</name>
  <metadata>
    <app:info xmlns:app="urn:app"/>
    <s:owner xmlns:s="https://seapath.lfenergy.org/operator/v1" namespace="victim" name="v" uid="1"/>
  </metadata>
  <memory unit="MiB">64</memory>
</domain>"#;
        let disks = [DiskSpec {
            pool: "rbd".into(),
            namespace: Some("prod".into()),
            image: "system_guest0".into(),
            bus: DiskBus::Virtio,
        }];
        let uuid = uuid::Uuid::parse_str("6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11").unwrap();
        let options = RenderOptions {
            owner: Some(owner()),
            ..RenderOptions::default()
        };
        let ceph = CephAccess::default();
        let policy = DevicePolicy::default();
        let out =
            render_domain_xml_with(base, "prod_guest0", uuid, &disks, &ceph, &policy, &options).unwrap();
        assert_eq!(out.uuid, uuid);
        assert_eq!(extract_owner(&out.xml).unwrap(), Some(owner()));
        assert_eq!(out.xml.matches("<metadata>").count(), 1);
        assert!(
            out.xml.contains(r#"<app:info xmlns:app="urn:app"/>"#),
            "{}",
            out.xml
        );
        assert!(!out.xml.contains("victim"), "{}", out.xml);
        // Without an owner the rendering is the plain one, and the base XML's marker stays (the
        // agent replaces it before defining).
        let plain = render_domain_xml(base, "prod_guest0", uuid, &disks, &ceph, &policy).unwrap();
        let default = render_domain_xml_with(
            base,
            "prod_guest0",
            uuid,
            &disks,
            &ceph,
            &policy,
            &RenderOptions::default(),
        )
        .unwrap();
        assert_eq!(plain, default);
        assert_eq!(extract_owner(&plain.xml).unwrap().unwrap().namespace, "victim");
        let bad = RenderOptions {
            owner: Some(DomainOwner::new("ns", "", "u")),
            ..RenderOptions::default()
        };
        assert!(render_domain_xml_with(base, "vm", uuid, &disks, &ceph, &policy, &bad).is_err());
    }

    #[test]
    fn rejects_bad_inputs() {
        let bad_owner = OwnerMarker::new(DomainOwner::new("", "n", "u"));
        assert!(matches!(
            set_name_and_owner(PLAIN, "vm", &bad_owner),
            Err(DomainXmlError::InvalidInput {
                what: "owner namespace",
                ..
            })
        ));
        let bad_digest = OwnerMarker::new(owner()).with_xml_sha256("xyz");
        assert!(set_name_and_owner(PLAIN, "vm", &bad_digest).is_err());
        assert!(set_name_and_owner(PLAIN, "a/b", &OwnerMarker::new(owner())).is_err());
    }
}
