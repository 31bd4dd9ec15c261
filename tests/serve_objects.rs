//! Where `serve` keeps bytes (`server::objects`): the same operations against a local
//! directory and against a real S3-compatible server (`s3s-fs`), and, for S3, presigned URLs
//! a client without credentials uses: ranged GETs, and PUTs whose CRC64-NVME is signed in.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::time::Duration;

use bytes::Bytes;
use xetmount::server::objects::{crc64nvme_header, Objects, CHECKSUM_HEADER};

fn bytes(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// What every object store must do.
async fn contract(o: &Objects) {
    let a = bytes(300_000, 1);
    o.put("xorbs/aa", a.clone()).await.unwrap();
    assert_eq!(o.get("xorbs/aa").await.unwrap().unwrap(), a);
    assert_eq!(o.size("xorbs/aa").await.unwrap(), Some(300_000));
    assert_eq!(
        o.get_range("xorbs/aa", 1000..5000).await.unwrap(),
        a.slice(1000..5000)
    );
    assert_eq!(
        o.get_range("xorbs/aa", 299_990..300_000).await.unwrap(),
        a.slice(299_990..)
    );
    assert!(o.get("xorbs/none").await.unwrap().is_none());
    assert_eq!(o.size("xorbs/none").await.unwrap(), None);
    // A second create of one key is refused; the first body stays.
    assert!(o.put_new("shards/s1", bytes(10, 2)).await.unwrap());
    assert!(!o.put_new("shards/s1", bytes(10, 3)).await.unwrap());
    assert_eq!(o.get("shards/s1").await.unwrap().unwrap(), bytes(10, 2));
    // Replace, list, delete.
    o.put("xorbs/aa", bytes(7, 4)).await.unwrap();
    assert_eq!(o.get("xorbs/aa").await.unwrap().unwrap(), bytes(7, 4));
    o.put("xorbs/bb", bytes(9, 5)).await.unwrap();
    let mut listed = o.list("xorbs").await.unwrap();
    listed.sort();
    assert_eq!(
        listed,
        vec![("xorbs/aa".to_string(), 7), ("xorbs/bb".to_string(), 9)]
    );
    o.delete("xorbs/aa").await.unwrap();
    o.delete("xorbs/aa").await.unwrap();
    assert!(o.get("xorbs/aa").await.unwrap().is_none());
    assert_eq!(o.list("xorbs").await.unwrap().len(), 1);
}

#[test]
fn a_directory_keeps_objects_and_signs_nothing() {
    let d = tempfile::tempdir().unwrap();
    common::runtime().block_on(async {
        let o = Objects::open(d.path().join("objects").to_str().unwrap()).unwrap();
        contract(&o).await;
        assert!(!o.signs());
        assert!(o
            .presigned_get("shards/s1", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none());
    });
}

#[test]
fn an_s3_server_keeps_objects_and_clients_use_presigned_urls_without_keys() {
    let server = s3::S3::start(&["xet"]);
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    common::runtime().block_on(async {
        let o = Objects::open("s3://xet/deployment-1").unwrap();
        assert!(o.signs());
        contract(&o).await;
        // The prefix holds them: the objects are below it on the server's disk.
        assert!(server
            .dir
            .path()
            .join("root/xet/deployment-1/shards/s1")
            .exists());

        let http = reqwest::Client::new();
        let body = bytes(200_000, 7);
        o.put("xorbs/cc", body.clone()).await.unwrap();
        let url = o
            .presigned_get("xorbs/cc", Duration::from_secs(300))
            .await
            .unwrap()
            .unwrap();
        assert!(
            url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=300"),
            "{url}"
        );
        let r = http
            .get(&url)
            .header("Range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap(), body.slice(1000..2000));
        // A URL changed after signing (a longer life) is refused.
        let bad = url.replace("X-Amz-Expires=300", "X-Amz-Expires=301");
        assert_eq!(http.get(&bad).send().await.unwrap().status(), 403);

        // A presigned PUT: the body whose checksum was signed goes in.
        let up = bytes(123_456, 9);
        let crc = crc64nvme_header(&up);
        let (url, headers) = o
            .presigned_put("uploads/g1", Duration::from_secs(300), &crc)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(headers, vec![(CHECKSUM_HEADER.to_string(), crc.clone())]);
        let put = |body: Bytes, crc: &str| {
            http.put(&url)
                .header(CHECKSUM_HEADER, crc)
                .body(body)
                .send()
        };
        let r = put(up.clone(), &crc).await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(o.get("uploads/g1").await.unwrap().unwrap(), up);
        // The signed checksum cannot be swapped for another body's.
        let other = bytes(123_456, 10);
        let r = put(other.clone(), &crc64nvme_header(&other)).await.unwrap();
        assert!(
            r.status().is_client_error(),
            "a header that is not the signed one: {}",
            r.status()
        );
        assert_eq!(
            o.get("uploads/g1").await.unwrap().unwrap(),
            up,
            "nothing was stored"
        );
        // A body that does not match the signed checksum is refused (s3s-fs answers 400; it
        // may leave the bytes behind, which is why a grant's commit checks them again).
        let r = put(other, &crc).await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    });
}
