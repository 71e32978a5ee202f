//! [`ContainerRuntime`] over containerd's gRPC API.
//!
//! Images are pulled client-side (containerd 1.6 has no transfer service): manifest, config and
//! layers are fetched with oci-client, layers are written to the content store, unpacked with
//! the diff service onto overlayfs snapshots named by chain id, and an image record keeps the
//! top snapshot from garbage collection. Containers run under the runc v2 shim, which owns them:
//! they keep running when the agent stops. stdout/stderr go to a per-task file the shim writes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    container::Runtime, containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, tasks_client::TasksClient, ApplyRequest, CloseIoRequest, Container,
    CreateContainerRequest, CreateImageRequest, CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest,
    DeleteTaskRequest, ExecProcessRequest, GetContainerRequest, GetImageRequest, Image, KillRequest,
    ListContainersRequest, ListTasksRequest, ResizePtyRequest, StartRequest, WaitRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::services::v1::{
    leases_client::LeasesClient, CreateRequest as LeaseCreateRequest, DeleteRequest,
};
use containerd_client::types::Descriptor;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::spec::{oci_spec, parse_image_config, resolve_process};
use crate::{ContainerRuntime, ContainerSpec, ContainerState, ContainerStatusKind, Exit, RegistryAuth, RuntimeError};

const SNAPSHOTTER: &str = "overlayfs";
const RUNC: &str = "io.containerd.runc.v2";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Spec annotation (and container label) whose value groups containers under one shim process.
const SHIM_GROUP_LABEL: &str = "io.containerd.runc.v2.group";
const CHAIN_LABEL: &str = "shoal.chainid";
const IMAGE_LABEL: &str = "shoal.image";

tokio::task_local! {
    /// The containerd lease requests made in this scope belong to.
    static LEASE: String;
}

/// Shims per containerd namespace. One shim for all of a node's containers is the smallest
/// footprint, but the runc shim creates its containers one at a time (it holds its lock across
/// `runc create`), so 50 tasks starting at once queue behind each other; a few shims create in
/// parallel for a few MB each.
pub const SHIM_GROUPS: u64 = 2;

/// The shim group of container `id`: stable, spread evenly over [`SHIM_GROUPS`].
pub fn shim_group(namespace: &str, id: &str) -> String {
    let h = Sha256::digest(id.as_bytes());
    let n = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) % SHIM_GROUPS;
    format!("shoal-{namespace}-{n}")
}

/// containerd, one namespace of it.
pub struct Containerd {
    channel: Channel,
    namespace: String,
    insecure: Vec<String>,
    auth_file: Option<PathBuf>,
    state_dir: PathBuf,
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One gate per shim group: a task is created or deleted in its group only through it (see
    /// [`Containerd::shim_gate`]).
    shim_gates: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    create_lease_slot: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Task creates that found their shim gone and were made again (see [`shim_died`]).
    shim_retries: std::sync::atomic::AtomicU64,
}

fn ns<T>(msg: T, namespace: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = namespace.parse() {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    r
}

fn cd(e: tonic::Status) -> RuntimeError {
    RuntimeError::Containerd(format!("{:?}: {}", e.code(), e.message()))
}

/// How many times a task is created when its shim does not come up (see [`shim_died`]).
const SHIM_ATTEMPTS: u32 = 3;

/// Whether containerd's answer to a task create says the task's shim never came up: it exited
/// before it answered (`ttrpc: closed`), or its socket was gone when containerd dialled it
/// (`failed to start shim`), reported only as text with code `Unknown`. A grouped shim exits
/// when the last task of its group is deleted; a create that reached it meanwhile fails so.
/// [`Containerd::shim_gate`] keeps this process's creates and deletes of a group apart; this
/// covers a shim that went for any other reason. Nothing of the container ran then, so creating
/// the task again is safe.
fn shim_died(e: &tonic::Status) -> bool {
    e.code() == Code::Unknown && ["ttrpc: closed", "failed to start shim"].iter().any(|m| e.message().contains(m))
}

fn io(context: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Io(format!("{context}: {e}"))
}

/// Chain ids of a layer stack (OCI image spec): chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let mut h = Sha256::new();
                h.update(format!("{prev} {d}").as_bytes());
                format!("sha256:{:x}", h.finalize())
            }
        };
        out.push(next);
    }
    out
}

