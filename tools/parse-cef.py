#!/usr/bin/env python3
"""Parses CEF lines (one per input line) with the third-party `cefp` parser and prints each as
JSON: the header fields and the extension, unescaped. Used by the CEF round-trip test.

    .venv/bin/python tools/parse-cef.py < lines.cef
"""
import json
import sys

import cefp

for line in sys.stdin:
    line = line.rstrip("\n")
    if line:
        print(json.dumps(cefp.parse(line)))
