//! The node's `Agent` service: serves what a task's container printed from its log file,
//! optionally following it as it grows (and across the logger's rotation), relays exec
//! processes (`exec`), and lists and deletes the node's named local volumes.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use shoal_api::v1::{agent_server::Agent, LogChunk, TaskLogsRequest};
use shoal_runtime::ContainerRuntime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Largest chunk sent at once.
const CHUNK: usize = 64 * 1024;

/// gRPC implementation of `Agent`.
pub struct AgentService {
    runtime: Arc<dyn ContainerRuntime>,
    /// The file readers of open log streams: each ends when its client goes away (or the file
    /// ends, without `follow`), and all of them with the service.
    readers: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl AgentService {
    /// Serves the logs of the containers `runtime` runs.
    pub fn new(runtime: Arc<dyn ContainerRuntime>) -> Self {
        Self { runtime, readers: std::sync::Mutex::new(tokio::task::JoinSet::new()) }
    }
}

/// The byte offset where the last `n` lines of `data` start.
pub fn tail_offset(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

async fn stream_file(
    path: PathBuf,
    task_id: String,
    req: TaskLogsRequest,
    tx: tokio::sync::mpsc::Sender<Result<LogChunk, Status>>,
) {
    let send = |data: Vec<u8>| LogChunk { task_id: task_id.clone(), data };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(Status::not_found(format!("no logs for task {task_id}: {e}")))).await;
            return;
        }
    };
    // What the size cap moved aside comes first (see shoal_runtime::logfile).
    let mut all = tokio::fs::read(shoal_runtime::logfile::rotated_path(&path)).await.unwrap_or_default();
    let before = all.len();
    if let Err(e) = file.read_to_end(&mut all).await {
        let _ = tx.send(Err(Status::internal(format!("reading logs of task {task_id}: {e}")))).await;
        return;
    }
    let start = tail_offset(&all, req.tail as usize);
    // Only whole lines go out; a partial last line waits for its newline (or the end). A
    // partial line at the end of the rotated part is sent as it is.
    let whole = all.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1).max(start).max(before);
    for chunk in all[start..whole].chunks(CHUNK) {
        if tx.send(Ok(send(chunk.to_vec()))).await.is_err() {
            return;
        }
    }
    let mut pos = (whole - before) as u64;
    if !req.follow {
        if whole < all.len() {
            let _ = tx.send(Ok(send(all[whole..].to_vec()))).await;
        }
        return;
    }
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let len = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(_) => continue,
        };
        if len < pos {
            // Rotated: start over with the new file.
            match tokio::fs::File::open(&path).await {
                Ok(f) => file = f,
                Err(_) => continue,
            }
            pos = 0;
        }
        if len == pos {
            continue;
        }
        if file.seek(SeekFrom::Start(pos)).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if (&mut file).take(len - pos).read_to_end(&mut buf).await.is_err() {
            continue;
        }
        let Some(end) = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1) else { continue };
        pos += end as u64;
        for chunk in buf[..end].chunks(CHUNK) {
            if tx.send(Ok(send(chunk.to_vec()))).await.is_err() {
                return;
            }
        }
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

type ExecStream = Pin<Box<dyn Stream<Item = Result<shoal_api::v1::ExecOutput, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    type TaskLogsStream = LogStream;
    type ExecStream = ExecStream;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<shoal_api::v1::ExecInput>>,
    ) -> Result<Response<ExecStream>, Status> {
        let mut input = req.into_inner();
        let start = crate::exec::start_of(input.message().await?)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        while readers.try_join_next().is_some() {}
        readers.spawn(crate::exec::run(self.runtime.clone(), start, input, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_volumes(
        &self,
        _req: Request<shoal_api::v1::ListVolumesRequest>,
    ) -> Result<Response<shoal_api::v1::ListVolumesResponse>, Status> {
        let volumes = self.runtime.volumes().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(shoal_api::v1::ListVolumesResponse { volumes, unreachable: Vec::new() }))
    }

    async fn remove_volume(
        &self,
        req: Request<shoal_api::v1::RemoveVolumeRequest>,
    ) -> Result<Response<shoal_api::v1::RemoveVolumeResponse>, Status> {
        let name = req.into_inner().volume;
        match self.runtime.remove_volume(&name).await {
            Ok(true) => Ok(Response::new(shoal_api::v1::RemoveVolumeResponse { nodes: Vec::new() })),
            Ok(false) => Err(Status::not_found(format!("no volume {name:?} on this node"))),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn task_logs(&self, req: Request<TaskLogsRequest>) -> Result<Response<LogStream>, Status> {
        let req = req.into_inner();
        let path = self.runtime.logs(&req.task_id).await.map_err(|e| Status::not_found(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        while readers.try_join_next().is_some() {}
        readers.spawn(stream_file(path, req.task_id.clone(), req, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_finds_the_last_lines() {
        let data = b"a\nb\nc\n";
        assert_eq!(&data[tail_offset(data, 1)..], b"c\n");
        assert_eq!(&data[tail_offset(data, 2)..], b"b\nc\n");
        assert_eq!(&data[tail_offset(data, 9)..], b"a\nb\nc\n");
        assert_eq!(tail_offset(data, 0), 0);
        let partial = b"a\nb";
        assert_eq!(&partial[tail_offset(partial, 1)..], b"b");
    }

    async fn collect(path: PathBuf, tail: u32, follow: bool, until: usize) -> String {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let req = TaskLogsRequest { task_id: "t".into(), follow, tail };
        let mut reader = tokio::task::JoinSet::new();
        reader.spawn(stream_file(path, "t".into(), req, tx));
        let mut out = Vec::new();
        while out.len() < until {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Ok(chunk))) => out.extend(chunk.data),
                _ => break,
            }
        }
        reader.abort_all();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn the_rotated_part_comes_first_and_following_survives_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("t.log");
        std::fs::write(shoal_runtime::logfile::rotated_path(&log), "a\nb\n").expect("write");
        std::fs::write(&log, "c\n").expect("write");
        assert_eq!(collect(log.clone(), 0, false, usize::MAX).await, "a\nb\nc\n");
        assert_eq!(collect(log.clone(), 2, false, usize::MAX).await, "b\nc\n");
        // Following: each write is awaited before the next, so the follower has read up to it;
        // output written after a rotation (truncation) still arrives.
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let req = TaskLogsRequest { task_id: "t".into(), follow: true, tail: 1 };
        let mut follower = tokio::task::JoinSet::new();
        follower.spawn(stream_file(log.clone(), "t".into(), req, tx));
        async fn next(rx: &mut tokio::sync::mpsc::Receiver<Result<LogChunk, Status>>) -> String {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(Ok(chunk))) => String::from_utf8_lossy(&chunk.data).into_owned(),
                other => panic!("no log chunk within 10 s: {other:?}"),
            }
        }
        assert_eq!(next(&mut rx).await, "c\n", "the tail first");
        std::fs::write(&log, "c\nd\n").expect("append");
        assert_eq!(next(&mut rx).await, "d\n", "then what was appended");
        std::fs::write(&log, "e\n").expect("rotated: truncated, then written");
        assert_eq!(next(&mut rx).await, "e\n", "then what was written after the rotation");
        follower.abort_all();
    }
}
