#!/usr/bin/env python3
"""Prints one closing line, 'N passed, N failed, N skipped', over the meson
test logs (testlog-main.json, testlog-gpu.json) and pytest's JUnit XML in the
given meson-logs folder.  Exits 1 if anything failed or nothing ran."""
import json
import pathlib
import sys
import xml.etree.ElementTree as ET

logs = pathlib.Path(sys.argv[1])
passed = failed = skipped = 0
for name in ("testlog-main.json", "testlog-gpu.json"):
    f = logs / name
    if not f.exists():
        continue
    for line in f.read_text().splitlines():
        r = json.loads(line).get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
x = logs / "pytest.xml"
if x.exists():
    for suite in ET.parse(x).getroot().iter("testsuite"):
        t = int(suite.get("tests", 0))
        f = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        s = int(suite.get("skipped", 0))
        passed += t - f - s
        failed += f
        skipped += s
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or passed == 0 else 0)
