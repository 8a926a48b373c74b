#!/bin/busybox sh
# /init of the real-kernel test guest: mount the basics, load the modules the initramfs carries, mount the project
# (read-only) and the output share over 9p, run the command the host left in the output share, hand back its exit
# code and the kernel log, print the marker line the host waits for, and power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /var/lib
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$module.ko" || echo "cc-gpu-guest: insmod $module failed"
done < /etc/modules.load
mount -t 9p -o trans=virtio,version=9p2000.L,ro work /work || echo "cc-gpu-guest: cannot mount the project share"
mount -t 9p -o trans=virtio,version=9p2000.L out /out || echo "cc-gpu-guest: cannot mount the output share"
# The command runs in the background under a time limit (/out/time_limit, seconds): a process stuck in the kernel
# cannot be killed, but the kernel log still comes back and the guest still powers off.
rc=127
if [ -f /out/command ]; then
    limit="$(cat /out/time_limit 2>/dev/null || echo 600)"
    (cd /work && exec sh /out/command >/out/guest.log 2>&1) &
    pid=$!
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$limit" ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "cc-gpu-guest: the command did not finish within $limit s; killing it" >>/out/guest.log
        kill -9 "$pid" 2>/dev/null
        ps >>/out/guest.log 2>&1
        rc=124
    else
        wait "$pid"
        rc=$?
    fi
fi
echo "$rc" >/out/exit_code
dmesg >/out/dmesg.txt
sync
echo "CC-GPU-GUEST-DONE rc=$rc"
poweroff -f
reboot -f
