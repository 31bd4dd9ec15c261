//! Baseline for bench/foundation.sh: xet-core's own download of one file of a local store,
//! with no xetmount code on the data path (the catalog is read only to find the file's hash).
//! Usage: xet_download <store-dir> <path-in-bucket>
//! Prints `bytes seconds`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use xet_data::processing::configurations::TranslatorConfig;
use xet_data::processing::{FileDownloadSession, XetFileInfo};
use xetmount::remote::local::LocalStore;
use xetmount::remote::Catalog;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, path] = args.as_slice() else {
        bail!("usage: xet_download <store-dir> <path-in-bucket>");
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let ctx = xet_runtime::core::XetContext::from_external(
        rt.handle().clone(),
        xet_runtime::config::XetConfig::new(),
    );
    rt.block_on(async {
        let entry = {
            let store = LocalStore::open(std::path::Path::new(store), ctx.clone()).await?;
            store
                .catalog
                .head(path)
                .await?
                .context("no such file in the store")?
        };
        let id = entry.content.context("the file is empty")?;
        let config = TranslatorConfig::local_config(&ctx, std::path::Path::new(store).join("cas"))?;
        let session = FileDownloadSession::new(Arc::new(config), None).await?;
        let start = Instant::now();
        let (_, n) = session
            .download_to_writer(&XetFileInfo::new(id.hash, id.size), .., std::io::sink())
            .await?;
        let secs = start.elapsed().as_secs_f64();
        session.finalize().await?;
        println!("{n} {secs:.3}");
        Ok(())
    })
}
