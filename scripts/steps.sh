# shellcheck shell=bash
# Sourced by scripts/gpu_check.sh and scripts/gpu_full_scale.sh: each step of a device call runs with its
# own time limit, its output in $OUT/LOGFILE, and one line in $OUT/status.txt (exit 124: it hit its limit).

step() {  # step NAME LIMIT LOGFILE COMMAND...; returns the command's exit status
    local name=$1 limit=$2 file=$3
    shift 3
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$file" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s) -> $file" | tee -a "$OUT/status.txt"
    return $rc
}
