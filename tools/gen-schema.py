#!/usr/bin/env python3
"""Writes schemas/events.schema.json from crates/ledger/src/payload.rs.

The schema documents every event kind (JSON Schema 2020-12, over the JSON form of an event:
the same data model as the CBOR body, with the UUID as text and byte strings as base64url).
The test `crates/ledger/tests/schema.rs` checks the committed file against the code in both
directions, so run this after changing the catalogue and review the diff:

    python3 tools/gen-schema.py
"""
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = (ROOT / "crates/ledger/src/payload.rs").read_text()
# rustfmt splits a long `#[serde(…)]` over several lines: read each as one line.
SRC = re.sub(
    r"#\[serde\(\s*\n(.*?)\n\s*\)\]",
    lambda m: "#[serde(" + " ".join(x.strip() for x in m.group(1).splitlines()) + ")]",
    SRC,
    flags=re.S,
)


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def docs_before(lines, i):
    out = []
    j = i - 1
    while j >= 0 and (lines[j].strip().startswith("///") or lines[j].strip().startswith("#[")):
        s = lines[j].strip()
        if s.startswith("///"):
            out.insert(0, s[3:].strip())
        j -= 1
    return " ".join(out)


lines = SRC.splitlines()
structs, enums, kinds = {}, {}, []
i = 0
while i < len(lines):
    line = lines[i].strip()
    m = re.match(r'"([a-z_.]+)" => (\w+)\((\w+)\),', line)
    if m:
        kinds.append((m.group(1), m.group(3), docs_before(lines, i)))
    m = re.match(r"pub struct (\w+) \{", line)
    if m:
        name, doc, fields = m.group(1), docs_before(lines, i), []
        i += 1
        while lines[i].strip() != "}":
            f = re.match(r"pub (\w+): (.+),$", lines[i].strip())
            if f:
                # A field with `#[serde(default …)]` may be absent: not required.
                defaulted = "serde(default" in lines[i - 1]
                fields.append((f.group(1), f.group(2), docs_before(lines, i), defaulted))
            i += 1
        structs[name] = (doc, fields)
    m = re.match(r"pub enum (\w+) \{", line)
    if m and "rename_all" in lines[i - 1] + lines[i - 2]:
        name, doc, variants = m.group(1), docs_before(lines, i), []
        i += 1
        while lines[i].strip() != "}":
            v = re.match(r"(\w+),$", lines[i].strip())
            if v:
                variants.append(snake(v.group(1)))
            i += 1
        enums[name] = (doc, variants)
    i += 1

defs = {}


def type_schema(ty):
    ty = ty.strip()
    m = re.match(r"Option<(.+)>$", ty)
    if m:
        return type_schema(m.group(1))
    m = re.match(r"Vec<(.+)>$", ty)
    if m:
        return {"type": "array", "items": type_schema(m.group(1))}
    if ty == "String":
        return {"type": "string"}
    if ty in ("u64", "u32"):
        return {"type": "integer", "minimum": 0}
    if ty == "i64":
        return {"type": "integer"}
    if ty == "bool":
        return {"type": "boolean"}
    if ty == "Timestamp":
        return {"$ref": "#/$defs/Timestamp"}
    if ty in structs or ty in enums or ty == "Sealed":
        return {"$ref": f"#/$defs/{ty}"}
    raise SystemExit(f"gen-schema: no schema for Rust type {ty}")


def struct_schema(name):
    doc, fields = structs[name]
    props, required = {}, []
    for fname, fty, fdoc, defaulted in fields:
        s = type_schema(fty)
        if fname.endswith("digest"):
            s = {**s, "pattern": "^[0-9a-f]{64}$"}
        if fdoc:
            s = {**s, "description": fdoc}
        props[fname] = s
        if not fty.startswith("Option<") and not defaulted:
            required.append(fname)
    out = {"type": "object"}
    if doc:
        out["description"] = doc
    out.update({"properties": props, "required": required, "additionalProperties": False})
    return out


for name, (doc, variants) in enums.items():
    defs[name] = {"type": "string", "enum": variants, **({"description": doc} if doc else {})}
