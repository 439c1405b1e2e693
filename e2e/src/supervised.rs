//! A helper process that lives exactly as long as the test binary: the control plane
//! (`kubeci-testenv up`) and the local node (`hack/node.sh run`). Both run with
//! `--exit-on-stdin-eof`; the harness holds their stdin, so whenever the test binary exits,
//! however it ends, the pipe closes and they stop. Both announce themselves with one stdout line,
//! `ready <value>`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

/// A started helper process. Held, never written to.
pub struct Supervised {
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

impl Supervised {
    /// Runs `command` with piped stdio and waits up to `timeout` for its first stdout line,
    /// `ready <value>`; returns `<value>` and the process. Otherwise the process is killed and the
    /// error carries what it wrote to stderr.
    pub fn start(mut command: Command, timeout: Duration) -> Result<(String, Supervised), String> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {command:?}: {e}"))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");

        // The ready line, read on a thread so the wait can time out; the rest is drained so the
        // process never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        // Kept for the error message.
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        match rx.recv_timeout(timeout) {
            Ok(Some(Ok(line))) if line.starts_with("ready ") => {
                let value = line["ready ".len()..].trim().to_string();
                Ok((value, Supervised { _stdin: Mutex::new(stdin), _child: Mutex::new(child) }))
            }
            outcome => {
                drop(stdin);
                let _ = child.kill();
                let _ = child.wait();
                // Its own children may hold stderr open a little longer.
                let log = err_rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                Err(format!("did not report ready ({outcome:?}).\nIts output:\n{log}"))
            }
        }
    }
}
