#!/usr/bin/env bash
# Smoke test of docker/compose.yaml (needs a Docker engine; not part of `.ci/run`, which does not
# assume one): builds the image, starts RabbitMQ, two `lotse` processes and the sample receiver,
# sends two of the project's sample messages to lotse-1, and checks that each is delivered, that
# lotse-2 reads it as `delivered` (partner and admin API), that the receiver wrote it, that the
# partner port serves no admin endpoint, and that a broken body is refused with problem+json.
# Removes its containers and volumes at the end (also on failure).
#
#   docker/smoke-test.sh                 # uses `docker compose` (v2) or `docker-compose` (v1)
#
# Uses the host ports compose.yaml publishes (8080-8083, 15672): stop anything on them first.
set -euo pipefail
cd "$(dirname "$0")"

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
    # The Dockerfile's cache mounts need BuildKit: let v1 build through the docker CLI.
    export COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_BUILDKIT=1
else
    echo "smoke-test: needs \`docker compose\` (v2) or \`docker-compose\` (v1)" >&2
    exit 2
fi
project=lotse-smoke
token=${LOTSE_TOKEN_LAND_MUSTERLAND:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export LOTSE_TOKEN_LAND_MUSTERLAND=$token
dc() { "${compose[@]}" -p "$project" -f compose.yaml "$@"; }
fail() {
    echo "smoke-test: FAILED: $*" >&2
    dc logs --tail 40 >&2 || true
    exit 1
}
trap 'dc down -v --remove-orphans >/dev/null 2>&1 || true' EXIT

dc up -d --build

wait_for() { # URL SECONDS
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1"; do
        ((SECONDS < deadline)) || fail "$1 did not answer within $2 s"
        sleep 1
    done
}
wait_for http://127.0.0.1:8080/healthz 180
wait_for http://127.0.0.1:8082/healthz 60
echo "smoke-test: both lotse processes answer"

auth=(-H "Authorization: Bearer $token")
ids=()
for f in ../fixtures/samples/xwasser-vorgang.transportieren.2010.xml \
         ../fixtures/samples/xdomea-4.0.0-Aussonderung.Aussonderung.0503.xml; do
    answer=$(curl -sS -w '\n%{http_code}' -X POST http://127.0.0.1:8080/v1/submissions \
        -H 'Content-Type: application/xml' "${auth[@]}" --data-binary @"$f")
    code=${answer##*$'\n'}
    [[ $code == 202 ]] || fail "$f: HTTP $code: ${answer%$'\n'*}"
    id=$(sed -n 's/.*"submission_id": *"\([^"]*\)".*/\1/p' <<<"${answer%$'\n'*}")
    [[ -n $id ]] || fail "$f: no submission_id in ${answer%$'\n'*}"
    echo "smoke-test: $(basename "$f") accepted by lotse-1 as $id"
    ids+=("$id")
done

# Status on the other process: shared state through the event stream.
for id in "${ids[@]}"; do
    deadline=$((SECONDS + 60))
    until curl -fsS "${auth[@]}" "http://127.0.0.1:8082/v1/submissions/$id" | grep -q '"state": *"delivered"'; do
        ((SECONDS < deadline)) || fail "$id not delivered (as lotse-2 sees it) within 60 s"
        sleep 1
    done
    echo "smoke-test: $id delivered, as lotse-2 reports"
done

# Operators: lotse-2's admin API (host loopback only) lists what lotse-1 accepted; the partner
# port serves no admin endpoint.
for id in "${ids[@]}"; do
    curl -fsS "http://127.0.0.1:8083/v1/admin/submissions/$id" | grep -q '"state": *"delivered"' ||
        fail "lotse-2's admin API does not show $id delivered"
done
code=$(curl -sS -o /dev/null -w '%{http_code}' "${auth[@]}" http://127.0.0.1:8080/v1/admin/overview)
[[ $code == 404 ]] || fail "the partner port answered $code for an admin path (expected 404)"
echo "smoke-test: lotse-2's admin API shows both; the partner port has no admin endpoints"

received=$(dc exec -T receiver sh -c 'find /var/lib/lotse/received -type f ! -name received.jsonl | wc -l')
((received >= ${#ids[@]})) || fail "the receiver wrote $received files, expected at least ${#ids[@]}"
echo "smoke-test: the receiver wrote $received files"

answer=$(curl -sS -i -X POST http://127.0.0.1:8082/v1/submissions -H 'Content-Type: application/xml' \
    "${auth[@]}" --data-binary '<broken>')
grep -q '^HTTP/[0-9.]* 400' <<<"$answer" || fail "a broken body was not refused with 400: $answer"
grep -qi '^content-type: application/problem+json' <<<"$answer" || fail "no problem+json: $answer"
echo "smoke-test: a broken body is refused with 400 problem+json"
echo "smoke-test: passed"
