#!/bin/sh
# The attach demo, both processes in one terminal (see README.md):
#   process 1: examples/attach/vmm.mjs runs the guest as VM "attach-demo"; the guest streams
#              "tick N" messages on channel "telemetry" and the VMM prints them ([vmm] lines);
#   process 2: kvmtalk attach takes the channel over, sends a message, prints 6 messages live,
#              and detaches (the VMM prints again); a last attach sends "quit".
# Needs /dev/kvm. KVMTALK_CLI may name another kvmtalk entry point (default bin/kvmtalk.js).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cli=${KVMTALK_CLI:-$root/bin/kvmtalk.js}
[ -f "$root/dist/src/index.js" ] || (cd "$root" && npm run build)
work=$(mktemp -d)
vmm=
cleanup() {
	[ -n "$vmm" ] && kill "$vmm" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

node "$root/bin/kvmtalk.js" cc "$root/examples/attach/guest.c" -o "$work/guest.elf"
node "$root/examples/attach/vmm.mjs" "$work/guest.elf" attach-demo &
vmm=$!

# Wait until the VM is listed (it announces itself when the guest opens its channel).
i=0
until node "$cli" ps | grep -q '^attach-demo '; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "the VM did not show up in kvmtalk ps" >&2; exit 1; }
	sleep 0.1
done
sleep 1.5 # let the VMM print a few ticks itself
echo '$ kvmtalk ps'
node "$cli" ps
echo '$ kvmtalk attach attach-demo telemetry --send "hello from another process" --count 6'
node "$cli" attach attach-demo telemetry --send "hello from another process" --count 6
sleep 1.5 # the VMM reads again
echo '$ kvmtalk attach attach-demo telemetry --send quit --count 1'
node "$cli" attach attach-demo telemetry --send quit --count 1 || true
wait "$vmm"
vmm=
