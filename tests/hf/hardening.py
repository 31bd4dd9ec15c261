"""`xetmount serve` under hostile and unlucky clients (issue 20), judged with the official
client (huggingface_hub 2.4.0 + hf_xet 1.8.0) and raw HTTP.

Run by tests/serve_hardening.rs against a fresh server whose token file holds:
  alice-token alice write          (alice/*)
  bob-token bob write              (bob/*)
  reader-token carol read alice/*
Usage: hardening.py SCRATCH-DIR
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import HfApi

scratch = Path(sys.argv[1])
url = os.environ["HF_ENDPOINT"]
EMPTY = "0" * 64
checks = 0
failures = []


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def section(name):
    """Run the decorated check group now; a failure is recorded and the next group still runs,
    so one run shows every item that does not hold."""
    def run(f):
        try:
            f()
        except Exception as e:  # noqa: BLE001 - every failure is reported at the end
            failures.append(f"{name}: {type(e).__name__}: {e}")
    return run


def api(token):
    return HfApi(endpoint=url, token=token)


alice, bob, reader = api("alice-token"), api("bob-token"), api("reader-token")


def http(method, route, token=None, body=None, headers=None):
    """(status, headers, body bytes) of one raw request; never raises on an HTTP status."""
    data = body if body is None or isinstance(body, bytes) else body.encode()
    req = urllib.request.Request(url + route, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def batch(bucket, lines, token="alice-token"):
    body = "".join(json.dumps(l) + "\n" for l in lines)
    status, _, out = http("POST", f"/api/buckets/{bucket}/batch", token, body,
                          {"Content-Type": "application/x-ndjson"})
    return status, (json.loads(out) if out else {})


def files(bucket, token="alice-token"):
    """path -> xetHash of every file, paging through the server's links by hand."""
    out, route = {}, f"/api/buckets/{bucket}/tree?recursive=true"
    while route:
        status, h, body = http("GET", route, token)
        check(status == 200, f"tree {route}: {status} {body[:200]}")
        for e in json.loads(body):
            out[e["path"]] = e["xetHash"]
        link = h.get("Link")
        route = link.split(";")[0].strip("<>").removeprefix(url) if link else None
    return out


for name, private in [("alice/pub", False), ("alice/private", True), ("alice/page", False)]:
    alice.create_bucket(name, private=private)
bob.create_bucket("bob/b")

# --- 1. paging is keyed, not positional ---------------------------------------------------
@section("1. paging")
def _():
    # 2,500 files: three pages of the client's 1,000. While the official client's generator is
    # between pages, delete 200 already-listed files and add files before and after the cursor.
    names = [f"f/{i:05d}" for i in range(2500)]
    for i in range(0, len(names), 1000):
        status, r = batch("alice/page", [{"type": "addFile", "path": p, "xetHash": EMPTY, "mtime": 0}
                                         for p in names[i:i + 1000]])
        check(status == 200 and not r["failed"], f"seed batch: {status} {r}")
    seen = []
    it = iter(alice.list_bucket_tree("alice/page", recursive=True))
    for _ in range(1000):
        seen.append(next(it).path)
    status, r = batch("alice/page", [{"type": "deleteFile", "path": p} for p in seen[:200]]
                      + [{"type": "addFile", "path": f"a/{i}", "xetHash": EMPTY} for i in range(50)]
                      + [{"type": "addFile", "path": f"z/{i}", "xetHash": EMPTY} for i in range(50)])
    check(status == 200 and not r["failed"], f"mutating batch: {status} {r}")
    seen.extend(e.path for e in it)
    check(len(seen) == len(set(seen)), "no file listed twice")
    missing = [p for p in names[200:] if p not in set(seen)]
    check(not missing, f"{len(missing)} files that existed throughout were never listed, e.g. {missing[:3]}")
    check(sum(p.startswith("z/") for p in seen) == 50, "files added after the cursor are listed")
    check(not any(p.startswith("a/") for p in seen), "files added before the cursor are not")
    # Small pages by raw HTTP: a cursor the server did not make is refused, not misread.
    status, h, _ = http("GET", "/api/buckets/alice/page/tree/f?limit=7", "alice-token")
    check(status == 200 and 'rel="next"' in h.get("Link", ""), "a 7-entry page links to the next")
    status, _, body = http("GET", "/api/buckets/alice/page/tree?cursor=%%%", "alice-token")
    check(status == 400, f"bad cursor: {status} {body[:200]}")
    check(len(files("alice/page")) == 2400, "raw paging sees every file")
    # Bucket listings page by id too.
    for i in range(5):
        alice.create_bucket(f"alice/many-{i}")
    got, route = [], "/api/buckets/alice?limit=2"
    while route:
        status, h, body = http("GET", route, "alice-token")
        check(status == 200, f"list {route}: {status}")
        got += [b["id"] for b in json.loads(body)]
        link = h.get("Link")
        route = link.split(";")[0].strip("<>").removeprefix(url) if link else None
    check(sorted(got) == sorted(set(got)) and {f"alice/many-{i}" for i in range(5)} <= set(got),
          f"bucket pages: {got}")

