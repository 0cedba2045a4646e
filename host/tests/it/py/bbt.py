"""Drives Beebotte's official Python SDK (PyPI beebotte==0.5.0, unchanged) for the beebotte
tests. Usage: python bbt.py '<BBT kwargs JSON>' '<calls JSON>', where calls is a list of
[method, args, kwargs]; prints one JSON line per call: {"ok": result} or
{"error": exception class, "message": text}."""
import json
import sys

from beebotte import BBT

kwargs = json.loads(sys.argv[1])
client = BBT(**kwargs)
for method, args, kw in json.loads(sys.argv[2]):
    try:
        res = getattr(client, method)(*args, **kw)
        print(json.dumps({"ok": res}), flush=True)
    except Exception as e:  # every SDK error class, reported by name
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
