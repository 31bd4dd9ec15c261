"""The official clients (huggingface_hub 2.4.0 + hf_xet 1.8.0) against `xetmount serve`.

Run by tests/hf_clients.rs with HF_ENDPOINT pointing at a fresh server whose token file
grants HF_TOKEN write access to namespace `alice` and READ_TOKEN read access; everything the
clients upload must come back byte for byte. Usage: conformance.py SCRATCH-DIR
"""

import os
import subprocess
import sys
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import BucketNotFoundError, HfHubHTTPError

scratch = Path(sys.argv[1])
phase = sys.argv[2] if len(sys.argv) > 2 else "first"
api = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=os.environ["HF_TOKEN"])
hf = str(Path(sys.executable).parent / "hf")
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def run(*args):
    r = subprocess.run([hf, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"hf {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def tree(bucket, prefix=None, recursive=None):
    return sorted(
        (type(e).__name__, e.path)
        for e in api.list_bucket_tree(bucket, prefix, recursive=recursive)
    )


if phase == "after-restart":
    # Everything committed before the server restarted is still there, byte for byte.
    expected = (scratch / "expected-tree.txt").read_text().splitlines()
    got = [p for _, p in tree("alice/data", recursive=True)]
    check(got == expected, f"tree after restart {got}")
    again = scratch / "again"
    again.mkdir()
    run("buckets", "cp", "hf://buckets/alice/data/big.bin", str(again / "big.bin"))
    check((again / "big.bin").read_bytes() == (scratch / "big.bin").read_bytes(), "big.bin after restart")
    print(f"conformance after restart: {checks} checks passed")
    sys.exit(0)

# --- buckets ---------------------------------------------------------------------------
run("buckets", "create", "alice/data")
url = api.create_bucket("alice/data", exist_ok=True)
check(url.bucket_id == "alice/data", f"exist_ok create returned {url}")
try:
    api.create_bucket("alice/data")
    check(False, "a second create must fail")
except HfHubHTTPError as e:
    check(e.response.status_code == 409, f"second create: {e}")
api.create_bucket("me-bucket")  # `me` is the token's user
check(any(b.id == "alice/me-bucket" for b in api.list_buckets()), "list_buckets() shows mine")
info = api.bucket_info("alice/data")
check(info.id == "alice/data" and info.total_files == 0, f"info {info}")
try:
    api.bucket_info("alice/missing")
    check(False, "info of a missing bucket must fail")
except BucketNotFoundError:
    checks += 1

# --- upload: cp, sync, batch ---------------------------------------------------------------
src = scratch / "src"
(src / "sub" / "deep").mkdir(parents=True)
(src / "hello.txt").write_bytes(b"hello bucket\n")
(src / "sub" / "config.json").write_bytes(b'{"a": 1}\n')
(src / "sub" / "deep" / "rand.bin").write_bytes(os.urandom(3_000_000))
(src / "sub" / "name with spaces #1.txt").write_bytes(b"odd name\n")
big = scratch / "big.bin"
big.write_bytes(os.urandom(70 << 20))  # more than one 64 MiB xorb
run("buckets", "cp", str(src / "hello.txt"), "hf://buckets/alice/data/hello.txt")
run("buckets", "sync", str(src), "hf://buckets/alice/data/backup")
api.batch_bucket_files(
    "alice/data",
    add=[(b"", "empty/.keep"), (str(big), "big.bin"), (b"in memory\n", "mem.txt")],
)
check(
    tree("alice/data", recursive=True)
    == sorted(
        ("BucketFile", p)
        for p in [
            "hello.txt",
            "big.bin",
            "mem.txt",
            "empty/.keep",
            "backup/hello.txt",
            "backup/sub/config.json",
            "backup/sub/deep/rand.bin",
            "backup/sub/name with spaces #1.txt",
        ]
    ),
    f"recursive tree {tree('alice/data', recursive=True)}",
)
check(
    tree("alice/data", recursive=False)
    == sorted(
        [
            ("BucketFile", "hello.txt"),
            ("BucketFile", "big.bin"),
            ("BucketFile", "mem.txt"),
            ("BucketFolder", "empty"),
            ("BucketFolder", "backup"),
        ]
    ),
    f"root listing {tree('alice/data', recursive=False)}",
)
check(
    tree("alice/data", "backup/sub", recursive=False)
    == sorted(
        [
            ("BucketFile", "backup/sub/config.json"),
            ("BucketFile", "backup/sub/name with spaces #1.txt"),
            ("BucketFolder", "backup/sub/deep"),
        ]
    ),
    "prefix listing",
)
infos = {f.path: f for f in api.get_bucket_paths_info("alice/data", ["hello.txt", "big.bin", "missing", "backup"])}
check(set(infos) == {"hello.txt", "big.bin"}, f"paths-info {sorted(infos)}")
check(infos["big.bin"].size == 70 << 20, "paths-info size")
meta = api.get_bucket_file_metadata("alice/data", "backup/sub/deep/rand.bin")
check(meta.size == 3_000_000, f"metadata {meta}")
check(api.bucket_info("alice/data").total_files == 8, "total_files after uploads")

# --- download: cp, sync, download_bucket_files ------------------------------------------
out = scratch / "out"
out.mkdir()
run("buckets", "cp", "hf://buckets/alice/data/big.bin", str(out / "big.bin"))
check((out / "big.bin").read_bytes() == big.read_bytes(), "cp down big.bin")
run("buckets", "sync", "hf://buckets/alice/data/backup", str(out / "backup"))
for p in src.rglob("*"):
    if p.is_file():
        got = out / "backup" / p.relative_to(src)
        check(got.read_bytes() == p.read_bytes(), f"sync down {p}")
api.download_bucket_files(
    "alice/data", [("mem.txt", out / "mem.txt"), ("empty/.keep", out / "keep")]
)
check((out / "mem.txt").read_bytes() == b"in memory\n", "download mem.txt")
check((out / "keep").read_bytes() == b"", "download empty file")

# --- delete, rm -R, copy between buckets, settings, move ----------------------------------
api.batch_bucket_files("alice/data", delete=["mem.txt"])
run("buckets", "rm", "alice/data/backup/sub", "-R", "-y")
check(
    ("BucketFolder", "backup") in tree("alice/data", recursive=False)
    and all(not p.startswith("backup/sub") for _, p in tree("alice/data", recursive=True)),
    "rm -R",
)
run("buckets", "create", "alice/other", "--private")
run("buckets", "cp", "hf://buckets/alice/data/backup/", "hf://buckets/alice/other/copied/")
check(tree("alice/other", recursive=True) == [("BucketFile", "copied/hello.txt")], "remote copy")
api.update_bucket_settings("alice/other", private=False)
check(not api.bucket_info("alice/other").private, "settings")
api.move_bucket("alice/other", "alice/renamed")
check(api.bucket_info("alice/renamed").total_files == 1, "move")
api.delete_bucket("alice/renamed")
api.delete_bucket("alice/renamed", missing_ok=True)

# --- concurrent batches to one bucket all land ---------------------------------------------
from concurrent.futures import ThreadPoolExecutor

def add_many(k):
    HfApi(endpoint=os.environ["HF_ENDPOINT"], token=os.environ["HF_TOKEN"]).batch_bucket_files(
        "alice/data", add=[(f"writer {k} file {i}\n".encode(), f"conc/{k}/{i}.txt") for i in range(5)]
    )

with ThreadPoolExecutor(4) as pool:
    list(pool.map(add_many, range(4)))
conc = [p for _, p in tree("alice/data", "conc", recursive=True)]
check(len(conc) == 20, f"concurrent batches: {len(conc)} of 20 files")
api.download_bucket_files("alice/data", [("conc/3/4.txt", out / "c.txt")])
check((out / "c.txt").read_bytes() == b"writer 3 file 4\n", "concurrent batch content")
api.batch_bucket_files("alice/data", delete=conc)

# --- permissions ---------------------------------------------------------------------------
reader = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=os.environ["READ_TOKEN"])
check(len(list(reader.list_bucket_tree("alice/data", recursive=True))) == 4, "reader lists")
try:
    reader.batch_bucket_files("alice/data", add=[(b"x", "x.txt")])
    check(False, "a read token must not write")
except Exception as e:  # the write-token route answers 403; hf_xet reports it its own way
    check("403" in str(e) or "Forbidden" in str(e) or "forbidden" in str(e).lower(), f"reader write: {e}")
stranger = HfApi(endpoint=os.environ["HF_ENDPOINT"], token="not-a-token")
try:
    list(stranger.list_bucket_tree("alice/data"))
    check(False, "an unknown token must be refused")
except HfHubHTTPError as e:
    check(e.response.status_code == 401, f"unknown token: {e}")

(scratch / "expected-tree.txt").write_text(
    "\n".join(p for _, p in tree("alice/data", recursive=True)) + "\n"
)
print(f"conformance: {checks} checks passed")
