# About 410 lines, kept whole: set-up, build and run all go through one Engine and its private store.
"""Container engines: docker with a reachable daemon, or rootful podman set up to need neither.

Podman is set up so that it works on machines without a Docker daemon or a reachable registry,
without touching anything under ``/etc`` or the system image store:

- a private ``containers.conf`` (selected with ``CONTAINERS_CONF``): OCI runtime ``runc`` (crun
  refuses hybrid cgroup v1/v2 layouts), ``cgroupfs``, file events, and container ulimits at or
  below the host's hard limits (podman's default nofile/nproc of 1048576 fails without
  CAP_SYS_RESOURCE);
- its own image store (``--root``) under the cache folder (``$AI4LIFE_KIT_CONTAINER_CACHE``,
  default ``~/.cache/ai4life-kit/containers``), so the base image and the build layers survive
  between runs, and a short ``--runroot`` under ``/run`` (podman refuses runroots over 50 characters);
- builds on the host network with the host's CA bundle and a two-line ``pip.conf`` bind-mounted
  for the build only (nothing of the host's pip configuration goes into the image); containers run
  on the ``none`` network (the default bridge network leaves iptables chains behind).

The image a context builds on (a registry's Python, or one bootstrapped from Debian packages when no
registry can be reached) is :mod:`~ai4life_kit.challenge.base_image`'s job.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ai4life_kit.errors import Ai4LifeKitError, UserInputError

__all__ = [
    "ContainerError",
    "ContainerRun",
    "Engine",
    "build_image",
    "container_cache_dir",
    "find_engine",
    "output_tail",
    "podman_engine",
    "run_container",
]

ENGINE_ENV = "AI4LIFE_KIT_ENGINE"
CACHE_ENV = "AI4LIFE_KIT_CONTAINER_CACHE"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINERS_CONF = """\
# Written by ai4life-kit: podman settings that work on hosts with hybrid cgroups and without
# CAP_SYS_RESOURCE. Selected with CONTAINERS_CONF for ai4life-kit's own podman calls only.
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

Log = Callable[[str], None]


class ContainerError(Ai4LifeKitError):
    """A container engine is missing or one of its commands failed (exit code 1)."""


