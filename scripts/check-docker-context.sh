#!/usr/bin/env bash
# Checks, without a Docker engine, that the Docker build context holds
# everything the image build needs.
#
# It builds the file tree the Dockerfile's builder stage would see, from
# the repository's files (git's view: tracked plus untracked, not ignored)
# filtered by .dockerignore, twice:
#   1. the dependency-caching layer: the COPY instructions before the
#      placeholder-sources RUN step, then that step itself;
#   2. the final build: every COPY from the build context, into a fresh tree
#      (the Dockerfile removes the placeholders before copying the sources).
# and runs `cargo check --locked` in each. A missing file shows up as
# cargo's error (a manifest target without its file, an include_bytes!
# path, a module). The target directory is the repository's own, so only
# the walcast crate is compiled.
#
#   scripts/check-docker-context.sh
#   KEEP=1 scripts/check-docker-context.sh    # keep the trees (path in the log)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '[docker-context] %s\n' "$*" >&2; }

# shellcheck source=scripts/cargo-env.sh
. scripts/cargo-env.sh
command -v python3 >/dev/null 2>&1 || { log "python3 not found (apt-get install python3)"; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/walcast-docker-context.XXXXXX")"
[ -z "${KEEP:-}" ] || log "trees in $work"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

# Files in the context: what a fresh clone (plus new, not ignored files) has.
git -C "$root" ls-files -z --cached --others --exclude-standard > "$work/files"

python3 - "$root" "$work" <<'PY'
import fnmatch, os, posixpath, re, shutil, subprocess, sys

root, work = sys.argv[1], sys.argv[2]
files = sorted({f for f in open(os.path.join(work, "files"), "rb").read().decode().split("\0")
                if f and os.path.isfile(os.path.join(root, f))})

def fail(msg):
    print(f"[docker-context] FAIL: {msg}", file=sys.stderr)
    sys.exit(1)

# --- .dockerignore (Docker's rules: last matching pattern wins, a pattern
# matching a parent directory matches everything below it, ** spans
# directories, a leading ! re-includes).
def pattern_regex(pat):
    out, i = "", 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**", i):
            i += 2
            if pat.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pat.find("]", i)
            if j < 0:
                out += re.escape(c)
            else:
                cls = pat[i + 1:j]
                if cls.startswith("!") or cls.startswith("^"):
                    cls = "^" + cls[1:]
                out += "[" + cls + "]"
                i = j
        elif c == "\\" and i + 1 < len(pat):
            i += 1
            out += re.escape(pat[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")

rules = []
ignore_file = os.path.join(root, ".dockerignore")
if os.path.exists(ignore_file):
    for line in open(ignore_file):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/")
        if line in ("", "."):
            continue
        rules.append((negate, pattern_regex(line)))

def excluded(path):
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result

context = [f for f in files if not excluded(f)]

# --- Dockerfile: instructions of the builder stage (the one that runs
# `cargo build`), continuation lines joined.
lines, cur = [], ""
comments = []
for raw in open(os.path.join(root, "Dockerfile")):
    s = raw.rstrip("\n")
    if not cur and s.lstrip().startswith("#"):
        comments.append(s)
        continue
    if not cur and not s.strip():
        comments = []
        continue
    if s.rstrip().endswith("\\"):
        cur += s.rstrip()[:-1] + " "
        continue
    cur += s
    lines.append((cur.strip(), comments))
    cur, comments = "", []

stages, stage = [], None
for text, comm in lines:
    word = text.split(None, 1)[0].upper()
    if word == "FROM":
        stage = []
        stages.append(stage)
    if stage is not None:
        stage.append((word, text.split(None, 1)[1] if " " in text else "", comm))
builders = [s for s in stages if any(w == "RUN" and "cargo build" in a for w, a, _ in s)]
if len(builders) != 1:
    fail("expected exactly one Dockerfile stage that runs `cargo build`")
builder = builders[0]

MARK = "check-docker-context.sh runs this step"
stub_runs = [i for i, (w, a, c) in enumerate(builder) if w == "RUN" and any(MARK in l for l in c)]
if len(stub_runs) != 1:
    fail(f"expected one RUN step in the builder stage commented '{MARK}'")
stub_at = stub_runs[0]

def copy_into(dest_root, workdir, args):
    if any(t.startswith("--from") for t in args.split()):
        return
    toks = [t for t in args.split() if not t.startswith("--")]
    if toks and toks[0].startswith("["):
        fail(f"JSON-form COPY not supported here: COPY {args}")
    *srcs, dest = toks
    dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
    if not dest_abs.startswith("/build"):
        fail(f"COPY destination outside the checked WORKDIR /build: {dest}")
    dest_rel = posixpath.relpath(dest_abs, "/build")
    dest_is_dir = dest.endswith("/") or len(srcs) > 1
    for src in srcs:
        src = posixpath.normpath(src).lstrip("/")
        matched = False
        for f in context:
            parts = f.split("/")
            if src == ".":
                target = posixpath.join(dest_rel, f)
            elif fnmatch.fnmatchcase(f, src):
                # a file source: into dest/ or as dest
                target = posixpath.join(dest_rel, parts[-1]) if dest_is_dir else dest_rel
            else:
                # a directory source: its contents go under dest
                n = next((n for n in range(1, len(parts))
                          if fnmatch.fnmatchcase("/".join(parts[:n]), src)), None)
                if n is None:
                    continue
                target = posixpath.join(dest_rel, *parts[n:])
            matched = True
            out = os.path.join(dest_root, target)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copyfile(os.path.join(root, f), out)
        if not matched:
            fail(f"COPY {src}: not in the build context (see .dockerignore)")

def materialise(dest_root, upto, run_stub):
    os.makedirs(dest_root)
    workdir = "/"
    for i, (word, args, _) in enumerate(builder):
        if upto is not None and i > upto:
            break
        if word == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, args.strip()))
        elif word == "COPY":
            copy_into(dest_root, workdir, args)
        elif word == "RUN" and run_stub and i == stub_at:
            r = subprocess.run(["sh", "-ec", args], cwd=dest_root)
            if r.returncode != 0:
                fail(f"the placeholder-sources RUN step failed: {args}")

materialise(os.path.join(work, "deps"), stub_at, True)
materialise(os.path.join(work, "final"), None, False)
PY

# Every cargo run shares the repository's target directory: only walcast
# itself is compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
for step in deps final; do
  log "cargo check --locked in the $step tree"
  # Fresh mtimes: the tree's walcast shares its fingerprint with the
  # repository's (cargo hashes a path package by its path relative to the
  # workspace), so older files could pass for already checked.
  find "$work/$step" -type f -exec touch {} +
  if ! (cd "$work/$step" && cargo check --locked --quiet); then
    log "FAIL: the Docker build's $step step would not compile: a file it needs is"
    log "  missing from the context (.dockerignore) or from the Dockerfile's COPY lines"
    exit 1
  fi
done
log "ok: the build context holds what the Dockerfile needs"
