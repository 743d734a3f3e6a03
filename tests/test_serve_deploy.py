"""Production packaging without Docker: gunicorn through the image's entrypoint script against the real store,
the entrypoint's secret handling and preflight, a hadolint-clean Dockerfile, and a compose file that parses
under the Compose Specification and whose references all resolve."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from harmgate.config import load_config
from tests.store_fixtures import free_port
from tests.test_serve import API_KEY, blocklist_moderation, publish, server_env, start_process, write_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
BIN = Path(sys.executable).parent  # the venv's bin: gunicorn, hadolint, shellcheck


def entry_env(**extra: str) -> dict[str, str]:
    env = server_env(**extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def config_with_blocklist(tmp_path: Path, name: str, store, **service) -> Path:
    terms = tmp_path / "blocklist.txt"
    terms.write_text("# nothing blocked\n")
    return write_config(tmp_path, name, store, moderation=blocklist_moderation(terms), **service)


def run_entry(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# -- the entrypoint script -----------------------------------------------------------------------------------
def test_entrypoint_needs_a_config():
    env = {k: v for k, v in entry_env().items() if k != "HARMGATE_CONFIG"}
    for command in ("serve", "check", "init-bucket"):
        done = run_entry(command, env=env)
        assert done.returncode == 2
        assert done.stderr.strip() == "harmgate.serve: refusing to start: HARMGATE_CONFIG is not set (path of the " \
                                      "run config YAML)"
    done = run_entry(env={**env, "HARMGATE_CONFIG": "/nonexistent.yaml"})  # no argument: serve
    assert done.returncode == 2 and "HARMGATE_CONFIG=/nonexistent.yaml is not a readable file" in done.stderr


def test_entrypoint_reads_secret_files(tmp_path):
    secret = tmp_path / "api.key"
    secret.write_text("s3cr3t-from-a-file-0123456789\n")
    env = {k: v for k, v in entry_env(HARMGATE_API_KEYS_FILE=str(secret)).items() if k != "HARMGATE_API_KEYS"}
    done = run_entry("printenv", "HARMGATE_API_KEYS", env=env)
    assert done.returncode == 0 and done.stdout == "s3cr3t-from-a-file-0123456789\n"  # trailing newline dropped
    done = run_entry("printenv", "HARMGATE_API_KEYS_FILE", env=env)
    assert done.returncode == 1, "the _FILE variable should be unset once read"

    done = run_entry("true", env={**env, "HARMGATE_API_KEYS": "x" * 20})
    assert done.returncode == 2 and "both HARMGATE_API_KEYS and HARMGATE_API_KEYS_FILE are set" in done.stderr
    done = run_entry("true", env={**env, "HARMGATE_S3_ACCESS_KEY_FILE": str(tmp_path / "missing")})
    assert done.returncode == 2 and "HARMGATE_S3_ACCESS_KEY_FILE=" in done.stderr and "not a readable file" in done.stderr


def test_entrypoint_refuses_a_private_key_on_a_serving_node(tmp_path):
    """A serving node holds the trust file only; a signing key in its environment is a deployment mistake."""
    for var in ("HARMGATE_SIGNING_KEY", "HARMGATE_SIGNING_KEY_FILE", "HARMGATE_SIGNING_KEY_COMMAND"):
        for command in ("serve", "check"):
            done = run_entry(command, env=entry_env(**{var: "anything"}))
            assert done.returncode == 2 and f"{var} is set" in done.stderr and "trust file" in done.stderr
    done = run_entry("printenv", "HARMGATE_SIGNING_KEY", env=entry_env(HARMGATE_SIGNING_KEY="pem"))
    assert done.returncode == 0, "other commands (e.g. a publish job from the same image) may hold it"


def test_entrypoint_check_and_init_bucket(s3_store, tiny_model_dir, tmp_path):
    publish(s3_store, tiny_model_dir, "tiny-entry", "v1")
    env = entry_env(HARMGATE_CONFIG=str(config_with_blocklist(tmp_path, "tiny-entry", s3_store)))
    done = run_entry("init-bucket", env=env)
    assert done.returncode == 0 and f"bucket {s3_store.bucket} ready" in done.stdout, done.stderr

    done = run_entry("check", env={**env, "HARMGATE_CONFIG": str(write_config(tmp_path, "tiny-absent", s3_store))})
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and lines[0].startswith("harmgate.serve: refusing to start: no approved")


def test_check_loads_everything_then_exits(s3_store, tiny_model_dir, tmp_path, monkeypatch, capsys):
    # What `entrypoint.sh check` execs, run in this process (torch is already imported here).
    from serve.runner import main

    publish(s3_store, tiny_model_dir, "tiny-check", "v1")
    monkeypatch.delenv("HARMGATE_SIGNING_KEY", raising=False)  # the trust file (session-wide) is all it needs
    monkeypatch.setenv("HARMGATE_API_KEYS", API_KEY)
    assert main(["--config", str(config_with_blocklist(tmp_path, "tiny-check", s3_store)), "--check"]) == 0
    assert capsys.readouterr().out.strip() == "ok: would serve tiny-check:v1"


# -- gunicorn ------------------------------------------------------------------------------------------------
def test_gunicorn_refuses_to_start_with_status_2(s3_store, tmp_path):
    env = entry_env(HARMGATE_CONFIG=str(write_config(tmp_path, "tiny-gunicorn-none", s3_store)),
                    HARMGATE_BIND=f"127.0.0.1:{free_port()}")
    done = run_entry("serve", env=env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and lines[0].startswith("harmgate.serve: refusing to start: no approved")
    assert "Booting worker" not in done.stderr, "no worker may start before the model is verified"


def test_gunicorn_serves_with_two_workers(s3_store, tiny_model_dir, tmp_path):
    publish(s3_store, tiny_model_dir, "tiny-gunicorn", "v1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = config_with_blocklist(tmp_path, "tiny-gunicorn", s3_store, workers=2, threads=4, registry_poll_s=0)
    proc = start_process(["bash", str(ENTRYPOINT), "serve"], tmp_path / "gunicorn.log",
                         entry_env(HARMGATE_CONFIG=str(config), HARMGATE_BIND=f"127.0.0.1:{port}",
                                   HARMGATE_API_KEYS=API_KEY), url)
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401
        for _ in range(4):  # spread over both workers
            resp = requests.post(f"{url}/v1/chat/completions", headers=headers, timeout=120,
                                 json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            assert resp.status_code == 200, resp.text
            assert resp.json()["model"] == "tiny-gunicorn:v1"
        # Multiprocess metrics: whichever worker answers, /metrics counts the requests of both.
        metrics = requests.get(f"{url}/metrics", timeout=30).text
        pattern = r'harmgate_requests_total\{endpoint="chat",status="200"\} (\S+)'
        served = [float(v) for v in re.findall(pattern, metrics)]
        assert sum(served) == 4, metrics[:2000]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    log = (tmp_path / "gunicorn.log").read_text()
    assert code == 0, log
    assert log.count("Booting worker") == 2 and "verified tiny-gunicorn:v1; starting 2 worker(s)" in log
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in log  # access log: request line and status, no body


# -- files that only Docker runs -----------------------------------------------------------------------------
def test_dockerfile_passes_hadolint():
    done = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    missing = [src for src in copied if not (REPO_ROOT / src).exists()]
    assert copied and not missing, f"COPY sources missing from the build context: {missing}"


def test_entrypoint_passes_shellcheck():
    done = subprocess.run([str(BIN / "shellcheck"), str(ENTRYPOINT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_is_valid_and_consistent():
    from compose_spec import PyCompose

    text = (DEPLOY / "compose.yaml").read_text()
    compose = PyCompose.from_yaml(text)  # the Compose Specification, strictly (unknown keys are errors)
    compose.validate()
    spec = yaml.safe_load(text)
    services, secrets, volumes = spec["services"], spec["secrets"], spec["volumes"]
    assert set(services) == {"seaweedfs", "init-bucket", "harmgate"}
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for secret in svc.get("secrets", []):
            assert secret in secrets, f"{name} uses undeclared secret {secret}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        for var, path in svc.get("environment", {}).items():
            if var.endswith("_FILE"):
                assert path.startswith("/run/secrets/") and path.rsplit("/", 1)[1] in svc["secrets"], var
        build = svc.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    assert services["harmgate"]["depends_on"]["init-bucket"]["condition"] == "service_completed_successfully"
    assert services["init-bucket"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    assert "-master.telemetry=false" in services["seaweedfs"]["command"]

    # The mounted config is a valid run config that reaches the compose store and binds what compose publishes.
    config = load_config(DEPLOY / "harmgate.yaml")
    assert config.store.endpoint_url == "http://seaweedfs:8333"
    port = services["harmgate"]["environment"]["HARMGATE_BIND"].rsplit(":", 1)[1]
    assert services["harmgate"]["ports"] == [f"{port}:{port}"] and config.service.port == int(port)
    assert config.service.cache_dir == "/srv/harmgate/cache"
    assert "/srv/harmgate/cache" in (DEPLOY / "Dockerfile").read_text()


@pytest.mark.parametrize("broken, message", [
    ({"services": {"x": {"image": "a", "portz": ["1:1"]}}}, "portz"),
    ({"services": {"x": {"image": "a", "depends_on": {"y": {"condition": "service_maybe"}}}}}, "service_maybe"),
])
def test_compose_validation_catches_mistakes(broken, message):
    from compose_spec import PyCompose

    with pytest.raises(ValueError, match=message):
        PyCompose.from_yaml(yaml.safe_dump(broken)).validate()
