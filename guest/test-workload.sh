#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Host test of the guest workload (guest/workload.c), run by scripts/test.sh
# before the QEMU stage; a few seconds, no VM.  Builds it with the flags
# scripts/guest-build.sh uses, runs it with WORKLOAD_CMDLINE, types
# commands on its stdin and checks the answers:
#   1. inline mode (the default, what `make demo` runs): the PROGRESS line
#      format, verify OK, stalls, corrupt -> VERIFY FAIL;
#   2. threaded mode (workload.threads=2): every pattern runs, verify OK
#      while the workers write flat out (it must pause them), STALLS lines
#      consistent (histogram sums to accesses, p50 <= p99 <= worst, every
#      page of a finite sweep read exactly once), a SIGSTOP of the process
#      shows up as a stall, corrupted pages -> VERIFY FAIL and READ FAIL;
#   3. workload.pattern=seq alone: one thread per online CPU, pattern seq.
#
# Usage: guest/test-workload.sh      (exit 0 only if every check passed)

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d)
PID=
LOG=/dev/null
POS=0
MATCH=
n=0
checks=0

cleanup() {
    if [ -n "$PID" ]; then kill -CONT "$PID" 2>/dev/null || true; kill "$PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
    echo "test-workload: FAIL: $*" >&2
    echo "--- workload output (last 30 lines of $LOG) ---" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
}

ok() {
    checks=$((checks + 1))
    echo "test-workload: ok $checks - $*"
}

# start CMDLINE: run the workload in the background, its stdin a fifo.
start() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    n=$((n + 1))
    LOG=$TMP/out.$n
    : >"$LOG"
    mkfifo "$TMP/in.$n"
    WORKLOAD_CMDLINE="$1" "$TMP/workload" <"$TMP/in.$n" >"$LOG" 2>&1 &
    PID=$!
    exec {IN}>"$TMP/in.$n"
    POS=0
}

send() { printf '%s\n' "$1" >&"$IN"; }

# expect ERE [SECONDS]: wait for the next output line matching ERE (after
# the previous match); the line is left in $MATCH.
expect() {
    local re=$1 end=$((SECONDS + ${2:-15})) hit
    while :; do
        hit=$(tail -n +"$((POS + 1))" "$LOG" | grep -n -m1 -E -- "$re" || true)
        if [ -n "$hit" ]; then
            POS=$((POS + ${hit%%:*}))
            MATCH=${hit#*:}
            return 0
        fi
        kill -0 "$PID" 2>/dev/null || fail "the workload exited while we waited for /$re/"
        [ "$SECONDS" -lt "$end" ] || fail "no line matching /$re/ within ${2:-15}s"
        sleep 0.05
    done
}

# field NAME LINE: the value of NAME=... in LINE.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# check_stalls LINE: one STALLS line is self-consistent; prints nothing if so.
check_stalls() {
    awk -v line="$1" 'BEGIN {
        n = split(line, f, " ")
        for (i = 2; i <= n; i++) { eq = index(f[i], "="); if (eq) v[substr(f[i], 1, eq - 1)] = substr(f[i], eq + 1) }
        split("accesses elapsed_ms busy_ms errors passes worst_us p50_us p99_us stalled stalled_ms hist", need, " ")
        for (k in need) if (!(need[k] in v)) { print "no " need[k] "="; exit }
        sum = 0
        if (v["hist"] != "") {
            nb = split(v["hist"], b, ",")
            for (i = 1; i <= nb; i++) { split(b[i], kv, ":"); sum += kv[2]; if (kv[1] < 0 || kv[1] > 31) { print "bucket " kv[1]; exit } }
        }
        if (sum != v["accesses"]) { print "histogram sums to " sum ", accesses=" v["accesses"]; exit }
        if (v["p50_us"] + 0 > v["p99_us"] + 0) { print "p50 > p99"; exit }
        if (v["p99_us"] + 0 > v["worst_us"] + 0.05) { print "p99 > worst"; exit }
        if (v["stalled"] + 0 > v["accesses"] + 0) { print "stalled > accesses"; exit }
        if (v["stalled_ms"] + 0 > v["busy_ms"] + 0.15) { print "stalled_ms > busy_ms"; exit }
        if (v["accesses"] > 0 && v["worst_us"] + 0 <= 0) { print "accesses but worst_us=0"; exit }
    }'
}

