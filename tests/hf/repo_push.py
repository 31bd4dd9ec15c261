"""Repo actions for the mount tests (tests/repo_mount.rs), done with the official client
(huggingface_hub 2.4.0 + hf_xet) against HF_ENDPOINT as HF_TOKEN. Each prints what the test
needs on one line of stdout.

  create REPO_ID TYPE [private]      create a repo (TYPE: model or dataset)
  upload REPO_ID TYPE DIR            upload_folder of DIR to main; prints the commit id
  tag REPO_ID TYPE TAG               tag main; prints the commit id it names
  branch REPO_ID TYPE BRANCH         branch off main; prints the commit id it names
  replace REPO_ID TYPE PATH SRC DEL  one commit on main: PATH gets SRC's bytes, DEL is deleted;
                                     prints the commit id
"""

import sys

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi


def main():
    api = HfApi()
    action, repo, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    if action == "create":
        private = len(sys.argv) > 4 and sys.argv[4] == "private"
        api.create_repo(repo, repo_type=kind, private=private)
        print(repo)
    elif action == "upload":
        info = api.upload_folder(repo_id=repo, repo_type=kind, folder_path=sys.argv[4])
        print(info.oid)
    elif action == "tag":
        api.create_tag(repo, repo_type=kind, tag=sys.argv[4])
        print(api.repo_info(repo, repo_type=kind, revision=sys.argv[4]).sha)
    elif action == "branch":
        api.create_branch(repo, repo_type=kind, branch=sys.argv[4])
        print(api.repo_info(repo, repo_type=kind, revision=sys.argv[4]).sha)
    elif action == "replace":
        path, src, gone = sys.argv[4], sys.argv[5], sys.argv[6]
        info = api.create_commit(
            repo_id=repo,
            repo_type=kind,
            operations=[
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=src),
                CommitOperationDelete(path_in_repo=gone),
            ],
            commit_message=f"replace {path}, delete {gone}",
        )
        print(info.oid)
    else:
        sys.exit(f"unknown action {action}")


if __name__ == "__main__":
    main()
