//! The change feed across replicas: every catalog commit notifies channel [`CHANNEL`] in its
//! transaction (PostgreSQL delivers it only if the commit lands), and every replica listens on
//! a connection of its own, waking the change-feed readers of the bucket it names. Each time
//! the listening connection subscribes (first at start, which is not instant, then after
//! every reconnect), the replica wakes every reader, who re-read the change log: a
//! notification missed while not listening costs a look, never a change.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::AsyncMessage;

/// The notification channel of catalog commits.
pub const CHANNEL: &str = "xetmount_commits";

/// `REVISION BUCKET`: the revision first, so the bucket id is whatever follows the first space.
pub fn payload(bucket: &str, revision: u64) -> String {
    format!("{revision} {bucket}")
}

fn parse(payload: &str) -> Option<(&str, u64)> {
    let (rev, bucket) = payload.split_once(' ')?;
    Some((bucket, rev.parse().ok()?))
}

/// Announce, in transaction `tx`, that bucket `bucket`'s catalog was deleted or moved away
/// (revision 0, which no commit has): replicas drop what they keep of it, so a bucket made
/// again under that name starts afresh everywhere.
pub async fn notify_gone(
    tx: &deadpool_postgres::Transaction<'_>,
    bucket: &str,
) -> crate::remote::RemoteResult<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload(bucket, 0)])
        .await
        .map(|_| ())
        .map_err(super::db_err)
}

/// What the listener tells the server.
pub trait Listener: Send + Sync + 'static {
    /// Bucket `bucket` committed revision `revision` (on some replica); revision 0: its
    /// catalog was deleted or renamed away.
    fn committed(&self, bucket: &str, revision: u64);
    /// Notifications may have been missed: every reader should look again.
    fn resync(&self);
}

/// Listen for commits at `url` until the process ends, reconnecting (every second at most)
/// when the connection drops.
pub fn spawn(url: String, listener: Arc<dyn Listener>) {
    tokio::spawn(async move {
        loop {
            match listen(&url, &listener).await {
                Ok(()) => tracing::warn!("change feed: the database closed the connection"),
                Err(e) => tracing::warn!("change feed: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen(url: &str, listener: &Arc<dyn Listener>) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection only makes progress while polled: LISTEN runs alongside it.
    let listen = format!("LISTEN {CHANNEL}");
    let subscribe = client.batch_execute(&listen);
    tokio::pin!(subscribe);
    let mut subscribed = false;
    loop {
        tokio::select! {
            r = &mut subscribe, if !subscribed => {
                r?;
                subscribed = true;
                // Readers may have started waiting before this replica listened (it serves
                // as soon as it starts), and commits may have landed since.
                listener.resync();
                tracing::info!("change feed: listening");
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some((bucket, rev)) = parse(n.payload()) {
                        listener.committed(bucket, rev);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_whatever_the_bucket_id() {
        for id in ["alice/data", "ns/with space", "ünï/cödé"] {
            assert_eq!(parse(&payload(id, 42)), Some((id, 42)));
        }
        assert_eq!(parse("x alice/data"), None);
    }
}
