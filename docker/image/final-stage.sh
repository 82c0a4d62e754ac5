#!/bin/sh
# The Containerfile's final stage, run once as root before `USER 1000:1000`:
# the aimass user (UID/GID 1000, HOME=/tmp), no package managers, no compilers, no setuid bits.
set -eu
say() { echo "aimass image final: $*" >&2; }

# The user and group, written directly (minimal bases have no useradd). An existing UID 1000
# entry (some bases ship one) is replaced so that `id` shows aimass.
for f in /etc/passwd /etc/group; do
  grep -v -E '^([^:]*:){2}1000:' "$f" | grep -v '^aimass:' > "$f.new" || true
  cat "$f.new" > "$f" && rm -f "$f.new"
done
echo 'aimass:x:1000:1000:AI Mass:/tmp:/usr/sbin/nologin' >> /etc/passwd
echo 'aimass:x:1000:' >> /etc/group
if [ -f /etc/shadow ]; then
  grep -v '^aimass:' /etc/shadow > /etc/shadow.new || true
  echo 'aimass:!:19000::::::' >> /etc/shadow.new
  cat /etc/shadow.new > /etc/shadow && rm -f /etc/shadow.new
fi

# Package managers: pip (the base interpreter's and ensurepip's bundled wheels), apt and dpkg.
# /var/lib/dpkg/status stays: image scanners read it to list the Debian packages.
rm -rf /usr/local/bin/pip /usr/local/bin/pip3 /usr/local/bin/pip3.11 \
       /usr/local/lib/python3.11/site-packages/pip /usr/local/lib/python3.11/site-packages/pip-* \
       /usr/local/lib/python3.11/ensurepip /usr/lib/python3.11/ensurepip /usr/share/python-wheels \
       /usr/bin/pip /usr/bin/pip3 /usr/lib/python3/dist-packages/pip \
       /usr/bin/apt /usr/bin/apt-* /usr/lib/apt /etc/apt /var/lib/apt /var/cache/apt \
       /usr/lib/x86_64-linux-gnu/libapt-* /usr/lib/aarch64-linux-gnu/libapt-* \
       /usr/bin/dpkg /usr/bin/dpkg-* /usr/sbin/dpkg-* /etc/dpkg /var/lib/dpkg/info /var/cache/debconf \
       /usr/share/man /usr/share/info

# Compilers and build tools must not be here (the slim and minbase bases ship none): fail loudly.
for t in gcc cc c++ g++ clang make ld as cpp; do
  for d in /usr/local/bin /usr/bin /bin /usr/sbin /sbin; do
    if [ -e "$d/$t" ]; then say "ERROR: $d/$t is in the final stage; use a base without compilers"; exit 1; fi
  done
done

# No setuid/setgid programs: nothing can regain root.
find / -xdev -type f -perm /6000 -exec chmod a-s {} + 2>/dev/null || true

# Every write goes to /tmp (an emptyDir in the chart); nothing else is writable by the user.
chmod 1777 /tmp
say "user $(grep '^aimass:' /etc/passwd)"
