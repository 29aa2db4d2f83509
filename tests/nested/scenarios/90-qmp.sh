# shellcheck shell=bash
# QMP's system_powerdown against a Linux L1: minivmm presses the ACPI power button (a Generic
# Event Device whose _EVT notifies the PNP0C0C button); L1's button driver reports the press
# on its input device, its init powers off, and minivmm ends with status 0 after the
# POWERDOWN and SHUTDOWN events.
img="$NESTED_WORKDIR/l1-powerbutton.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-powerbutton" --module button --module evdev
sock="$NESTED_WORKDIR/90-qmp.sock"
log="$LOGDIR/90-qmp.log"
events="$LOGDIR/90-qmp-events.log"
rm -f "$sock"
"$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --memory 256M \
    --qmp "unix:$sock,server,wait=off" --cmdline "console=ttyS0 panic=-1" \
    > "$log" 2>&1 < /dev/null &
pid=$!
for _ in $(seq 480); do grep -q "^MINIVMM-L1-UP" "$log" && break; sleep 1; done
expect "$log" "^MINIVMM-L1-UP" "L1 up" || { kill $pid; exit 1; }
expect "$log" "^MINIVMM-POWER-BUTTON-DEVICE event[0-9]+" "the power button's input device in L1" || { kill $pid; exit 1; }
python3 - "$sock" > "$events" 2>&1 <<'PY' || { echo "QMP client failed: $(cat "$events")"; kill $pid; exit 1; }
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(120)
s.connect(sys.argv[1])
f = s.makefile("rwb")
assert "QMP" in json.loads(f.readline())
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}).encode() + b"\n")
    f.flush()
while True:
    line = f.readline()
    if not line:
        break
    print(line.decode().strip())
    if json.loads(line).get("event") == "SHUTDOWN":
        break
PY
rc=0
timeout 120 tail --pid=$pid -f /dev/null || true
wait $pid || rc=$?
[ $rc -eq 0 ] || { echo "minivmm exited $rc after system_powerdown"; exit 1; }
expect "$events" '"event":"POWERDOWN"' "the POWERDOWN event"
# Checked as JSON fields (the key order of an event is not fixed).
/usr/bin/python3 - "$events" <<'PY' || { echo "expected SHUTDOWN (guest: true, reason: guest-shutdown) in $events"; exit 1; }
import json, sys
events = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
sys.exit(0 if any(e.get("event") == "SHUTDOWN"
                  and e.get("data") == {"guest": True, "reason": "guest-shutdown"}
                  for e in events) else 1)
PY
expect "$log" "^MINIVMM-POWER-BUTTON-PRESSED" "L1 saw the button press"
expect "$log" "reboot: Power down" "an ACPI poweroff"
echo "system_powerdown: $(grep -m1 '^MINIVMM-POWER-BUTTON-DEVICE' "$log" | sed 's/^MINIVMM-//'), pressed, L1 powered off, status 0, POWERDOWN + SHUTDOWN(guest-shutdown)"
