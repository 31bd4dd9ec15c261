"""Model and dataset repos on `xetmount serve`, judged by the official client (huggingface_hub
2.4.0 + hf_xet 1.8.0): create, commit (upload_folder, create_commit, upload_file), branches and
tags, parent-commit checks, downloads at every kind of revision, HfFileSystem ranged reads,
access rights and typed errors. Everything downloaded must equal what was committed, byte for
byte.

Run by tests/hf_repos.rs with HF_ENDPOINT pointing at a fresh server whose token file grants
HF_TOKEN write access to namespace `alice` and READ_TOKEN (user bob) read access to `alice/*`.
Usage: repos.py SCRATCH-DIR [first|after-restart]. Phase `first` does everything and leaves the
expected trees and a manifest in SCRATCH-DIR; phase `after-restart` checks them again against a
restarted server.

The upload mode the server picks decides the tree entries' shape: `lfs` (a Xet file) for files
over 10 MiB or with a NUL byte in their first 512 bytes, `regular` (a git blob) otherwise.
`.gitattributes`, which the server writes in a repo's initial commit as the Hub does, is left
out of every comparison.
"""

import hashlib
import json
import os
import re
import sys
from pathlib import Path, PurePosixPath

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, HfFileSystem
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

scratch = Path(sys.argv[1])
phase = sys.argv[2] if len(sys.argv) > 2 else "first"
endpoint = os.environ["HF_ENDPOINT"]
api = HfApi(endpoint=endpoint, token=os.environ["HF_TOKEN"])
reader = HfApi(endpoint=endpoint, token=os.environ["READ_TOKEN"])
anon = HfApi(endpoint=endpoint, token=False)  # token=False: no Authorization, whatever HF_TOKEN says

MODEL = "alice/model-a"
DATA = "alice/data-a"
PRIVATE = "alice/private-m"
MIB = 1 << 20
SHA = re.compile(r"[0-9a-f]{40}")
checks = 0
downloads = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def step(what):
    print(f"{phase}: {what}: ok", flush=True)