# --- 2. bodies are scoped to what the caller may read -----------------------------------
secret = os.urandom(200_000)
alice.batch_bucket_files("alice/private", add=[(secret, "secret.bin")])
public = os.urandom(100_000)
alice.batch_bucket_files("alice/pub", add=[(public, "public.bin")])
h_secret = files("alice/private")["secret.bin"]
h_public = files("alice/pub")["public.bin"]
status, _, body = http("GET", "/api/buckets/bob/b/xet-read-token", "bob-token")
cas_bob = json.loads(body)["accessToken"]
status, _, body = http("GET", "/api/buckets/alice/private/xet-read-token", "alice-token")
cas_alice = json.loads(body)["accessToken"]

@section("2. bodies scoped to readers")
def _():
    before = files("bob/b", "bob-token")
    status, r = batch("bob/b", [{"type": "copyFile", "path": "stolen.bin", "xetHash": h_secret, "mtime": 0,
                                 "sourceRepoType": "bucket", "sourceRepoId": "alice/private"}], "bob-token")
    check(status == 422 and r["failed"][0]["path"] == "stolen.bin", f"copy out of a private bucket: {status} {r}")
    status, r = batch("bob/b", [{"type": "copyFile", "path": "stolen.bin", "xetHash": h_secret, "mtime": 0,
                                 "sourceRepoType": "bucket", "sourceRepoId": "nobody/nothing"}], "bob-token")
    check(status == 422, f"copy from a missing bucket: {status} {r}")
    status, r = batch("bob/b", [{"type": "copyFile", "path": "stolen.bin", "xetHash": h_secret, "mtime": 0,
                                 "sourceRepoType": "bucket", "sourceRepoId": "alice/pub"}], "bob-token")
    check(status == 422, f"copy naming a readable bucket that lacks the hash: {status} {r}")
    status, r = batch("bob/b", [{"type": "addFile", "path": "stolen.bin", "xetHash": h_secret, "mtime": 0}],
                      "bob-token")
    check(status == 422, f"addFile of another bucket's private hash: {status} {r}")
    check(files("bob/b", "bob-token") == before, "refused lines land nothing")
    # A CAS read token for bob's bucket cannot reconstruct alice's private body...
    for route in [f"/v2/reconstructions/{h_secret}", f"/v1/reconstructions/{h_secret}",
                  f"/v2/file-chunk-hashes/{h_secret}"]:
        status, _, _ = http("GET", route, cas_bob, headers={"X-Range-Dirty": "bytes=0-10"})
        check(status == 404, f"{route} with bob's token: {status}")
    # ...while alice's token for the bucket that holds it can.
    status, _, _ = http("GET", f"/v2/reconstructions/{h_secret}", cas_alice)
    check(status == 200, f"reconstruction through the owning bucket: {status}")
    # Copies that are allowed still work: from a public bucket, and between one's own buckets.
    status, r = batch("bob/b", [{"type": "copyFile", "path": "pub.bin", "xetHash": h_public, "mtime": 0,
                                 "sourceRepoType": "bucket", "sourceRepoId": "alice/pub"}], "bob-token")
    check(status == 200 and not r["failed"], f"copy from a public bucket: {status} {r}")
    status, r = batch("alice/pub", [{"type": "copyFile", "path": "s.bin", "xetHash": h_secret, "mtime": 0,
                                     "sourceRepoType": "bucket", "sourceRepoId": "alice/private"}])
    check(status == 200 and not r["failed"], f"alice copies her own private file: {status} {r}")
    out = scratch / "pub.bin"
    bob.download_bucket_files("bob/b", [("pub.bin", str(out))])
    check(out.read_bytes() == public, "the copy reads back byte for byte")
    # A body is readable through a bucket while the bucket holds it: once alice deletes the
    # copy from her public bucket, neither its read tokens nor bob's batches reach it.
    status, _, body = http("GET", "/api/buckets/alice/pub/xet-read-token", "bob-token")
    cas_pub = json.loads(body)["accessToken"]
    status, _, _ = http("GET", f"/v2/reconstructions/{h_secret}", cas_pub)
    check(status == 200, f"a public copy reads through the public bucket: {status}")
    status, r = batch("alice/pub", [{"type": "deleteFile", "path": "s.bin"}])
    check(status == 200 and not r["failed"], f"delete the copy: {status} {r}")
    status, _, _ = http("GET", f"/v2/reconstructions/{h_secret}", cas_pub)
    check(status == 404, f"a deleted copy no longer reads through the public bucket: {status}")
    status, r = batch("bob/b", [{"type": "addFile", "path": "late.bin", "xetHash": h_secret, "mtime": 0}],
                      "bob-token")
    check(status == 422, f"addFile of a body no readable bucket holds any more: {status} {r}")
    # The same bytes uploaded by bob himself are his to add.
    bob.batch_bucket_files("bob/b", add=[(secret, "mine.bin")])
    check(files("bob/b", "bob-token")["mine.bin"] == h_secret, "an upload of one's own bytes lands")

