"""Download the real-world Caffe files listed in tools/corpus.tsv (needs network access to GitHub).

    python tools/corpus_fetch.py --dest DIR [--only SUBSTR]

tools/corpus.tsv lists one file a row: repository (owner/name), path, commit, kind (deploy,
train_val, or solver-excluded for a file the report skips), family, and for a training file whose
image size lives in its database the input shape a user would give (``--input-shape``). Each file is fetched at its
listed commit from raw.githubusercontent.com and stored as ``DIR/owner__name/PATH``; a file from
another commit of a repository already listed at a first commit goes to
``DIR/owner__name@COMMIT7/PATH`` (Caffe's own repository appears at several releases, for the
legacy V0/V1 formats). Files already present are kept. The files are other people's work: they
are downloaded for the report, never committed to this repository.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LIST = Path(__file__).resolve().parent / "corpus.tsv"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


@dataclass(frozen=True)
class Entry:
    repo: str
    path: str
    commit: str
    kind: str
    family: str
    local: str  # path relative to the corpus folder
    input_shape: str = ""  # what a user passes with --input-shape (NAME=N,C,H,W, ';'-separated)


def read_list(path: Path = LIST) -> list[Entry]:
    """The rows of the list, each with the place it has in a corpus folder (see the module doc)."""
    first: dict[str, str] = {}
    entries = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            repo, commit = row["repo"], row["commit"]
            first.setdefault(repo, commit)
            folder = repo.replace("/", "__") + ("" if first[repo] == commit else "@" + commit[:7])
            entries.append(Entry(repo, row["path"], commit, row["kind"], row["family"], f"{folder}/{row['path']}",
                                 row.get("input_shape") or ""))
    return entries


def fetch(entry: Entry, dest: Path, tries: int = 3) -> str:
    """Download one file unless present; returns what happened."""
    out = dest / entry.local
    if out.exists():
        return "present"
    url = RAW.format(repo=entry.repo, commit=entry.commit, path=urllib.request.quote(entry.path))
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
            break
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return f"missing at that commit ({url})"
            err = str(e)
        except (urllib.error.URLError, OSError) as e:
            err = str(e)
        time.sleep(2 ** attempt)
    else:
        return f"failed: {err}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return "fetched"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", required=True, help="the corpus folder to fill")
    ap.add_argument("--list", default=str(LIST))
    ap.add_argument("--only", default="", help="only rows whose repository or path contains this")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    bad = 0
    for e in read_list(Path(args.list)):
        if args.only and args.only not in f"{e.repo}/{e.path}":
            continue
        what = fetch(e, dest)
        bad += what.startswith(("failed", "missing"))
        print(f"{what:8} {e.repo} {e.path}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
