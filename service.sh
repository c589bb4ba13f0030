#!/bin/sh
# The seed's service.sh, now a shim: run this node's agent in the foreground, after boot's
# idempotent checks (keys, registration); what picluster.service runs.
# Global options go first: ./service.sh --config /boot/firmware/picluster.conf
exec picluster "$@" boot --foreground