# --- 4. refusals say what is wrong ------------------------------------------------------
@section("4. 403 vs 404")
def _():
    for method, route, body in [
        ("GET", "/api/buckets/alice/pub/xet-write-token", None),
        ("POST", "/api/buckets/alice/pub/batch", json.dumps({"type": "deleteFile", "path": "public.bin"})),
        ("DELETE", "/api/buckets/alice/pub", None),
        ("PUT", "/api/buckets/alice/pub/settings", json.dumps({"private": True})),
    ]:
        status, _, text = http(method, route, "bob-token", body)
        check(status == 403, f"bob {method} {route} on a bucket he can read: {status} {text[:200]}")
        status, _, text = http(method, route, "reader-token", body)
        check(status == 403, f"reader {method} {route}: {status} {text[:200]}")
        status, _, text = http(method, route, None, body)
        check(status == 401, f"anonymous {method} {route}: {status} {text[:200]}")
    status, _, _ = http("GET", "/api/buckets/alice/private/xet-write-token", "bob-token")
    check(status == 404, f"bob may not learn of alice's private bucket: {status}")
    status, _, _ = http("GET", "/api/buckets/alice/private/xet-read-token", "reader-token")
    check(status == 200, "the reader reads alice's private bucket")
    check("public.bin" in files("alice/pub"), "nothing refused was applied")

