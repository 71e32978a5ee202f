//! `shoal task exec`: a process in a task's container, with this terminal's streams.

use std::io::{IsTerminal, Read, Write};

use shoal_api::v1::{exec_input, exec_output, ExecInput, ExecStart};

use crate::{Client, Fail};

/// Puts the terminal in raw mode while it lives (through `stty`, as every system has it) and
/// restores it after.
struct RawTerminal {
    saved: String,
}

fn stty(args: &[&str]) -> Option<String> {
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let out = std::process::Command::new("stty").args(args).stdin(tty).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let saved = stty(&["-g"])?;
        stty(&["raw", "-echo"])?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = stty(&[self.saved.as_str()]);
    }
}

/// The terminal's size (columns, rows), if there is one.
fn size() -> (u32, u32) {
    stty(&["size"])
        .and_then(|s| {
            let (rows, cols) = s.split_once(' ')?;
            Some((cols.parse().ok()?, rows.parse().ok()?))
        })
        .unwrap_or((0, 0))
}

/// Runs `cmd` in `task`; the process's exit code.
pub async fn exec(c: &mut Client, task: String, cmd: Vec<String>, interactive: bool, tty: bool) -> Result<i32, Fail> {
    if tty && !std::io::stdin().is_terminal() {
        return Err(Fail::Usage("the input device is not a TTY: run without -t".into()));
    }
    let (width, height) = if tty { size() } else { (0, 0) };
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(16);
    let start = ExecStart { task, args: cmd, tty, stdin: interactive, width, height };
    let _ = tx.send(ExecInput { input: Some(exec_input::Input::Start(start)) }).await;
    if interactive {
        // Stdin on a thread of its own: a blocking read must not hold the runtime.
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .blocking_send(ExecInput { input: Some(exec_input::Input::Stdin(buf[..n].to_vec())) })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = tx.blocking_send(ExecInput { input: Some(exec_input::Input::CloseStdin(true)) });
        });
    }
    let mut outputs = c.exec_task(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let _raw = if tty { RawTerminal::enter() } else { None };
    let mut code = None;
    while let Some(m) = outputs.message().await? {
        match m.output {
            Some(exec_output::Output::Stdout(b)) => {
                let mut o = std::io::stdout().lock();
                if o.write_all(&b).and_then(|_| o.flush()).is_err() {
                    break;
                }
            }
            Some(exec_output::Output::Stderr(b)) => {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(&b).and_then(|_| e.flush());
            }
            Some(exec_output::Output::ExitCode(c)) => code = Some(c),
            None => {}
        }
    }
    drop(tx);
    code.ok_or_else(|| Fail::Usage("the exec ended without an exit code (its node went away?)".into()))
}
