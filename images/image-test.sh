#!/usr/bin/env bash
# Build the CPU image, then run every stage inside it without a network, on the real data:
#
#   make image-test      (or: images/image-test.sh [DATA_DIR])     DATA_DIR: ../shared/data
#
# Inside the image, each with `--network none`: convert (EuroSAT chips), stats, a 5-step
# pretrain that registers the encoder in a sqlite MLflow store, embed from
# models:/spacenit-encoder@champion, probe; then `mlflow server` from the image, whose
# /health must answer. Slow (the build: ~35 min on 2 cores), so not part of `make test`.
# Prints each step's result and time, the image's size, and writes them to
# $OUT/image-test.json (OUT: a temporary folder, kept).
#
# Environment: those of images/build.sh (CONTAINER_ENGINE, BASE_IMAGE, TORCH_INDEX, WHEELS:
# with WHEELS the build itself runs with --network none), RUN_ARGS (extra `run` options;
# default: explicit open-file and process limits, which hosts whose limits a container may
# not copy need), SKIP_BUILD=1 (test the image already built).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
data="$(cd "${1:-$repo_root/../shared/data}" && pwd)"
engine="${CONTAINER_ENGINE:-podman}"
python="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
image="$(PYTHONPATH="$repo_root" "$python" -m components.image cpu)"
out="${OUT:-$(mktemp -d -t spacenit-image-test.XXXXXX)}"
mkdir -p "$out/work"
chmod 0777 "$out/work"  # the image runs as uid 1000
results="$out/results.jsonl"
: > "$results"

record() {  # record NAME SECONDS RC
    printf '{"step": "%s", "seconds": %s, "rc": %s}\n' "$1" "$2" "$3" >> "$results"
    printf '%-8s rc=%s %6ss\n' "$1" "$3" "$2" >&2
}

timed() {  # timed NAME COMMAND...: run, log to $out/NAME.log, record
    local name="$1" start rc=0
    shift
    start="$EPOCHREALTIME"
    "$@" > "$out/$name.log" 2>&1 || rc=$?
    record "$name" "$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }")" "$rc"
    if ((rc)); then tail -20 "$out/$name.log" >&2; fi
    return 0
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    build_extra=()
    [[ -n "${WHEELS:-}" ]] && build_extra=(-- --network none)
    timed build images/build.sh cpu ${build_extra[@]+"${build_extra[@]}"}
fi

# Every stage: no network, the data read-only, a writable work folder, MLflow in sqlite there.
run_args=(--rm --network none -v "$data:/shared:ro" -v "$out/work:/out" -e MLFLOW_TRACKING_URI=sqlite:////out/mlflow.db)
read -r -a extra <<< "${RUN_ARGS:---ulimit nofile=1024:1024 --ulimit nproc=32768:32768}"
spacenit() { "$engine" run "${run_args[@]}" "${extra[@]}" "$image" "$@"; }

timed convert spacenit convert /shared/eurosat_ms /out/dataset --layout class_folders --sensor sentinel2_l1c --tile-size-px 64
timed stats spacenit stats /out/dataset
timed pretrain spacenit pretrain /out/dataset --stats /out/dataset/stats.json --output-dir /out/run \
    --set train.steps=5 --set train.global_batch_size=16
timed embed spacenit embed models:/spacenit-encoder@champion /out/dataset /out/embeddings.zarr
timed probe spacenit probe /out/embeddings.zarr /out/probe.json -k 5
# The tracking server from the image: started in the container, asked for /health from inside it.
timed server "$engine" run "${run_args[@]}" "${extra[@]}" --entrypoint bash "$image" -c '
    mlflow server --backend-store-uri sqlite:////out/server.db --artifacts-destination /out/server-artifacts \
        --host 127.0.0.1 --port 5000 --workers 1 > /out/server.log 2>&1 &
    for _ in $(seq 60); do
        if python -c "import urllib.request as u; assert u.urlopen(\"http://127.0.0.1:5000/health\").read() == b\"OK\"" 2> /dev/null; then
            echo "/health: OK"; exit 0
        fi
        sleep 2
    done
    cat /out/server.log; exit 1'

size="$("$engine" image inspect --format '{{.Size}}' "$image")"
"$python" - "$results" "$out/image-test.json" "$image" "$size" "$out/work/probe.json" << 'PY'
import json, sys
results, path, image, size, probe = sys.argv[1:]
steps = [json.loads(line) for line in open(results)]
try:
    metrics = json.load(open(probe))
except OSError:
    metrics = None
summary = {"image": image, "size_bytes": int(size), "steps": steps, "probe": metrics}
json.dump(summary, open(path, "w"), indent=1)
print(f"{image}: {int(size) / 1e9:.2f} GB")
if metrics:
    print("probe:", {k: v for k, v in metrics.items() if k.endswith("accuracy")})
failed = [s["step"] for s in steps if s["rc"] != 0]
print(f"{len(steps) - len(failed)} passed, {len(failed)} failed" + (f": {failed}" if failed else ""))
sys.exit(1 if failed else 0)
PY
echo "logs and results: $out" >&2