# stalls_snapshot THREADS: send `stalls`, check every line, leave the lines
# in T0 T1 ... and TOTAL.
declare -a T
stalls_snapshot() {
    local threads=$1 i sum=0 err
    send stalls
    for ((i = 0; i < threads; i++)); do
        expect "^STALLS thread=$i cpu=-?[0-9]+ "
        T[i]=$MATCH
        err=$(check_stalls "$MATCH")
        [ -z "$err" ] || fail "thread $i: $err: $MATCH"
        sum=$((sum + $(field accesses "$MATCH")))
    done
    expect "^STALLS total threads=$threads "
    TOTAL=$MATCH
    err=$(check_stalls "$MATCH")
    [ -z "$err" ] || fail "total: $err: $MATCH"
    [ "$(field accesses "$TOTAL")" -eq "$sum" ] || fail "total accesses != sum of threads: $TOTAL"
}

# wait_done THREADS: poll `stalls` until every thread finished its sweep.
wait_done() {
    local end=$((SECONDS + 30))
    while :; do
        stalls_snapshot "$1"
        [ "$(field 'done' "$TOTAL")" = "$1/$1" ] && return 0
        [ "$SECONDS" -lt "$end" ] || fail "the sweep did not finish within 30 s: $TOTAL"
        sleep 0.2
    done
}

command -v gcc >/dev/null 2>&1 || fail "gcc not found (build-essential)"
gcc -static -O2 -pthread -Wall -Wextra -Werror -o "$TMP/workload" "$ROOT/guest/workload.c" ||
    fail "gcc -static -O2 -pthread -Wall -Wextra -Werror guest/workload.c failed"
ok "builds with gcc -static -O2 -pthread -Wall -Wextra -Werror"

# ---------------------------------------------------------------- inline
start "workload.mb=32 workload.report=1 workload.seed=7"
expect '^WORKLOAD mb=32 pages=8192 rate=2000 '
expect '^WORKLOAD threads=0 .*pattern=inline'
expect '^READY 8192$'
end=$((SECONDS + 15))
while :; do
    expect '^PROGRESS '
    [[ $MATCH =~ ^PROGRESS\ t=[0-9]+s\ dirtied=([0-9]+)\ rate=2000/s\ gen_max=[0-9]+\ verifies=0$ ]] ||
        fail "inline PROGRESS line changed format: $MATCH"
    [ "${BASH_REMATCH[1]}" -gt 0 ] && break
    [ "$SECONDS" -lt "$end" ] || fail "inline mode dirtied nothing: $MATCH"
done
ok "inline mode: READY, PROGRESS in its old format, dirtying at rate 2000"
send verify
expect '^VERIFY (OK|FAIL)'
[ "$MATCH" = "VERIFY OK pages=8192" ] || fail "inline verify: $MATCH"
ok "inline mode: verify OK"
stalls_snapshot 1
[ "$(field accesses "${T[0]}")" -gt 0 ] || fail "inline mode: no access timed: ${T[0]}"
[[ ${T[0]} == "STALLS thread=0 cpu=-1 pattern=random-write "* ]] || fail "inline STALLS line: ${T[0]}"
ok "inline mode: stalls (${T[0]#STALLS })"
send "rate 0"
expect '^RATE 0$'
send "corrupt 100"
expect '^CORRUPTED page=100$'
send verify
expect '^VERIFY (OK|FAIL)'
[[ $MATCH == "VERIFY FAIL page=100 word=511 "*" bad_pages=1 pages=8192" ]] || fail "inline verify after corrupt: $MATCH"
ok "inline mode: corrupt 100 -> $MATCH"
send "frobnicate"
expect "^UNKNOWN COMMAND 'frobnicate'"
ok "inline mode: unknown commands are answered"

# ---------------------------------------------------------------- threaded
start "workload.mb=64 workload.threads=2 workload.report=1 workload.seed=7"
expect '^WORKLOAD threads=2 cpus=[0-9]+ pattern=random-write stall_us=50 '
expect '^READY 16384$'
send pattern
expect '^PATTERN name=random-write rate=2000 threads=2$'
expect '^PROGRESS .* threads=2 pattern=random-write accesses=[0-9]+ done=0/2 read_errors=0$'
ok "threaded mode: starts with random-write, 2 threads"
# in_list CPU LIST: CPU is in a cpulist such as "0-3,6".
in_list() {
    local part parts
    IFS=, read -ra parts <<<"$2"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            [ "$1" -ge "${part%-*}" ] && [ "$1" -le "${part#*-}" ] && return 0
        else
            [ "$1" = "$part" ] && return 0
        fi
    done
    return 1
}
allowed=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)

