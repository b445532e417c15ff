#!/bin/sh
# Tell rentbox which SIMs a gateway has in its ports right now (run it every minute or so,
# well within RENTBOX_PRESENCE_S), as a gateway or a SIM-bank controller would.
#   RENTBOX_URL=http://127.0.0.1:8080 RENTBOX_GATEWAY_TOKEN=... ./presence-curl.sh
# The list replaces this gateway's previous one: a number it listed before and not now is
# offline at once. The answer names the rented numbers to keep in ports ("keep"), the
# rented ones this gateway no longer has ("missing": bring them back), and what matched
# no pool number ("unknown").
# A heartbeat that keeps the previous list is just: -d '{"gateway": "box-1"}'
set -eu
curl -sS --max-time 10 -X POST "${RENTBOX_URL:-http://127.0.0.1:8080}/presence" \
  -H "Authorization: Bearer ${RENTBOX_GATEWAY_TOKEN:?set RENTBOX_GATEWAY_TOKEN}" \
  -H 'Content-Type: application/json' \
  -d '{"gateway": "box-1", "numbers": ["+49 176 1234 5678"], "ports": ["gw1:1", "gw1:2"]}'
echo
