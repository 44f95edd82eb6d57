"""The base image: mirror lines from the machine's apt sources, the mmdebstrap call, which image to use.

Nothing here bootstraps an image or runs an engine (the container tests do, once, and cache it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ai4life_kit.challenge import base_image as bi
from ai4life_kit.challenge.engine import ContainerError, Engine

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /nonexistent/keyring.gpg
"""


def test_mirror_lines_come_from_the_machines_deb822_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    lines = bi.debian_mirror_lines("bookworm", tmp_path)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    signed = f"[signed-by={keyring}] " if Path(keyring).is_file() else ""
    assert lines == [
        f"deb {signed}http://deb.debian.org/debian bookworm main",
        f"deb {signed}http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",  # missing keyring: not passed on
    ]


def test_mirror_lines_from_one_line_sources_map_the_suite(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# a comment\n"
        "deb http://mirror.example.org/debian trixie main contrib\n"
        "deb [arch=amd64] http://mirror.example.org/debian trixie-updates main\n"
        "deb http://mirror.example.org/debian trixie-backports main\n"
        "deb-src http://mirror.example.org/debian trixie main\n"
    )
    assert bi.debian_mirror_lines("bookworm", tmp_path) == [
        "deb http://mirror.example.org/debian bookworm main",
        "deb http://mirror.example.org/debian bookworm-updates main",
    ]


def test_mirror_lines_refuse_non_debian_machines(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    with pytest.raises(ContainerError, match=r"no Debian apt source found .* pass --base-image"):
        bi.debian_mirror_lines("bookworm", tmp_path)


def test_deb822_stanzas_skip_comments_join_continuations_and_lower_keys():
    text = (
        "# leading comment\n"
        "Types: deb\n"
        "URIs: http://a.example/debian\n"
        "  http://b.example/debian\n"
        "Suites: bookworm\n"
        "\n\n"
        "types: deb-src\n"
        "Enabled: no\n"
    )
    assert list(bi.deb822_stanzas(text)) == [
        {"types": "deb", "uris": "http://a.example/debian http://b.example/debian", "suites": "bookworm"},
        {"types": "deb-src", "enabled": "no"},
    ]
    assert list(bi.deb822_stanzas("")) == []


def test_disabled_deb822_sources_are_not_used(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "off.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    )
    (tmp_path / "sources.list.d" / "on.list").write_text("deb http://on.example/debian bookworm main\n")
    assert bi.debian_mirror_lines("bookworm", tmp_path) == ["deb http://on.example/debian bookworm main"]


def test_mmdebstrap_command_writes_a_small_python_root_to_stdout():
    mirrors = ["deb http://deb.example/debian bookworm main", "deb http://deb.example/debian bookworm-updates main"]
    cmd = bi.mmdebstrap_command("/usr/bin/mmdebstrap", mirrors)
    assert cmd[0] == "/usr/bin/mmdebstrap" and "--variant=apt" in cmd
    assert "--include=python3,python3-venv,ca-certificates,passwd" in cmd
    assert cmd[-len(mirrors) - 2 :] == ["bookworm", "-", *mirrors]  # suite, tar to stdout, then the mirrors
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd
    assert cmd.index("--dpkgopt=path-include=/usr/share/doc/*/copyright") > cmd.index(
        "--dpkgopt=path-exclude=/usr/share/doc/*"
    )  # dpkg applies the include after the exclude: copyright files stay


class _Store(Engine):
    """An engine whose image store is a set: no executable is ever called."""

    def __init__(self, name: str, images: set[str], cache: Path):
        super().__init__(name=name, exe=f"/nonexistent/{name}", cache=cache)
        self.images = images

    def image_exists(self, image: str) -> bool:
        return image in self.images


def test_ensure_base_image_bootstraps_only_when_it_must(tmp_path, monkeypatch):
    built: list[str] = []
    monkeypatch.setattr(bi, "bootstrap_base_image", lambda engine, log: built.append(engine.name))
    monkeypatch.setattr(bi.shutil, "which", lambda name: f"/usr/bin/{name}")
    podman = _Store("podman", set(), tmp_path)
    assert bi.ensure_base_image(podman, print, "python:3.12-slim") == "python:3.12-slim"  # given: used as is
    assert bi.ensure_base_image(_Store("docker", set(), tmp_path), print) == bi.DEFAULT_BASE_IMAGE
    assert bi.ensure_base_image(podman, print) == bi.LOCAL_BASE_IMAGE and built == ["podman"]
    podman.images.add(bi.LOCAL_BASE_IMAGE)
    assert bi.ensure_base_image(podman, print) == bi.LOCAL_BASE_IMAGE and built == ["podman"]  # cached
    monkeypatch.setattr(bi.shutil, "which", lambda name: None)
    assert bi.ensure_base_image(_Store("podman", set(), tmp_path), print) == bi.DEFAULT_BASE_IMAGE
    assert built == ["podman"]


def test_bootstrap_without_mmdebstrap_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(bi.shutil, "which", lambda name: None)
    with pytest.raises(ContainerError, match=r"mmdebstrap is not installed .* --base-image python:3\.11-slim"):
        bi.bootstrap_base_image(_Store("podman", set(), tmp_path), print)
