#!/bin/sh
# Renders deploy/nginx.conf (or another template) to stdout.
#   render-nginx.sh TEMPLATE PREFIX LISTEN WORKER_USER NODE...
# WORKER_USER: "user group" for the `user` directive (needed when nginx starts as
# root), or "-" for none. NODE: host:port of a node's public listener (one or more).
# POSIX sh and awk only: it runs in the nginx container of docker-compose.yml too.
set -eu
if [ "$#" -lt 5 ]; then
    echo "usage: $0 TEMPLATE PREFIX LISTEN WORKER_USER NODE..." >&2
    exit 2
fi
template=$1 prefix=$2 listen=$3 user=$4
shift 4
nodes="$*"
if [ "$user" = "-" ]; then
    user_directive="# no user directive: the master does not run as root"
else
    user_directive="user $user;"
fi
exec awk -v prefix="$prefix" -v listen="$listen" -v user_directive="$user_directive" \
    -v nodes="$nodes" '
    function subst(line, key, value,    i, out) {
        out = ""
        while ((i = index(line, key)) > 0) {
            out = out substr(line, 1, i - 1) value
            line = substr(line, i + length(key))
        }
        return out line
    }
    BEGIN { n = split(nodes, node, " ") }
    {
        line = subst($0, "@@PREFIX@@", prefix)
        line = subst(line, "@@LISTEN@@", listen)
        line = subst(line, "@@USER_DIRECTIVE@@", user_directive)
        # The header comment names the placeholders: leave comment lines alone.
        if (index(line, "@@NODE@@") > 0 && line !~ /^[ \t]*#/) {
            for (k = 1; k <= n; k++) print subst(line, "@@NODE@@", node[k])
        } else {
            print line
        }
    }
' "$template"
