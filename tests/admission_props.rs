//! Property tests of the admission rules (OpenAPI schema and CEL `x-kubernetes-validations`) on
//! the test bed's real kube-apiserver, with dry-run requests only (fast, nothing stored besides
//! one reference object per kind).
//!
//! Inputs: VirtualMachine, VirtualMachineSnapshot, VirtualMachineRestore and
//! VirtualMachineSnapshotSchedule manifests and updates derived from valid ones by random
//! field removals, nulls, additions of unknown fields, changes of any field (immutable ones
//! included: spec.xml, spec.metadata, disk sources, vmName, snapshotName, adopt, a restore's
//! spec) to odd values (long or empty strings, wrong types, objects, arrays), submitted as
//! dry-run creates and as dry-run updates by every path: replace (PUT), JSON merge patch, JSON
//! patch, server-side apply, and the status subresource.
//!
//! Properties:
//! - the API server never answers 5xx;
//! - no rejection carries a raw CEL evaluation error ("no such key", "<nil>", "no such
//!   overload", ...): every rule is written so that it evaluates on any admitted shape;
//! - an immutable field never changes through any update path: the object the server would
//!   store has the same immutable fields as the stored one.
//!
//! `SEAPATH_PROPTEST_MINUTES=10 cargo test --test admission_props -- --nocapture` runs it for
//! ten minutes (see tests/proptest_support and hack/proptest.sh).

mod common;
mod proptest_support;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use seapath_operator::api::{
    VirtualMachine, VirtualMachineRestore, VirtualMachineSnapshot, VirtualMachineSnapshotSchedule,
};
use serde_json::{Value, json};

const BASE_XML: &str =
    "<domain type='qemu'><name>x</name><memory unit='MiB'>128</memory><os><type>hvm</type></os></domain>";

/// Parts of a rejection message that only a rule failing to evaluate produces.
const RAW_CEL_ERRORS: [&str; 7] = [
    "no such key",
    "<nil>",
    "no such overload",
    "no matching overload",
    "evaluation error",
    "Internal error",
    "unexpected type",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vm,
    Snapshot,
    Restore,
    Schedule,
}

