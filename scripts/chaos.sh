#!/usr/bin/env bash
# The flagship under faults, on a fresh machine: a throwaway PostgreSQL, the service with a
# partner stub that refuses 30 % of the calls, completions sent by 16 clients, the service
# killed with SIGKILL at random moments and restarted, PostgreSQL killed with SIGKILL once
# and restarted. At the end: every committed completion notified the partner exactly once,
# nothing notified that did not commit, nothing pending, nothing dead.
#
#   bash scripts/chaos.sh            # ASSESSMENTS=3000 KILLS=6 by default
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/servers.sh

assessments=${ASSESSMENTS:-3000}
kills=${KILLS:-6}
first=1000
last=$((first + assessments - 1))

say "building the service and the keel command"
cargo build -q -p keel-cli
cargo build -q --example assessment_completion
service_bin=target/debug/examples/assessment_completion
keel_bin=target/debug/keel

ensure_postgres
command -v curl >/dev/null 2>&1 || install curl
workdir=$(mktemp -d /tmp/keel-chaos.XXXXXX)
service_pid=""
clients=""
keep=0
cleanup() {
  status=$?
  [ -n "$clients" ] && kill "$clients" 2>/dev/null || true
  [ -n "$service_pid" ] && kill -9 "$service_pid" 2>/dev/null || true
  stop_postgres "$workdir"
  [ "$keep" = 1 ] || rm -rf "$workdir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fsync stays on: a PostgreSQL crash must not lose what it acknowledged.
start_postgres "$workdir"
pg_port=$port
say "PostgreSQL on 127.0.0.1:$pg_port"
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres chaos
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/chaos"
psql_() { "$bindir/psql" -X -q -t -A -h 127.0.0.1 -p "$pg_port" -U postgres chaos -c "$1"; }

for try in 1 2 3 4 5 6 7 8; do
  http_port=$((20000 + RANDOM % 30000))
  port_is_free "$http_port" && break
done
export LISTEN_ADDRESS="127.0.0.1:$http_port" PARTNER_STUB_FAILURE_RATE=0.3
export DATABASE_ACQUIRE_TIMEOUT=1s REQUEST_TIMEOUT=5s RUST_LOG=error
base="http://$LISTEN_ADDRESS"

start_service() {
  "$service_bin" --serve --seed >>"$workdir/service.log" 2>&1 &
  service_pid=$!
  for wait in $(seq 1 100); do
    curl -s -o /dev/null "$base/health" && return 0
    sleep 0.1
  done
  echo "the service did not start; its log follows" >&2
  tail -20 "$workdir/service.log" >&2
  return 1
}

start_service
say "service on $base; $assessments campaign assessments to complete"
psql_ "INSERT INTO campaign_participations
         SELECT id, 100, id, 'Started' FROM generate_series($first, $last) AS id;
       INSERT INTO assessments
         SELECT id, id, 'Campaign', 'Started', id, NULL, 1 FROM generate_series($first, $last) AS id;
       INSERT INTO answers
         SELECT id, '1.1', '1', TRUE FROM generate_series($first, $last) AS id;"

# The clients: every id is sent until it gets a definitive answer (201 committed, 409
# committed by an earlier try whose answer was lost). 16 at a time.
complete_all() {
  local pending=("$@") round=0
  while [ ${#pending[@]} -gt 0 ]; do
    round=$((round + 1))
    printf '%s\n' "${pending[@]}" \
      | xargs -P 16 -I{} curl -s -o /dev/null -m 10 -w '{} %{http_code}\n' \
          -X POST "$base/assessments/{}/completion" >"$workdir/round.$round" || true
    cat "$workdir/round.$round" >>"$workdir/answers"
    mapfile -t pending < <(awk '$2 != 201 && $2 != 409 { print $1 }' "$workdir/round.$round")
    if [ ${#pending[@]} -gt 0 ]; then sleep 0.5; fi
  done
}
: >"$workdir/answers"
complete_all $(seq "$first" "$last") &
clients=$!

# The faults, while the clients run: SIGKILL of the service every 1 to 4 s (restarted at
# once), and one SIGKILL of PostgreSQL in the middle (restarted 3 s later).
for kill_number in $(seq 1 "$kills"); do
  sleep "$((1 + RANDOM % 4)).$((RANDOM % 10))"
  kill -0 "$clients" 2>/dev/null || break
  if [ "$kill_number" = $((kills / 2)) ]; then
    say "fault $kill_number: SIGKILL PostgreSQL"
    kill -9 "$(as_postgres head -1 "$workdir/data/postmaster.pid")"
    sleep 3
    restart_postgres "$workdir" 2>/dev/null   # (pg_ctl notes the stale pid file)
  else
    say "fault $kill_number: SIGKILL the service"
    kill -9 "$service_pid"
    wait "$service_pid" 2>/dev/null || true
    start_service
  fi
done
wait "$clients"
say "every completion answered; waiting for the deliveries to finish"

for wait in $(seq 1 600); do
  busy=$(psql_ "SELECT (SELECT count(*) FROM keel_deliveries WHERE status = 'pending')
                     + (SELECT count(*) FROM keel_events WHERE NOT routed)")
  [ "$busy" = 0 ] && break
  sleep 1
done
"$keel_bin" status

created=$(awk '$2 == 201' "$workdir/answers" | sort -u | wc -l)
conflicts=$(awk '$2 == 409' "$workdir/answers" | sort -u | wc -l)
completed=$(psql_ "SELECT count(*) FROM assessments WHERE id >= $first AND state = 'Completed'")
events=$(psql_ "SELECT count(*) FROM keel_events e
                WHERE e.name = 'assessment.completed.v1' AND (e.payload->>'assessment_id')::bigint >= $first")
sendings=$(psql_ "SELECT count(DISTINCT event_id) FROM partner_sendings
                  WHERE (notification->>'campaign_participation_id')::bigint >= $first")
orphans=$(psql_ "SELECT count(*) FROM partner_sendings s
                 WHERE NOT EXISTS (SELECT 1 FROM keel_events e WHERE e.id = s.event_id)")
statistics=$(psql_ "SELECT coalesce(sum(completed_assessments), 0) FROM user_statistics WHERE user_id >= $first")
dead=$(psql_ "SELECT count(*) FROM keel_deliveries WHERE status = 'dead'")

printf '\n%-48s %s\n' "assessments to complete" "$assessments"
printf '%-48s %s\n' "answered 201 Created (distinct ids)" "$created"
printf '%-48s %s\n' "answered 409 Conflict (earlier answer lost)" "$conflicts"
printf '%-48s %s\n' "completed in the database" "$completed"
printf '%-48s %s\n' "completion events" "$events"
printf '%-48s %s\n' "partner notifications recorded (distinct keys)" "$sendings"
printf '%-48s %s\n' "notifications without a committed event" "$orphans"
printf '%-48s %s\n' "user statistics counted" "$statistics"
printf '%-48s %s\n' "unfinished deliveries" "$busy"
printf '%-48s %s\n' "dead deliveries" "$dead"
printf '%-48s %s\n' "service kills / PostgreSQL kills" "$((kills - 1)) / 1"
printf '%-48s %s\n\n' "partner calls refused by the stub" "30 % at random"

ok=1
[ "$completed" = "$assessments" ] || ok=0
[ "$events" = "$completed" ] || ok=0
[ "$sendings" = "$completed" ] || ok=0
[ "$statistics" = "$completed" ] || ok=0
[ "$orphans" = 0 ] && [ "$busy" = 0 ] && [ "$dead" = 0 ] || ok=0
if [ "$ok" = 1 ]; then
  say "chaos: every committed completion notified once; nothing lost, doubled, pending or dead"
else
  keep=1
  say "chaos: MISMATCH (see above); the service's log is kept in $workdir/service.log"
  exit 1
fi