impl Containerd {
    /// A runtime over containerd at `socket`, using `namespace`; files (logs, volumes) live
    /// under `state_dir`; registries in `insecure` are reached over plain HTTP; `auth_file`
    /// holds registry credentials (Docker's `config.json` format), read at each pull.
    ///
    /// The connection is made on first use and again after containerd restarts: a node whose
    /// containerd is down starts anyway and reports it (see [`ContainerRuntime::ping`]).
    pub fn connect(
        socket: &Path,
        namespace: &str,
        insecure: Vec<String>,
        auth_file: Option<PathBuf>,
        state_dir: PathBuf,
    ) -> Result<Self, RuntimeError> {
        // The registry client needs a rustls provider; the process has exactly one (ring). An
        // error here only means a binary installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let path = socket.to_path_buf();
        let channel = tonic::transport::Endpoint::from_static("http://containerd.sock")
            .connect_timeout(Duration::from_secs(2))
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
            }));
        for d in ["logs", "volumes"] {
            std::fs::create_dir_all(state_dir.join(d)).map_err(|e| io("cannot create runtime state dir", e))?;
        }
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
            insecure,
            auth_file,
            state_dir,
            pulls: Mutex::new(HashMap::new()),
            shim_gates: Mutex::new(HashMap::new()),
            create_lease_slot: tokio::sync::Mutex::new(None),
            shim_retries: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Keeps every task log file under `max_bytes` (see [`crate::logfile`]) until `stop`: the
    /// loop for the caller to run (and own).
    pub fn log_rotation(
        &self,
        max_bytes: u64,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let dir = self.state_dir.join("logs");
        async move {
            loop {
                let d = dir.clone();
                match tokio::task::spawn_blocking(move || crate::logfile::rotate_dir(&d, max_bytes)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::debug!(files = n, "rotated task logs"),
                    Ok(Err(e)) => tracing::warn!(error = %e, dir = %dir.display(), "rotating task logs failed"),
                    Err(_) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(crate::logfile::CHECK_EVERY) => {}
                }
            }
        }
    }

    /// The gate of container `id`'s shim group. The runc shim of a group exits when the last
    /// task it serves is deleted, and containerd hands a create in that group to the running
    /// shim while it is still there: a create racing the delete of the group's last task reaches
    /// a shim that is going away. Creates of a group pass the gate together, a delete alone, so
    /// a create starts only once such a delete (and the shim's exit within it) is done, and then
    /// starts a new shim.
    fn shim_gate(&self, id: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut m = self.shim_gates.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(shim_group(&self.namespace, id)).or_default().clone()
    }

    /// How many task creates so far found their shim gone and were made again.
    pub fn shim_retries(&self) -> u64 {
        self.shim_retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Deletes container `id`'s task, alone in its group's gate.
    async fn delete_task(&self, id: &str) -> Result<(), tonic::Status> {
        let _alone = self.shim_gate(id).write_owned().await;
        let req = self.req(DeleteTaskRequest { container_id: id.to_string() });
        TasksClient::new(self.channel.clone()).delete(req).await.map(|_| ())
    }

    fn req<T>(&self, m: T) -> Request<T> {
        let mut r = ns(m, &self.namespace);
        let _ = LEASE.try_with(|lease| {
            if let Ok(v) = lease.parse() {
                r.metadata_mut().insert("containerd-lease", v);
            }
        });
        r
    }

    /// The image's `/etc/passwd` and `/etc/group`, read through a temporary view of its top
    /// snapshot (the layer directories are on this host; no mount is needed).
    async fn read_etc(&self, chain: &str, id: &str) -> Result<crate::spec::EtcFiles, RuntimeError> {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let key = format!("shoal-etc-{id}");
        let _ =
            snaps.remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone() })).await;
        let mounts = snaps
            .view(self.req(ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: chain.to_string(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(cd)?
            .into_inner()
            .mounts;
        let _ = snaps.remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key })).await;
        // A one-layer view is a bind mount of the layer; more layers are an overlay whose
        // lowerdirs list the top layer first.
        let mut dirs: Vec<PathBuf> = Vec::new();
        for m in &mounts {
            if m.r#type == "bind" {
                dirs.push(PathBuf::from(&m.source));
            }
            for o in &m.options {
                if let Some(list) = o.strip_prefix("lowerdir=") {
                    dirs.extend(list.split(':').map(PathBuf::from));
                }
            }
        }
        let find = |name: &str| {
            dirs.iter().find_map(|d| std::fs::read_to_string(d.join("etc").join(name)).ok()).unwrap_or_default()
        };
        Ok(crate::spec::EtcFiles { passwd: find("passwd"), group: find("group") })
    }

    async fn create_now(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let name = Self::image_name(&spec.image)?;
        let chain = self
            .image_chain(&name)
            .await
            .ok_or_else(|| RuntimeError::Containerd(format!("image {name} is not pulled")))?;
        let cfg = self.image_config(&name).await?;
        let user = crate::spec::effective_user(spec, &cfg);
        let etc = if crate::spec::needs_etc(user) { Some(self.read_etc(&chain, &spec.id).await?) } else { None };
        let process = resolve_process(spec, &cfg, etc.as_ref())?;
        let volumes = self.state_dir.join("volumes");
        for m in &spec.mounts {
            if let crate::MountSpec::Volume { name, .. } = m {
                std::fs::create_dir_all(volumes.join(name)).map_err(|e| io("cannot create volume", e))?;
            }
        }
        let vdir = |n: &str| volumes.join(n).display().to_string();
        let mut oci = oci_spec(spec, &process, &format!("/shoal/{}", self.namespace), &vdir);
        // The runc v2 shim groups containers by this annotation of the runtime spec: a few shims
        // serve all of this namespace's containers instead of one shim each.
        let group = shim_group(&self.namespace, &spec.id);
        oci["annotations"] = serde_json::json!({ SHIM_GROUP_LABEL: group.clone() });
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let _ = snaps
            .remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: spec.id.clone() }))
            .await;
        snaps
            .prepare(self.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: spec.id.clone(),
                parent: chain,
                labels: HashMap::new(),
            }))
            .await
            .map_err(cd)?;
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(SHIM_GROUP_LABEL.into(), group);
        labels.insert(IMAGE_LABEL.into(), spec.image.clone());
        let container = Container {
            id: spec.id.clone(),
            image: name,
            labels,
            runtime: Some(Runtime { name: RUNC.into(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE.into(), value: oci.to_string().into_bytes() }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: spec.id.clone(),
            ..Default::default()
        };
        let mut containers = ContainersClient::new(self.channel.clone());
        containers.create(self.req(CreateContainerRequest { container: Some(container) })).await.map_err(cd)?;
        Ok(())
    }

    /// The lease new container snapshots are made under: they would otherwise be garbage
    /// between their creation and the container record that refers to them. One lease serves
    /// for half an hour and expires on its own half an hour later; the container records keep
    /// their snapshots after that.
    async fn creation_lease(&self) -> Result<String, RuntimeError> {
        let mut cur = self.create_lease_slot.lock().await;
        if let Some((id, at)) = cur.as_ref() {
            if at.elapsed() < Duration::from_secs(1800) {
                return Ok(id.clone());
            }
        }
        let id = self.create_lease().await?;
        *cur = Some((id.clone(), std::time::Instant::now()));
        Ok(id)
    }

    /// A lease that expires in an hour.
    async fn create_lease(&self) -> Result<String, RuntimeError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("shoal-{}-{n}", std::process::id());
        let expire = std::time::SystemTime::now() + Duration::from_secs(3600);
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), shoal_api::timefmt::rfc3339(expire))]);
        let mut leases = LeasesClient::new(self.channel.clone());
        match leases.create(self.req(LeaseCreateRequest { id: id.clone(), labels })).await {
            Ok(_) => Ok(id),
            Err(e) if e.code() == Code::AlreadyExists => Ok(id),
            Err(e) => Err(cd(e)),
        }
    }

    fn exec_dir(&self, exec_id: &str) -> PathBuf {
        self.state_dir.join("exec").join(exec_id)
    }

    /// The process of an exec: the container's own (user, environment, working directory),
    /// with `spec`'s command and terminal.
    async fn exec_process(&self, id: &str, spec: &crate::ExecSpec) -> Result<serde_json::Value, RuntimeError> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let c = containers
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(|e| if e.code() == Code::NotFound { RuntimeError::NotFound(id.to_string()) } else { cd(e) })?
            .into_inner()
            .container
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let oci: serde_json::Value = c
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .ok_or_else(|| RuntimeError::Containerd(format!("container {id} has no runtime spec")))?;
        let mut process = oci.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(spec.args);
        process["terminal"] = serde_json::json!(spec.tty);
        if spec.tty && spec.width > 0 && spec.height > 0 {
            process["consoleSize"] = serde_json::json!({"width": spec.width, "height": spec.height});
        }
        Ok(process)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{id}.log"))
    }

    fn image_name(image: &str) -> Result<String, RuntimeError> {
        let r: oci_client::Reference = image.parse().map_err(|_| RuntimeError::InvalidImage(image.to_string()))?;
        Ok(r.whole())
    }

    /// The top chain id of a pulled image, if present.
    async fn image_chain(&self, name: &str) -> Option<String> {
        let mut images = ImagesClient::new(self.channel.clone());
        let img = images.get(self.req(GetImageRequest { name: name.to_string() })).await.ok()?.into_inner().image?;
        let chain = img.labels.get(CHAIN_LABEL)?.clone();
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        snaps
            .stat(self.req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() }))
            .await
            .ok()
            .map(|_| chain)
    }

    async fn write_blob(&self, digest: &str, media_type: &str, data: &[u8]) -> Result<(), RuntimeError> {
        let total = data.len() as i64;
        let reference = format!("shoal-{digest}");
        let mut msgs: Vec<WriteContentRequest> = Vec::new();
        const CHUNK: usize = 1 << 20;
        let mut offset = 0i64;
        for chunk in data.chunks(CHUNK) {
            msgs.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.to_string(),
                offset,
                data: chunk.to_vec(),
                ..Default::default()
            });
            offset += chunk.len() as i64;
        }
        msgs.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: digest.to_string(),
            offset,
            labels: HashMap::from([("shoal.media-type".to_string(), media_type.to_string())]),
            ..Default::default()
        });
        let mut content = ContentClient::new(self.channel.clone());
        let stream = futures::stream::iter(msgs);
        match content.write(self.req(stream)).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Ok(()),
                        Err(e) if e.code() == Code::AlreadyExists => return Ok(()),
                        Err(e) => return Err(cd(e)),
                    }
                }
            }
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(cd(e)),
        }
    }

    /// Fetches and unpacks an image that is not present (the caller checked).
    async fn pull_now(&self, image: &str, auth: &RegistryAuth) -> Result<(), RuntimeError> {
        let reference: oci_client::Reference =
            image.parse().map_err(|_| RuntimeError::InvalidImage(image.to_string()))?;
        let name = reference.whole();
        let config = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(self.insecure.clone()),
            ..Default::default()
        };
        let client = oci_client::Client::new(config);
        let registry = reference.resolve_registry().to_string();
        let from_file = match (auth, &self.auth_file) {
            (RegistryAuth::Anonymous, Some(path)) => crate::auth::lookup(path, &registry)?,
            _ => None,
        };
        let with_credentials = from_file.is_some() || *auth != RegistryAuth::Anonymous;
        let auth = match from_file.as_ref().unwrap_or(auth) {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        };
        let (manifest, _digest, config_json) =
            client.pull_manifest_and_config(&reference, &auth).await.map_err(|e| {
                let text = e.to_string();
                let lower = text.to_lowercase();
                if ["not found", "manifest unknown", "manifest_unknown", "name unknown", "name_unknown", "404"]
                    .iter()
                    .any(|needle| lower.contains(needle))
                {
                    RuntimeError::ImageNotFound {
                        image: image.to_string(),
                        reason: format!("not in registry {registry}"),
                    }
                } else if ["not authorized", "unauthorized", "401", "403", "denied"].iter().any(|n| lower.contains(n)) {
                    let reason = if with_credentials {
                        format!("registry {registry} refused the credentials given for it")
                    } else {
                        format!("registry {registry} wants credentials: put them in the node's --registry-auth-file")
                    };
                    RuntimeError::Pull { image: image.to_string(), reason }
                } else {
                    RuntimeError::Pull { image: image.to_string(), reason: format!("registry {registry}: {text}") }
                }
            })?;
        let cfg = parse_image_config(config_json.as_bytes())?;
        if cfg.diff_ids.len() != manifest.layers.len() {
            return Err(RuntimeError::Pull {
                image: image.to_string(),
                reason: "manifest and config disagree on the layers".into(),
            });
        }
        let config_digest = format!("sha256:{:x}", Sha256::digest(config_json.as_bytes()));
        self.write_blob(&config_digest, &manifest.config.media_type, config_json.as_bytes()).await?;
        let chains = chain_ids(&cfg.diff_ids);
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        for (i, layer) in manifest.layers.iter().enumerate() {
            let chain = &chains[i];
            let exists = snaps
                .stat(self.req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() }))
                .await
                .is_ok();
            if exists {
                continue;
            }
            let mut blob: Vec<u8> = Vec::with_capacity(layer.size.max(0) as usize);
            client.pull_blob(&reference, layer, &mut blob).await.map_err(|e| RuntimeError::Pull {
                image: image.to_string(),
                reason: format!("layer {}: {e}", layer.digest),
            })?;
            self.write_blob(&layer.digest, &layer.media_type, &blob).await?;
            let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
            let key = format!("shoal-extract-{}-{}", std::process::id(), chain);
            let _ = snaps
                .remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone() }))
                .await;
            let mounts = snaps
                .prepare(self.req(PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent,
                    labels: HashMap::new(),
                }))
                .await
                .map_err(cd)?
                .into_inner()
                .mounts;
            let desc = Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            };
            diff.apply(self.req(ApplyRequest { diff: Some(desc), mounts, payloads: HashMap::new(), sync_fs: false }))
                .await
                .map_err(cd)?;
            match snaps
                .commit(self.req(CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.clone(),
                    key: key.clone(),
                    labels: HashMap::new(),
                }))
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Code::AlreadyExists => {
                    let _ =
                        snaps.remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key })).await;
                }
                Err(e) => return Err(cd(e)),
            }
        }
        let top = chains.last().cloned().unwrap_or_default();
        let labels = HashMap::from([
            (CHAIN_LABEL.to_string(), top.clone()),
            (format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top),
            ("containerd.io/gc.ref.content.config".to_string(), config_digest.clone()),
        ]);
        let img = Image {
            name: name.clone(),
            labels,
            target: Some(Descriptor {
                media_type: manifest.config.media_type.clone(),
                digest: config_digest,
                size: config_json.len() as i64,
                annotations: HashMap::new(),
            }),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images.create(self.req(CreateImageRequest { image: Some(img.clone()), ..Default::default() })).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(cd(e)),
        }
    }

    /// The image config of a pulled image (stored as the image record's target).
    async fn image_config(&self, name: &str) -> Result<crate::spec::ImageConfig, RuntimeError> {
        let mut images = ImagesClient::new(self.channel.clone());
        let img = images
            .get(self.req(GetImageRequest { name: name.to_string() }))
            .await
            .map_err(cd)?
            .into_inner()
            .image
            .ok_or_else(|| RuntimeError::Containerd(format!("image {name} vanished")))?;
        let digest = img.target.map(|t| t.digest).unwrap_or_default();
        let mut content = ContentClient::new(self.channel.clone());
        let mut s = content
            .read(self.req(containerd_client::services::v1::ReadContentRequest { digest, offset: 0, size: 0 }))
            .await
            .map_err(cd)?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = s.message().await.map_err(cd)? {
            bytes.extend_from_slice(&chunk.data);
        }
        parse_image_config(&bytes)
    }

    async fn wait_exit(&self, id: &str) -> Result<Exit, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let r = tasks
            .wait(self.req(WaitRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
            .map_err(|e| if e.code() == Code::NotFound { RuntimeError::NotFound(id.to_string()) } else { cd(e) })?
            .into_inner();
        Ok(Exit { code: r.exit_status as i32 })
    }
}