payload_types = {t for _, t, _ in kinds}
for name in structs:
    if name not in payload_types:
        defs[name] = struct_schema(name)
defs["Timestamp"] = {"type": "integer", "description": "Microseconds since 1970-01-01T00:00:00Z, UTC."}
defs["Sealed"] = {
    "type": "object",
    "description": "Personal data encrypted (XChaCha20-Poly1305, subject as associated data) under the "
    "subject's erasable key. Reads as erased once the key is destroyed.",
    "properties": {
        "subject": {"type": "string", "pattern": "^(user|anon):.+$"},
        "nonce": {"type": "string", "description": "24 bytes; bstr in CBOR, base64url in JSON",
                  "pattern": "^[A-Za-z0-9_-]{32}$"},
        "ct": {"type": "string", "description": "ciphertext and tag; bstr in CBOR, base64url in JSON",
               "pattern": "^[A-Za-z0-9_-]*$"},
    },
    "required": ["subject", "nonce", "ct"],
    "additionalProperties": False,
}
defs["Actor"] = {
    "description": "Who caused the event.",
    "oneOf": [
        {"type": "object", "properties": {"type": {"const": "system"}}, "required": ["type"], "additionalProperties": False},
        {"type": "object", "properties": {"type": {"const": "operator"}}, "required": ["type"], "additionalProperties": False},
        {"type": "object", "properties": {"type": {"const": "user"}, "id": {"type": "string"}}, "required": ["type", "id"], "additionalProperties": False},
        {"type": "object", "properties": {"type": {"const": "client"}, "id": {"type": "string"}}, "required": ["type", "id"], "additionalProperties": False},
    ],
}
for kind, ty, doc in kinds:
    s = struct_schema(ty)
    s["description"] = doc
    defs[kind] = s

schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://grantline.dev/schemas/events.schema.json",
    "title": "Grantline ledger event",
    "description": "One event as stored in the ledger's CBOR body (shown here in its JSON form: the UUID as "
    "text, byte strings as base64url). Secrets never appear: tokens, codes and client secrets only as ids or "
    "blake3 digests (lowercase hex); personal data only sealed.",
    "type": "object",
    "properties": {
        "seq": {"type": "integer", "minimum": 1, "description": "Global position, without gaps."},
        "id": {"type": "string", "format": "uuid", "description": "UUIDv7; 16-byte bstr in CBOR."},
        "time": {"$ref": "#/$defs/Timestamp"},
        "stream": {"type": "string", "minLength": 1, "description": "Aggregate, e.g. family:…"},
        "version": {"type": "integer", "minimum": 1, "description": "Position within the stream."},
        "kind": {"enum": [k for k, _, _ in kinds]},
        "actor": {"$ref": "#/$defs/Actor"},
        "tenant": {"type": "string"},
        "payload": {"type": "object"},
    },
    "required": ["seq", "id", "time", "stream", "version", "kind", "actor", "payload"],
    "additionalProperties": False,
    "allOf": [
        {"if": {"properties": {"kind": {"const": k}}, "required": ["kind"]},
         "then": {"properties": {"payload": {"$ref": f"#/$defs/{k}"}}}}
        for k, _, _ in kinds
    ],
    "$defs": defs,
}
out = ROOT / "schemas/events.schema.json"
out.write_text(json.dumps(schema, indent=2) + "\n")
print(f"wrote {out.relative_to(ROOT)}: {len(kinds)} kinds")


def render_type(s):
    if "$ref" in s:
        name = s["$ref"].split("/")[-1]
        return f"[`{name}`](#{name.lower()})" if name in defs and "." not in name else f"`{name}`"
    if s.get("type") == "array":
        return f"array of {render_type(s['items'])}"
    return f"`{s.get('type', 'object')}`"


