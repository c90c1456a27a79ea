#!/usr/bin/env python3
"""Validates OCSF records (JSON lines) offline.

Each record is checked against the JSON Schema of its class, built by `ocsf-json-schema` from
the OCSF export bundled in that package (no network): required attributes, types, enum values,
`at_least_one`/`just_one` constraints, no unknown attributes. On top of that, what the schema
cannot say: `type_uid == class_uid * 100 + activity_id`, `category_uid` of the class, the
captions of `*_id` attributes, and `metadata.version`.

    .venv/bin/python tools/validate-ocsf.py records.jsonl [...]

Prints one line per problem (`file:line: problem`) and exits 1 if there was any.
"""
import json
import sys
from functools import lru_cache

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

VERSION = "1.8.0"


@lru_cache(maxsize=None)
def schema():
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(VERSION))


@lru_cache(maxsize=None)
def validator(class_uid, profiles):
    s = schema()
    js = s.get_class_schema(s.lookup_class_name_from_uid(class_uid), list(profiles))
    Draft202012Validator.check_schema(js)
    return Draft202012Validator(js)


def problems(record):
    out = []
    try:
        class_uid = int(record["class_uid"])
        profiles = tuple(sorted(record.get("metadata", {}).get("profiles", [])))
        v = validator(class_uid, profiles)
        cls = schema().schema.schema["classes"][schema().lookup_class_name_from_uid(class_uid)]
    except Exception as e:  # no class_uid, or one OCSF does not know
        return [f"no OCSF class for this record: {e!r}"]
    for err in sorted(v.iter_errors(record), key=lambda e: list(e.absolute_path)):
        where = "/".join(map(str, err.absolute_path)) or "<record>"
        if err.validator in ("anyOf", "oneOf"):
            keys = [sub.get("required", ["?"])[0] for sub in err.validator_value]
            which = "at least one" if err.validator == "anyOf" else "exactly one"
            out.append(f"{where}: {which} of {keys} is required")
        else:
            out.append(f"{where}: {err.message[:200]}")
    activity = record.get("activity_id")
    if isinstance(activity, int) and record.get("type_uid") != class_uid * 100 + activity:
        out.append(f"type_uid {record.get('type_uid')} is not class_uid*100+activity_id "
                   f"({class_uid * 100 + activity})")
    if record.get("category_uid") != cls.get("category_uid"):
        out.append(f"category_uid {record.get('category_uid')} is not {cls.get('category_uid')}")
    for attr, a in cls["attributes"].items():
        sibling, enum = a.get("sibling"), a.get("enum")
        if sibling and enum and sibling in record and attr in record and record[attr] != 99:
            caption = enum.get(str(record[attr]), {}).get("caption")
            if caption is not None and record[sibling] != caption:
                out.append(f"{sibling} {record[sibling]!r} is not the caption of "
                           f"{attr}={record[attr]} ({caption!r})")
    if record.get("metadata", {}).get("version") != VERSION:
        out.append(f"metadata.version is not {VERSION}")
    return out


def main(paths):
    bad = 0
    seen = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                seen += 1
                for p in problems(json.loads(line)):
                    print(f"{path}:{n}: {p}")
                    bad += 1
    print(f"validate-ocsf: {seen} records, {bad} problems (OCSF {VERSION})", file=sys.stderr)
    return 1 if bad or not seen else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