const KINDS: [Kind; 4] = [Kind::Vm, Kind::Snapshot, Kind::Restore, Kind::Schedule];

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Vm => ApiResource::erase::<VirtualMachine>(&()),
            Kind::Snapshot => ApiResource::erase::<VirtualMachineSnapshot>(&()),
            Kind::Restore => ApiResource::erase::<VirtualMachineRestore>(&()),
            Kind::Schedule => ApiResource::erase::<VirtualMachineSnapshotSchedule>(&()),
        }
    }

    /// The stored reference object's name.
    fn name(self) -> &'static str {
        match self {
            Kind::Vm => "guest0",
            Kind::Snapshot => "snap0",
            Kind::Restore => "restore0",
            Kind::Schedule => "sched0",
        }
    }

    /// A valid spec.
    fn spec(self) -> Value {
        match self {
            Kind::Vm => json!({
                "state": "Stopped",
                "xml": BASE_XML,
                "systemDisk": {"source": {"golden": {"image": "debian12", "snapshot": "v1"}}, "size": "2Gi", "bus": "virtio"},
                "dataDisks": [{"source": {"blank": {}}, "size": "1Gi"}],
                "metadata": {"site": "substation1"},
                "deletionPolicy": "Delete",
            }),
            Kind::Snapshot => {
                json!({"vmName": "guest0", "snapshotName": "Snap1", "deletionPolicy": "Delete", "failureDeadline": "5m"})
            }
            Kind::Restore => json!({"vmName": "guest0", "snapshot": "snap0", "target": {"name": "guest1"}}),
            Kind::Schedule => json!({
                "vmNames": ["guest0"],
                "schedule": "0 * * * *",
                "timeZone": "Europe/Paris",
                "retention": {"keepLast": 3, "maxAge": "7d"},
                "snapshotDeadline": "10m",
            }),
        }
    }

    fn manifest(self, name: &str) -> Value {
        let resource = self.resource();
        json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {"name": name, "labels": {"app": "props"}},
            "spec": self.spec(),
        })
    }

    /// Paths (from the object's root) the mutations aim at.
    fn paths(self) -> &'static [&'static str] {
        match self {
            Kind::Vm => &[
                "spec",
                "spec.state",
                "spec.xml",
                "spec.systemDisk",
                "spec.systemDisk.source",
                "spec.systemDisk.source.golden",
                "spec.systemDisk.source.golden.image",
                "spec.systemDisk.source.golden.pool",
                "spec.systemDisk.source.http",
                "spec.systemDisk.source.blank",
                "spec.systemDisk.source.path",
                "spec.systemDisk.size",
                "spec.systemDisk.bus",
                "spec.dataDisks",
                "spec.dataDisks.0",
                "spec.dataDisks.0.source",
                "spec.dataDisks.0.source.blank",
                "spec.dataDisks.0.source.rbd",
                "spec.dataDisks.0.size",
                "spec.dataDisks.1",
                "spec.metadata",
                "spec.metadata.site",
                "spec.metadata.other",
                "spec.placement",
                "spec.placement.pinnedNode",
                "spec.placement.preferredNode",
                "spec.stopTimeoutSeconds",
                "spec.deletionPolicy",
                "spec.unknownField",
                "metadata.name",
                "metadata.labels",
                "status",
            ],
            Kind::Snapshot => &[
                "spec",
                "spec.vmName",
                "spec.snapshotName",
                "spec.description",
                "spec.deletionPolicy",
                "spec.failureDeadline",
                "spec.adopt",
                "spec.unknownField",
                "metadata.name",
                "status",
            ],
            Kind::Restore => &[
                "spec",
                "spec.vmName",
                "spec.snapshot",
                "spec.target",
                "spec.target.name",
                "spec.unknownField",
                "metadata.name",
            ],
            Kind::Schedule => &[
                "spec",
                "spec.vmNames",
                "spec.vmNames.0",
                "spec.selector",
                "spec.selector.matchLabels",
                "spec.schedule",
                "spec.timeZone",
                "spec.retention",
                "spec.retention.keepLast",
                "spec.retention.maxAge",
                "spec.retention.before",
                "spec.retention.all",
                "spec.suspend",
                "spec.maxFailures",
                "spec.snapshotDeadline",
                "metadata.name",
            ],
        }
    }

    /// The fields no update may change (absent and default spelled alike).
    fn immutable(self, object: &Value) -> Value {
        let spec = &object["spec"];
        match self {
            Kind::Vm => {
                let metadata = match &spec["metadata"] {
                    Value::Null => json!({}),
                    m => m.clone(),
                };
                let data: Vec<Value> = spec["dataDisks"]
                    .as_array()
                    .map(|d| d.iter().map(|d| d["source"].clone()).collect())
                    .unwrap_or_default();
                json!({
                    "xml": spec["xml"],
                    "metadata": metadata,
                    "system": spec["systemDisk"]["source"],
                    "data": data,
                })
            }
            Kind::Snapshot => json!({
                "vmName": spec["vmName"],
                "snapshotName": spec["snapshotName"],
                "adopt": spec["adopt"].as_bool().unwrap_or(false),
            }),
            Kind::Restore => spec.clone(),
            Kind::Schedule => json!(null),
        }
    }
}

/// A value to put somewhere.
fn odd_value() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!({})),
        Just(json!([])),
        Just(json!({"x": 1})),
        Just(json!({"blank": {}})),
        Just(json!({"golden": {"image": "other", "snapshot": "v2"}})),
        Just(json!({"rbd": {"image": "img"}, "blank": {}})),
        Just(json!({"site": "substation2"})),
        Just(json!({"site": "substation1", "extra": "x"})),
        Just(json!([{"source": {"blank": {}}, "size": "1Gi"}, {"source": {"blank": {}}, "size": "1Gi"}])),
        Just(json!(BASE_XML.replace("128", "256"))),
        proptest::sample::select(vec![
            "",
            " ",
            "a",
            "Snap1",
            "Snap2",
            "snap0",
            "guest0",
            "guest1",
            "UPPER",
            "x y",
            "a/b",
            "é",
            "\u{0}",
            "0",
            "5m",
            "1h30m",
            "7d",
            "0 * * * *",
            "@daily",
            "Europe/Paris",
            "Started",
            "Stopped",
            "Retain",
            "Delete",
            "virtio",
            "ide",
            "2Gi",
            "3Gi",
            "1Gi",
            "10",
            "/abs",
            "http://x",
            "true",
            "null",
        ])
        .prop_map(|s: &str| Value::from(s)),
        "[a-zA-Z0-9]{0,70}".prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        (1usize..5000).prop_map(|n| Value::from("a".repeat(n))),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum Op {
    Remove,
    Set(Value),
}

fn mutations() -> BoxedStrategy<Vec<(usize, Op)>> {
    let op = prop_oneof![1 => Just(Op::Remove), 3 => odd_value().prop_map(Op::Set)];
    prop::collection::vec((any::<usize>(), op), 1..4).boxed()
}