lines = [
    "# Event catalogue",
    "",
    "Generated by `python3 tools/gen-schema.py` from `crates/ledger/src/payload.rs`, together with",
    "`schemas/events.schema.json`; `crates/ledger/tests/schema.rs` fails when the schema and the code",
    "disagree. Do not edit by hand.",
    "",
    "Every event is one CBOR map (the row's `body`, the bytes that are hashed): `seq`, `id` (UUIDv7),",
    "`time` (µs since the epoch, UTC), `stream`, `version`, `kind`, `actor`, optional `tenant`, and",
    "`payload` as below. Secrets never appear: tokens, codes and client secrets only as ids or",
    "`*digest` fields (blake3, 64 lowercase hex digits). Personal data (usernames, emails, display",
    "names, IP addresses, user agents) only as [`Sealed`](#sealed) values, which read as `[erased]`",
    "once the subject's key is destroyed (`grantline user erase`).",
    "",
    "**Body formats.** The digest fields (`*_digest`, the token records' `digest`, `consent_page`)",
    "are 64 lowercase hex digits in memory and in every JSON form. Body format 1 wrote that text",
    "into the CBOR body; body format 2 (since 2026-12-04) writes the 32 bytes as a CBOR byte",
    "string, 32 bytes shorter per digest. Both are read, told apart by each field's CBOR type, and",
    "decode to the same event; bodies are never rewritten (their bytes are what the chain hashes).",
    "`tests/fixtures/ledger-v1.db` and `ledger-v2.db`, one event of every kind in each format,",
    "must always verify, decode and replay (`crates/cli/tests/fixture_ledger.rs`), on SQLite and",
    "with their rows in PostgreSQL, and so must a ledger upgraded from each (its old rows",
    "followed by rows today's writer appends). A new optional field (such as the gateway events'",
    "`trace_id`, 2026-12-06) is not a new format: bodies written before it lack it and decode",
    "with it absent; a fixture written since holds it (`ledger-v2-trace.db`), so that the newest",
    "fixture has every field today's code writes. A change that older bodies cannot be told",
    "apart from by their CBOR types alone would need a marker in the body, besides a format",
    "number and a fixture of its own.",
    "",
    "| kind | stream | what it records |",
    "| --- | --- | --- |",
]
streams = {
    "client": "client:<client_id>", "registration": "registrations", "user": "user:<user_id>",
    "login": "user:<user_id> (or logins)", "consent": "grant:<grant_id> / user:<user_id>",
    "code": "family:<family_id>", "token": "family:<family_id> (client:<id> for client credentials)",
    "refresh": "family:<family_id>", "family": "family:<family_id>", "grant": "grant:<grant_id>",
    "pat": "pat:<pat_id>", "tool": "resource:<resource>", "authorization": "resource:<resource>",
    "rate_limit": "resource:<resource>", "signing_key": "keys", "policy": "policy:<name>",
    "session": "user:<user_id>", "oauth": "oauth-refusals", "audit": "audit",
    "upstream_token": "user:<user_id>", "content": "resource:<resource>",
}
for kind, _, doc in kinds:
    lines.append(f"| [`{kind}`](#{kind.replace('.', '')}) | `{streams.get(kind.split('.')[0], '')}` | {doc} |")
lines.append("")
for kind, ty, doc in kinds:
    d = defs[kind]
    lines += [f"## {kind}", "", doc, "", "| field | type | required | meaning |", "| --- | --- | --- | --- |"]
    for f, s in d["properties"].items():
        req = "yes" if f in d["required"] else ""
        lines.append(f"| `{f}` | {render_type(s)} | {req} | {s.get('description', '')} |")
    lines.append("")
lines += ["## Shared types", ""]
for name, d in defs.items():
    if "." in name:
        continue
    lines += [f"### {name}", "", d.get("description", ""), ""]
    if "enum" in d:
        lines += ["One of: " + ", ".join(f"`{v}`" for v in d["enum"]), ""]
    elif "properties" in d:
        lines += ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
        for f, s in d["properties"].items():
            req = "yes" if f in d.get("required", []) else ""
            lines.append(f"| `{f}` | {render_type(s)} | {req} | {s.get('description', '')} |")
        lines.append("")
(ROOT / "docs/events.md").write_text("\n".join(lines).rstrip() + "\n")
print("wrote docs/events.md")
