"""Apply LDIF files to a stopped Samba DC's database, the way only an offline edit can.

Run with Debian's `/usr/bin/python3` (the only Python with Samba's bindings), never imported by pytest:

    /usr/bin/python3 tests/lab/samba_offline.py DIR/etc/smb.conf schema.ldif data.ldif ...

Each file is one transaction, applied with the ldb *relax* control (system-only classes such as
nTDSDSA can only be created this way) and `dsdb:schema update allowed = true`; the schema is reloaded
after every file so the next one can use the classes and attributes the previous one added.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    import ldb  # type: ignore[import-not-found]
    from samba.auth import system_session  # type: ignore[import-not-found]
    from samba.param import LoadParm  # type: ignore[import-not-found]
    from samba.samdb import SamDB  # type: ignore[import-not-found]

    smb_conf, *files = argv
    lp = LoadParm()
    lp.load(smb_conf)
    lp.set("dsdb:schema update allowed", "true")
    samdb = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
    for name in files:
        started = time.monotonic()
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
        count = 0
        samdb.transaction_start()
        try:
            for changetype, message in samdb.parse_ldif(text):
                if changetype == ldb.CHANGETYPE_MODIFY:
                    samdb.modify(message, controls=["relax:0"])
                else:
                    samdb.add(message, controls=["relax:0"])
                count += 1
        except Exception as exc:
            samdb.transaction_cancel()
            print(f"{name}: entry {count + 1}: {exc}", file=sys.stderr)
            return 1
        samdb.transaction_commit()
        samdb.set_schema_update_now()
        print(f"{name}: {count} entries in {time.monotonic() - started:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
