"""The container images (containers/) built for real, and demo rules run inside them.

* The eval image is built with containers/build.py through podman's Docker-compatible API
  (docker-py), from the local base image localhost/irflow-base:bookworm, and checked: labels
  (commit, lock sha256), tags, no torch, the docker-archive written by --save.
* The DL19 given-candidates metrics (prepare_topics, given_candidates, evaluate_run: all eval
  rules) are built by Snakemake with `--sdm apptainer` through tests/apptainer_shim (a TEST-ONLY
  stand-in for apptainer that runs the jobs with podman), and on the host; the outputs must be
  identical byte for byte, and the shim's log must show every job in the image.
* With a real `apptainer` binary, the same rule runs from a SIF built from the docker-archive.

Needs podman's API socket and the base image (CI: `bash .ci/start-podman.sh`). Without them the
container tests are skipped, unless IRFLOW_REQUIRE_CONTAINERS=1 (set by CI) makes that a failure.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from workflow_helpers import REPO, SHARED_DATA, absolute_config, require_data, snakemake

SOCKET = Path(os.environ.get("IRFLOW_PODMAN_SOCKET", "/run/podman/podman.sock"))
DOCKER_HOST = f"unix://{SOCKET}"
BASE_IMAGE = os.environ.get("IRFLOW_TEST_BASE_IMAGE", "localhost/irflow-base:bookworm")
SHIM_DIR = REPO / "tests" / "apptainer_shim"
TARGET = "results/metrics/dl19/first-stage/given/mean.tsv"
RULES = ("prepare_topics", "given_candidates", "evaluate_run")
DIGEST_PINNED = re.compile(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", re.M)
TORCH_ONLY = {"torch", "transformers", "sentence-transformers", "peft", "accelerate", "datasets"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# Fast checks (no container engine needed)
# ------------------------------------------------------------------------------------------
def test_eval_lock_is_the_requirements_lock_without_torch():
    eval_pins = _pins(REPO / "envs" / "eval.lock")
    full = _pins(REPO / "envs" / "requirements.lock")
    assert eval_pins, "envs/eval.lock pins nothing"
    for name, version in eval_pins.items():
        assert full.get(name) == version, f"{name}=={version} differs from requirements.lock"
    assert not TORCH_ONLY & set(eval_pins), "the eval family must not install PyTorch packages"
    for needed in ("ir-datasets", "ir-measures", "pytrec-eval-terrier", "bm25s", "pystemmer"):
        assert needed in eval_pins, needed


def test_dockerfiles_pin_the_registry_base_by_digest():
    defaults = set()
    for family in ("eval", "torch", "torch-cuda"):
        text = (REPO / "containers" / f"{family}.Dockerfile").read_text()
        found = DIGEST_PINNED.search(text)
        assert found, f"{family}.Dockerfile: ARG BASE_IMAGE is not python:3.11-slim-bookworm@sha256"
        defaults.add(found.group(0))
        assert "USER 1000:1000" in text and "HF_HUB_OFFLINE=1" in text
    assert len(defaults) == 1, "every family must start from the same base"


def test_cuda_lock_is_the_cpu_lock_plus_hash_pinned_cuda_packages():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "irflow_container_build", REPO / "containers" / "build.py"
    )
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # dataclasses look their module up there
    spec.loader.exec_module(build)
    cuda = build.lock_entries(REPO / "envs" / "requirements-cuda.lock")
    cpu = _pins(REPO / "envs" / "requirements.lock")
    assert {name: cuda[name][0] for name in cpu if name in cuda} == cpu, "a shared pin differs"
    added = set(cuda) - set(cpu)
    assert added == {n for n in added if n.startswith(("nvidia-", "cuda-"))} | {
        "triton",
        "setuptools",
    }, sorted(added)
    assert any(n.startswith("nvidia-cudnn") for n in added) and "triton" in added
    assert not [name for name, (_, hashes) in cuda.items() if not hashes], "unhashed pins"
    assert build.FAMILIES["torch-cuda"] == "envs/requirements-cuda.lock"
    assert "torch-cuda" not in build.DEFAULT_FAMILIES  # GBs of wheels only when asked for


def test_build_script_names_an_unreachable_daemon(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "containers" / "build.py"),
            "eval",
            "--docker-host",
            f"unix://{tmp_path}/no-such.sock",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "no Docker API reachable" in result.stderr and "start-podman.sh" in result.stderr


def test_shim_version_satisfies_snakemake():
    from packaging.version import Version
    from snakemake.deployment.singularity import Singularity

    out = subprocess.run(
        [str(SHIM_DIR / "apptainer"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("apptainer") and "shim" in out
    assert Singularity().parseversion(out.strip()) >= Version("1.0.0")


# ------------------------------------------------------------------------------------------
# Real builds and runs
# ------------------------------------------------------------------------------------------
def _docker_client():
    """A docker-py client on podman's socket, or skip (fail under IRFLOW_REQUIRE_CONTAINERS=1)."""
    reason = None
    client = None
    if not SOCKET.exists():
        reason = f"no podman API socket at {SOCKET} (run .ci/start-podman.sh)"
    else:
        try:
            import docker

            client = docker.DockerClient(base_url=DOCKER_HOST, timeout=600)
            client.ping()
            client.images.get(BASE_IMAGE)
        except Exception as error:  # noqa: BLE001 - any failure: no usable engine
            reason = f"podman API at {DOCKER_HOST} or base image {BASE_IMAGE} unusable: {error}"
            client = None
    if reason:
        if os.environ.get("IRFLOW_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"IRFLOW_REQUIRE_CONTAINERS=1 but {reason}")
        pytest.skip(reason)
    return client


@pytest.fixture(scope="module")
def eval_image(tmp_path_factory):
    """Build the eval image with containers/build.py (--save: a docker-archive), once."""
    client = _docker_client()
    workdir = tmp_path_factory.mktemp("eval-image")
    report = workdir / "report.json"
    archives = workdir / "archives"
    command = [
        sys.executable,
        str(REPO / "containers" / "build.py"),
        "eval",
        "--docker-host",
        DOCKER_HOST,
        "--base-image",
        BASE_IMAGE,
        "--save",
        str(archives),
        "--report-json",
        str(report),
        "--quiet",
    ]
    heads = {_git_head()}
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=3600)
    seconds = time.monotonic() - start
    heads.add(_git_head())  # a commit landing during the build must not fail the check
    assert result.returncode == 0, f"build.py failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    (built,) = json.loads(report.read_text())
    print(
        f"\n[eval image] build.py (build + save) {seconds:.0f} s, build {built['seconds']} s, "
        f"{built['size_bytes'] / 1e6:.0f} MB, archive "
        f"{Path(built['archive']).stat().st_size / 1e6:.0f} MB, tags {built['tags']}"
    )
    yield {"client": client, "report": built, "heads": heads}
    shutil.rmtree(archives, ignore_errors=True)  # hundreds of MB


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@pytest.mark.slow
def test_eval_image_is_built_with_provenance_and_without_torch(eval_image):
    client, built = eval_image["client"], eval_image["report"]
    labels = built["labels"]
    assert labels["org.opencontainers.image.revision"] in eval_image["heads"]
    assert labels["io.irflow.lock.sha256"] == _sha256(REPO / "envs" / "eval.lock")
    assert labels["io.irflow.lock.file"] == "envs/eval.lock"
    assert labels["io.irflow.vcs.dirty"] in ("true", "false")
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.base.name"] == BASE_IMAGE
    version_tag, sha_tag = built["tags"]
    assert version_tag == "localhost/irflow-eval:0.1.0"
    assert re.fullmatch(r"localhost/irflow-eval:[0-9a-f]{12}(-dirty)?", sha_tag)
    assert client.images.get(version_tag).id == client.images.get(sha_tag).id == built["image_id"]

    probe = (
        "import importlib.util as u, json, os, sys, irflow; print(json.dumps({"
        "'torch': u.find_spec('torch') is not None, 'irflow': irflow.__file__, "
        "'uid': os.getuid(), 'python': sys.version_info[:2], "
        "'offline': os.environ.get('HF_HUB_OFFLINE'), 'bytecode': sys.dont_write_bytecode}))"
    )
    out = client.containers.run(
        version_tag, ["python", "-c", probe], remove=True, network_disabled=True
    )
    inside = json.loads(out.decode().strip().splitlines()[-1])
    assert inside == {
        "torch": False,
        "irflow": "/opt/venv/lib/python3.11/site-packages/irflow/__init__.py",
        "uid": 1000,
        "python": [3, 11],
        "offline": "1",
        "bytecode": True,
    }

    # The irflow imports of every eval-family rule's script work in the image, without torch.
    imports = _eval_rule_imports()
    assert len(imports) >= 5, imports
    check = "\n".join([*imports, "import sys", "print('torch' in sys.modules)"])
    out = client.containers.run(
        version_tag, ["python", "-c", check], remove=True, network_disabled=True
    )
    assert out.decode().strip().splitlines()[-1] == "False", "an eval rule's imports load torch"

    # --save wrote a docker-archive (what `apptainer build x.sif docker-archive://x.tar` reads).
    archive = Path(built["archive"])
    assert archive.name == "irflow-eval-0.1.0.tar"
    assert not list(archive.parent.glob(".*")), "temporary files left next to the archive"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == built["archive_sha256"]
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert version_tag in manifest[0]["RepoTags"]
    assert manifest[0]["Layers"], manifest


