#!/usr/bin/env bash
# The seed's own scenario, from the shell as the reference's operators do it
# (`opensips-cli -x mi cc_agent_login 1008 1`): provision flow tech_support and agent 1008 with the
# `callcenter` command line, log 1008 in, place one SIPp call to the flow and show that 1008 answered.
#
# Needs a running system (scripts/up prints the api URL and an admin key) and:
#   CC_API_URL, CC_API_KEY   the api and an admin key (or ~/.config/callcenter/config.toml)
#   SIP_TARGET               host:port of the sip-edge (scripts/up: 127.0.0.1:5060)
#   QUEUE_URI                media played while waiting, e.g. sip:queue@127.0.0.1:5090
#   AGENT_URI                agent 1008's phone, e.g. sip:1008@127.0.0.1:5070 (a SIPp UAS answering)
# Optional: CALLCENTER (the command, default `callcenter`), TALK_MS (default 1000).
set -euo pipefail
: "${SIP_TARGET:?host:port of the sip-edge}" "${QUEUE_URI:?queue media URI}" "${AGENT_URI:?agent 1008 phone URI}"
cc=${CALLCENTER:-callcenter}
here=$(cd "$(dirname "$0")" && pwd)

echo "== provisioning flow tech_support and agent 1008"
$cc flow create tech_support --skill tech_support --queue-uri "$QUEUE_URI" --priority 0
$cc agent create 1008 --uri "$AGENT_URI" --skill tech_support

echo "== logging 1008 in"
$cc agent login 1008

echo "== calling sip:tech_support@$SIP_TARGET"
since=$(date -u +%Y-%m-%dT%H:%M:%S)
port=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sipp -sf "$here/caller.xml" -s tech_support -i 127.0.0.1 -p "$port" -m 1 -timeout 60s -nostdin \
     -d "${TALK_MS:-1000}" -timeout_error "$SIP_TARGET" >/dev/null 2>&1 \
  || { echo "the call failed (SIPp exit $?)" >&2; exit 1; }

echo "== the call's record"
for _ in $(seq 50); do  # the cdr-writer commits in batches: give it a moment
  cdr=$($cc --json cdr list --kind final --flow tech_support --agent 1008 --since "$since" --limit 1)
  if [ "$(echo "$cdr" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ]; then
    $cc cdr list --kind final --flow tech_support --agent 1008 --since "$since" --limit 1
    echo "$cdr" | python3 -c '
import json, sys
row = json.load(sys.stdin)[0]
print("call {call_id} {outcome} by {agent_id} after {wait_ms} ms waiting".format(**row))
sys.exit(0 if row["outcome"] == "answered" and row["agent_id"] == "1008" else 1)'
    exit $?
  fi
  sleep 0.2
done
echo "no CDR for the call" >&2
exit 1