fn split(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

/// Applies an operation to a JSON document (intermediate objects created as needed).
fn apply(doc: &mut Value, path: &str, op: &Op) {
    let parts = split(path);
    let (last, parents) = parts.split_last().expect("non-empty path");
    let mut node = doc;
    for part in parents {
        let next = match node {
            Value::Object(map) => map.entry(part.to_string()).or_insert_with(|| json!({})),
            Value::Array(items) => match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(item) => item,
                None => return,
            },
            _ => return,
        };
        node = next;
    }
    match (node, op) {
        (Value::Object(map), Op::Remove) => {
            map.remove(*last);
        }
        (Value::Object(map), Op::Set(v)) => {
            map.insert(last.to_string(), v.clone());
        }
        (Value::Array(items), op) => {
            if let Ok(i) = last.parse::<usize>() {
                match op {
                    Op::Remove if i < items.len() => {
                        items.remove(i);
                    }
                    Op::Set(v) if i < items.len() => items[i] = v.clone(),
                    Op::Set(v) => items.push(v.clone()),
                    Op::Remove => {}
                }
            }
        }
        _ => {}
    }
}

/// The same operation as a JSON merge patch (null removes).
fn merge_patch(path: &str, op: &Op) -> Value {
    let value = match op {
        Op::Remove => Value::Null,
        Op::Set(v) => v.clone(),
    };
    split(path)
        .iter()
        .rev()
        .fold(value, |inner, part| json!({ part.to_string(): inner }))
}

/// The same operation as a JSON patch.
fn json_patch(path: &str, op: &Op) -> Value {
    let pointer = format!("/{}", path.replace('.', "/"));
    match op {
        Op::Remove => json!([{"op": "remove", "path": pointer}]),
        Op::Set(v) => json!([{"op": "add", "path": pointer, "value": v}]),
    }
}

#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    mutations: Vec<(usize, Op)>,
    /// Which update path (0 replace, 1 merge patch, 2 JSON patch, 3 apply, 4 status).
    path: u8,
}

fn case() -> BoxedStrategy<Case> {
    (proptest::sample::select(KINDS.to_vec()), mutations(), 0..5u8)
        .prop_map(|(kind, mutations, path)| Case {
            kind,
            mutations,
            path,
        })
        .boxed()
}

struct Bed {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    namespace: String,
    stored: Vec<(Kind, Value)>,
}

/// Checks a server answer: no 5xx, no raw CEL error. `Ok(Some(object))` when admitted.
fn judge(what: &str, result: Result<DynamicObject, kube::Error>) -> Result<Option<Value>, TestCaseError> {
    match result {
        Ok(object) => Ok(Some(serde_json::to_value(object).expect("object as JSON"))),
        // kube-apiserver's server-side apply answers 500 to an applied object of the wrong
        // shape (an array where the schema has an object...), whatever the CRD: not the rules'.
        Err(kube::Error::Api(status))
            if status.code == 500 && status.message.starts_with("failed to create typed patch object") =>
        {
            Ok(None)
        }
        Err(kube::Error::Api(status)) => {
            prop_assert!(
                status.code < 500,
                "{what}: the API server answered {}: {:?}",
                status.code,
                status
            );
            // The API server names the root "<nil>" in its own messages (rules skipped on an
            // invalid object, int32 format checks): that prefix is no CEL error.
            let message = status
                .message
                .replace("<nil>: Invalid value: ", "(root): Invalid value: ");
            for raw in RAW_CEL_ERRORS {
                prop_assert!(
                    !message.contains(raw),
                    "{what}: a raw CEL error in the API server's message: {}",
                    status.message
                );
            }
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("{what}: request failed: {other}"))),
    }
}