def _image_tools() -> dict[str, str]:
    """skopeo and umoci (Debian packages), or skip (fail under IRFLOW_REQUIRE_CONTAINERS=1)."""
    found = {tool: shutil.which(tool) for tool in ("skopeo", "umoci")}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install skopeo umoci)"
        if os.environ.get("IRFLOW_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"IRFLOW_REQUIRE_CONTAINERS=1 but {reason}")
        pytest.skip(reason)
    return found


@pytest.mark.slow
def test_eval_archive_converts_to_an_oci_bundle_as_apptainer_build_does(eval_image, tmp_path):
    """What `apptainer build x.sif docker-archive://x.tar` does before mksquashfs, with the same
    libraries: containers/image (skopeo) reads the docker-archive into an OCI layout, checking
    every layer against the config's diff_ids; umoci unpacks the layers into a root file system;
    apptainer turns the config's Env/Cmd into the SIF's environment and runscript. Checked: the
    OCI manifest and config, the unpacked files, that a non-root user (apptainer runs as the
    caller) can read the venv, and the image's Python run in the root file system with the
    config's environment (chroot, as root)."""
    tools = _image_tools()
    built = eval_image["report"]
    archive = Path(built["archive"])
    layout = tmp_path / "oci"
    ref = f"oci:{layout}:eval"
    # Compressed layers, as apptainer stores them (umoci 0.4 reads only gzip layers).
    _tool(tools["skopeo"], "copy", "--quiet", f"docker-archive:{archive}", ref)
    manifest = json.loads(_tool(tools["skopeo"], "inspect", "--raw", ref))
    config = json.loads(_tool(tools["skopeo"], "inspect", "--config", ref))
    with tarfile.open(archive) as tar:
        (docker_manifest,) = json.load(tar.extractfile("manifest.json"))
        docker_config = json.load(tar.extractfile(docker_manifest["Config"]))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert (
        len(manifest["layers"])
        == len(docker_manifest["Layers"])
        == len(config["rootfs"]["diff_ids"])
    )
    # The archive holds the built image (its id is the digest of its config); the OCI config is
    # a conversion of that config (another digest) over the very same layers.
    assert docker_manifest["Config"].removesuffix(".json") == built["image_id"].split(":")[-1]
    assert config["rootfs"]["diff_ids"] == docker_config["rootfs"]["diff_ids"]
    assert config["config"]["Env"] == docker_config["config"]["Env"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    settings = config["config"]
    env = dict(item.split("=", 1) for item in settings["Env"])
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert env["HF_HUB_OFFLINE"] == "1" and env["IRFLOW_IMAGE_FAMILY"] == "eval"
    assert env["IRFLOW_IMAGE_REVISION"] == built["labels"]["org.opencontainers.image.revision"]
    assert settings["Cmd"] == ["python"] and not settings.get("Entrypoint")
    assert settings["User"] == "1000:1000" and settings["WorkingDir"] == "/home/irflow"
    assert settings["Labels"]["io.irflow.lock.sha256"] == _sha256(REPO / "envs" / "eval.lock")

    bundle = tmp_path / "bundle"
    _tool(tools["umoci"], "unpack", "--image", f"{layout}:eval", str(bundle))
    rootfs = bundle / "rootfs"
    runtime = json.loads((bundle / "config.json").read_text())["process"]
    assert runtime["args"] == ["python"]
    assert "HF_HUB_OFFLINE=1" in runtime["env"]
    assert (rootfs / "opt/irflow/eval.lock").read_bytes() == (REPO / "envs/eval.lock").read_bytes()
    site = rootfs / "opt/venv/lib/python3.11/site-packages"
    assert (site / "irflow" / "__init__.py").is_file() and not (site / "torch").exists()
    unreadable = _unreadable_by_others(rootfs, "opt/venv")
    assert not unreadable, f"others cannot read (apptainer runs as the caller): {unreadable[:10]}"
    if os.geteuid() != 0:
        return
    rootfs.chmod(0o755)  # umoci makes the bundle's rootfs/ 0700 (not the image's doing)
    probe = (
        "import irflow.evaluate as e, json, sys; print(json.dumps([sys.executable, e.__file__]))"
    )
    out = _tool(
        "chroot", "--userspec=1000:1000", str(rootfs), "/opt/venv/bin/python", "-c", probe, env=env
    )
    assert json.loads(out.splitlines()[-1]) == [
        "/opt/venv/bin/python",
        "/opt/venv/lib/python3.11/site-packages/irflow/evaluate.py",
    ]


def _tool(*command: str, env: dict | None = None) -> str:
    """Run an image tool; its stdout, or a failure that shows its stderr."""
    result = subprocess.run(
        command, env=env, cwd="/", capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr[-4000:]}"
    return result.stdout


def _unreadable_by_others(rootfs: Path, folder: str) -> list[str]:
    """Files under rootfs/folder that other users cannot read (directories: read and enter)."""
    bad = []
    for path in [rootfs / folder, *(rootfs / folder).rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if (mode & 0o005 != 0o005) if path.is_dir() else not mode & 0o004:
            bad.append(str(path.relative_to(rootfs)))
    return bad


def _eval_rule_imports() -> list[str]:
    """The module-level irflow imports of the scripts of rules in the eval family."""
    imports: set[str] = set()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            script = re.search(r'script:\s*"([^"]+)"', block)
            if 'container_image("eval")' not in block or not script:
                continue
            tree = ast.parse((smk.parent / script.group(1)).resolve().read_text())
            for node in tree.body:
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                if any(name.split(".")[0] == "irflow" for name in names):
                    imports.add(ast.unparse(node))
    return sorted(imports)


def _results(workdir: Path) -> dict[str, bytes]:
    """Every result file but the logs, benchmark and provenance records (times, paths, machine:
    they describe the job, not its output)."""
    root = workdir / "results"
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not {"logs", "benchmarks", "provenance"} & set(p.relative_to(root).parts)
    }


def _host_run(workdir: Path, config: dict) -> dict[str, bytes]:
    workdir.mkdir()
    snakemake(workdir, config, TARGET)
    return _results(workdir)


def _data_bind() -> str:
    return f"--apptainer-args=--bind {SHARED_DATA.resolve()}"


@pytest.mark.slow
def test_demo_rules_in_the_eval_container_equal_the_host_run(eval_image, tmp_path, monkeypatch):
    require_data("dl19-bm25-top100")  # TARGET reads only this collection
    image = eval_image["report"]["tags"][1]  # the git-sha tag: exactly the image just built
    config = absolute_config(containers={"eval": f"docker://{image}"})
    shim_log = tmp_path / "shim.log"
    monkeypatch.setenv("PATH", f"{SHIM_DIR}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("IRFLOW_APPTAINER_SHIM_LOG", str(shim_log))

    contained = tmp_path / "container"
    contained.mkdir()
    # Targets before --sdm, which takes several values. The data folder is not under the
    # working directory: it must be bound (Snakemake binds only its own paths).
    result = snakemake(contained, config, TARGET, "--sdm", "apptainer", _data_bind())
    host = _host_run(tmp_path / "host", config)

    in_container = _results(contained)
    assert set(in_container) == set(host)
    # The topics, the given run and its metric tables: every rule of the target ran.
    for expected in (
        "results/data/datasets/dl19/queries.parquet",
        "results/runs/dl19/first-stage/given.trec",
        "results/metrics/dl19/first-stage/given/mean.tsv",
        "results/metrics/dl19/first-stage/given/per-query.tsv",
    ):
        assert expected in host, sorted(host)
    for name, content in host.items():
        assert in_container[name] == content, f"{name} differs between container and host"

    # Every job went through apptainer (i.e. the shim) into the image just built ...
    assert result.stdout.count("Activating singularity image") + result.stderr.count(
        "Activating singularity image"
    ) == len(RULES)
    records = [json.loads(line) for line in shim_log.read_text().splitlines()]
    pulls = [r for r in records if r.get("subcommand") == "pull"]
    execs = [r for r in records if r.get("subcommand") == "exec"]
    probes = {r["probe"]: r for r in records if "probe" in r}
    assert [p["image"] for p in pulls] == [image]
    ran = {}
    for record in execs:
        assert record["image"] == image and record["exit"] == 0, record
        (script,) = re.findall(r"\.snakemake/scripts/\w+\.(\w+)\.py", record["argv"][-1])
        ran[script] = record
    assert sorted(ran) == sorted(RULES), execs
    # ... and ran the image's Python and irflow (not the host's), where torch does not exist.
    for rule, record in ran.items():
        probe = probes[record["invocation"]]
        assert probe["python"] == "/opt/venv/bin/python", (rule, probe)
        assert probe["irflow"].startswith("/opt/venv/lib/python3.11/site-packages/"), probe
        assert probe["torch_importable"] is False, probe
        assert probe["cwd"] == str(contained), probe


def _real_apptainer() -> str | None:
    """An apptainer (or singularity) binary that is not the test shim."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != SHIM_DIR
    )
    for name in ("apptainer", "singularity"):
        found = shutil.which(name, path=path)
        if found:
            version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
            if "shim" not in version:
                return found
    return None


@pytest.fixture(scope="module")
def real_apptainer():
    apptainer = _real_apptainer()
    if apptainer is None:
        pytest.skip("apptainer not installable here")
    return apptainer


@pytest.mark.slow
def test_demo_rules_in_a_real_apptainer_sif_equal_the_host_run(
    real_apptainer, eval_image, tmp_path
):
    require_data("dl19-bm25-top100")  # TARGET reads only this collection
    sif = tmp_path / "irflow-eval.sif"
    archive = eval_image["report"]["archive"]
    subprocess.run(
        [real_apptainer, "build", str(sif), f"docker-archive://{archive}"],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    config = absolute_config(containers={"eval": str(sif)})
    contained = tmp_path / "container"
    contained.mkdir()
    result = snakemake(contained, config, TARGET, "--sdm", "apptainer", _data_bind())
    assert "Activating singularity image" in result.stdout + result.stderr
    assert _results(contained) == _host_run(tmp_path / "host", config)
