#!/bin/sh
# The seed's up2git.sh, now a shim: register this node and push (see ip2file.sh; the seed
# split writing the file and pushing it, `picluster register` does both in one commit).
exec picluster "$@" register
