#!/bin/sh
# Slim a venv for the images: `slim.sh VENV`. Run by the Dockerfiles' builder stage.
#
# Removes what no SpaceNit stage runs: test suites, C++ headers and CMake files (the images
# have no compiler, so nothing builds against them: torch.compile cannot run there either),
# torch's test binaries and protoc; and
# strips debug symbols and static symbol tables from shared libraries (hdf5plugin's filters
# alone carry ~170 MB of them). Libraries under `*.libs/` are left alone: auditwheel
# patched them with patchelf, and strip can break such files. Prints the size before and
# after. The builder's import checks run afterwards, on the slimmed venv.
set -eu
venv="$1"
site="$(echo "$venv"/lib/python3*/site-packages)"
before="$(du -sm "$venv" | cut -f1)"

rm -rf "$site"/torch/test "$site"/torch/include "$site"/torch/share/cmake \
    "$site"/pyarrow/include "$site"/pyarrow/src "$site"/pyarrow/tests
# torch/bin: keep torch_shm_manager (`import torch` looks for it); drop the test binaries, protoc.
find "$site"/torch/bin -type f ! -name torch_shm_manager -delete
for package in numpy scipy pandas sklearn pyarrow matplotlib; do
    if [ -d "$site/$package" ]; then
        find "$site/$package" -depth -type d -name tests -exec rm -rf {} +
    fi
done
find "$venv" -type f \( -name '*.so' -o -name '*.so.*' \) ! -path '*.libs/*' -exec sh -c '
    for f; do strip --strip-unneeded "$f" 2> /dev/null || echo "slim.sh: left $f unstripped" >&2; done
' sh {} +

after="$(du -sm "$venv" | cut -f1)"
echo "slim.sh: $venv ${before} MB -> ${after} MB" >&2