fn fifo(path: &std::path::Path) -> Result<(), RuntimeError> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io(&format!("cannot make fifo {}", path.display()), e))
}

#[async_trait::async_trait]
impl ContainerRuntime for Containerd {
    async fn exec(&self, id: &str, spec: &crate::ExecSpec) -> Result<crate::ExecProcess, RuntimeError> {
        use tokio::net::unix::pipe::OpenOptions;
        let process = self.exec_process(id, spec).await?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let exec_id = format!("exec-{}-{t}-{n}", std::process::id());
        let dir = self.exec_dir(&exec_id);
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create the exec directory", e))?;
        let path = |n: &str| dir.join(n);
        // Both ends are opened here read-write, so opening never waits for the shim.
        fifo(&path("stdout"))?;
        let stdout =
            OpenOptions::new().read_write(true).open_receiver(path("stdout")).map_err(|e| io("stdout fifo", e))?;
        let stderr = if spec.tty {
            None
        } else {
            fifo(&path("stderr"))?;
            Some(OpenOptions::new().read_write(true).open_receiver(path("stderr")).map_err(|e| io("stderr fifo", e))?)
        };
        let stdin = if spec.stdin {
            fifo(&path("stdin"))?;
            Some(OpenOptions::new().read_write(true).open_sender(path("stdin")).map_err(|e| io("stdin fifo", e))?)
        } else {
            None
        };
        let uri = |n: &str, on: bool| if on { path(n).display().to_string() } else { String::new() };
        let mut tasks = TasksClient::new(self.channel.clone());
        let created = tasks
            .exec(self.req(ExecProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.clone(),
                stdin: uri("stdin", spec.stdin),
                stdout: uri("stdout", true),
                stderr: uri("stderr", !spec.tty),
                terminal: spec.tty,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: process.to_string().into_bytes(),
                }),
            }))
            .await;
        if let Err(e) = created {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(if e.code() == Code::NotFound { RuntimeError::NotFound(id.to_string()) } else { cd(e) });
        }
        if let Err(e) =
            tasks.start(self.req(StartRequest { container_id: id.to_string(), exec_id: exec_id.clone() })).await
        {
            self.exec_remove(id, &exec_id).await;
            return Err(cd(e));
        }
        Ok(crate::ExecProcess {
            exec_id,
            stdin: stdin.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
            stdout: Box::new(stdout),
            stderr: stderr.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        })
    }

    async fn exec_wait(&self, id: &str, exec_id: &str) -> Result<Exit, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let r = tasks
            .wait(self.req(WaitRequest { container_id: id.to_string(), exec_id: exec_id.to_string() }))
            .await
            .map_err(cd)?
            .into_inner();
        Ok(Exit { code: i32::try_from(r.exit_status).unwrap_or(-1) })
    }

    async fn exec_close_stdin(&self, id: &str, exec_id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .close_io(self.req(CloseIoRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdin: true,
            }))
            .await
            .map_err(cd)?;
        Ok(())
    }

    async fn exec_resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .resize_pty(self.req(ResizePtyRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                width,
                height,
            }))
            .await
            .map_err(cd)?;
        Ok(())
    }

    async fn exec_remove(&self, id: &str, exec_id: &str) {
        let mut tasks = TasksClient::new(self.channel.clone());
        let _ = tasks
            .kill(self.req(KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: 9,
                all: false,
            }))
            .await;
        let _ = tasks
            .delete_process(
                self.req(DeleteProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string() }),
            )
            .await;
        let _ = std::fs::remove_dir_all(self.exec_dir(exec_id));
    }

    async fn pull(&self, image: &str, auth: &RegistryAuth) -> Result<(), RuntimeError> {
        let name = Self::image_name(image)?;
        // Present: nothing to wait for (tasks of one image starting together check at once).
        if self.image_chain(&name).await.is_some() {
            return Ok(());
        }
        // One pull per image at a time; later callers find it present.
        let gate = {
            let mut m = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(name.clone()).or_default().clone()
        };
        let _g = gate.lock().await;
        if self.image_chain(&name).await.is_some() {
            return Ok(());
        }
        // Everything the pull writes belongs to a lease until the image record refers to it, so
        // containerd's garbage collector cannot take it mid-pull. The lease expires by itself if
        // this process dies before deleting it.
        let lease = self.create_lease().await?;
        let r = LEASE.scope(lease.clone(), self.pull_now(image, auth)).await;
        let mut leases = LeasesClient::new(self.channel.clone());
        if let Err(e) = leases.delete(self.req(DeleteRequest { id: lease.clone(), sync: false })).await {
            tracing::warn!(lease = %lease, error = %e.message(), "deleting the pull's lease failed; it expires within the hour");
        }
        r
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let lease = self.creation_lease().await?;
        LEASE.scope(lease, self.create_now(spec)).await
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let t0 = std::time::Instant::now();
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let mounts = snaps
            .mounts(self.req(MountsRequest { snapshotter: SNAPSHOTTER.into(), key: id.to_string() }))
            .await
            .map_err(cd)?
            .into_inner()
            .mounts;
        let log = self.log_path(id);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| io("cannot create log file", e))?;
        let uri = format!("file://{}", log.display());
        let mut tasks = TasksClient::new(self.channel.clone());
        let mut attempt = 1;
        loop {
            let create = CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts.clone(),
                stdout: uri.clone(),
                stderr: uri.clone(),
                terminal: false,
                ..Default::default()
            };
            let created = {
                let _together = self.shim_gate(id).read_owned().await;
                tasks.create(self.req(create)).await
            };
            match created {
                Ok(_) => break,
                Err(e) if attempt < SHIM_ATTEMPTS && shim_died(&e) => {
                    // The shim never came up: no process of the container ran, so the task is
                    // cleared and created again.
                    tracing::warn!(container = %id, attempt, error = %e.message(), "the task's shim did not come up; trying again");
                    self.shim_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = self.delete_task(id).await;
                    tokio::time::sleep(Duration::from_millis(250 * attempt as u64)).await;
                    attempt += 1;
                }
                Err(e) => return Err(cd(e)),
            }
        }
        let created = t0.elapsed();
        let r = tasks
            .start(self.req(StartRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
            .map_err(cd)?;
        tracing::debug!(container = %id, ?created, total = ?t0.elapsed(), "task created and started");
        Ok(r.into_inner().pid)
    }

    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        self.wait_exit(id).await
    }

    async fn stop(&self, id: &str, signal: i32, grace: Duration) -> Result<Exit, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let kill =
            |sig: u32| KillRequest { container_id: id.to_string(), exec_id: String::new(), signal: sig, all: true };
        match tasks.kill(self.req(kill(signal as u32))).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => return Err(RuntimeError::NotFound(id.to_string())),
            Err(e) => tracing::debug!(container = id, error = %e.message(), "signal failed; waiting anyway"),
        }
        match tokio::time::timeout(grace, self.wait_exit(id)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = tasks.kill(self.req(kill(9))).await;
                self.wait_exit(id).await
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        match self.delete_task(id).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) if e.code() == Code::FailedPrecondition => {
                // Still running: kill it first.
                let _ = tasks
                    .kill(self.req(KillRequest {
                        container_id: id.to_string(),
                        exec_id: String::new(),
                        signal: 9,
                        all: true,
                    }))
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(5), self.wait_exit(id)).await;
                self.delete_task(id).await.map_err(cd)?;
            }
            Err(e) => return Err(cd(e)),
        }
        let mut containers = ContainersClient::new(self.channel.clone());
        match containers.delete(self.req(DeleteContainerRequest { id: id.to_string() })).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => return Err(cd(e)),
        }
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        match snaps
            .remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => return Err(cd(e)),
        }
        let _ = std::fs::remove_file(self.log_path(id));
        let _ = std::fs::remove_file(crate::logfile::rotated_path(&self.log_path(id)));
        Ok(())
    }

    async fn volumes(&self) -> Result<Vec<shoal_api::v1::Volume>, RuntimeError> {
        let dir = self.state_dir.join("volumes");
        tokio::task::spawn_blocking(move || crate::volumes::list(&dir))
            .await
            .map_err(|e| RuntimeError::Io(format!("volume listing: {e}")))?
    }

    async fn remove_volume(&self, name: &str) -> Result<bool, RuntimeError> {
        let dir = self.state_dir.join("volumes");
        let name = name.to_string();
        tokio::task::spawn_blocking(move || crate::volumes::remove(&dir, &name))
            .await
            .map_err(|e| RuntimeError::Io(format!("volume removal: {e}")))?
    }

    async fn image_healthcheck(&self, image: &str) -> Result<Option<shoal_api::v1::HealthConfig>, RuntimeError> {
        let name = Self::image_name(image)?;
        Ok(self.image_config(&name).await?.healthcheck)
    }

    async fn ping(&self) -> Result<String, RuntimeError> {
        let mut version = VersionClient::new(self.channel.clone());
        let v = version
            .version(Request::new(()))
            .await
            .map_err(|e| RuntimeError::Containerd(format!("containerd does not answer: {}", e.message())))?
            .into_inner();
        Ok(format!("containerd {}", v.version))
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let list = containers.list(self.req(ListContainersRequest { filters: vec![] })).await.map_err(cd)?.into_inner();
        let mut tasks = TasksClient::new(self.channel.clone());
        let procs = tasks.list(self.req(ListTasksRequest { filter: String::new() })).await.map_err(cd)?.into_inner();
        // containerd fills `id` with the container id in task listings (container_id may be empty).
        let by_id: HashMap<String, _> = procs
            .tasks
            .into_iter()
            .map(|p| (if p.container_id.is_empty() { p.id.clone() } else { p.container_id.clone() }, p))
            .collect();
        Ok(list
            .containers
            .into_iter()
            .map(|c| {
                let p = by_id.get(&c.id);
                // containerd's Status: 1 created, 2 running, 3 stopped, 4/5 paused.
                let status = match p.map(|p| p.status) {
                    Some(2) | Some(4) | Some(5) => ContainerStatusKind::Running,
                    Some(3) => ContainerStatusKind::Stopped,
                    Some(_) => ContainerStatusKind::Created,
                    None => ContainerStatusKind::Created,
                };
                ContainerState {
                    id: c.id.clone(),
                    labels: c.labels.into_iter().collect::<BTreeMap<_, _>>(),
                    status,
                    pid: p.map_or(0, |p| p.pid),
                    exit_code: p.filter(|p| p.status == 3).map(|p| p.exit_status as i32),
                }
            })
            .collect())
    }

    async fn logs(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let p = self.log_path(id);
        if p.exists() {
            Ok(p)
        } else {
            Err(RuntimeError::NotFound(id.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shim_that_died_is_created_again() {
        let died = tonic::Status::unknown("failed to create shim task: ttrpc: closed: unknown");
        assert!(shim_died(&died));
        let gone = tonic::Status::unknown(
            "failed to start shim: start failed: dial unix /run/containerd/s/3498bf: connect: no such file or directory",
        );
        assert!(shim_died(&gone));
        let runc = tonic::Status::unknown("failed to create shim task: OCI runtime create failed: exec: \"nope\"");
        assert!(!shim_died(&runc));
        let missing = tonic::Status::not_found("container \"x\" in namespace \"n\": not found");
        assert!(!shim_died(&missing));
        assert!(!shim_died(&tonic::Status::unavailable("ttrpc: closed")));
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        let expect = format!("sha256:{:x}", Sha256::digest(b"sha256:a sha256:b"));
        assert_eq!(c[1], expect);
    }
}
