//! The I/O half: the client from kubeconfig or the pod's service account, one
//! kube-runtime watcher per kind, merged through the [`SyncGate`].

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use twill_model::ObjectEvent;

use crate::kinds::{ToModel, for_kind};
use crate::{Backoff, Entry, Error, SourceConfig, SyncGate, WatchedKind};

/// A client from `kubeconfig` when given; otherwise kube's inference: `KUBECONFIG`
/// (colon-separated list), `~/.kube/config`, then the in-cluster service account
/// (`KUBERNETES_SERVICE_HOST` and `/var/run/secrets/kubernetes.io/serviceaccount`).
/// Needs a tokio runtime (the client spawns its connection tasks).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let wrap = |source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(wrap)?;
            Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(wrap)?
        }
        None => Config::infer().await.map_err(Error::NoConfig)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// The gated event stream of `config`'s kinds. It never ends: watch errors and invalid
/// objects come out as `Err` items (see [`Error::is_transient`]; they are also logged at
/// `warn`) while the watcher retries after a backoff.
pub fn watch(
    client: Client,
    config: &SourceConfig,
) -> impl Stream<Item = Result<ObjectEvent, Error>> + Send + 'static {
    let streams: Vec<KindStream> = config
        .kinds
        .iter()
        .map(|&kind| for_kind!(kind, K => kind_stream::<K>(client.clone(), kind, config)))
        .collect();
    let mut gate = SyncGate::new(config.kinds.iter().copied());
    stream::select_all(streams).flat_map(move |(kind, item)| {
        let out = match item {
            Ok(event) => {
                let out = gate.step(kind, event);
                for item in &out {
                    match item {
                        Err(e) => tracing::warn!("{e}; treated as absent"),
                        Ok(ObjectEvent::Synced) => {
                            tracing::info!(state = %state_summary(gate.state()), "initial lists complete")
                        }
                        Ok(e) => tracing::debug!(event = ?e, "event"),
                    }
                }
                out
            }
            Err(source) => {
                tracing::warn!(%kind, error = %source, "watch failed; retrying after backoff");
                vec![Err(Error::Watch { kind, source })]
            }
        };
        stream::iter(out)
    })
}

/// `4 namespaces, 2 nodes, ...`: one count per watched kind, for logs.
pub fn state_summary(s: &twill_model::ClusterState) -> String {
    format!(
        "{} namespaces, {} nodes, {} pods, {} services, {} endpointslices, {} networkpolicies, {} servicecidrs, {} clusternetworkpolicies",
        s.namespaces.len(),
        s.nodes.len(),
        s.pods.len(),
        s.services.len(),
        s.endpoint_slices.len(),
        s.network_policies.len(),
        s.service_cidrs.len(),
        s.cluster_network_policies.len()
    )
}

type KindStream = BoxStream<'static, (WatchedKind, Result<Event<Entry>, watcher::Error>)>;

fn to_entries<K: ToModel>(event: Event<K>) -> Event<Entry> {
    match event {
        Event::Apply(o) => Event::Apply(o.to_entry()),
        Event::Delete(o) => Event::Delete(o.to_entry()),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.to_entry()),
        Event::InitDone => Event::InitDone,
    }
}

fn kind_stream<K>(client: Client, kind: WatchedKind, config: &SourceConfig) -> KindStream
where
    K: ToModel
        + kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(client);
    let mut wc = watcher::Config::default();
    if kind == WatchedKind::Pod
        && let Some(fields) = config.pod_field_selector()
    {
        wc = wc.fields(&fields);
    }
    let events = watcher::watcher(api, wc).map_ok(to_entries::<K>);
    // A resource the API server does not have (ServiceCIDR before 1.33, a cluster
    // without the ClusterNetworkPolicy CRD) is an empty list, once, not an error
    // retried forever that would keep the source unsynced.
    let events: BoxStream<'static, Result<Event<Entry>, watcher::Error>> = if matches!(
        kind,
        WatchedKind::ServiceCidr | WatchedKind::ClusterNetworkPolicy
    ) {
        events
            .scan(false, move |absent, r| {
                if *absent {
                    return futures::future::ready(None);
                }
                let out = match r {
                    Err(e) if is_not_found(&e) => {
                        *absent = true;
                        tracing::info!(%kind, "the API server has no such resource: none");
                        vec![Ok(Event::Init), Ok(Event::InitDone)]
                    }
                    other => vec![other],
                };
                futures::future::ready(Some(stream::iter(out)))
            })
            .flatten()
            .chain(stream::pending())
            .boxed()
    } else {
        events.boxed()
    };
    let paced: BoxStream<'static, Result<Event<Entry>, watcher::Error>> = match config.backoff {
        Some(b) => events.backoff(Doubling::new(b)).boxed(),
        None => events.default_backoff().boxed(),
    };
    paced.map(move |r| (kind, r)).boxed()
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// [`Backoff`] as kube-runtime's backoff trait.
struct Doubling {
    policy: Backoff,
    next: Duration,
}

impl Doubling {
    fn new(policy: Backoff) -> Self {
        Self {
            policy,
            next: policy.initial,
        }
    }
}

impl Iterator for Doubling {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for Doubling {
    fn reset(&mut self) {
        self.next = self.policy.initial;
    }
}

/// Run the source on its own thread (with its own single-threaded runtime) and hand
/// its events to a blocking consumer. A failure to build the client arrives as the first
/// (non-transient) item, after which the channel closes. The thread stops when the
/// receiver is dropped.
pub fn spawn(
    kubeconfig: Option<PathBuf>,
    config: SourceConfig,
) -> std::io::Result<std::sync::mpsc::Receiver<Result<ObjectEvent, Error>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("kube-source".into())
        .spawn(move || {
            runtime.block_on(async move {
                let client = match client(kubeconfig.as_deref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut events = std::pin::pin!(watch(client, &config));
                while let Some(item) = events.next().await {
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            });
        })?;
    Ok(rx)
}
