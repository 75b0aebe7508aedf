//! GitOps and status consumers: the Argo CD health checks (manifests/argocd/health/*.lua) run
//! in Lua 5.1 (Argo CD's gopher-lua dialect) against status objects the operator really wrote,
//! the kstatus rules Flux and `kubectl wait` rely on, and `kubectl wait` as docs/operations.md
//! shows it. The operator runs from its binary under the chart's roles (tests/common/chart.rs).
//!
//! Needs lua5.1 (`hack/chart.sh tools`), helm, and the test bed.

mod common;

use std::process::Command;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use seapath_operator::api::{Hypervisor, VirtualMachine};
use serde_json::{Value, json};

use common::chart::{ChartOperator, eventually, kubectl, repo_path, run, run_status, vm_manifest};
use common::{admin_client, fresh_namespace, install_crds};

const WAIT: Duration = Duration::from_secs(120);

/// A JSON value as a Lua table constructor (null becomes nil, as in Argo CD).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs a health script on an object the way Argo CD does (global `obj`, the chunk returns a
/// table with status and message): (status, message).
fn argo_health(script: &str, object: &Value) -> (String, String) {
    let path = repo_path(&format!("manifests/argocd/health/{script}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let harness = dir.path().join("harness.lua");
    std::fs::write(
        &harness,
        format!(
            "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\n\
             assert(type(hs) == 'table', 'the script must return a table')\n\
             io.write(tostring(hs.status), '\\n', tostring(hs.message), '\\n')\n",
            lua_literal(object),
            lua_string(&path.display().to_string())
        ),
    )
    .expect("harness");
    let out = run(Command::new("lua5.1").arg(&harness), None);
    let mut lines = out.lines();
    (
        lines.next().unwrap_or_default().to_owned(),
        lines.next().unwrap_or_default().to_owned(),
    )
}

/// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus), the generic rules Flux applies to custom
/// resources: InProgress while status.observedGeneration lags metadata.generation or
/// Reconciling=True, Failed when Stalled=True, Current otherwise.
fn kstatus(object: &Value) -> &'static str {
    if !object["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating";
    }
    let generation = object["metadata"]["generation"].as_i64();
    let observed = object["status"]["observedGeneration"].as_i64();
    if let (Some(g), Some(o)) = (generation, observed)
        && o != g
    {
        return "InProgress";
    }
    let conditions = object["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_true = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
    if is_true("Reconciling") {
        return "InProgress";
    }
    if is_true("Stalled") {
        return "Failed";
    }
    "Current"
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
}

async fn vm_json(api: &Api<VirtualMachine>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.expect("VM")).expect("JSON")
}

async fn wait_for(
    operator: &ChartOperator,
    api: &Api<VirtualMachine>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let result = tokio::time::timeout(
        WAIT,
        eventually(WAIT, what, || async {
            let vm = vm_json(api, name).await;
            check(&vm).then_some(vm)
        }),
    )
    .await;
    match result {
        Ok(vm) => vm,
        Err(_) => {
            let vm = vm_json(api, name).await;
            panic!(
                "timed out waiting for {name}: {what}; last seen:\n{vm:#}\noperator logs:\n{}",
                operator.logs()
            )
        }
    }
}

#[test]
fn argocd_component_names_every_kind_and_existing_scripts() {
    let text = std::fs::read_to_string(repo_path("manifests/argocd/kustomization.yaml")).expect("component");
    let mut kinds = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.contains("resource.customizations.health."))
    {
        let entry = line.trim().trim_start_matches("- ");
        let (key, file) = entry.split_once('=').expect("KEY=FILE");
        assert!(
            repo_path(&format!("manifests/argocd/{file}")).is_file(),
            "{file} missing"
        );
        kinds.push(key.rsplit('_').next().unwrap().to_owned());
    }
    for crd in seapath_operator::api::all_crds() {
        assert!(
            kinds.contains(&crd.spec.names.kind),
            "no Argo CD health check for {} in manifests/argocd/kustomization.yaml",
            crd.spec.names.kind
        );
    }
    // Every script parses as Lua 5.1.
    for entry in std::fs::read_dir(repo_path("manifests/argocd/health")).unwrap() {
        let path = entry.unwrap().path();
        run(Command::new("luac5.1").arg("-p").arg(&path), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_checks_and_kstatus_on_real_status_objects() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let mut operator = ChartOperator::start(&admin, "hlth").await;
    let ns = fresh_namespace(&admin, "health").await;
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
    let suffix = operator.release[4..].to_owned();

    // A VM just created, before the controller wrote anything: Progressing.
    let good = format!("good{suffix}");
    let manifest: VirtualMachine =
        serde_json::from_value(vm_manifest(&good, &ns, Some(&operator.nodes[0]), "")).unwrap();
    let created =
        serde_json::to_value(vms.create(&PostParams::default(), &manifest).await.expect("VM")).unwrap();
    assert_eq!(argo_health("VirtualMachine.lua", &created).0, "Progressing");

    // Started and Ready: Healthy, kstatus Current, observedGeneration up to date.
    let started = wait_for(&operator, &vms, &good, "Started and Ready", |vm| {
        vm["status"]["phase"] == "Started" && condition(vm, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    let (status, message) = argo_health("VirtualMachine.lua", &started);
    assert_eq!(status, "Healthy", "{message}\n{started:#}");
    assert_eq!(kstatus(&started), "Current", "{started:#}");
    assert_eq!(
        started["status"]["observedGeneration"],
        started["metadata"]["generation"]
    );
    for t in ["Ready", "Reconciling", "Stalled"] {
        let c = condition(&started, t).unwrap_or_else(|| panic!("no {t} condition: {started:#}"));
        assert_eq!(c["observedGeneration"], started["metadata"]["generation"], "{t}");
    }
    assert_eq!(condition(&started, "Reconciling").unwrap()["status"], "False");
    assert_eq!(condition(&started, "Stalled").unwrap()["status"], "False");

    // kubectl wait, as the docs show it.
    let (ok, out, err) = run_status(
        Command::new(kubectl()).args([
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            &format!("svm/{good}"),
            "--timeout=30s",
        ]),
        None,
    );
    assert!(ok, "kubectl wait: {out}{err}");

    // A spec change: the new generation is InProgress until the status catches up.
    let patched = vms
        .patch(
            &good,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": "Stopped"}})),
        )
        .await
        .expect("stop");
    let patched = serde_json::to_value(patched).unwrap();
    if patched["status"]["observedGeneration"] != patched["metadata"]["generation"] {
        assert_eq!(kstatus(&patched), "InProgress");
        assert_eq!(argo_health("VirtualMachine.lua", &patched).0, "Progressing");
    }
    // Stopped as desired: Ready, and Suspended for Argo CD.
    let stopped = wait_for(&operator, &vms, &good, "Stopped and Ready", |vm| {
        vm["status"]["phase"] == "Stopped"
            && vm["status"]["observedGeneration"] == vm["metadata"]["generation"]
            && condition(vm, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(argo_health("VirtualMachine.lua", &stopped).0, "Suspended");
    assert_eq!(kstatus(&stopped), "Current");

    // Pinned to a hypervisor that does not exist: not Ready, still reconciling (the node may
    // come): Progressing, kstatus InProgress, the reason in the message.
    let waiting = format!("wait{suffix}");
    let manifest: VirtualMachine =
        serde_json::from_value(vm_manifest(&waiting, &ns, Some("no-such-hypervisor"), "")).unwrap();
    vms.create(&PostParams::default(), &manifest).await.expect("VM");
    let unschedulable = wait_for(&operator, &vms, &waiting, "Scheduled=False", |vm| {
        condition(vm, "Scheduled").is_some_and(|c| c["status"] == "False")
            && vm["status"]["observedGeneration"] == vm["metadata"]["generation"]
    })
    .await;
    let (status, message) = argo_health("VirtualMachine.lua", &unschedulable);
    assert_eq!(status, "Progressing", "{unschedulable:#}");
    let reason = condition(&unschedulable, "Ready").unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains(&reason),
        "'{message}' should name the reason {reason}"
    );
    assert_eq!(kstatus(&unschedulable), "InProgress");

    // A host file disk in a namespace the policy does not allow: the spec can never work,
    // Stalled=True: Degraded, kstatus Failed.
    let bad = format!("bad{suffix}");
    let manifest: VirtualMachine = serde_json::from_value(vm_manifest(
        &bad,
        &ns,
        None,
        "<disk type='file' device='disk'><source file='/etc/hostname'/><target dev='vdz'/></disk>",
    ))
    .unwrap();
    vms.create(&PostParams::default(), &manifest).await.expect("VM");
    let stalled = wait_for(&operator, &vms, &bad, "Stalled=True", |vm| {
        condition(vm, "Stalled").is_some_and(|c| c["status"] == "True")
    })
    .await;
    let (status, message) = argo_health("VirtualMachine.lua", &stalled);
    assert_eq!(status, "Degraded", "{stalled:#}");
    assert!(!message.is_empty());
    assert_eq!(kstatus(&stalled), "Failed");
    assert_eq!(condition(&stalled, "Ready").unwrap()["status"], "False");

    // Hypervisors, as the agents report them: Healthy; cordoned: Suspended.
    let hypervisors: Api<Hypervisor> = Api::all(admin.clone());
    let node = operator.nodes[1].clone();
    let hv = eventually(WAIT, "Hypervisor Ready", || async {
        let hv = serde_json::to_value(hypervisors.get(&node).await.ok()?).ok()?;
        condition(&hv, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(hv)
    })
    .await;
    assert_eq!(argo_health("Hypervisor.lua", &hv).0, "Healthy", "{hv:#}");
    let cordoned = hypervisors
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .expect("cordon");
    assert_eq!(
        argo_health("Hypervisor.lua", &serde_json::to_value(cordoned).unwrap()).0,
        "Suspended"
    );
    // A registered hypervisor without a report yet.
    let fresh = json!({"apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "Hypervisor", "metadata": {"name": "x"}, "spec": {}});
    assert_eq!(argo_health("Hypervisor.lua", &fresh).0, "Progressing");

    // A migration: Progressing while it runs, then Healthy or Degraded with its reason.
    let migration = |status: Value| {
        json!({"apiVersion": "seapath.lfenergy.org/v1alpha1",
        "kind": "VirtualMachineMigration", "metadata": {"name": "m", "generation": 1},
        "spec": {"vmName": "guest0"}, "status": status})
    };
    assert_eq!(
        argo_health("VirtualMachineMigration.lua", &migration(json!({}))).0,
        "Progressing"
    );
    let running = migration(json!({"phase": "Running", "message": "live-migrating from hv1 to hv2"}));
    assert_eq!(
        argo_health("VirtualMachineMigration.lua", &running).0,
        "Progressing"
    );
    let done = migration(json!({"phase": "Succeeded", "message": "live-migrated"}));
    assert_eq!(argo_health("VirtualMachineMigration.lua", &done).0, "Healthy");
    let failed = migration(json!({"phase": "Failed", "reason": "TargetFull", "message": "no room"}));
    assert_eq!(
        argo_health("VirtualMachineMigration.lua", &failed),
        ("Degraded".to_owned(), "TargetFull: no room".to_owned())
    );

    // The generic script (snapshot kinds) follows the same kstatus rules on the VM objects.
    assert_eq!(argo_health("generic.lua", &started).0, "Healthy");
    assert_eq!(argo_health("generic.lua", &stalled).0, "Degraded");
    assert_eq!(argo_health("generic.lua", &unschedulable).0, "Progressing");

    common::chart::delete_vms(&vms).await;
    operator.assert_running();
    let refusals = operator.refusals();
    assert!(
        refusals.is_empty(),
        "refused under the chart's roles:\n{}",
        refusals.join("\n")
    );
}