def raises(kind, fn, what, status=None):
    """`fn()` must raise `kind` (with an HTTP status in `status`, when given); returns the error."""
    global checks
    try:
        fn()
    except kind as e:
        if status is not None:
            code = e.response.status_code
            check(code in status, f"{what}: HTTP {code}, expected one of {sorted(status)}: {e}")
        checks += 1
        return e
    except Exception as e:
        raise AssertionError(f"{what}: expected {kind.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"{what}: expected {kind.__name__}, nothing was raised")


def is_lfs(body):
    """The upload mode the server answers for `body` (see the module docstring)."""
    return len(body) > 10 * MIB or b"\0" in body[:512]


def git_blob_sha1(body):
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def files_under(root):
    """Every file below `root` (symlinks followed, as in a snapshot folder) as path → bytes."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel != ".gitattributes":
                out[rel] = p.read_bytes()
    return out


def write_tree(root, files):
    for rel, body in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)


def same_files(got, want, what):
    check(sorted(got) == sorted(want), f"{what}: paths {sorted(got)}, expected {sorted(want)}")
    for rel, body in want.items():
        check(
            got[rel] == body,
            f"{what}: {rel} differs ({len(got[rel])} bytes, expected {len(body)})",
        )


def folders_of(files):
    return {d.as_posix() for p in files for d in PurePosixPath(p).parents if d.as_posix() != "."}


def snapshot(client, repo, revision, name, want, commit, repo_type=None):
    """`snapshot_download` into a cache of its own (nothing comes from an earlier download): the
    snapshot folder is named after `commit` and holds exactly `want`."""
    global downloads
    downloads += 1
    cache = scratch / f"cache-{phase}-{downloads}-{name}"
    path = Path(client.snapshot_download(repo, repo_type=repo_type, revision=revision, cache_dir=cache))
    check(path.name == commit, f"snapshot {name} at {revision}: folder {path.name}, expected commit {commit}")
    same_files(files_under(path), want, f"snapshot {name} at {revision}")


def download(client, repo, filename, revision, want, commit=None, repo_type=None):
    """`hf_hub_download` into a cache of its own; the bytes must be `want`."""
    global downloads
    downloads += 1
    cache = scratch / f"cache-{phase}-{downloads}-file"
    path = Path(
        client.hf_hub_download(repo, filename, repo_type=repo_type, revision=revision, cache_dir=cache)
    )
    got = path.read_bytes()
    check(got == want, f"hf_hub_download {repo}/{filename}@{revision}: {len(got)} bytes differ from {len(want)}")
    if commit is not None:
        # The cache files a download of a branch or tag under the commit the server resolved.
        snap = path.parents[len(Path(filename).parts) - 1]
        check(snap.name == commit, f"hf_hub_download {filename}@{revision} landed in {snap.name}, not {commit}")


def check_tree_entries(repo, revision, want, repo_type=None):
    """The recursive tree at `revision`: files with their real size and, per upload mode, a git
    blob sha1 (`regular`) or `lfs` {sha256, size} and a xet hash; folders for every parent."""
    entries = list(api.list_repo_tree(repo, recursive=True, revision=revision, repo_type=repo_type))
    files = {e.path: e for e in entries if isinstance(e, RepoFile) and e.path != ".gitattributes"}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    check(sorted(files) == sorted(want), f"tree {repo}@{revision}: files {sorted(files)}")
    check(folders == folders_of(want), f"tree {repo}@{revision}: folders {sorted(folders)}")
    for rel, body in want.items():
        e = files[rel]
        check(e.size == len(body), f"tree {rel}: size {e.size}, expected {len(body)}")
        if is_lfs(body):
            check(e.lfs is not None, f"tree {rel}: an lfs file without `lfs`")
            check(e.lfs.size == len(body), f"tree {rel}: lfs size {e.lfs.size}")
            check(e.lfs.sha256 == hashlib.sha256(body).hexdigest(), f"tree {rel}: lfs oid {e.lfs.sha256}")
            check(
                e.xet_hash is not None and re.fullmatch(r"[0-9a-f]{64}", e.xet_hash),
                f"tree {rel}: xetHash {e.xet_hash!r}",
            )
        else:
            check(e.lfs is None, f"tree {rel}: a regular file with `lfs` {e.lfs}")
            check(e.blob_id == git_blob_sha1(body), f"tree {rel}: oid {e.blob_id}, not its git blob sha1")


def check_refs(main, dev, v1):
    refs = api.list_repo_refs(MODEL)
    check(isinstance(refs.converts, list), f"refs: converts {refs.converts!r}")
    branches = {b.name: (b.ref, b.target_commit) for b in refs.branches}
    tags = {t.name: (t.ref, t.target_commit) for t in refs.tags}
    check(
        branches == {"main": ("refs/heads/main", main), "dev": ("refs/heads/dev", dev)},
        f"refs: branches {branches}",
    )
    check(tags == {"v1": ("refs/tags/v1", v1)}, f"refs: tags {tags}")


def read_ranges(fs, path, body, what, **open_args):
    """Seek-and-read at offsets chosen to cross the fsspec block boundary (5 MiB by default, or
    `block_size`), the 64 KiB Xet chunk size, and the end of the file."""
    n = len(body)
    ranges = [
        (0, 100),
        (64 * 1024 - 1, 2),
        (5 * MIB - 50, 100),
        (MIB // 2, 3 * MIB),
        (8 * MIB + 12345, 70000),
        (n - 100, 100),
        (n - 10, 100),  # a read past the end stops there
        (1000, 10),  # backwards after reading the end
        (n, 10),
    ]
    with fs.open(path, "rb", **open_args) as f:
        check(f.size == n, f"{what}: open size {f.size}, expected {n}")
        for off, k in ranges:
            f.seek(off)
            got = f.read(k)
            check(got == body[off : off + k], f"{what}: read({k}) at {off}: {len(got)} bytes differ")
    for off, k in ranges[:6]:
        got = fs.cat_file(path, start=off, end=off + k, **open_args)
        check(got == body[off : off + k], f"{what}: cat_file({off}, {off + k}) differs")
    got = fs.cat_file(path, start=-100, **open_args)
    check(got == body[-100:], f"{what}: cat_file(start=-100) differs")


def manifest_path():
    return scratch / "repos-manifest.json"


# ======================================================================================
if phase == "after-restart":
    m = json.loads(manifest_path().read_text())
    v1_files = files_under(scratch / "tree-v1")
    main_files = files_under(scratch / "tree-main")
    dev_files = files_under(scratch / "tree-dev")
    data_files = files_under(scratch / "tree-data")
    first, second, dev_head = m["first"], m["second"], m["dev"]

    check_refs(second, dev_head, first)
    check(api.model_info(MODEL).sha == second, "main after restart")
    step("refs after restart")

    snapshot(api, MODEL, "v1", "v1", v1_files, first)
    snapshot(api, MODEL, first, "sha", v1_files, first)
    snapshot(api, MODEL, "dev", "dev", dev_files, dev_head)
    snapshot(api, MODEL, "main", "main", main_files, second)
    snapshot(api, DATA, None, "data", data_files, m["data"], repo_type="dataset")
    step("snapshot_download at v1, the first commit's sha, dev, main, and of the dataset")

    download(api, MODEL, "big.bin", "main", main_files["big.bin"], second)
    download(api, MODEL, "big.bin", "v1", v1_files["big.bin"], first)
    download(reader, MODEL, "weights/huge.bin", "v1", v1_files["weights/huge.bin"], first)
    step("hf_hub_download at main and v1")

    fs = HfFileSystem(endpoint=endpoint, token=os.environ["HF_TOKEN"], skip_instance_cache=True)
    read_ranges(fs, f"{MODEL}/big.bin", main_files["big.bin"], "fs main big.bin")
    read_ranges(fs, f"{MODEL}@v1/big.bin", v1_files["big.bin"], "fs @v1 big.bin")
    step("HfFileSystem ranged reads at main and @v1")

    raises(RepositoryNotFoundError, lambda: anon.model_info(PRIVATE), "anonymous info of a private repo")
    check(reader.model_info(PRIVATE).private is True, "the reader still sees the private repo")
    step("the private repo stays private")

    # The branch heads survived: a commit on the current head lands, one on an old head does not.
    third = api.create_commit(
        MODEL,
        [CommitOperationAdd("after-restart.txt", b"committed after a restart\n")],
        commit_message="third: after restart",
        parent_commit=second,
    )
    check(SHA.fullmatch(third.oid or "") and third.oid != second, f"third commit {third.oid}")
    raises(
        HfHubHTTPError,
        lambda: api.create_commit(
            MODEL,
            [CommitOperationAdd("stale.txt", b"stale\n")],
            commit_message="stale",
            parent_commit=second,
        ),
        "a commit on a stale parent after restart",
        status=range(400, 500),
    )
    download(api, MODEL, "after-restart.txt", "main", b"committed after a restart\n", third.oid)
    check(
        [c.commit_id for c in api.list_repo_commits(MODEL)][:3] == [third.oid, second, first],
        "history after restart",
    )
    step("commits after restart honour parent_commit")
    print(f"repos after restart: {checks} checks passed")
    sys.exit(0)

# ======================================================================================
# --- create_repo ----------------------------------------------------------------------
url = api.create_repo(MODEL)
check(url.repo_id == MODEL and url.repo_type == "model", f"create_repo returned {url!r}")
durl = api.create_repo(DATA, repo_type="dataset")
check(durl.repo_id == DATA and durl.repo_type == "dataset", f"create_repo dataset returned {durl!r}")
raises(HfHubHTTPError, lambda: api.create_repo(MODEL), "a second create", status={409})
raises(
    HfHubHTTPError,
    lambda: api.create_repo(DATA, repo_type="dataset"),
    "a second create of the dataset",
    status={409},
)
check(api.create_repo(MODEL, exist_ok=True).repo_id == MODEL, "create_repo exist_ok")
check(api.model_info(MODEL).private is False, "a repo is public unless asked")
step("create_repo of a model and a dataset; a second create is 409 unless exist_ok")

# --- upload_folder: the first commit ---------------------------------------------------
v1_files = {
    "README.md": b"---\nlicense: mit\ntags:\n- xetmount\n---\n# model-a\n\nA test model.\n",
    "config.json": b'{"hidden_size": 8, "num_layers": 2}\n',
    "empty.txt": b"",
    "notes/a.txt": b"note a\n",
    "notes/deep/b.txt": b"note b, deeper\n",
    "notes/odd name #1.txt": b"a name that needs quoting\n",
    "small.bin": bytes(range(256)) * 8 + b"\0\0\0",  # NUL bytes: lfs, though small
    "big.bin": os.urandom(12 * MIB),
    "weights/huge.bin": os.urandom(20 * MIB),
}
check(
    [p for p, b in sorted(v1_files.items()) if is_lfs(b)] == ["big.bin", "small.bin", "weights/huge.bin"],
    "the fixture mixes regular and lfs files",
)
src = scratch / "tree-v1"
write_tree(src, v1_files)
first_info = api.upload_folder(folder_path=src, repo_id=MODEL, commit_message="first: upload folder")
first = first_info.oid
check(SHA.fullmatch(first or ""), f"upload_folder oid {first!r}")
check(first_info.commit_url.endswith(f"/{MODEL}/commit/{first}"), f"commit url {first_info.commit_url}")
check(first_info.repo_url.repo_id == MODEL, f"commit repo url {first_info.repo_url!r}")
info = api.model_info(MODEL)
check(info.sha == first, f"model_info sha {info.sha}, expected {first}")
check(
    {s.rfilename for s in info.siblings} - {".gitattributes"} == set(v1_files),
    f"siblings {sorted(s.rfilename for s in info.siblings)}",
)
check_tree_entries(MODEL, "main", v1_files)
step("upload_folder of text, empty, small binary and large files: one commit, tree entries per upload mode")

# --- branch and tag at the first commit ------------------------------------------------
api.create_branch(MODEL, branch="dev", revision=first)
api.create_tag(MODEL, tag="v1", revision=first, tag_message="first release")
check_refs(first, first, first)
raises(HfHubHTTPError, lambda: api.create_branch(MODEL, branch="dev"), "a second dev branch", status={409})
api.create_branch(MODEL, branch="dev", exist_ok=True)
raises(HfHubHTTPError, lambda: api.create_tag(MODEL, tag="v1"), "a second v1 tag", status={409})
raises(
    RevisionNotFoundError,
    lambda: api.create_tag(MODEL, tag="v0", revision="no-such-branch"),
    "a tag on a missing revision",
)
check(api.model_info(MODEL, revision="v1").sha == first, "model_info at v1")
check(api.model_info(MODEL, revision="dev").sha == first, "model_info at dev")
check(api.model_info(MODEL, revision=first[:12]).sha == first, "model_info at a short sha")
step("create_branch dev and create_tag v1 at the first commit; list_repo_refs shows them")

# --- second commit: modify one large file, delete the other and a small file -----------
main_files = dict(v1_files)
main_files["big.bin"] = os.urandom(12 * MIB + 777)
main_files["CHANGELOG.md"] = b"v2: new weights, no more huge.bin\n"
del main_files["weights/huge.bin"]
del main_files["notes/a.txt"]
new_big = scratch / "big-v2.bin"
new_big.write_bytes(main_files["big.bin"])
second_info = api.create_commit(
    MODEL,
    [
        CommitOperationAdd("big.bin", str(new_big)),
        CommitOperationAdd("CHANGELOG.md", main_files["CHANGELOG.md"]),
        CommitOperationDelete("weights/huge.bin"),
        CommitOperationDelete("notes/a.txt"),
    ],
    commit_message="second: new weights",
    commit_description="big.bin replaced, huge.bin and notes/a.txt deleted",
    parent_commit=first,
)
second = second_info.oid
check(SHA.fullmatch(second or "") and second != first, f"second commit {second!r}")
check(api.model_info(MODEL).sha == second, "main moved to the second commit")
check_refs(second, first, first)
check_tree_entries(MODEL, "main", main_files)
check_tree_entries(MODEL, "v1", v1_files)
step("create_commit on main with parent_commit: one large file changed, one large and one small deleted")

stale = raises(
    HfHubHTTPError,
    lambda: api.create_commit(
        MODEL,
        # New content: an unchanged file would be dropped client-side and never reach the server.
        [CommitOperationAdd("stale.txt", b"written on a stale parent\n")],
        commit_message="third: stale",
        parent_commit=first,
    ),
    "a commit whose parent_commit is no longer main",
    status=range(400, 500),
)
check(api.model_info(MODEL).sha == second, "a refused commit leaves main alone")
check("stale.txt" not in api.list_repo_files(MODEL), "a refused commit adds nothing")
step(f"a stale parent_commit is refused (HTTP {stale.response.status_code}) and changes nothing")

# --- snapshots at a tag, a branch, a sha and main --------------------------------------
snapshot(api, MODEL, "v1", "v1", v1_files, first)
snapshot(api, MODEL, "dev", "dev", v1_files, first)
snapshot(api, MODEL, first, "sha", v1_files, first)
snapshot(api, MODEL, "main", "main", main_files, second)
snapshot(api, MODEL, None, "default", main_files, second)
step("snapshot_download at v1, dev, the first commit's sha and main: exact trees")

# --- single files ----------------------------------------------------------------------
for rev, files, commit in [("main", main_files, second), ("v1", v1_files, first)]:
    download(api, MODEL, "big.bin", rev, files["big.bin"], commit)
    download(api, MODEL, "config.json", rev, files["config.json"], commit)
    download(api, MODEL, "small.bin", rev, files["small.bin"], commit)
download(api, MODEL, "weights/huge.bin", "v1", v1_files["weights/huge.bin"], first)
download(api, MODEL, "notes/odd name #1.txt", first, v1_files["notes/odd name #1.txt"], first)
download(api, MODEL, "empty.txt", "main", b"", second)
raises(
    RemoteEntryNotFoundError,
    lambda: api.hf_hub_download(MODEL, "weights/huge.bin", cache_dir=scratch / "cache-deleted"),
    "a file deleted on main",
)
step("hf_hub_download of large, small, nested and empty files at main, v1 and a sha")

# --- HfFileSystem ----------------------------------------------------------------------
fs = HfFileSystem(endpoint=endpoint, token=os.environ["HF_TOKEN"], skip_instance_cache=True)


def listing(path, **kw):
    """`fs.ls(path)` as path-in-repo → (type, size), `.gitattributes` left out. Names come back
    as `ns/name[@rev]/path`."""
    out = {}
    for e in fs.ls(path, detail=True, **kw):
        rel = e["name"].split("/", 2)[2]
        if rel != ".gitattributes":
            out[rel] = (e["type"], e["size"] if e["type"] == "file" else None)
    return out


def expected_listing(files, folder):
    """What `ls(folder)` shows of `files`: direct children, files with their size."""
    base = f"{folder}/" if folder else ""
    out = {}
    for rel, body in files.items():
        if not rel.startswith(base):
            continue
        head, sep, _ = rel[len(base) :].partition("/")
        out[base + head] = ("directory", None) if sep else ("file", len(body))
    return out


got = listing(MODEL)
check(got == expected_listing(main_files, ""), f"ls of the root at main: {got}")
got = listing(f"{MODEL}/notes")
check(got == expected_listing(main_files, "notes"), f"ls of notes at main: {got}")
got = listing(f"{MODEL}@v1")
check(got == expected_listing(v1_files, ""), f"ls of the root @v1: {got}")
got = listing(f"{MODEL}/weights", revision="v1")
check(got == expected_listing(v1_files, "weights"), f"ls of weights with revision=v1: {got}")
check(fs.info(f"{MODEL}/big.bin")["size"] == len(main_files["big.bin"]), "info size of big.bin")
check(fs.info(f"{MODEL}/notes/deep")["type"] == "directory", "info of a folder")
b_info = fs.info(f"{MODEL}/notes/deep/b.txt", refresh=True)  # refresh: through paths-info
check(b_info["type"] == "file" and b_info["size"] == len(main_files["notes/deep/b.txt"]), f"info {b_info}")
check(not fs.exists(f"{MODEL}/weights/huge.bin"), "a deleted file does not exist at main")
check(fs.exists(f"{MODEL}@{first}/weights/huge.bin"), "it exists at the first commit")
check(not fs.exists(f"{MODEL}/missing.txt"), "a missing file does not exist")
step("HfFileSystem ls of the root and a folder, info, exists, at main, @v1 and revision=")

read_ranges(fs, f"{MODEL}/big.bin", main_files["big.bin"], "fs main big.bin")
read_ranges(
    fs, f"{MODEL}/big.bin", main_files["big.bin"], "fs main big.bin, 1 MiB blocks, no cache",
    block_size=MIB, cache_type="none",
)
read_ranges(fs, f"{MODEL}@v1/big.bin", v1_files["big.bin"], "fs @v1 big.bin")
read_ranges(fs, f"{MODEL}/big.bin", v1_files["big.bin"], "fs big.bin revision=v1", revision="v1")
read_ranges(fs, f"{MODEL}@{first}/weights/huge.bin", v1_files["weights/huge.bin"], "fs @sha huge.bin")
check(fs.cat_file(f"{MODEL}/big.bin") == main_files["big.bin"], "fs whole-file read (streamed)")
check(fs.cat_file(f"{MODEL}@v1/small.bin") == v1_files["small.bin"], "fs whole small.bin @v1")
check(fs.cat_file(f"{MODEL}/config.json") == main_files["config.json"], "fs whole config.json")
fs.get_file(f"{MODEL}@v1/big.bin", str(scratch / "fs-get-big.bin"))
check((scratch / "fs-get-big.bin").read_bytes() == v1_files["big.bin"], "fs get_file @v1 big.bin")
step("HfFileSystem ranged reads (seek/read, cat_file) at main, @v1, revision=v1 and @sha; whole reads; get_file")

# --- history ---------------------------------------------------------------------------
commits = api.list_repo_commits(MODEL)
check(len(commits) >= 2, f"{len(commits)} commits on main")
check(
    [(c.commit_id, c.title) for c in commits[:2]]
    == [(second, "second: new weights"), (first, "first: upload folder")],
    f"main history {[(c.commit_id, c.title) for c in commits]}",
)
check(commits[0].created_at >= commits[1].created_at, "newest first")
check(all(c.commit_id != second for c in api.list_repo_commits(MODEL, revision="v1")), "v1 history")
check(api.list_repo_commits(MODEL, revision="v1")[0].commit_id == first, "v1 history starts at v1")
step("list_repo_commits: newest first, both titles; v1's history stops at the first commit")

# --- a commit on a branch other than main ----------------------------------------------
dev_files = dict(v1_files)
dev_files["dev-only.txt"] = b"only on dev\n"
dev_info = api.create_commit(
    MODEL,
    [CommitOperationAdd("dev-only.txt", dev_files["dev-only.txt"])],
    commit_message="dev: a file of its own",
    revision="dev",
    parent_commit=first,
)
dev_head = dev_info.oid
check(SHA.fullmatch(dev_head or "") and dev_head not in (first, second), f"dev commit {dev_head!r}")
check_refs(second, dev_head, first)
snapshot(api, MODEL, "dev", "dev-after", dev_files, dev_head)
check("dev-only.txt" not in api.list_repo_files(MODEL), "main does not see dev's commit")
check("dev-only.txt" not in api.list_repo_files(MODEL, revision="v1"), "v1 does not move")
check(
    [c.commit_id for c in api.list_repo_commits(MODEL, revision="dev")][:2] == [dev_head, first],
    "dev history",
)
step("create_commit on dev moves dev only")

# --- dataset repo ----------------------------------------------------------------------
data_files = {
    "data/train.csv": b"x,y\n1,2\n3,4\n",
    "data/blob.bin": b"\0" + os.urandom(300_000),  # lfs by its NUL byte, uploaded from bytes
    "data/big.parquet": os.urandom(11 * MIB),  # lfs by size, uploaded from a path
}
(scratch / "big.parquet").write_bytes(data_files["data/big.parquet"])
api.upload_file(
    path_or_fileobj=data_files["data/train.csv"], path_in_repo="data/train.csv", repo_id=DATA, repo_type="dataset"
)
api.upload_file(
    path_or_fileobj=data_files["data/blob.bin"], path_in_repo="data/blob.bin", repo_id=DATA, repo_type="dataset"
)
data_head = api.upload_file(
    path_or_fileobj=str(scratch / "big.parquet"),
    path_in_repo="data/big.parquet",
    repo_id=DATA,
    repo_type="dataset",
    commit_message="add the parquet",
).oid
check(api.dataset_info(DATA).sha == data_head, "dataset_info sha")
check_tree_entries(DATA, "main", data_files, repo_type="dataset")
snapshot(api, DATA, None, "data", data_files, data_head, repo_type="dataset")
download(api, DATA, "data/train.csv", "main", data_files["data/train.csv"], data_head, repo_type="dataset")
check(fs.cat_file(f"datasets/{DATA}/data/train.csv") == data_files["data/train.csv"], "fs dataset read")
off = 6 * MIB - 3
got = fs.cat_file(f"datasets/{DATA}/data/big.parquet", start=off, end=off + 9)
check(got == data_files["data/big.parquet"][off : off + 9], "fs dataset ranged read")
# A revision with slashes, percent-encoded by the client wherever it goes in a path.
CONVERT = "refs/convert/parquet"
api.create_branch(DATA, repo_type="dataset", branch=CONVERT, revision=data_head)
check(api.dataset_info(DATA, revision=CONVERT).sha == data_head, "dataset_info at refs/convert/parquet")
download(api, DATA, "data/big.parquet", CONVERT, data_files["data/big.parquet"], data_head, repo_type="dataset")
got = fs.cat_file(f"datasets/{DATA}@{CONVERT}/data/big.parquet", start=off, end=off + 9)
check(got == data_files["data/big.parquet"][off : off + 9], "fs ranged read at refs/convert/parquet")
raises(RepositoryNotFoundError, lambda: api.model_info(DATA), "a dataset is not a model")
raises(RepositoryNotFoundError, lambda: api.dataset_info(MODEL), "a model is not a dataset")
step("dataset repo: upload_file x3, snapshot_download, hf_hub_download and HfFileSystem match, also at refs/convert/parquet")

# --- access ----------------------------------------------------------------------------
download(reader, MODEL, "big.bin", "main", main_files["big.bin"], second)
download(reader, MODEL, "config.json", "v1", v1_files["config.json"], first)
snapshot(reader, DATA, None, "data-reader", data_files, data_head, repo_type="dataset")
raises(
    HfHubHTTPError,
    lambda: reader.upload_file(path_or_fileobj=b"from bob\n", path_in_repo="bob.txt", repo_id=MODEL),
    "a read token uploads",
    status={403},
)
raises(HfHubHTTPError, lambda: reader.create_repo("alice/by-bob"), "a read token creates a repo", status={403})
raises(
    HfHubHTTPError,
    lambda: reader.create_branch(MODEL, branch="bobs"),
    "a read token creates a branch",
    status={403},
)
check("bob.txt" not in api.list_repo_files(MODEL), "the refused upload left nothing")
step("a read token downloads but may not upload, create repos or branches (403)")

api.create_repo(PRIVATE, private=True)
secret = api.upload_file(path_or_fileobj=b"secret\n", path_in_repo="secret.txt", repo_id=PRIVATE).oid
check(api.model_info(PRIVATE).private is True, "the private repo says so")
raises(RepositoryNotFoundError, lambda: anon.model_info(PRIVATE), "anonymous info of a private repo")
raises(
    RepositoryNotFoundError,
    lambda: anon.hf_hub_download(PRIVATE, "secret.txt", cache_dir=scratch / "cache-anon"),
    "anonymous download from a private repo",
)
check(reader.model_info(PRIVATE).sha == secret, "bob's alice/* pattern covers the private repo")
download(reader, PRIVATE, "secret.txt", "main", b"secret\n", secret)
check(anon.model_info(MODEL).sha == second, "anyone reads a public repo")
download(anon, MODEL, "small.bin", "main", main_files["small.bin"], second)
stranger = HfApi(endpoint=endpoint, token="not-a-token")
raises(HfHubHTTPError, lambda: stranger.model_info(MODEL), "an unknown token", status={401})
step("private repo: hidden from anonymous callers, visible to bob's read token; public repos are open to read")

# --- typed errors ----------------------------------------------------------------------
e = raises(
    RemoteEntryNotFoundError,
    lambda: api.hf_hub_download(MODEL, "missing.txt", cache_dir=scratch / "cache-err"),
    "a missing file",
)
check(isinstance(e, EntryNotFoundError), "RemoteEntryNotFoundError is an EntryNotFoundError")
raises(
    RevisionNotFoundError,
    lambda: api.hf_hub_download(MODEL, "config.json", revision="no-such-branch", cache_dir=scratch / "cache-err"),
    "a missing revision",
)
raises(
    RevisionNotFoundError,
    lambda: api.hf_hub_download(MODEL, "config.json", revision="0" * 40, cache_dir=scratch / "cache-err"),
    "a missing commit",
)
raises(
    RepositoryNotFoundError,
    lambda: api.hf_hub_download("alice/no-such-repo", "config.json", cache_dir=scratch / "cache-err"),
    "a missing repo",
)
raises(
    RevisionNotFoundError,
    lambda: api.snapshot_download(MODEL, revision="no-such-branch", cache_dir=scratch / "cache-err"),
    "a snapshot of a missing revision",
)
raises(RepositoryNotFoundError, lambda: api.model_info("alice/no-such-repo"), "info of a missing repo")
raises(RevisionNotFoundError, lambda: api.model_info(MODEL, revision="no-such-branch"), "info at a missing revision")
raises(
    RemoteEntryNotFoundError,
    lambda: list(api.list_repo_tree(MODEL, "no-such-folder")),
    "the tree of a missing folder",
)
raises(
    RemoteEntryNotFoundError,
    lambda: api.create_commit(MODEL, [CommitOperationDelete("no-such-file.txt")], commit_message="delete nothing"),
    "deleting a missing file",
)
check(api.model_info(MODEL).sha == second, "failed operations leave main alone")
check(api.file_exists(MODEL, "config.json") and not api.file_exists(MODEL, "missing.txt"), "file_exists")
check(api.file_exists(MODEL, "weights/huge.bin", revision="v1"), "file_exists at v1")
check(api.revision_exists(MODEL, "v1") and not api.revision_exists(MODEL, "no-such-branch"), "revision_exists")
check(api.repo_exists(MODEL) and not api.repo_exists("alice/no-such-repo"), "repo_exists")
check(api.repo_exists(DATA, repo_type="dataset"), "repo_exists dataset")
step("typed errors: EntryNotFound, RevisionNotFound, RepositoryNotFound; *_exists")

# --- copy_files from a repo into a bucket: by hash, under the repo's read rules ----------
api.create_bucket("alice/copies")
api.copy_files(f"hf://{MODEL}/big.bin", "hf://buckets/alice/copies/from-model/")
copied = scratch / "copied-big.bin"
api.download_bucket_files("alice/copies", [("from-model/big.bin", str(copied))])
check(copied.read_bytes() == main_files["big.bin"], "a file copied from a model into a bucket reads back")
raises(
    Exception,
    lambda: HfApi(endpoint=endpoint, token=os.environ["HF_TOKEN"]).copy_files(
        f"hf://{PRIVATE}/nothing.bin", "hf://buckets/alice/copies/x/"
    ),
    "copying a file the private repo does not hold",
)
step("copy_files from a model repo into a bucket")

write_tree(scratch / "tree-main", main_files)
write_tree(scratch / "tree-dev", dev_files)
write_tree(scratch / "tree-data", data_files)
manifest_path().write_text(
    json.dumps({"first": first, "second": second, "dev": dev_head, "data": data_head}, indent=1) + "\n"
)
print(f"repos: {checks} checks passed")
