#!/bin/sh
# Hand one SMS to rentbox's generic intake, as any forwarder or script would.
#   RENTBOX_URL=http://127.0.0.1:8080 RENTBOX_GATEWAY_TOKEN=... ./sms-curl.sh
# The answer is {"status": "SUCCESS", "smsId": N}; sending the same "id" again stores nothing new.
set -eu
curl -sS --max-time 10 -X POST "${RENTBOX_URL:-http://127.0.0.1:8080}/sms" \
  -H "Authorization: Bearer ${RENTBOX_GATEWAY_TOKEN:?set RENTBOX_GATEWAY_TOKEN}" \
  -H 'Content-Type: application/json' \
  -d '{"to": "+49 176 1234 5678", "from": "Instagram",
       "text": "784958 is your Instagram code. Don'"'"'t share it.",
       "id": "example-1", "received_at": "2026-11-26T10:00:00Z"}'
echo
