//! Waiting for the signals that stop a foreground process (Ctrl-C, `kill`), shared by the
//! `xetmount` commands and the delay proxy.

/// Resolves at the first SIGINT or SIGTERM; never, if the handlers cannot be installed (the
/// process is then stopped some other way, and says so in the log).
pub async fn wait_for_signal() {
    wait_for_stop(false).await
}

/// [`wait_for_signal`], and with `hangup_stops` SIGHUP too: a process logging to a terminal
/// that goes away (its SIGHUP would otherwise kill it without a clean stop). A process that
/// logs to a file reopens it on SIGHUP instead (`service::logging`).
pub async fn wait_for_stop(hangup_stops: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed only when asked for: a handler replaces the default action (termination).
    let mut hup = if hangup_stops {
        signal(SignalKind::hangup()).ok()
    } else {
        None
    };
    let hangup = async {
        match hup.as_mut() {
            Some(h) => {
                h.recv().await;
            }
            None => futures::future::pending::<()>().await,
        }
    };
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hangup => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers");
            futures::future::pending::<()>().await
        }
    }
}