fn check(bed: &Bed, case: Case) -> Result<(), TestCaseError> {
    let kind = case.kind;
    let api: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), &bed.namespace, &kind.resource());
    let paths = kind.paths();
    let ops: Vec<(&str, &Op)> = case
        .mutations
        .iter()
        .map(|(i, op)| (paths[i % paths.len()], op))
        .collect();
    let stored = bed
        .stored
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.clone())
        .expect("stored");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let patch_params = PatchParams {
        dry_run: true,
        ..Default::default()
    };

    bed.rt.block_on(async {
        // A create of a mutated manifest.
        let mut manifest = kind.manifest("propsnew");
        for (path, op) in &ops {
            apply(&mut manifest, path, op);
        }
        if let Ok(object) = serde_json::from_value::<DynamicObject>(manifest.clone()) {
            judge(&format!("create {manifest}"), api.create(&dry, &object).await)?;
        }

        // An update of the stored object.
        let name = kind.name();
        let mut updated = stored.clone();
        for (path, op) in &ops {
            apply(&mut updated, path, op);
        }
        let what = format!("update path {} of {kind:?} with {ops:?}", case.path);
        let result = match case.path {
            0 | 4 => {
                let Ok(object) = serde_json::from_value::<DynamicObject>(updated.clone()) else {
                    return Ok(());
                };
                if case.path == 0 {
                    api.replace(name, &dry, &object).await
                } else {
                    api.replace_status(name, &dry, &object).await
                }
            }
            1 => {
                let patch = ops.iter().fold(json!({}), |mut acc, (path, op)| {
                    merge(&mut acc, merge_patch(path, op));
                    acc
                });
                api.patch(name, &patch_params, &Patch::Merge(&patch)).await
            }
            2 => {
                let list: Vec<Value> = ops
                    .iter()
                    .flat_map(|(path, op)| json_patch(path, op).as_array().cloned().unwrap_or_default())
                    .collect();
                // kube's typed JSON patch needs a feature the project does not enable.
                let resource = kind.resource();
                let uri = format!(
                    "/apis/{}/namespaces/{}/{}/{name}?dryRun=All",
                    resource.api_version, bed.namespace, resource.plural
                );
                let request = http::Request::patch(uri)
                    .header(http::header::CONTENT_TYPE, "application/json-patch+json")
                    .body(serde_json::to_vec(&Value::Array(list)).expect("JSON"))
                    .expect("request");
                bed.client.request::<DynamicObject>(request).await
            }
            _ => {
                let mut applied = updated.clone();
                if let Some(meta) = applied["metadata"].as_object_mut() {
                    meta.retain(|k, _| k == "name" || k == "labels");
                }
                let params = PatchParams {
                    dry_run: true,
                    force: true,
                    field_manager: Some("admission-props".into()),
                    ..Default::default()
                };
                api.patch(name, &params, &Patch::Apply(&applied)).await
            }
        };
        if let Some(after) = judge(&what, result)? {
            prop_assert_eq!(
                kind.immutable(&after),
                kind.immutable(&stored),
                "{}: an immutable field changed; the server would store {}",
                what,
                after
            );
        }
        Ok(())
    })
}

/// Merges a merge patch into another (objects recursively, the rest replaced).
fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing @ Value::Object(_)) if v.is_object() => merge(existing, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, patch) => *slot = patch,
    }
}

fn bed() -> Bed {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (client, namespace, stored) = rt.block_on(async {
        let client = common::admin_client().await;
        common::install_crds(&client).await;
        let namespace = common::fresh_namespace(&client, "props").await;
        let mut stored = Vec::new();
        for kind in KINDS {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &kind.resource());
            let object: DynamicObject = serde_json::from_value(kind.manifest(kind.name())).expect("manifest");
            let created = api
                .create(&PostParams::default(), &object)
                .await
                .unwrap_or_else(|e| panic!("creating the reference {kind:?}: {e}"));
            stored.push((kind, serde_json::to_value(created).expect("JSON")));
        }
        (client, namespace, stored)
    });
    Bed {
        rt,
        client,
        namespace,
        stored,
    }
}

#[test]
fn admission_rules_hold_on_generated_manifests_and_updates() {
    let bed = bed();
    proptest_support::run("admission", 48, 64, case(), |case| check(&bed, case));
    // Nothing was stored by the dry runs: the reference objects are unchanged.
    bed.rt.block_on(async {
        for (kind, stored) in &bed.stored {
            let api: Api<DynamicObject> =
                Api::namespaced_with(bed.client.clone(), &bed.namespace, &kind.resource());
            let now =
                serde_json::to_value(api.get(kind.name()).await.expect("reference object")).expect("JSON");
            assert_eq!(
                now["metadata"]["resourceVersion"], stored["metadata"]["resourceVersion"],
                "{kind:?}"
            );
        }
    });
}

#[test]
fn the_immutable_field_check_sees_changes() {
    let stored = Kind::Vm.manifest("guest0");
    let mut changed = stored.clone();
    apply(&mut changed, "spec.metadata.site", &Op::Set(json!("other")));
    assert_ne!(Kind::Vm.immutable(&changed), Kind::Vm.immutable(&stored));
    let mut removed = stored.clone();
    apply(&mut removed, "spec.metadata", &Op::Remove);
    assert_ne!(Kind::Vm.immutable(&removed), Kind::Vm.immutable(&stored));
    assert_eq!(
        merge_patch("spec.metadata.site", &Op::Remove),
        json!({"spec": {"metadata": {"site": null}}})
    );
}
