"""Engine set-up, archive verification and run clean-up, without running any container."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from ai4life_kit.challenge import engine as eng
from ai4life_kit.challenge.save import verify_archive
from ai4life_kit.errors import UserInputError


def test_podman_engine_uses_a_private_config_store_and_short_runroot(tmp_path):
    engine = eng.podman_engine("/usr/bin/podman", tmp_path / "a-rather-long-cache-folder-name" / "containers")
    conf = Path(engine.env["CONTAINERS_CONF"]).read_text()
    assert 'runtime = "runc"' in conf and 'cgroup_manager = "cgroupfs"' in conf
    assert 'default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]' in conf
    args = engine.global_args
    assert args[0] == "--root" and args[1].endswith("containers/storage") and args[2] == "--runroot"
    assert len(args[3]) <= 50  # podman refuses longer runroots
    again = eng.podman_engine("/usr/bin/podman", tmp_path / "a-rather-long-cache-folder-name" / "containers")
    assert again.global_args == args  # podman's database insists on the first runroot
    assert engine.ref("hagen:latest") == "localhost/hagen:latest"
    assert engine.ref("docker.io/library/python:3.11") == "docker.io/library/python:3.11"
    shutil.rmtree(engine.runroot)


def test_engine_choice(monkeypatch):
    assert eng.find_engine("none") is None
    monkeypatch.setenv(eng.ENGINE_ENV, "none")
    assert eng.find_engine("auto") is None
    with pytest.raises(UserInputError, match="unknown container engine 'kubernetes'"):
        eng.find_engine("kubernetes")
    monkeypatch.setattr(eng.shutil, "which", lambda name: None)
    with pytest.raises(eng.ContainerError, match=r"podman is not installed; run scripts/setup-podman\.sh"):
        eng.find_engine("podman")
    with pytest.raises(eng.ContainerError, match="docker cannot be used: it is not installed"):
        eng.find_engine("docker")


def test_container_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(eng.CACHE_ENV, str(tmp_path / "x"))
    assert eng.container_cache_dir() == tmp_path / "x"
    monkeypatch.delenv(eng.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert eng.container_cache_dir() == tmp_path / "xdg" / "ai4life-kit" / "containers"


# -- archives -------------------------------------------------------------------------------------


def _docker_archive(path: Path, *, corrupt_layer: bool = False, tag: str = "localhost/x:latest") -> str:
    layers = []
    for i in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as layer:
            data = f"layer {i}\n".encode()
            info = tarfile.TarInfo(f"file{i}.txt")
            info.size = len(data)
            layer.addfile(info, io.BytesIO(data))
        layers.append(buf.getvalue())
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = json.dumps({"architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_id = hashlib.sha256(config).hexdigest()
    names = [f"{d.removeprefix('sha256:')}.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": names}]).encode()
    if corrupt_layer:
        layers[1] = layers[1].replace(b"layer 1", b"layer X")
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in [
            *zip(names, layers, strict=True),
            (f"{config_id}.json", config),
            ("manifest.json", manifest),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return config_id


def test_verify_archive_accepts_a_consistent_docker_archive(tmp_path):
    image_id = _docker_archive(tmp_path / "ok.tar.gz")
    info = verify_archive(tmp_path / "ok.tar.gz", image_id)
    assert info["image_id"] == image_id and info["layers"] == 2 and info["tags"] == ["localhost/x:latest"]


def test_verify_archive_catches_corruption_wrong_image_and_garbage(tmp_path):
    _docker_archive(tmp_path / "bad.tar.gz", corrupt_layer=True)
    with pytest.raises(eng.ContainerError, match="layers do not match"):
        verify_archive(tmp_path / "bad.tar.gz")
    _docker_archive(tmp_path / "other.tar.gz")
    with pytest.raises(eng.ContainerError, match="not the built image"):
        verify_archive(tmp_path / "other.tar.gz", "0" * 64)
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(eng.ContainerError, match="not a readable image archive"):
        verify_archive(tmp_path / "junk.tar.gz")
    with gzip.open(tmp_path / "empty.tar.gz", "wb") as gz, tarfile.open(fileobj=gz, mode="w"):
        pass
    with pytest.raises(eng.ContainerError, match=r"no manifest\.json"):
        verify_archive(tmp_path / "empty.tar.gz")


# -- a run that does not end by itself: the container is removed, not only its client ----------------

FAKE_ENGINE = """\
#!/usr/bin/env bash
# A container engine whose `run` never ends: it logs its arguments, then waits like a client
# attached to a running container. `rm` logs its arguments and succeeds.
printf '%s\\n' "$*" >> "{log}"
case "$1" in
    run) exec sleep 60 ;;
    *) exit 0 ;;
esac
"""


def _fake_engine(tmp_path: Path, name: str = "podman") -> tuple[eng.Engine, Path]:
    log = tmp_path / "calls.log"
    exe = tmp_path / "bin" / name
    exe.parent.mkdir()
    exe.write_text(FAKE_ENGINE.format(log=log))
    exe.chmod(0o755)
    return eng.Engine(name=name, exe=str(exe)), log


def _calls(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.is_file() else []


def _run_name(calls: list[list[str]]) -> str:
    (run,) = [c for c in calls if c[0] == "run"]
    name = run[run.index("--name") + 1]
    assert name.startswith("ai4life-kit-") and len(name) > len("ai4life-kit-")
    return name


def _when_running(log: Path, action) -> threading.Thread:
    """Call ``action`` from a thread once the fake engine's ``run`` has started."""

    def wait_then_act():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(c[0] == "run" for c in _calls(log)):
            time.sleep(0.05)
        time.sleep(0.2)  # let the main thread get into its wait for the client
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("engine_name", ["podman", "docker"])
def test_a_timed_out_run_removes_its_container(tmp_path, engine_name):
    engine, log = _fake_engine(tmp_path, engine_name)
    start = time.monotonic()
    run = eng.run_container(engine, "img:1", input_dir=tmp_path, output_dir=tmp_path, timeout=1)
    assert time.monotonic() - start < 30  # the client was killed, not waited for
    assert run.returncode == 124 and "timed out after 1 s" in run.output
    calls = _calls(log)
    name = _run_name(calls)
    assert run.name == name and name in run.output
    assert ["rm", "-f", name] in calls


def test_ctrl_c_during_a_run_removes_its_container(tmp_path):
    engine, log = _fake_engine(tmp_path)
    # Ctrl-C as a terminal delivers it: a process started in the background by a non-interactive
    # shell (`cmd &`, as CI runners may start pytest) inherits SIGINT ignored, and Python then
    # never raises KeyboardInterrupt at all.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _when_running(log, lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            eng.run_container(engine, "img:1", input_dir=tmp_path, output_dir=tmp_path, timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    calls = _calls(log)
    assert ["rm", "-f", _run_name(calls)] in calls


def test_sigterm_during_a_run_removes_its_container_then_reaches_the_previous_handler(tmp_path):
    engine, log = _fake_engine(tmp_path)
    seen: list[int] = []

    def record(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, record)
    try:
        _when_running(log, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(eng.ContainerError, match=r"terminated \(SIGTERM\) while running img:1; container"):
            eng.run_container(engine, "img:1", input_dir=tmp_path, output_dir=tmp_path, timeout=60)
        assert signal.getsignal(signal.SIGTERM) is record  # the handler from before the run is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    calls = _calls(log)
    assert ["rm", "-f", _run_name(calls)] in calls
    assert seen == [signal.SIGTERM]  # delivered once, after the container was removed
