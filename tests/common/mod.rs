//! Helpers shared by the integration tests. Every test runs against the real test bed started
//! by `hack/test.sh` (or `hack/testbed.sh up`); a missing component fails the test, never skips it.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};

/// Reads a variable exported by `hack/testbed.sh env`.
pub fn testbed_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: the test bed is not loaded. Run the tests with hack/test.sh \
             (or eval \"$(hack/testbed.sh env)\" after hack/testbed.sh up)"
        ),
    }
}

/// A client for the test bed's API server, as the admin.
pub async fn admin_client() -> Client {
    testbed_env("KUBECONFIG");
    Client::try_default()
        .await
        .expect("connecting to the test bed's kube-apiserver")
}

/// Applies the operator's CRDs (server-side apply, idempotent) and waits until they are served.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("seapath-operator-tests").force();
    for crd in seapath_operator::api::all_crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .expect("applying CRD");
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watching CRD");
    }
}

/// Creates a namespace with a unique name. Namespaces are not deleted: the test bed has no
/// controller-manager to finalize them, and the whole test bed is thrown away after the run.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating namespace");
    name
}
pub mod chart;
pub mod operator;
pub mod snapshots;

/// A process of the test bed stopped with SIGSTOP until dropped (also when the test fails, so
/// that the test bed is never left stopped): every client's calls to it hang, as in an outage.
pub struct Stopped {
    pid: String,
}

impl Stopped {
    /// `component`: the name of its PID file in the test bed (`ceph-osd`, `kube-apiserver`).
    pub fn stop(component: &str) -> Stopped {
        let file = format!("{}/pids/{component}", testbed_env("SEAPATH_TESTBED_DIR"));
        let pid = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {file}: {e}"))
            .trim()
            .to_owned();
        signal(&pid, "STOP");
        Stopped { pid }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(&self.pid, "CONT");
    }
}

fn signal(pid: &str, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_owned()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}
