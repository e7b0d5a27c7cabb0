#!/usr/bin/env bash
# What data-parallel nodes (`ranks` > 1) need to build and run: Open MPI (mpirun, libmpi and
# mpicc, which the `mpi` crate's build asks for its flags) and libclang (the crate generates its
# bindings with bindgen), from Debian's packages, installed when missing (needs root). Prints
# nothing and exits 0 when everything is there; exits 1 saying what is missing otherwise.
set -euo pipefail
have() { command -v mpirun >/dev/null && command -v mpicc >/dev/null && ldconfig -p | grep -q 'libclang.*\.so'; }
have && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "mpi-setup: Open MPI or libclang missing; install Debian's openmpi-bin libopenmpi-dev libclang-dev (as root)" >&2
  exit 1
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
have
