//! The two node agents (hv1, hv2), run in-process as tokio tasks so that the harness reads
//! their [`AgentStats`] (libvirt writes) and timestamps their tracing events.

use std::sync::Arc;
use std::time::Duration;

use seapath_operator::agent::{Agent, AgentConfig, AgentError, AgentStats, CephConfig, CephSecretConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::testbed::Testbed;
use crate::timeline::{Timelines, first, now_us};

/// A running agent: the sender that stops it and its task.
type RunningAgent = (oneshot::Sender<()>, JoinHandle<Result<(), AgentError>>);

pub struct Agents {
    pub stats: Vec<Arc<AgentStats>>,
    running: Vec<RunningAgent>,
}

impl Agents {
    /// Starts one agent per simulated hypervisor of the test bed, with the default timings
    /// (heartbeat 2 s, self-fence 6 s, resync 30 s), as `seapath-operator agent` would run.
    pub fn start(client: &kube::Client, tb: &Testbed) -> anyhow::Result<Agents> {
        let mut agents = Agents {
            stats: Vec::new(),
            running: Vec::new(),
        };
        for (node, uri) in &tb.nodes {
            let agent = Agent::new(client.clone(), agent_config(tb, node, uri))?;
            agents.stats.push(agent.stats());
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(agent.run(async move {
                let _ = stopped.await;
            }));
            agents.running.push((stop, task));
        }
        Ok(agents)
    }

    /// libvirt writes (define, start, shutdown, destroy, undefine, secret) of all agents.
    pub fn libvirt_writes(&self) -> u64 {
        self.stats.iter().map(|s| s.snapshot().libvirt_writes).sum()
    }

    pub async fn stop(self) {
        for (stop, task) in self.running {
            let _ = stop.send(());
            match tokio::time::timeout(Duration::from_secs(20), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("bench: agent stopped with an error: {e}"),
                Ok(Err(e)) => eprintln!("bench: agent task failed: {e}"),
                Err(_) => eprintln!("bench: an agent did not stop within 20 s"),
            }
        }
    }
}

/// The configuration of the agent of `node` (libvirt `uri`) on the test bed: the default
/// timings, the test bed's Ceph (no admin socket: several Ceph clients live in this process)
/// and, with cephx, the libvirt secret the controller's domain XML refers to.
pub fn agent_config(tb: &Testbed, node: &str, uri: &str) -> AgentConfig {
    let mut ceph = CephConfig::new(&tb.ceph_conf, &tb.ceph_client, &tb.pool);
    ceph.options = vec![("admin_socket".into(), String::new())];
    let mut config = AgentConfig::new(node, uri, ceph);
    if let (Some(uuid), Some(key)) = (tb.secret_uuid, tb.libvirt_key.clone()) {
        config.ceph_secret = Some(CephSecretConfig {
            usage_name: "client.libvirt secret".into(),
            uuid,
            key_base64: key,
        });
    }
    config
}

/// The `vm` field (`namespace/name`) of an agent's `reconcile` span.
struct AgentVm(String);

#[derive(Default)]
struct Fields {
    vm: Option<String>,
    message: Option<String>,
    state: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "vm" => self.vm = Some(format!("{value:?}")),
            "message" => self.message = Some(format!("{value:?}")),
            "state" => self.state = Some(format!("{value:?}")),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "vm" => self.vm = Some(value.to_owned()),
            "message" => self.message = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// A tracing layer that timestamps the agents' decisions and libvirt actions per VM.
pub struct AgentRecorder {
    pub timelines: Timelines,
}

impl<S> Layer<S> for AgentRecorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "reconcile" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(vm), Some(span)) = (fields.vm, ctx.span(id)) {
            span.extensions_mut().insert(AgentVm(vm));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(message) = fields.message else { return };
        match message.as_str() {
            "acting" | "defined" | "started" => {}
            // Reported once per state change: only the report of the running domain counts.
            "domain state" if fields.state.as_deref() == Some("Running") => {}
            _ => return,
        }
        let at = now_us();
        let Some(vm) = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<AgentVm>().map(|v| v.0.clone()))
        }) else {
            return;
        };
        self.timelines.update(&vm, |t| match message.as_str() {
            "acting" => first(&mut t.agent_acting, at),
            "defined" => first(&mut t.agent_defined, at),
            "started" => first(&mut t.agent_started, at),
            _ => first(&mut t.agent_reported, at),
        });
    }
}
