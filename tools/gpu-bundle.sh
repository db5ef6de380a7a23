#!/usr/bin/env bash
# Build everything tools/gpu-check.sh needs on a GPU machine (which has no Rust toolchain and no
# internet) into one git-ignored folder, gpu-bundle/, at most 64 MiB:
#   cuda_ops         the op-test binary (tests/cuda_ops.rs), kernels embedded (cubin sm_80/sm_90 + PTX)
#   cuda_kernels     the kernel lab benchmark (benches/cuda_kernels.rs)
#   jobx-engine      the CLI (cuda build)
#   gpu-check.sh, gpu_bench_torch.py, gpu_bench_e2e.py, gpu_decide.py, fixtures/ (the committed jobx-reference-v1 fixtures)
#   stamp.txt        the commit and a digest of the sources it was built from
# Binaries are stripped and gzipped (the working tree plus the bundle must stay under 64 MiB). Then: copy the working tree (or just gpu-bundle/ and
# tools/) to the GPU machine and run `bash tools/gpu-check.sh OUT_DIR`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash tools/install-cuda-toolchain.sh
B="$REPO/gpu-bundle"
rm -rf "$B" && mkdir -p "$B"
msg=$(cargo build --release --locked --features cuda --bin jobx-engine --test cuda_ops --bench cuda_kernels \
      --message-format=json 2>/dev/null)
exe() { # path of the executable of a target of the given kind and name
  echo "$msg" | python3 -c "
import json, sys
for l in sys.stdin:
    try: d = json.loads(l)
    except ValueError: continue
    t = d.get('target') or {}
    if d.get('reason') == 'compiler-artifact' and t.get('name') == '$2' and '$1' in t.get('kind', []) and d.get('executable'):
        print(d['executable'])"
}
cp "$(exe bin jobx-engine | tail -1)" "$B/jobx-engine"
cp "$(exe test cuda_ops | tail -1)" "$B/cuda_ops"
cp "$(exe bench cuda_kernels | tail -1)" "$B/cuda_kernels"
# stripped, then gzipped (each embeds every kernel's cubin; gpu-check.sh unpacks them)
for f in "$B"/jobx-engine "$B"/cuda_ops "$B"/cuda_kernels; do strip --strip-all "$f" && gzip -9 "$f"; done
cp tools/gpu-check.sh tools/gpu_bench_torch.py tools/gpu_bench_e2e.py tools/gpu_decide.py "$B/"
cp -r tests/fixtures "$B/fixtures"
# what the bundle was built from: gpu-check.sh writes it into gpu.txt and warns when the tree it
# runs in has other sources (a bundle not rebuilt after a change would check the old code)
{ echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
  echo "sources $(bash tools/gpu-check.sh --digest)"; } > "$B/stamp.txt"
size=$(du -sm "$B" | cut -f1)
echo "gpu-bundle: ${size} MiB in $B"
if (( size > 64 )); then echo "error: bundle over 64 MiB" >&2; exit 1; fi
