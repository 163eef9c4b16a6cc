#!/usr/bin/env bash
# CI smoke test of the fuzz targets: builds every target and runs each one for a short time
# (FUZZ_SECONDS, default 20). Exits non-zero if a target fails to build, crashes, leaks, times
# out on an input, or runs out of memory.
#
# Toolchain: uses nightly (with AddressSanitizer) when `rustup toolchain list` has one;
# otherwise the default toolchain with RUSTC_BOOTSTRAP=1 and `--sanitizer none` (coverage-guided
# fuzzing still works; memory errors are then only caught by Rust's own checks, and the crates
# forbid unsafe code anyway). FUZZ_FORCE_BOOTSTRAP=1 forces the second way.
#
# Needs a C++ compiler (libfuzzer-sys builds libFuzzer from source) and installs cargo-fuzz
# with `cargo install cargo-fuzz --locked` when it is missing.
#
# Environment:
#   FUZZ_SECONDS          seconds per target (default 20)
#   FUZZ_TARGETS          space-separated targets (default: all of `cargo fuzz list`)
#   FUZZ_FORCE_BOOTSTRAP  1: do not use nightly even if installed
#   CARGO_TARGET_DIR      honoured as usual (default: fuzz/target)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

seconds="${FUZZ_SECONDS:-20}"

log() { printf '[ci-smoke] %s\n' "$*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# How to call cargo fuzz: `cargo +nightly fuzz ...` or `RUSTC_BOOTSTRAP=1 cargo fuzz ... --sanitizer none`.
fuzz_cmd=()
fuzz_flags=()
if [[ "${FUZZ_FORCE_BOOTSTRAP:-0}" != "1" ]] && command -v rustup >/dev/null 2>&1 \
    && rustup toolchain list | grep -q '^nightly'; then
    log "using the nightly toolchain (AddressSanitizer)"
    fuzz_cmd=(cargo +nightly fuzz)
else
    log "no nightly toolchain (or FUZZ_FORCE_BOOTSTRAP=1): RUSTC_BOOTSTRAP=1, --sanitizer none"
    export RUSTC_BOOTSTRAP=1
    fuzz_cmd=(cargo fuzz)
    fuzz_flags=(--sanitizer none)
fi

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    log "no fuzz targets found"
    exit 1
fi

log "building ${targets[*]}"
build_start=$SECONDS
"${fuzz_cmd[@]}" build "${fuzz_flags[@]}"
log "built in $((SECONDS - build_start)) s"

# Per-target libFuzzer options.
target_args() {
    case "$1" in
        http_request) echo "-max_len=8192 -dict=dicts/http.dict" ;;
        admin_validation) echo "-max_len=8192" ;;
        *) echo "-max_len=4096" ;;
    esac
}

failed=()
run_start=$SECONDS
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus" "artifacts/$t"
    dirs=("$corpus")
    [[ -d "seeds/$t" ]] && dirs+=("seeds/$t")
    # shellcheck disable=SC2207
    extra=($(target_args "$t"))
    log "running $t for ${seconds} s"
    before=$(find "artifacts/$t" -type f ! -name ci-smoke.log | wc -l)
    if ! "${fuzz_cmd[@]}" run "${fuzz_flags[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        "${extra[@]}" 2>"artifacts/$t/ci-smoke.log"; then
        log "FAILED: $t (see fuzz/artifacts/$t/ci-smoke.log)"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "artifacts/$t/ci-smoke.log" >&2 || true
        failed+=("$t")
        continue
    fi
    after=$(find "artifacts/$t" -type f ! -name ci-smoke.log | wc -l)
    if ((after > before)); then
        log "FAILED: $t left new artifacts in fuzz/artifacts/$t"
        failed+=("$t")
        continue
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "artifacts/$t/ci-smoke.log" \
        | sed "s/^/[ci-smoke]   $t /" >&2 || true
done
log "ran ${#targets[@]} targets in $((SECONDS - run_start)) s"

if ((${#failed[@]} > 0)); then
    log "failed: ${failed[*]}"
    exit 1
fi
log "all targets passed"