# --- 6. malformed input answers 4xx with a sentence, and is never rewritten ---------------
@section("6. malformed input")
def _():
    before = files("alice/pub")
    bad_lines = [
        {"type": "addFile", "path": "h1", "xetHash": "zz", "mtime": 0},
        {"type": "addFile", "path": "h2", "xetHash": "a" * 63, "mtime": 0},
        {"type": "addFile", "path": "h3", "xetHash": "A" * 64, "mtime": 0},
        {"type": "copyFile", "path": "h4", "xetHash": "zz", "mtime": 0,
         "sourceRepoType": "bucket", "sourceRepoId": "alice/pub"},
        {"type": "addFile", "path": "/leading.txt", "xetHash": EMPTY, "mtime": 0},
        {"type": "addFile", "path": "dir/", "xetHash": EMPTY, "mtime": 0},
        {"type": "addFile", "path": "a//b", "xetHash": EMPTY, "mtime": 0},
        {"type": "addFile", "path": "a/../b", "xetHash": EMPTY, "mtime": 0},
        {"type": "addFile", "path": "ctl\x01name", "xetHash": EMPTY, "mtime": 0},
        {"type": "addFile", "path": "x" * 256, "xetHash": EMPTY, "mtime": 0},
        {"type": "addFile", "path": "/".join(["y"] * 2100), "xetHash": EMPTY, "mtime": 0},
        {"type": "addFile", "path": "m1", "xetHash": EMPTY, "mtime": "yesterday"},
        {"type": "addFile", "path": "m2", "xetHash": EMPTY, "mtime": 1.5},
        {"type": "addFile", "path": "m3", "xetHash": EMPTY, "mtime": 10**20},
        {"type": "addFile", "path": 7, "xetHash": EMPTY},
        {"type": "renameFile", "path": "x"},
        {"type": "deleteFile", "path": "/public.bin"},
    ]
    status, r = batch("alice/pub", bad_lines)
    check(status == 422 and len(r["failed"]) == len(bad_lines), f"malformed lines: {status} {r}")
    check(all(f.get("error") for f in r["failed"]), "every refused line says why")
    check(files("alice/pub") == before, "no malformed line landed, none was rewritten")
    for method, route, hdrs, want in [
        ("GET", "/api/buckets/alice/pub/tree/%00", {}, 400),
        ("GET", "/api/buckets/alice/pub/tree/" + "p" * 5000, {}, 400),
        ("GET", "/api/buckets/alice/pub/tree/a%2F%2Fb", {}, 400),
        ("GET", "/api/buckets/alice/pub/tree?recursive=maybe", {}, 400),
        ("GET", "/buckets/alice/pub/resolve/%2Fpublic.bin", {}, 400),
        ("GET", "/buckets/alice/pub/resolve/public.bin", {"Range": "bytes=zz"}, 416),
        ("GET", "/buckets/alice/pub/resolve/public.bin", {"Range": "bytes=900000-"}, 416),
        ("POST", "/api/buckets/alice/pub/paths-info", {}, 400),
        ("POST", "/api/buckets/alice/fresh", {}, 400),
    ]:
        body = b"{not json" if method == "POST" else None
        status, _, text = http(method, route, "alice-token", body, hdrs)
        check(status == want, f"{method} {route[:80]} {hdrs}: {status}, wanted {want}: {text[:200]}")
        check(json.loads(text).get("error"), f"{route[:80]} answers a sentence")
    status, _, text = http("POST", "/api/buckets/alice/pub/paths-info", "alice-token",
                           json.dumps({"paths": ["/public.bin", "public.bin/", "public.bin"]}))
    check(status == 200 and [e["path"] for e in json.loads(text)] == ["public.bin"],
          f"paths-info answers only the exact path: {text[:300]}")
    for route, hdrs in [
        (f"/v2/reconstructions/{'z' * 64}", {}),
        (f"/v2/reconstructions/{h_public}", {"Range": "bytes=5-2"}),
        (f"/v2/file-chunk-hashes/{h_public}", {"X-Range-Dirty": "bytes=0-18446744073709551615"}),
        (f"/v2/file-chunk-hashes/{h_public}", {"X-Range-Dirty": "bytes=9-3"}),
    ]:
        status, _, text = http("GET", route, cas_bob, None, hdrs)
        check(400 <= status < 500, f"{route} {hdrs}: {status} {text[:200]}")

for f in failures:
    print("FAILED", f)
print(f"hardening: {checks} checks passed, {len(failures)} groups failed")
sys.exit(1 if failures else 0)
