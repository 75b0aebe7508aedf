//! The custom resources of group `seapath.lfenergy.org`, version `v1alpha1`.

mod hypervisor;
mod migration;
mod snapshot;
mod virtual_machine;

pub use hypervisor::*;
pub use migration::*;
pub use snapshot::*;
pub use virtual_machine::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

/// API group of every kind of the operator.
pub const GROUP: &str = "seapath.lfenergy.org";

/// The CRDs of the operator, in the order `crdgen` writes them.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VirtualMachine::crd(),
        Hypervisor::crd(),
        VirtualMachineSnapshot::crd(),
        VirtualMachineRestore::crd(),
        VirtualMachineSnapshotSchedule::crd(),
        VirtualMachineMigration::crd(),
    ];
    crds.iter_mut().for_each(declare_metadata);
    crds
}

/// Rules on the object's name can only sit at the root of the schema, and a failed root rule
/// is reported on no field ("<nil>: Invalid value"). They name `.metadata` as their field
/// path instead, which the API server accepts only when the schema lists `metadata`.
fn declare_metadata(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            root.properties
                .get_or_insert_default()
                .entry("metadata".into())
                .or_insert_with(|| JSONSchemaProps {
                    type_: Some("object".into()),
                    ..Default::default()
                });
        }
    }
}

/// Label the controller puts on a VirtualMachine with the hypervisor it is placed on; each node
/// agent watches only the VMs that carry its node name.
pub const NODE_LABEL: &str = "seapath.lfenergy.org/node";

/// Finalizer that makes deletion wait for the domain to be gone and the RBD data handled.
pub const VM_FINALIZER: &str = "seapath.lfenergy.org/storage";

/// Condition types used on the operator's resources.
pub mod condition_types {
    pub const READY: &str = "Ready";
    pub const STORAGE_READY: &str = "StorageReady";
    pub const SCHEDULED: &str = "Scheduled";
    pub const PLACEMENT_RULES_MET: &str = "PlacementRulesMet";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The fields a rule reads through `self.` or `oldSelf.`, as chains (`self.spec.target`),
    /// stopping at method calls (`self.matches(`).
    fn field_chains(rule: &str) -> Vec<Vec<String>> {
        let mut chains = Vec::new();
        for start in ["self.", "oldSelf."] {
            for (at, _) in rule.match_indices(start) {
                let before = rule[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                    continue;
                }
                let mut chain = vec![start.trim_end_matches('.').to_owned()];
                let mut rest = &rule[at + start.len()..];
                loop {
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let (name, after) = rest.split_at(end);
                    if name.is_empty() || after.starts_with('(') {
                        break;
                    }
                    chain.push(name.to_owned());
                    match after.strip_prefix('.') {
                        Some(next) => rest = next,
                        None => break,
                    }
                }
                if chain.len() > 1 {
                    chains.push(chain);
                }
            }
        }
        chains
    }

    /// Every optional field a rule reads must be guarded by `has()` in that rule: a missing key
    /// would fail the rule with an evaluation error ("no such key") instead of its message.
    fn unguarded(rule: &str, schema: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for chain in field_chains(rule) {
            let mut level = schema;
            for depth in 1..chain.len() {
                let field = &chain[depth];
                if depth == 1 && field == "metadata" {
                    break; // the object's own metadata: name and the like are always there
                }
                let Some(props) = level.pointer(&format!("/properties/{field}")) else {
                    out.push(format!("{} (not in the schema)", chain[..=depth].join(".")));
                    break;
                };
                let required = level["required"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|f| f == field.as_str()));
                let path = chain[..=depth].join(".");
                if !required && props.get("default").is_none() && !rule.contains(&format!("has({path})")) {
                    out.push(path);
                }
                level = props;
            }
        }
        out
    }

    fn check(schema: &Value, at: &str, problems: &mut Vec<String>) {
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let text = rule["rule"].as_str().unwrap_or_default();
            let message = rule["message"].as_str().or(rule["messageExpression"].as_str());
            if message.is_none_or(str::is_empty) {
                problems.push(format!("{at}: no message for {text}"));
            }
            if at.is_empty() && rule.get("fieldPath").is_none() {
                problems.push(format!("root: no fieldPath for {text} (reported as <nil>)"));
            }
            for field in unguarded(text, schema) {
                problems.push(format!("{at}: {text} reads {field} without has()"));
            }
        }
        for (name, property) in schema["properties"].as_object().into_iter().flatten() {
            check(property, &format!("{at}.{name}"), problems);
        }
        if let Some(items) = schema.get("items") {
            check(items, &format!("{at}[]"), problems);
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            check(values, &format!("{at}{{}}"), problems);
        }
    }

    #[test]
    fn every_rule_has_a_message_a_field_and_guards_optional_fields() {
        let mut problems = Vec::new();
        for crd in super::all_crds() {
            let crd = serde_json::to_value(&crd).unwrap();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
            for version in crd["spec"]["versions"].as_array().unwrap() {
                let mut found = Vec::new();
                check(&version["schema"]["openAPIV3Schema"], "", &mut found);
                problems.extend(found.into_iter().map(|p| format!("{kind}{p}")));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn field_chains_stop_at_method_calls() {
        assert_eq!(
            field_chains("!has(self.target) || self.target.name != self.vmName && self.matches('x')"),
            [
                vec!["self", "target"],
                vec!["self", "target", "name"],
                vec!["self", "vmName"]
            ]
        );
        assert_eq!(field_chains("oldSelf.a.size() > 0"), [vec!["oldSelf", "a"]]);
    }

    #[test]
    fn an_optional_field_read_without_has_is_found() {
        let schema = serde_json::json!({
            "required": ["vmName"],
            "properties": {"vmNames": {"type": "array"}, "vmName": {"type": "string"},
                           "suspend": {"type": "boolean", "default": false}}
        });
        let rule = "size(self.vmNames) > 0 || self.vmName != '' || self.suspend";
        assert_eq!(unguarded(rule, &schema), ["self.vmNames"]);
        let guarded = "(has(self.vmNames) && size(self.vmNames) > 0) || self.vmName != ''";
        assert!(unguarded(guarded, &schema).is_empty());
    }
}
