#!/usr/bin/env bash
# Install what `ai4life-kit challenge test` needs on a Debian/Ubuntu machine without a Docker engine:
# rootful podman, the runc OCI runtime (crun refuses hybrid cgroup layouts) and mmdebstrap (to
# bootstrap a Python base image from Debian packages when no registry can be reached).
# Idempotent: does nothing when all three are already installed. Changes nothing under /etc:
# ai4life-kit configures podman through a private containers.conf (CONTAINERS_CONF) and storage.
set -euo pipefail

need=()
for tool in podman runc mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ "${#need[@]}" -eq 0 ]; then
    echo "setup-podman: podman, runc and mmdebstrap are already installed"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup-podman: run as root (or install sudo) to install ${need[*]}" >&2; exit 1; }
    sudo="sudo"
fi
command -v apt-get >/dev/null 2>&1 || { echo "setup-podman: apt-get not found; install ${need[*]} with your package manager" >&2; exit 1; }

echo "setup-podman: installing ${need[*]} (plus podman runc mmdebstrap if missing)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends podman runc mmdebstrap uidmap >/dev/null
for tool in podman runc mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || { echo "setup-podman: $tool is still missing after apt-get install" >&2; exit 1; }
done
echo "setup-podman: $(podman --version), $(runc --version | head -n 1), mmdebstrap $(mmdebstrap --version 2>/dev/null | awk '{print $2}')"
