//! A bucket's namespace over HTTP, through xetmount's own catalog routes on `xetmount serve`
//! (`/api/buckets/{id}/xetmount/...`, see `remote::wire`): full POSIX metadata, symlinks,
//! special files, empty directories, hard links, all-or-nothing commits. Paths are relative
//! to the mounted prefix.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::hub::Hub;
use super::{q, Prefix};
use crate::remote::cas_wire;
use crate::remote::wire::{WireEntry, WireOp};
use crate::remote::{
    Capabilities, Catalog, CatalogOp, Changes, Conflict, Entry, RemoteError, RemoteResult, TreePage,
};
use std::time::Duration;

pub struct HttpCatalog {
    hub: Arc<Hub>,
    prefix: Prefix,
}

fn bad(what: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Other(format!("{what}: bad answer: {e}"))
}

impl HttpCatalog {
    pub fn new(hub: Arc<Hub>, prefix: &str) -> Self {
        HttpCatalog {
            hub,
            prefix: Prefix::new(prefix),
        }
    }

    fn full(&self, path: &str) -> String {
        self.prefix.full(path)
    }

    fn local(&self, mut e: Entry) -> Entry {
        if let Some(p) = self.prefix.local(&e.path) {
            e.path = p;
        }
        e
    }

    fn entry(&self, w: WireEntry) -> RemoteResult<Entry> {
        let path = w.path.clone();
        w.entry().map(|e| self.local(e)).ok_or_else(|| {
            RemoteError::Other(format!("{path} has an entry kind this build does not know"))
        })
    }

    fn map_op(&self, op: &CatalogOp) -> WireOp {
        let mut w = WireOp::from(op);
        match &mut w {
            WireOp::Put { entry } => entry.path = self.full(&entry.path),
            WireOp::SetMeta { path, meta } => {
                *path = self.full(path);
                meta.path = path.clone();
            }
            WireOp::Delete { path } | WireOp::Expect { path, .. } => *path = self.full(path),
            WireOp::Link { from, to } | WireOp::Rename { from, to } => {
                *from = self.full(from);
                *to = self.full(to);
            }
        }
        w
    }
}

#[async_trait]
impl Catalog for HttpCatalog {
    fn capabilities(&self) -> Capabilities {
        Capabilities::POSIX
    }

    async fn link_paths(&self, link: u64) -> RemoteResult<Vec<String>> {
        let url = self.hub.api(&format!("/xetmount/links?link={link}"));
        let v = self.hub.get_json("hard links", &url).await?;
        let paths: Vec<String> = serde_json::from_value(v).map_err(|e| bad("hard links", e))?;
        Ok(paths
            .into_iter()
            .filter_map(|p| self.prefix.local(&p))
            .collect())
    }

    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        let url = self
            .hub
            .api(&format!("/xetmount/list?dir={}", q(&self.full(dir))));
        let v = self.hub.get_json("list", &url).await?;
        let list: Vec<WireEntry> = serde_json::from_value(v).map_err(|e| bad("list", e))?;
        list.into_iter().map(|w| self.entry(w)).collect()
    }

    /// `xetmount/tree`: a page of every entry below `dir` with everything `list` gives; the
    /// cursor is the last path of the previous page.
    async fn list_tree(&self, dir: &str, cursor: Option<&str>) -> RemoteResult<Option<TreePage>> {
        let mut url = self
            .hub
            .api(&format!("/xetmount/tree?dir={}", q(&self.full(dir))));
        if let Some(after) = cursor {
            url.push_str(&format!("&after={}", q(after)));
        }
        let v = match self.hub.get_json("tree", &url).await {
            Ok(v) => v,
            // A server from before the route: list directory by directory.
            Err(RemoteError::NotFound(_)) if cursor.is_none() => return Ok(None),
            Err(e) => return Err(e),
        };
        #[derive(serde::Deserialize)]
        struct Page {
            entries: Vec<WireEntry>,
            next: Option<String>,
        }
        let page: Page = serde_json::from_value(v).map_err(|e| bad("tree", e))?;
        let entries = page
            .entries
            .into_iter()
            .map(|w| self.entry(w))
            .collect::<RemoteResult<Vec<_>>>()?;
        Ok(Some(TreePage {
            entries,
            next: page.next,
        }))
    }

    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        let url = self
            .hub
            .api(&format!("/xetmount/head?path={}", q(&self.full(path))));
        match self.hub.get_json("head", &url).await {
            Ok(v) => {
                let w: WireEntry = serde_json::from_value(v).map_err(|e| bad("head", e))?;
                Ok(Some(self.entry(w)?))
            }
            Err(RemoteError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        self.commit_carrying(ops, Vec::new()).await
    }

    /// The uploads go in the same request, framed after the ops (`cas_wire::CommitHead`).
    async fn commit_carrying(
        &self,
        ops: Vec<CatalogOp>,
        uploads: Vec<cas_wire::Carried>,
    ) -> RemoteResult<u64> {
        let wire: Vec<WireOp> = ops.iter().map(|o| self.map_op(o)).collect();
        let ops = serde_json::to_value(&wire).map_err(RemoteError::other)?;
        let url = self.hub.api("/xetmount/commit");
        let answer = if uploads.is_empty() {
            self.hub.post_json("commit", &url, &ops).await
        } else {
            let head = cas_wire::CommitHead {
                ops,
                uploads: uploads.iter().map(|u| u.head.clone()).collect(),
            };
            let tail: Vec<&[u8]> = uploads.iter().map(|u| &u.bytes[..]).collect();
            let body = bytes::Bytes::from(cas_wire::frame(&head, &tail));
            match self
                .hub
                .send("commit", |c| {
                    c.post(&url)
                        .header(reqwest::header::CONTENT_TYPE, cas_wire::FRAMED)
                        .body(body.clone())
                })
                .await
            {
                Ok(r) => r
                    .json()
                    .await
                    .map_err(|e| RemoteError::Other(format!("commit: bad answer: {e}"))),
                Err(e) => Err(e),
            }
        };
        let v = answer.map_err(|e| match e {
            RemoteError::Conflict(c) => RemoteError::Conflict(
                c.into_iter()
                    .map(|c| Conflict {
                        path: self.prefix.local(&c.path).unwrap_or(c.path),
                        current: c.current.map(|e| self.local(e)),
                    })
                    .collect(),
            ),
            e => e,
        })?;
        v.get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("commit", &v))
    }

    async fn changes(&self, since: u64, wait: Duration) -> RemoteResult<Option<Changes>> {
        let url = self.hub.api(&format!(
            "/xetmount/changes?since={since}&wait={}",
            wait.as_secs()
        ));
        let v = match self.hub.get_json("changes", &url).await {
            Ok(v) => v,
            // A server without the feed.
            Err(RemoteError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let revision = v
            .get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("changes", &v))?;
        if v.get("reset").and_then(Value::as_bool) == Some(true) {
            return Ok(Some(Changes::Reset { revision }));
        }
        let dirs = v
            .get("dirs")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("changes", &v))?
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|d| self.prefix.local(d))
            .collect();
        Ok(Some(Changes::Dirs { revision, dirs }))
    }

    async fn revision(&self) -> RemoteResult<u64> {
        let v = self
            .hub
            .get_json("revision", &self.hub.api("/xetmount/revision"))
            .await?;
        v.get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("revision", &v))
    }
}
