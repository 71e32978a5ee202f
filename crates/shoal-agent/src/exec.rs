//! `Agent.Exec`: a process in a task's container, its streams relayed over one gRPC stream.

use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::{exec_input, exec_output, ExecInput, ExecOutput};
use shoal_runtime::{ContainerRuntime, ExecSpec, RuntimeError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Largest chunk of output sent at once.
const CHUNK: usize = 32 * 1024;

/// Output still in a pipe after the process ended is read until the pipe stays empty this long.
const DRAIN: Duration = Duration::from_millis(50);

/// What the first message must be.
pub fn start_of(first: Option<ExecInput>) -> Result<shoal_api::v1::ExecStart, Status> {
    match first.and_then(|m| m.input) {
        Some(exec_input::Input::Start(s)) if !s.args.is_empty() => Ok(s),
        Some(exec_input::Input::Start(_)) => Err(Status::invalid_argument("no command to run")),
        _ => Err(Status::invalid_argument("the first message must say what to run")),
    }
}

fn out(o: exec_output::Output) -> Result<ExecOutput, Status> {
    Ok(ExecOutput { output: Some(o) })
}

/// Sends what `r` yields as `wrap` messages until the process ended (`exited`) and the pipe has
/// been drained, or the client went away.
async fn pump(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    wrap: fn(Vec<u8>) -> exec_output::Output,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = if *exited.borrow() {
            match tokio::time::timeout(DRAIN, r.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            }
        } else {
            tokio::select! {
                r = r.read(&mut buf) => match r { Ok(n) => n, Err(_) => return },
                _ = exited.changed() => continue,
            }
        };
        if n == 0 || tx.send(out(wrap(buf[..n].to_vec()))).await.is_err() {
            return;
        }
    }
}

/// Runs the exec described by `start` in container `start.task` and relays it: input from
/// `input`, output into `tx`, the exit code last. The process is killed if the client goes
/// away first.
pub async fn run(
    runtime: Arc<dyn ContainerRuntime>,
    start: shoal_api::v1::ExecStart,
    mut input: tonic::Streaming<ExecInput>,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
) {
    let id = start.task.clone();
    let spec =
        ExecSpec { args: start.args, tty: start.tty, stdin: start.stdin, width: start.width, height: start.height };
    let p = match runtime.exec(&id, &spec).await {
        Ok(p) => p,
        Err(RuntimeError::NotFound(_)) => {
            let _ = tx.send(Err(Status::not_found(format!("task {id} has no container on this node")))).await;
            return;
        }
        Err(e) => {
            let _ = tx.send(Err(Status::failed_precondition(format!("exec in task {id}: {e}")))).await;
            return;
        }
    };
    let exec_id = p.exec_id.clone();
    let (exited_tx, exited) = watch::channel(false);
    let mut io = tokio::task::JoinSet::new();
    io.spawn(pump(p.stdout, exec_output::Output::Stdout, tx.clone(), exited.clone()));
    if let Some(e) = p.stderr {
        io.spawn(pump(e, exec_output::Output::Stderr, tx.clone(), exited.clone()));
    }
    let mut stdin = p.stdin;
    let wait = runtime.exec_wait(&id, &exec_id);
    tokio::pin!(wait);
    let mut input_open = true;
    let code = loop {
        tokio::select! {
            r = &mut wait => break r.map(|e| e.code),
            _ = tx.closed() => break Err(RuntimeError::Io("the client went away".into())),
            m = input.message(), if input_open => match m {
                Ok(Some(ExecInput { input: Some(i) })) => match i {
                    exec_input::Input::Stdin(b) => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(&b).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    exec_input::Input::CloseStdin(_) => {
                        stdin = None;
                        let _ = runtime.exec_close_stdin(&id, &exec_id).await;
                    }
                    exec_input::Input::Resize(r) => {
                        let _ = runtime.exec_resize(&id, &exec_id, r.width, r.height).await;
                    }
                    exec_input::Input::Start(_) => {}
                },
                Ok(Some(_)) => {}
                // The client's input ended (or broke): the process keeps running.
                Ok(None) | Err(_) => input_open = false,
            },
        }
    };
    let _ = exited_tx.send(true);
    while io.join_next().await.is_some() {}
    match code {
        Ok(c) => {
            let _ = tx.send(out(exec_output::Output::ExitCode(c))).await;
        }
        Err(e) => {
            let _ = tx.send(Err(Status::unavailable(format!("exec in task {id}: {e}")))).await;
        }
    }
    runtime.exec_remove(&id, &exec_id).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_message_must_start_something() {
        assert!(start_of(None).is_err());
        let stdin = ExecInput { input: Some(exec_input::Input::Stdin(b"x".to_vec())) };
        assert!(start_of(Some(stdin)).is_err_and(|s| s.message().contains("first message")));
        let empty = ExecInput { input: Some(exec_input::Input::Start(Default::default())) };
        assert!(start_of(Some(empty)).is_err_and(|s| s.message().contains("no command")));
        let ok = shoal_api::v1::ExecStart { task: "t".into(), args: vec!["ls".into()], ..Default::default() };
        let m = ExecInput { input: Some(exec_input::Input::Start(ok.clone())) };
        assert_eq!(start_of(Some(m)).ok(), Some(ok));
    }
}
