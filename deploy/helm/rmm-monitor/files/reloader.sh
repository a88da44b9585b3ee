#!/bin/sh
# rmm-monitor reloader: the second container of the rmm-monitor pod. It applies ConfigMap
# changes to the daemon in the first container without restarting the pod.
#
# The kubelet refreshes a ConfigMap volume in place (an atomic swap of its files, within about a
# minute of the change). Every RMM_RELOAD_INTERVAL seconds this loop reads what is mounted under
# RMM_RELOAD_DIR and compares it with what it read before; when something changed:
#   - rules.d/*.toml: sends SIGHUP; the daemon reloads its rules in place (a broken file is
#     logged and the previous rules stay active);
#   - config.toml: sends SIGTERM; the daemon drains and exits 0 and the kubelet restarts its
#     container, which then reads the new file (the daemon reads config.toml only at start).
#
# Which process is the daemon: the pod runs with hostPID, so every process of the node is
# visible, and a name alone could also match an rmm-monitor that systemd runs on the node or
# one in another pod. The daemon is the process named RMM_RELOAD_COMM whose cgroup is a sibling
# of this container's own (both containers' cgroups sit under the pod's cgroup). Paths are
# compared as this process sees them: with a private cgroup namespace (the usual case on cgroup
# v2 nodes) its own cgroup reads "/" and the daemon's "/../<daemon's container>"; without one
# both are full paths under the same pod directory.
#
# /proc/PID/comm and /proc/PID/cgroup are world-readable and kill(2) only needs the same uid
# (0) as the target: this container needs no capability at all.
#
# Needs a POSIX sh, cat and sleep (busybox or coreutils).
set -u

dir=${RMM_RELOAD_DIR:-/etc/rmm-monitor}
interval=${RMM_RELOAD_INTERVAL:-10}
name=${RMM_RELOAD_COMM:-rmm-monitor}

log() { echo "rmm-reloader: $*" >&2; }

# The cgroup of process $1 as this process sees it: the cgroup v2 path (the "0::" line), else
# the path of the first line (a cgroup v1 only node).
cgroup_of() {
    _first=
    while IFS= read -r _line; do
        case $_line in
        0::*)
            echo "${_line#0::}"
            return 0
            ;;
        esac
        [ -n "$_first" ] || _first=${_line#*:*:}
    done 2>/dev/null <"/proc/$1/cgroup" || return 1
    [ -n "$_first" ] && echo "$_first"
}

# The parent of cgroup path $1, lexically: "/" (the root of a cgroup namespace) has "/..".
parent_of() {
    case $1 in
    /) echo /.. ;;
    *)
        _parent=${1%/*}
        echo "${_parent:-/}"
        ;;
    esac
}

own=$(cgroup_of self) || {
    log "cannot read /proc/self/cgroup"
    exit 1
}
pod=$(parent_of "$own")

# Prints the pid of the daemon of this pod. (Shell functions share their variables with the
# caller: the helpers' names start with an underscore.)
find_daemon() {
    for _d in /proc/[0-9]*; do
        _comm=
        read -r _comm 2>/dev/null <"$_d/comm" || continue
        [ "$_comm" = "$name" ] || continue
        _cg=$(cgroup_of "${_d#/proc/}") || continue
        [ "$_cg" != "$own" ] || continue
        if [ "$(parent_of "$_cg")" = "$pod" ]; then
            echo "${_d#/proc/}"
            return 0
        fi
    done
    return 1
}

# Is $1 (still) the daemon's pid?
is_daemon() {
    _comm=
    [ -n "$1" ] && read -r _comm 2>/dev/null <"/proc/$1/comm" && [ "$_comm" = "$name" ]
}

# The names and contents of the rules files (a ConfigMap holds at most 1 MiB).
rules_text() {
    (
        cd "$dir" 2>/dev/null || exit 0
        for _f in rules.d/*.toml; do
            [ -f "$_f" ] || continue
            echo "== $_f"
            cat "$_f"
        done
    )
}

config_text() {
    cat "$dir/config.toml" 2>/dev/null
}

trap 'exit 0' TERM INT
log "watching $dir every ${interval}s for the $name process of this pod (cgroup $own, pod $pod)"
rules=$(rules_text)
config=$(config_text)
pid=
while :; do
    # In the background, so that SIGTERM ends the loop at once.
    sleep "$interval" &
    wait $!
    new_rules=$(rules_text)
    new_config=$(config_text)
    [ "$new_rules" = "$rules" ] && [ "$new_config" = "$config" ] && continue
    is_daemon "$pid" || pid=$(find_daemon) || pid=
    if [ -z "$pid" ]; then
        log "the configuration changed but no $name process of this pod is running; will retry"
        continue
    fi
    if [ "$new_config" != "$config" ]; then
        log "config.toml changed: SIGTERM to $name (pid $pid); its container restarts with the new file"
        kill -TERM "$pid" && config=$new_config && rules=$new_rules
    else
        log "rules changed: SIGHUP to $name (pid $pid)"
        kill -HUP "$pid" && rules=$new_rules
    fi
done
