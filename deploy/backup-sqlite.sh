#!/bin/sh
# backup-sqlite.sh DB DIR [DAYS]: a consistent copy of the running host's SQLite database
# in DIR/paynotify-YYYYmmddTHHMMSSZ.db, checked; copies older than DAYS (14) deleted.
#   15 3 * * * root /usr/local/lib/paynotify/backup-sqlite.sh /var/lib/paynotify/paynotify.db /var/backups/paynotify
set -eu
db=$1 dir=$2 days=${3:-14}
umask 077
mkdir -p "$dir"
out="$dir/paynotify-$(date -u +%Y%m%dT%H%M%SZ).db"
rm -f "$out.part"
sqlite3 "$db" "VACUUM INTO '$out.part'"
test "$(sqlite3 "$out.part" 'PRAGMA integrity_check')" = ok
mv "$out.part" "$out"
find "$dir" -name 'paynotify-*.db' -mtime +"$days" -delete
echo "$out"
