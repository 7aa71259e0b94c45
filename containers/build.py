#!/usr/bin/env python3
"""Build the irflow container images (containers/<family>.Dockerfile) through a Docker API.

Talks to any Docker-compatible daemon with docker-py: Docker itself, or podman's API socket
(`.ci/start-podman.sh` starts one at unix:///run/podman/podman.sock). Per family it

* sends a small build context (pyproject.toml, src/, envs/*.lock, containers/ build files;
  never .venv/ or results/), plus optional pip inputs for proxies and offline wheels;
* passes BASE_IMAGE and the label arguments: git commit, whether the image's inputs differ
  from that commit (dirty), the lock file's sha256 (the Dockerfile verifies it), version;
* tags <prefix><family>:<version> and <prefix><family>:<git-short-sha>[-dirty];
* optionally saves a docker-archive tar (what `apptainer build x.sif docker-archive://x.tar`
  takes), written atomically, and pushes to a registry, printing the digest reference to
  paste into the workflow config (containers: {eval: docker://REGISTRY/irflow-eval@sha256:...}).

Examples (from the repository root, in the venv: the `docker` package is in the lock):

    export DOCKER_HOST=unix:///run/podman/podman.sock
    python containers/build.py eval --base-image localhost/irflow-base:bookworm --network host
    python containers/build.py --save dist/images                  # both families
    python containers/build.py eval --push registry.example.org/ir  # prints docker://...@sha256:...

Exit status: 0 success, 1 a build/save/push failed, 2 bad arguments or no daemon.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "eval": "envs/eval.lock",
    "torch": "envs/requirements.lock",
    "torch-cuda": "envs/requirements-cuda.lock",
}
# Built when no family is named. torch-cuda (GPU nodes: several GB of CUDA wheels) only on request.
DEFAULT_FAMILIES = ("eval", "torch")
# What the images are built from; also what the "dirty" label looks at. Keep in step with
# containers/<family>.Dockerfile.dockerignore (the same list for plain `docker build`).
CONTEXT_PATHS = (
    "pyproject.toml",
    "src",
    "envs/eval.lock",
    "envs/requirements.lock",
    "envs/requirements-cuda.lock",
    "containers/build-tools.txt",
    "containers/build-inputs",
    "containers/eval.Dockerfile",
    "containers/torch.Dockerfile",
    "containers/torch-cuda.Dockerfile",
)
EXCLUDED_PARTS = ("__pycache__", ".egg-info", ".pyc")
BUILD_INPUTS = "containers/build-inputs"
DEFAULT_PREFIX = "localhost/irflow-"
LOG_TAIL = 40


class BuildError(RuntimeError):
    """A failure to report to the user as it is (no traceback)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def note(message: str) -> None:
    print(f"[build.py] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Provenance: git, lock files, version
# ---------------------------------------------------------------------------------------------
@dataclass
class GitInfo:
    commit: str = "unknown"
    short: str = "unknown"
    dirty: str = "unknown"  # "true" / "false" / "unknown" (label values are strings)
    source: str = "unknown"
    changed: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"{self.short}-dirty" if self.dirty == "true" else self.short


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.rstrip()


def git_info() -> GitInfo:
    try:
        commit = _git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        note("not a git checkout (or no git): labels say revision=unknown")
        return GitInfo()
    # Dirty = the image's inputs differ from the commit: other edits (rules/, configs) do not
    # change what goes into the image.
    changed = _git("status", "--porcelain", "--untracked-files=all", "--", *CONTEXT_PATHS)
    changed_paths = [line[3:] for line in changed.splitlines() if line.strip()]
    try:
        source = _git("config", "--get", "remote.origin.url")
    except subprocess.CalledProcessError:
        source = "unknown"
    return GitInfo(
        commit=commit,
        short=_git("rev-parse", "--short=12", "HEAD"),
        dirty="true" if changed_paths else "false",
        source=source or "unknown",
        changed=changed_paths,
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["version"]


def lock_pins(lock: Path) -> dict[str, str]:
    """Canonical project name -> pinned version, from a `name==version` lock file (hash
    continuation lines, `name==version \\` then `--hash=sha256:...`, allowed)."""
    return {name: version for name, (version, _) in lock_entries(lock).items()}


def lock_entries(lock: Path) -> dict[str, tuple[str, set[str]]]:
    """Canonical project name -> (pinned version, the sha256 hashes the lock allows; empty
    for a lock without hashes)."""
    entries: dict[str, tuple[str, set[str]]] = {}
    current = None
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("--hash=sha256:") and current is not None:
            entries[current][1].add(line.split(":", 1)[1].rstrip("\\").strip())
        elif "==" in line:
            name, version = line.split("==", 1)
            current = canonical(name)
            entries[current] = (version.rstrip("\\").split(";")[0].strip(), set())
    return entries


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# Build context
# ---------------------------------------------------------------------------------------------
def _context_files() -> Iterator[Path]:
    for entry in CONTEXT_PATHS:
        path = REPO / entry
        if not path.exists():
            raise BuildError(f"build context: {entry} is missing from {REPO}", exit_code=2)
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        for candidate in candidates:
            relative = str(candidate.relative_to(REPO))
            if candidate.is_file() and not any(part in relative for part in EXCLUDED_PARTS):
                yield candidate


def wheels_for_lock(wheelhouse: Path, lock: Path) -> list[Path]:
    """The wheels in `wheelhouse` of projects pinned in `lock` (at the pinned version); for a
    hash-pinned lock only wheels whose sha256 the lock lists (e.g. never a local +cpu torch
    wheel for the CUDA lock)."""
    entries = lock_entries(lock)
    chosen = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        pinned, hashes = entries.get(canonical(name), (None, set()))
        if pinned is None or version.split("+", 1)[0] != pinned:
            continue
        if hashes and sha256_file(wheel) not in hashes:
            continue
        chosen.append(wheel)
    return chosen


def build_context(ca_bundle: Path | None, wheels: Iterable[Path]) -> tempfile.SpooledTemporaryFile:
    """A tar of the repository's image inputs plus staged pip inputs (never written to the tree)."""
    buffer = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 (the caller closes it)
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in _context_files():
            tar.add(path, arcname=str(path.relative_to(REPO)), recursive=False)
        if ca_bundle is not None:
            tar.add(ca_bundle, arcname=f"{BUILD_INPUTS}/ca-bundle.crt")
        for wheel in wheels:
            tar.add(wheel, arcname=f"{BUILD_INPUTS}/wheels/{wheel.name}")
    buffer.seek(0)
    return buffer


# ---------------------------------------------------------------------------------------------
# Docker API
# ---------------------------------------------------------------------------------------------
def connect(docker_host: str | None, timeout: int):
    try:
        import docker
    except ImportError as error:
        raise BuildError(
            "the 'docker' Python package is missing: activate the venv (. .venv/bin/activate)",
            exit_code=2,
        ) from error
    where = docker_host or os.environ.get("DOCKER_HOST") or "the default Docker socket"
    try:
        if docker_host:
            client = docker.DockerClient(base_url=docker_host, timeout=timeout)
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
        version = client.version()
    except Exception as error:  # noqa: BLE001 - any failure here means "no daemon"
        raise BuildError(
            f"no Docker API reachable at {where}: {error}\n"
            "  Start one (podman: `sudo bash .ci/start-podman.sh`) and pass it with\n"
            "  --docker-host unix:///run/podman/podman.sock or DOCKER_HOST=...",
            exit_code=2,
        ) from error
    engine = next((c.get("Name") for c in version.get("Components", []) if c.get("Name")), "Docker")
    api = version.get("ApiVersion", "?")
    note(f"daemon: {where} ({engine} {version.get('Version', '?')}, API {api})")
    return client


@dataclass
class Result:
    family: str
    image_id: str
    tags: list[str]
    seconds: float
    size_bytes: int
    labels: dict[str, str]
    archive: str | None = None
    archive_sha256: str | None = None
    pushed: str | None = None


def run_build(client, family: str, context, *, tag: str, buildargs: dict, options) -> str:
    """Stream one build; return the image id or raise BuildError with the log's tail."""
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
    image_id = None
    try:
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            dockerfile=f"containers/{family}.Dockerfile",
            tag=tag,
            buildargs=buildargs,
            rm=True,
            forcerm=True,
            pull=options.pull,
            nocache=options.no_cache,
            network_mode=options.network,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
                tail.append(f"ERROR: {detail}")
                raise BuildError(_failure(family, tail))
            text = chunk.get("stream") or chunk.get("status") or ""
            for line in text.splitlines():
                tail.append(line)
                if not options.quiet:
                    print(f"  {family} | {line}", file=sys.stderr, flush=True)
                found = re.match(r"Successfully built ([0-9a-f]{12,64})", line)
                if found:
                    image_id = found.group(1)
            aux_id = (chunk.get("aux") or {}).get("ID")
            if aux_id:
                image_id = aux_id
    except BuildError:
        raise
    except Exception as error:  # noqa: BLE001 - API/transport errors mid-build
        tail.append(f"ERROR: {error}")
        raise BuildError(_failure(family, tail)) from error
    if image_id is None:
        try:
            image_id = client.images.get(tag).id
        except Exception as error:  # noqa: BLE001
            raise BuildError(_failure(family, tail) + "\n(no image was produced)") from error
    return image_id


def _failure(family: str, tail: Iterable[str]) -> str:
    lines = "\n".join(f"    {line}" for line in tail)
    return f"building the {family} image failed; last lines of the build log:\n{lines}"


def save_archive(client, ref: str, directory: Path) -> tuple[Path, str]:
    """docker-archive tar of `ref` in `directory`, written to a temporary file then renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    name = ref.rsplit("/", 1)[-1].replace(":", "-") + ".tar"
    target = directory / name
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, then renamed)
        dir=directory, prefix=f".{name}.", delete=False
    )
    try:
        with handle:
            for chunk in client.images.get(ref).save(named=ref):
                handle.write(chunk)
                digest.update(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return target, digest.hexdigest()


def push(client, image_id: str, repository: str, tags: list[str]) -> str:
    """Push repository:tag for each tag; return the manifest digest (sha256:...)."""
    digest = None
    for tag in tags:
        client.api.tag(image_id, repository, tag)
        for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
                raise BuildError(f"pushing {repository}:{tag} failed: {detail}")
            aux = chunk.get("aux") or {}
            status = chunk.get("status") or ""
            found = aux.get("Digest") or _digest_in(status)
            if found:
                digest = found
    if digest is None:
        # Fall back on the digests the daemon recorded for the pushed repository.
        for repo_digest in client.api.inspect_image(image_id).get("RepoDigests") or []:
            name, _, found = repo_digest.partition("@")
            if name == repository and found:
                digest = found
    if digest is None:
        raise BuildError(f"pushed {repository} but the registry reported no digest")
    return digest


def _digest_in(text: str) -> str | None:
    found = re.search(r"(sha256:[0-9a-f]{64})", text)
    return found.group(1) if found else None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _path_or_none(value: str | None) -> Path | None:
    return None if value in (None, "", "none") else Path(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="containers/build.py",
        description=(
            "Build the irflow container images (eval: no PyTorch; torch: the full lock, CPU "
            "torch unless --torch-index-url says otherwise; torch-cuda: the hash-pinned CUDA "
            "lock for GPU nodes) through a Docker-compatible API (Docker, or podman's socket)."
        ),
        epilog=(
            "Local podman (after `sudo bash .ci/start-podman.sh`): python containers/build.py "
            "eval --docker-host unix:///run/podman/podman.sock --base-image "
            "localhost/irflow-base:bookworm --network host. See containers/README.md."
        ),
    )
    parser.add_argument(
        "families",
        nargs="*",
        metavar="FAMILY",
        help=f"families to build: {', '.join(FAMILIES)} (default: {' '.join(DEFAULT_FAMILIES)})",
    )
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("DOCKER_HOST"),
        help="Docker API URL, e.g. unix:///run/podman/podman.sock (default: $DOCKER_HOST, "
        "else the default Docker socket)",
    )
    parser.add_argument(
        "--base-image",
        default=os.environ.get("IRFLOW_BASE_IMAGE"),
        help="BASE_IMAGE build argument (default: $IRFLOW_BASE_IMAGE, else the Dockerfile's "
        "digest-pinned python:3.11-slim-bookworm); localhost/irflow-base:bookworm offline",
    )
    parser.add_argument(
        "--image-version",
        default=None,
        help="version tag and label (default: the version in pyproject.toml)",
    )
    parser.add_argument(
        "--name-prefix",
        default=DEFAULT_PREFIX,
        help=f"image name prefix, <prefix><family> (default: {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--save",
        metavar="DIR",
        type=Path,
        help="write a docker-archive tar per family into DIR (for apptainer build "
        "x.sif docker-archive://x.tar)",
    )
    parser.add_argument(
        "--push",
        metavar="REGISTRY",
        help="push REGISTRY/irflow-<family>:<version> and :<git-sha>, print the digest "
        "reference docker://REGISTRY/irflow-<family>@sha256:...",
    )
    parser.add_argument(
        "--ca-bundle",
        default=os.environ.get("PIP_CERT"),
        help="CA bundle pip trusts in the build stage (a TLS-intercepting proxy's); "
        "default: $PIP_CERT; 'none' to send none",
    )
    parser.add_argument(
        "--wheelhouse",
        default=os.environ.get("PIP_FIND_LINKS"),
        help="directory of local wheels; those pinned in the family's lock are sent "
        "(default: $PIP_FIND_LINKS if a directory; 'none' to send none)",
    )
    parser.add_argument("--index-url", help="PIP_INDEX_URL for the build (default: PyPI)")
    parser.add_argument(
        "--torch-index-url",
        help="TORCH_INDEX_URL for the torch family (default: the Dockerfile's CPU index "
        "https://download.pytorch.org/whl/cpu; '' = default index + local wheels only; "
        "a CUDA index, e.g. .../whl/cu128; the torch-cuda family ignores it: its lock pins "
        "PyPI's CUDA torch by hash)",
    )
    parser.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra build argument (repeatable)",
    )
    parser.add_argument(
        "--network",
        default=None,
        help="network mode of the build's RUN steps, e.g. host (default: the daemon's)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not use cached layers")
    parser.add_argument("--pull", action="store_true", help="always pull the base image")
    parser.add_argument("--quiet", action="store_true", help="do not stream the build log")
    parser.add_argument(
        "--timeout", type=int, default=3600, help="API read timeout in seconds (default: 3600)"
    )
    parser.add_argument(
        "--source-url", help="org.opencontainers.image.source (default: git remote origin)"
    )
    parser.add_argument("--report-json", type=Path, help="write a JSON summary of the results")
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r} (known: {', '.join(FAMILIES)})")
    args.families = list(dict.fromkeys(args.families)) or list(DEFAULT_FAMILIES)
    for item in args.build_arg:
        if "=" not in item:
            parser.error(f"--build-arg wants KEY=VALUE, got {item!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except BuildError as error:
        note(f"ERROR: {error}")
        return error.exit_code
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    for result in results:
        print(f"{result.family}: {' '.join(result.tags)}  {result.image_id[:19]}")
        if result.archive:
            print(f"{result.family}: saved {result.archive} (sha256 {result.archive_sha256})")
        if result.pushed:
            print(
                f"{result.family}: pushed; config: containers: {{{result.family}: {result.pushed}}}"
            )
            print(result.pushed)
    if args.report_json:
        args.report_json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


def run(args: argparse.Namespace) -> list[Result]:
    version = args.image_version or project_version()
    git = git_info()
    if git.dirty == "true":
        changed = ", ".join(git.changed[:5])
        note(f"image inputs differ from {git.short}: tagging {git.tag} ({changed})")
    ca_bundle = _path_or_none(args.ca_bundle)
    if ca_bundle is not None and not ca_bundle.is_file():
        raise BuildError(f"--ca-bundle {ca_bundle}: no such file", exit_code=2)
    wheelhouse = _path_or_none(args.wheelhouse)
    if wheelhouse is not None and not wheelhouse.is_dir():
        note(f"wheelhouse {wheelhouse} is not a directory: sending no wheels")
        wheelhouse = None
    client = connect(args.docker_host, args.timeout)

    results = []
    for family in args.families:
        lock = REPO / FAMILIES[family]
        lock_sha = sha256_file(lock)
        repository = f"{args.name_prefix}{family}"
        tags = [f"{repository}:{version}", f"{repository}:{git.tag}"]
        buildargs = {
            "VERSION": version,
            "VCS_REF": git.commit,
            "VCS_DIRTY": git.dirty,
            "SOURCE_URL": args.source_url or git.source,
            "LOCK_SHA256": lock_sha,
        }
        if args.base_image:
            buildargs["BASE_IMAGE"] = args.base_image
        if args.index_url:
            buildargs["PIP_INDEX_URL"] = args.index_url
        if family == "torch" and args.torch_index_url is not None:
            buildargs["TORCH_INDEX_URL"] = args.torch_index_url
        buildargs.update(item.split("=", 1) for item in args.build_arg)
        wheels = wheels_for_lock(wheelhouse, lock) if wheelhouse else []

        note(
            f"building {tags[0]} from containers/{family}.Dockerfile; base "
            f"{buildargs.get('BASE_IMAGE', '(Dockerfile default, digest-pinned)')}; "
            f"{FAMILIES[family]} sha256 {lock_sha[:12]}; commit {git.short} dirty={git.dirty}"
            + (f"; wheels: {', '.join(w.name for w in wheels)}" if wheels else "")
            + ("; CA bundle sent" if ca_bundle else "")
        )
        start = time.monotonic()
        with build_context(ca_bundle, wheels) as context:
            image_id = run_build(
                client, family, context, tag=tags[0], buildargs=buildargs, options=args
            )
        seconds = time.monotonic() - start
        for extra in tags[1:]:
            name, _, tag = extra.rpartition(":")
            client.api.tag(image_id, name, tag)
        info = client.api.inspect_image(image_id)
        image_id = info["Id"]  # the full sha256:... id (the build log may give a short one)
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get("io.irflow.lock.sha256") != lock_sha:
            raise BuildError(
                f"{tags[0]}: label io.irflow.lock.sha256={labels.get('io.irflow.lock.sha256')!r} "
                f"does not match {FAMILIES[family]} ({lock_sha})"
            )
        result = Result(
            family=family,
            image_id=image_id,
            tags=tags,
            seconds=round(seconds, 1),
            size_bytes=int(info.get("Size") or 0),
            labels=labels,
        )
        size_mb = result.size_bytes / 1e6
        note(f"built {family} in {seconds:.0f} s: {image_id[:19]}, {size_mb:.0f} MB")

        if args.save:
            start = time.monotonic()
            path, digest = save_archive(client, tags[0], args.save)
            result.archive, result.archive_sha256 = str(path), digest
            note(
                f"saved {path} ({path.stat().st_size / 1e6:.0f} MB, "
                f"{time.monotonic() - start:.0f} s): apptainer build {family}.sif docker-archive://{path}"
            )
        if args.push:
            registry_repo = f"{args.push.rstrip('/')}/{repository.rsplit('/', 1)[-1]}"
            digest = push(client, image_id, registry_repo, [t.rpartition(":")[2] for t in tags])
            result.pushed = f"docker://{registry_repo}@{digest}"
            note(f"pushed {registry_repo}: {result.pushed}")
        results.append(result)
    return results


if __name__ == "__main__":
    sys.exit(main())