def container_cache_dir() -> Path:
    """Where podman's private storage, its config and build logs live (reused across runs)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ai4life-kit" / "containers"


@dataclass
class Engine:
    """One container engine: the executable, global flags and the environment its calls need."""

    name: str
    """``docker`` or ``podman``."""
    exe: str
    global_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to the caller's environment for every call (``CONTAINERS_CONF``)."""
    cache: Path | None = None
    runroot: Path | None = None

    def command(self, *args: str) -> list[str]:
        return [self.exe, *self.global_args, *args]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def call(
        self, *args: str, check: bool = True, timeout: float | None = 600, what: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run an engine command, capturing its output; raise :class:`ContainerError` on failure."""
        cmd = self.command(*args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.environ(), timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{what or ' '.join(cmd)} did not finish within {timeout} s") from None
        if check and proc.returncode != 0:
            raise ContainerError(
                f"{what or ' '.join(cmd)} failed (exit {proc.returncode}): {output_tail(proc.stderr or proc.stdout)}"
            )
        return proc

    def ref(self, image: str) -> str:
        """Fully qualified local name (podman otherwise asks registries about short names)."""
        if self.name == "podman" and "/" not in image.split(":")[0]:
            return f"localhost/{image}"
        return image

    def image_exists(self, image: str) -> bool:
        return self.call("image", "inspect", "--format", "{{.Id}}", self.ref(image), check=False).returncode == 0

    def image_info(self, image: str) -> tuple[str, int]:
        """(image id without the ``sha256:`` prefix, size in bytes)."""
        out = self.call("image", "inspect", "--format", "{{.Id}} {{.Size}}", self.ref(image)).stdout.split()
        return out[0].removeprefix("sha256:"), int(out[1])

    def describe(self) -> str:
        version = self.call("--version", check=False, timeout=30).stdout.strip()
        where = f", storage {self.cache}" if self.cache else ""
        return f"{version or self.name}{where}"


def output_tail(text: str, lines: int = 15) -> str:
    """The last ``lines`` non-empty lines of a command's output, joined with `` | `` for one message."""
    kept = [line for line in (text or "").strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def _docker_daemon_reachable(exe: str) -> bool:
    try:
        proc = subprocess.run(
            [exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _runroot_for(storage: Path) -> Path:
    """A short, stable runroot for ``storage`` on a tmpfs when possible.

    podman refuses runroots longer than 50 characters, and its database remembers the runroot a
    store was created with, so it is derived from the storage path rather than chosen per call.
    """
    digest = hashlib.sha256(str(Path(storage).resolve()).encode()).hexdigest()[:12]
    run = Path("/run")
    base = run / "ai4life-kit" if os.geteuid() == 0 and os.access(run, os.W_OK) else None
    if base is None:
        base = Path(tempfile.gettempdir()) / f"ai4life-kit-{os.getuid()}"
        if len(str(base)) > 36:
            base = Path("/tmp") / f"ai4life-kit-{os.getuid()}"
    return base / digest


def podman_engine(exe: str, cache: Path | None = None) -> Engine:
    """Podman with the private ``containers.conf`` and storage under ``cache``."""
    cache = Path(cache) if cache is not None else container_cache_dir()
    (cache / "storage").mkdir(parents=True, exist_ok=True)
    # The first runroot chosen for a store is kept in the cache (podman's database insists on it).
    remembered = cache / "runroot.txt"
    runroot = Path(remembered.read_text(encoding="utf-8").strip()) if remembered.is_file() else None
    if runroot is None or not runroot.is_absolute():
        runroot = _runroot_for(cache / "storage")
        remembered.write_text(f"{runroot}\n", encoding="utf-8")
    runroot.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = cache / "containers.conf"
    if not conf.is_file() or conf.read_text(encoding="utf-8") != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF, encoding="utf-8")
    return Engine(
        name="podman",
        exe=exe,
        global_args=("--root", str(cache / "storage"), "--runroot", str(runroot)),
        env={"CONTAINERS_CONF": str(conf)},
        cache=cache,
        runroot=runroot,
    )


def find_engine(preference: str = "auto", cache: Path | None = None) -> Engine | None:
    """The engine to use, or ``None`` when there is none.

    ``auto`` (or ``$AI4LIFE_KIT_ENGINE``) takes docker when its daemon answers, else podman when it
    is installed. Naming ``docker`` or ``podman`` explicitly fails with the reason when it cannot
    work; ``none`` always returns ``None``.
    """
    if preference == "auto":
        preference = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if preference not in ("auto", "docker", "podman", "none"):
        raise UserInputError(f"unknown container engine {preference!r}; use auto, docker, podman or none")
    if preference == "none":
        return None
    docker = shutil.which("docker")
    podman = shutil.which("podman")
    if preference in ("auto", "docker") and docker and _docker_daemon_reachable(docker):
        return Engine(name="docker", exe=docker)
    if preference == "docker":
        raise ContainerError(
            "docker cannot be used: " + ("its daemon does not answer" if docker else "it is not installed")
        )
    if podman:
        return podman_engine(podman, cache)
    if preference == "podman":
        raise ContainerError("podman is not installed; run scripts/setup-podman.sh (apt-get install podman runc)")
    return None


# -- build, run -----------------------------------------------------------------------------------


def _pip_conf(engine: Engine) -> Path:
    assert engine.cache is not None
    path = engine.cache / "pip.conf"
    text = f"[global]\ncert = {HOST_CA_BUNDLE}\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def build_image(
    engine: Engine,
    context: Path,
    image: str,
    log: Log,
    *,
    base_image: str | None = None,
    build_args: dict[str, str] | None = None,
    log_file: Path | None = None,
    dockerfile: str = "Dockerfile",
    no_cache: bool = False,
) -> float:
    """Build ``context`` as ``image``; return the seconds it took. The full log goes to ``log_file``."""
    args = dict(build_args or {})
    if base_image:
        args["BASE_IMAGE"] = base_image
    cmd = ["build", "-t", engine.ref(image), "-f", str(Path(context) / dockerfile)]
    if no_cache:
        cmd.append("--no-cache")
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if engine.name == "podman":
        local_base = base_image is not None and engine.image_exists(base_image)
        cmd += ["--pull=never" if local_base else "--pull=missing", "--network=host", "--layers"]
        if HOST_CA_BUNDLE.is_file():
            cmd += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", "-v", f"{_pip_conf(engine)}:/etc/pip.conf:ro"]
    cmd.append(str(context))
    log_file = Path(log_file) if log_file else None
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lines: list[str] = []
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(log_file, "w", encoding="utf-8")) if log_file else None
        proc = stack.enter_context(
            subprocess.Popen(
                engine.command(*cmd),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=engine.environ(),
            )
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if sink:
                sink.write(line)
            if re.match(r"^(STEP \d+/\d+:|Step \d+/\d+ :|#\d+ \[)", line):
                log("  " + line.rstrip()[:160])
        proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        where = f" (full log: {log_file})" if log_file else ""
        detail = output_tail("".join(lines), 12)
        raise ContainerError(f"building {image} failed (exit {proc.returncode}){where}: {detail}")
    return seconds


@dataclass
class ContainerRun:
    """What one ``run_container`` call observed."""

    returncode: int
    output: str
    seconds: float
    command: list[str]
    name: str = ""
    """The container's name (``ai4life-kit-<random>``), removed again if the run did not end itself."""


class _Terminated(BaseException):
    """SIGTERM arrived while a container ran (a BaseException, like KeyboardInterrupt)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` for the block, so the container can be removed first.

    Python's default SIGTERM action ends the process on the spot, without ``except`` or
    ``finally``, which would leave the container running. Only the main thread can set handlers;
    a SIGTERM the process ignores stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return

    def handler(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_container(engine: Engine, name: str) -> None:
    """``rm -f`` the container ``name``: stop it if it still runs, delete it; never raise.

    It may already be gone (``--rm``, or it never got created): that error is ignored.
    """
    with contextlib.suppress(ContainerError, OSError):
        engine.call("rm", "-f", name, check=False, timeout=120)


def run_container(
    engine: Engine,
    image: str,
    *,
    input_dir: Path,
    output_dir: Path,
    memory: str = "4g",
    timeout: float = 3600,
    extra_args: Sequence[str] = (),
) -> ContainerRun:
    """Run ``image`` as Grand Challenge does: no network, read-only root and ``/input``, empty ``/tmp``.

    The container gets a name of its own (``ai4life-kit-<random>``) so that it can be stopped and
    removed when the run does not end by itself: after ``timeout`` seconds the result has exit
    code 124 and says so in its output; on Ctrl-C the container is removed and the
    KeyboardInterrupt goes on; on SIGTERM it is removed, then the signal is handled as it would
    have been (by default the process ends), else :class:`ContainerError` is raised.
    """
    name = f"ai4life-kit-{secrets.token_hex(6)}"
    args = [
        "run",
        "--rm",
        "--name",
        name,
        "--network=none",
        "--read-only",
        f"--memory={memory}",
        "--tmpfs=/tmp:rw,mode=1777",
        "-v",
        f"{Path(input_dir).resolve()}:/input:ro",
        "-v",
        f"{Path(output_dir).resolve()}:/output:rw",
        *extra_args,
        engine.ref(image),
    ]
    cmd = engine.command(*args)
    start = time.perf_counter()
    proc: subprocess.Popen[str] | None = None
    try:
        with _sigterm_raises():
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                env=engine.environ(),
            )  # fmt: skip
            out, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:  # timeout, Ctrl-C, SIGTERM, anything: the container must not outlive us
        if proc is None:  # the client never started (no such executable): there is no container
            raise
        out = _stop_run(engine, proc, name)
        if isinstance(exc, subprocess.TimeoutExpired):
            note = f"\n(timed out after {timeout} s; container {name} stopped and removed)"
            return ContainerRun(124, out + note, time.perf_counter() - start, cmd, name)
        if isinstance(exc, _Terminated):
            signal.raise_signal(signal.SIGTERM)  # the handler from before the run, restored by now
            raise ContainerError(f"terminated (SIGTERM) while running {image}; container {name} removed") from None
        raise
    return ContainerRun(proc.returncode, out, time.perf_counter() - start, cmd, name)


def _stop_run(engine: Engine, proc: subprocess.Popen[str], name: str) -> str:
    """Kill the ``run`` client, remove its container, reap the client; return what it printed."""
    proc.kill()
    # Killing the client does not stop the container: podman's conmon and docker's daemon keep it
    # running, with its memory and CPU, until it ends by itself.
    _remove_container(engine, name)
    out = ""
    with contextlib.suppress(subprocess.TimeoutExpired):
        out, _ = proc.communicate(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()
    proc.wait()
    return out or ""
