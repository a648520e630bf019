#!/usr/bin/env bash
# Downloads the wheels of benchmarks/gpu_wheels.txt for the lent H200's python3 (CPython 3.12, manylinux x86_64)
# into .whl/ (git-ignored), one version each (the few published as source only are built here, pure Python), then checks that they and the tracked tree fit what the device tool
# carries (64 MiB a call; the wheels are kept under 50 MiB). Run here, where PyPI can be reached; the GPU machine
# cannot reach it. PYTHON names the interpreter whose pip downloads (any version: the flags fix the target).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
rm -rf .whl
mkdir .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
grep -E '^[A-Za-z]' benchmarks/gpu_wheels.txt | grep -v '# source only' | cut -d' ' -f1 > .whl/binary.txt
grep -E '^[A-Za-z].*# source only' benchmarks/gpu_wheels.txt | cut -d' ' -f1 > .whl/source.txt
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl -r .whl/binary.txt
"$py" -m pip wheel -q --no-deps --no-binary=:all: -w .whl/built -r .whl/source.txt
for wheel in .whl/built/*.whl; do
    if [[ "$wheel" != *-py3-none-any.whl ]]; then
        echo "$wheel is not pure Python: it would not run on the image's 3.12" >&2
        exit 1
    fi
    mv "$wheel" .whl/
done
rm -rf .whl/built .whl/binary.txt .whl/source.txt
wanted=$(grep -cE '^[A-Za-z]' benchmarks/gpu_wheels.txt)
got=$(find .whl -type f -name '*.whl' | wc -l)
if ((got != wanted)); then
    echo "expected $wanted wheels in .whl/, found $got" >&2
    exit 1
fi
wheels=$(du -sb .whl | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "$got wheels: $((wheels / 1024)) KiB; tracked tree: $((tracked / 1024)) KiB; together $(((wheels + tracked) / 1048576)) MiB of 64"
if ((wheels > 50 * 1048576)); then
    echo "the wheels are over 50 MiB" >&2
    exit 1
fi
