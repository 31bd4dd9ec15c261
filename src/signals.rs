//! Waiting for the signals that stop a foreground process (Ctrl-C, `kill`), shared by the
//! `xetmount` commands and the delay proxy.

/// Resolves at the first SIGINT or SIGTERM; never, if the handlers cannot be installed (the
/// process is then stopped some other way, and says so in the log).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers");
            futures::future::pending::<()>().await
        }
    }
}