for p in random-write seq-write random-read seq mix; do
    send "pattern $p max"
    expect "^PATTERN name=$p rate=max threads=2$"
    case $p in
    random-write | seq-write)
        # The workers write flat out: verify must stop them to see
        # consistent pages (a torn page would FAIL).
        for i in 1 2 3; do
            sleep 0.2
            send verify
            expect '^VERIFY (OK|FAIL)'
            [ "$MATCH" = "VERIFY OK pages=16384" ] || fail "verify during $p: $MATCH"
        done
        ;;
    random-read | mix)
        wait_done 2
        for i in 0 1; do
            [ "$(field accesses "${T[i]}")" -eq 8192 ] ||
                fail "$p: thread $i read $(field accesses "${T[i]}") pages, its slice has 8192: ${T[i]}"
        done
        ;;
    seq)
        end=$((SECONDS + 30))
        while :; do
            stalls_snapshot 2
            [ "$(field passes "${T[0]}")" -ge 2 ] && [ "$(field passes "${T[1]}")" -ge 2 ] && break
            [ "$SECONDS" -lt "$end" ] || fail "seq: not two sweeps in 30 s: $TOTAL"
            sleep 0.2
        done
        ;;
    esac
    send "rate 0"
    expect '^RATE 0$'
    sleep 0.2
    stalls_snapshot 2
    for i in 0 1; do
        [[ ${T[i]} == "STALLS thread=$i cpu="*" pattern=$p accesses="* ]] || fail "STALLS line: ${T[i]}"
        [ "$(field accesses "${T[i]}")" -gt 0 ] || fail "$p: thread $i made no access: ${T[i]}"
        [ "$(field errors "${T[i]}")" -eq 0 ] || fail "$p: read errors: ${T[i]}"
        cpu[i]=$(sed -n 's/.* cpu=\([-0-9]*\) .*/\1/p' <<<"${T[i]}")
        in_list "${cpu[i]}" "$allowed" || fail "thread $i pinned to cpu ${cpu[i]}, not one of ours ($allowed)"
    done
    if [ "$allowed" != "${cpu[0]}" ]; then
        [ "${cpu[0]}" != "${cpu[1]}" ] || fail "both threads pinned to cpu ${cpu[0]} (allowed: $allowed)"
    fi
    send verify
    expect '^VERIFY (OK|FAIL)'
    [ "$MATCH" = "VERIFY OK pages=16384" ] || fail "verify after $p: $MATCH"
    ok "pattern $p: $(field accesses "$TOTAL") accesses, p50 $(field p50_us "$TOTAL") us, p99 $(field p99_us "$TOTAL") us, worst $(field worst_us "$TOTAL") us, done $(field 'done' "$TOTAL"), verify OK"
done

# Armed at rate 0 (the benchmark driver's way round the switch): nothing
# is touched until `stalls reset` + `rate max`, then each page once.
send "pattern random-read 0"
expect '^PATTERN name=random-read rate=0 threads=2$'
sleep 0.3
stalls_snapshot 2
{ [ "$(field accesses "$TOTAL")" -eq 0 ] && [ "$(field 'done' "$TOTAL")" = 0/2 ]; } ||
    fail "pattern at rate 0 touched pages: $TOTAL"
send "stalls reset"
send "rate max"
expect '^STALLS RESET stall_us=50$'
expect '^RATE max$'
wait_done 2
[ "$(field accesses "$TOTAL")" -eq 16384 ] || fail "armed random-read: $TOTAL"
awk -v d="$(field done_ms "$TOTAL")" -v e="$(field elapsed_ms "$TOTAL")" 'BEGIN { exit !(d > 0 && d <= e) }' ||
    fail "done_ms not within the statistics' elapsed time: $TOTAL"
ok "armed at rate 0: no access; after stalls reset + rate max every page once, done_ms=$(field done_ms "$TOTAL")"

