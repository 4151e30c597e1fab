#!/usr/bin/env bash
# A/B of swarrow's consumer CPU and rate across commits, alternated with sync pika in the same rounds.
#
#   benchmarks/ab_commits.sh ROUNDS "1 10 100" COMMIT...      (e.g. 3 "1 10 100" b38281e 2ff2409 HEAD)
#
# Each COMMIT is checked out into a temporary worktree and run with this checkout's venv
# (PYTHONPATH puts the worktree's swarrow first); each line printed: round, commit, concurrency,
# msg/s, consumer CPU µs per message, messages left in the queue (must be 0). 50,000 persistent
# 100-byte messages per run, prefetch 1000, the full default stack logging to a file.
set -euo pipefail
cd "$(dirname "$0")"
rounds=$1; concurrencies=$2; shift 2
root=$(cd .. && pwd)
py="$root/.venv/bin/python"
peers="$root/benchmarks/.venv-peers/bin/python"
trees=()
cleanup() { for t in "${trees[@]}"; do git -C "$root" worktree remove --force "$t" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
for commit in "$@"; do
    tree=$(mktemp -d /tmp/swarrow-ab.XXXXXX)
    git -C "$root" worktree add -q --detach "$tree" "$commit"
    trees+=("$tree")
done
field() { "$py" -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(int(d["rate"]), d["cpu_us_per_message"], d.get("left_in_queue"))'; }
for round in $(seq 1 "$rounds"); do
    if [ -x "$peers" ]; then
        echo "$round pika - $("$peers" peer_pika.py --messages 50000 --prefetch 1000 | field)"
    fi
    for c in $concurrencies; do
        i=0
        for tree in "${trees[@]}"; do
            out=$(cd "$tree/benchmarks" && PYTHONPATH="$tree" "$py" swarrow_consumer.py --stack default \
                  --messages 50000 --prefetch 1000 --concurrency "$c" --log-file /tmp/swarrow-ab-consumer.log | field)
            echo "$round ${@:$((i + 1)):1} $c $out"
            i=$((i + 1))
        done
    done
done
