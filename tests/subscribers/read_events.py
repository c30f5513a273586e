"""Reads Cadre's events with the CloudEvents Python SDK, as an independent subscriber would.

Usage: read_events.py DIR. DIR holds one stored event per `*.json` file (the exact bytes Cadre
puts on NATS: CloudEvents 1.0 JSON, structured mode) and `expected.json`, mapping each file to
the `type`, `subject` and `tenantid` it must carry. Every file must parse with the SDK's strict
reader (required and optional attributes validated, extension names checked) and carry what
`expected.json` says, with an object as `data`. Prints one line per event type; exits 1 with
every mismatch listed.
"""

import json
import pathlib
import sys
from importlib.metadata import version

from cloudevents.core.formats.json import JSONFormat


def main() -> int:
    folder = pathlib.Path(sys.argv[1])
    expected = json.loads((folder / "expected.json").read_text())
    problems = []
    for name, want in sorted(expected.items()):
        raw = (folder / name).read_bytes()
        try:
            event = JSONFormat().read(None, raw)
        except Exception as error:  # the SDK's validation errors name the attribute
            problems.append(f"{name}: the SDK refused it: {error!r}")
            continue
        got = {
            "type": event.get_type(),
            "subject": event.get_subject(),
            "tenantid": event.get_extension("tenantid"),
        }
        for key, value in want.items():
            if got[key] != value:
                problems.append(f"{name}: {key} is {got[key]!r}, expected {value!r}")
        if event.get_specversion() != "1.0":
            problems.append(f"{name}: specversion {event.get_specversion()!r}")
        if event.get_time() is None or not event.get_id() or not event.get_source():
            problems.append(f"{name}: time, id or source missing")
        if event.get_datacontenttype() != "application/json":
            problems.append(f"{name}: datacontenttype {event.get_datacontenttype()!r}")
        if not isinstance(event.get_data(), dict):
            problems.append(f"{name}: data is {type(event.get_data()).__name__}, not an object")
        print(f"ok {got['type']} ({event.get_source()}, subject {got['subject']})")
    print(f"cloudevents {version('cloudevents')} read {len(expected)} events")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