# A stopped process is what a postcopy fault looks like from inside: an
# access that takes long.  (Retried: the stop may fall between accesses.)
send "pattern seq max"
expect '^PATTERN name=seq rate=max threads=2$'
for try in 1 2 3 4 5; do
    send "stalls reset 100000"
    expect '^STALLS RESET stall_us=100000$'
    sleep 0.3
    kill -STOP "$PID"
    sleep 0.5
    kill -CONT "$PID"
    sleep 0.2
    stalls_snapshot 2
    worst=$(field worst_us "$TOTAL")
    awk -v w="$worst" 'BEGIN { exit !(w >= 400000) }' && break
    [ "$try" -lt 5 ] || fail "a 0.5 s SIGSTOP never showed as a stall: $TOTAL"
done
awk -v s="$(field stalled_ms "$TOTAL")" -v c="$(field stalled "$TOTAL")" 'BEGIN { exit !(s >= 400 && c >= 1) }' ||
    fail "the stall is not counted in stalled/stalled_ms: $TOTAL"
ok "a 0.5 s SIGSTOP shows as worst_us=$worst stalled=$(field stalled "$TOTAL") stalled_ms=$(field stalled_ms "$TOTAL")"
send "stalls reset 50"
expect '^STALLS RESET stall_us=50$'

send "rate 0"
expect '^RATE 0$'
send "corrupt 100"
expect '^CORRUPTED page=100$'
send "corrupt 12000"
expect '^CORRUPTED page=12000$'
send verify
expect '^VERIFY (OK|FAIL)'
[[ $MATCH == "VERIFY FAIL page=100 word=511 "*" bad_pages=2 pages=16384" ]] || fail "verify after 2 corrupts: $MATCH"
ok "threaded mode: corrupt 100, 12000 -> $MATCH"
# 30 more, spread over both slices: a random-read that skipped or repeated
# pages (not a permutation) would miss some.
declare -A bad=([100]=1 [12000]=1)
while [ "${#bad[@]}" -lt 32 ]; do
    page=$(((RANDOM * 32768 + RANDOM) % 16384))
    [ -n "${bad[$page]:-}" ] && continue
    bad[$page]=1
    send "corrupt $page"
    expect "^CORRUPTED page=$page$"
done
send verify
expect '^VERIFY (OK|FAIL)'
[[ $MATCH == "VERIFY FAIL "*" bad_pages=32 pages=16384" ]] || fail "verify after 32 corrupts: $MATCH"
send "pattern random-read max"
# At most 5 READ FAIL lines per thread; each names a corrupt page of its slice.
for i in $(seq 10); do
    expect '^READ FAIL thread=[01] page=[0-9]+ word=511 '
    page=$(field page "$MATCH")
    [ -n "${bad[$page]:-}" ] || fail "READ FAIL of a page not corrupted: $MATCH"
    [ "$(field thread "$MATCH")" -eq $((page >= 8192)) ] || fail "READ FAIL from the wrong thread: $MATCH"
done
wait_done 2
[ "$(field errors "$TOTAL")" -eq 32 ] || fail "random-read over 32 corrupt pages: $TOTAL"
ok "random-read finds every corrupt page: READ FAIL lines, errors=32"
send "pattern bogus"
expect "^PATTERN UNKNOWN 'bogus'"
ok "unknown patterns are refused"

# ---------------------------------------------------------------- pattern= only
start "workload.mb=16 workload.pattern=seq workload.rate=max workload.report=1"
cpus=$(getconf _NPROCESSORS_ONLN)
expect "^WORKLOAD threads=$cpus cpus=$cpus pattern=seq "
expect '^READY 4096$'
sleep 0.3
send "rate 0"
expect '^RATE 0$'
sleep 0.1
stalls_snapshot "$cpus"
{ [ "$(field pattern "$TOTAL")" = seq ] && [ "$(field passes "$TOTAL")" -ge 1 ]; } ||
    fail "workload.pattern=seq: $TOTAL"
send verify
expect '^VERIFY (OK|FAIL)'
[ "$MATCH" = "VERIFY OK pages=4096" ] || fail "verify: $MATCH"
ok "workload.pattern=seq: $cpus threads (one per online CPU), seq sweeps, verify OK"

echo "test-workload: all $checks checks passed"
