#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/. Run from anywhere: python3 fuzz/seeds.py"""
import base64
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- frame_decoder: [cap mode][piece size]([u32 cap] if mode 3) stream ----
PRE_AUTH, POST_AUTH, SWITCH, CUSTOM = 0, 1, 2, 3


def frame(kind, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return struct.pack(">I", len(payload) + 1) + bytes([kind]) + payload


def msg(obj):
    return frame(1, json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def data(b):
    return frame(2, b)


def fd(name, mode, piece, stream, cap=None):
    head = bytes([mode, piece]) + (struct.pack(">I", cap) if cap is not None else b"")
    write("frame_decoder", name, head + stream)


body = b"hello\n"
digest = hashlib.sha256(body).hexdigest()
session = (
    msg({"op": "hello", "versions": [1], "software": "ferry 0.1.0"})
    + msg({"op": "login", "id": 1, "user": "alice", "password": "correct horse"})
    + msg({"op": "put", "id": 2, "path": "/docs/a b/ç.txt", "size": len(body), "overwrite": False})
    + data(body)
    + msg({"op": "end", "id": 2, "sha256": digest})
)
fd("session", SWITCH, 0, session)
fd("session_pieces", SWITCH, 3, session)

client = {
    "hello": {"op": "hello", "versions": [1, 2]},
    "login": {"op": "login", "id": 1, "user": "jürgen", "password": "p\u00e4ss\"\\"},
    "stat": {"op": "stat", "id": 3, "path": "/"},
    "list": {"op": "list", "id": 4, "path": "/a/b"},
    "get": {"op": "get", "id": 5, "path": "x.bin"},
    "put": {"op": "put", "id": 6, "path": "/up/x", "size": 18446744073709551615, "overwrite": True},
    "end": {"op": "end", "id": 6, "sha256": "0" * 64},
    "abort": {"op": "abort", "id": 6},
    "mkdir": {"op": "mkdir", "id": 7, "path": "new"},
    "rmdir": {"op": "rmdir", "id": 8, "path": "new"},
    "remove": {"op": "remove", "id": 9, "path": "old.txt"},
    "rename": {"op": "rename", "id": 10, "from": "a", "to": "b", "overwrite": False},
    "unknown_field": {"op": "stat", "id": 11, "path": "/", "future": [1, {"x": None}]},
}
for name, m in client.items():
    fd("client_" + name, PRE_AUTH, 0, msg(m))

server = {
    "hello": {"type": "hello", "version": 1, "software": "ferry 0.1.0"},
    "ok": {"type": "ok", "id": 3},
    "ok_login": {"type": "ok", "id": 1, "user": "alice", "read_only": False},
    "ok_transfer": {"type": "ok", "id": 5, "size": 6, "sha256": digest},
    "ok_stat": {"type": "ok", "id": 3, "entry": {"name": "/", "kind": "dir", "size": 4096, "mtime": 1764236400, "mode": 448}},
    "ok_count": {"type": "ok", "id": 4, "count": 2},
    "error": {"type": "error", "id": 4, "code": "not_found", "message": "no such file or directory"},
    "error_session": {"type": "error", "code": "brand_new_code", "message": "m"},
    "entries": {"type": "entries", "id": 4, "entries": [
        {"name": "hello.txt", "kind": "file", "size": 6, "mtime": 1764236400, "mode": 384},
        {"name": "l", "kind": "symlink", "size": 1, "mtime": -1},
        {"name": "s", "kind": "socket", "size": 0, "mtime": 0, "mode": 0}]},
    "file": {"type": "file", "id": 5, "size": 6, "mtime": 1764236400},
}
for name, m in server.items():
    fd("server_" + name, POST_AUTH, 0, msg(m))
fd("download", POST_AUTH, 7, msg(server["file"]) + data(body) + msg(server["ok_transfer"]))

# Hostile frames.
fd("zero_length", PRE_AUTH, 0, b"\0\0\0\0")
fd("unknown_kind", PRE_AUTH, 0, frame(9, b"x"))
fd("over_pre_auth_cap", PRE_AUTH, 0, struct.pack(">I", 8193) + b"\x01{")
fd("huge_claim", POST_AUTH, 0, b"\xff\xff\xff\xff\x02")
fd("message_over_kind_cap", CUSTOM, 0, struct.pack(">I", 512 * 1024 + 2) + b"\x01", cap=0xFFFFFFFF)
fd("data_over_kind_cap", CUSTOM, 0, struct.pack(">I", 1024 * 1024 + 2) + b"\x02", cap=0xFFFFFFFF)
fd("truncated", PRE_AUTH, 1, msg(client["stat"])[:-3])
fd("empty_data", POST_AUTH, 0, data(b"") + data(b"a"))
fd("empty_message", PRE_AUTH, 0, frame(1, b""))
fd("tiny_cap", CUSTOM, 1, frame(1, b"{}") + frame(2, b"abcd"), cap=3)
fd("data_before_login", SWITCH, 0, data(b"x") + msg(client["login"]))
fd("json_junk", PRE_AUTH, 0, frame(1, '{"op":"login","id":1,"user":"a","password":"\\ud800"}'))
fd("json_dup_field", PRE_AUTH, 0, frame(1, '{"op":"stat","id":1,"id":2,"path":"/"}'))
fd("json_nested", PRE_AUTH, 0, frame(1, '{"op":"hello","versions":[1],"software":"x","z":' + "[" * 200 + "]" * 200 + "}"))

# ---- users_file ----
with open(os.path.join(ROOT, "users.example.toml"), "rb") as f:
    example = f.read()
write("users_file", "example", example)
H1 = "$argon2id$v=19$m=19456,t=2,p=1$DWIoXk0YHx7kE4j071LaEw$2rx6bAaIlpOJBvDcnnRO0ze05oqB7tt1JOvhlR9PfPY"
H2 = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
users = {
    "minimal": f'[users.alice]\npassword = "{H1}"\n',
    "empty": "",
    "comments_only": "# nothing here\n\n",
    "inline": f'users = {{ alice = {{ password = "{H2}", read_only = true }} }}\n',
    "unicode_name": f'[users."jürgen"]\npassword = "{H2}"\nhome = "shared/jürgen"\n',
    "dotted": f'users.bob.password = "{H2}"\nusers.bob.home = "/srv/bob"\n',
    "two_params": f'[users.a]\npassword = "{H1}"\n[users.b]\npassword = "{H2}"\n[users.c]\npassword = "{H2}"\n',
    "typo_field": f'[users.alice]\npassword = "{H1}"\nreadonly = true\n',
    "argon2i": f'[users.alice]\npassword = "{H1.replace("argon2id", "argon2i", 1)}"\n',
    "over_limits": '[users.alice]\npassword = "$argon2id$v=19$m=2000000,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"\n',
    "no_version": '[users.alice]\npassword = "$argon2id$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"\n',
    "bad_names": f'[users."-x"]\npassword = "{H2}"\n[users."a b"]\npassword = "{H2}"\n[users."\u202e"]\npassword = "{H2}"\n',
    "wrong_types": f'[users.alice]\npassword = 5\nhome = ""\nread_only = "yes"\n',
    "array_of_tables": f'[[users]]\npassword = "{H2}"\n',
    "top_level_key": 'admins = ["alice"]\n',
    "nul_home": f'[users.alice]\npassword = "{H2}"\nhome = "a\\u0000b"\n',
    "broken_syntax": '[users.alice\npassword = "x"\n',
}
for name, text in users.items():
    write("users_file", name, text)
write("users_file", "not_utf8", b'[users.alice]\npassword = "\xff\xfe"\n')

# ---- remote_path: A | A\0 (remove) | A\0B (rename) | A\0B\0 (rename, overwrite) ----
paths = {
    "root": "", "slash": "/", "plain": "a", "nested": "/a//b/./c", "trailing": "d/e/.",
    "dotdot": "../x", "dotdot_mid": "a/../b", "dotdot_end": "d/..", "dots3": ".../..a/b..",
    "backslash": "a\\b", "win_dotdot": "..\\..\\x", "drive": "C:\\x",
    "reserved": ".ferry-tmp.x", "reserved_case": "d/.FERRY-x", "planted": ".ferry-tmp.planted",
    "long_name": "x" * 256, "max_name": "y" * 255, "long_path": "/a" * 2049,
    "max_path": "b/" * 2047 + "bb", "max_path_rel": "c" + "/c" * 2047 + "c",
    "control": "a\x1b[31m", "c1": "a\u0085b", "del": "a\x7f", "bidi": "evil\u202etxt.exe",
    "nfc": "caf\u00e9", "nfd": "cafe\u0301", "zero_width": "a\u200bb",
    "out": "out", "out_marker": "out/marker.txt", "out_new": "out/new.txt", "abs": "abs/marker.txt",
    "outfile": "outfile", "deep": "d/deep/x", "up": "up/f.txt", "dotdot_link": "dotdot/outside/marker.txt",
    "slash_link": "slash/etc/passwd", "loop": "loop/x", "fifo": "fifo", "back": "d/back",
    "inside_file": "d/f.txt", "new_file": "d/new.txt", "new_dir": "newdir",
}
for name, p in paths.items():
    write("remote_path", name, p)
ops = {
    "rm_out": b"out\0", "rm_out_marker": b"out/marker.txt\0", "rm_dir": b"d/e\0",
    "rm_deep": b"d/deep/\0", "rename": b"d/f.txt\0x.txt", "rename_out": b"file.txt\0out/x",
    "rename_overwrite": b"file.txt\0outfile\0", "rename_from_out": b"out/marker.txt\0stolen",
    "rename_dir_up": b"d\0dotdot/x", "rename_into_self": b"d\0d/e/d", "nul": b"a\0b\0c\0d",
    "not_utf8": b"\xff\xfe/\xc0\xaf",
}
for name, b in ops.items():
    write("remote_path", "op_" + name, b)

# ---- proxy_header: [piece size] stream (a header, then what follows it: a TLS ClientHello) ----
SIG = b"\r\n\r\n\0\r\nQUIT\n"
HELLO = b"\x16\x03\x01\x00\x05hello"


def v2(ver_cmd, fam, payload):
    return SIG + bytes([ver_cmd, fam]) + struct.pack(">H", len(payload)) + payload


def inet(src, dst, sport, dport):
    return bytes(src) + bytes(dst) + struct.pack(">HH", sport, dport)


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


inet6 = bytes(range(16)) + bytes(range(16, 32)) + struct.pack(">HH", 56324, 443)
with_tlvs = inet([192, 0, 2, 1], [198, 51, 100, 2], 56324, 443) + tlv(1, b"ferry/1") + tlv(4, b"\0" * 5)
proxy = {
    "v1_tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
    "v1_tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n",
    "v1_unknown": b"PROXY UNKNOWN\r\n",
    "v1_longest": b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n",
    "v1_plus_port": b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
    "v1_lf_only": b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
    "v2_inet": v2(0x21, 0x11, inet([192, 0, 2, 1], [198, 51, 100, 2], 56324, 443)),
    "v2_inet6": v2(0x21, 0x21, inet6),
    "v2_tlvs": v2(0x21, 0x11, with_tlvs),
    "v2_bad_tlv": v2(0x21, 0x11, inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2) + b"\x04\x00"),
    "v2_local": v2(0x20, 0x00, b""),
    "v2_local_junk": v2(0x20, 0xFF, b"anything"),
    "v2_unspec": v2(0x21, 0x00, b"opaque"),
    "v2_unix": v2(0x21, 0x31, b"/run/x.sock".ljust(216, b"\0")),
    "v2_udp": v2(0x21, 0x12, inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)),
    "v2_too_long": SIG + b"\x21\x11\x04\x01",
    "tls": HELLO,
}
for name, header in proxy.items():
    write("proxy_header", name, b"\0" + header + HELLO)
    write("proxy_header", name + "_bytewise", b"\x01" + header + HELLO)


# ---- receipt_verify: a receipt (the JSON wrapper or a bare JWS) or a public key ----
# Signed once with RFC 8037 A.1's key (the target's key) by Python's `cryptography`; Ed25519 is
# deterministic, and src/receipt.rs checks ferry makes the same bytes (INTEROP_JWS).
RECEIPT_JWS = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImVkMjU1MTk6SWY0eDM2RlVvbUZpYV9oVUJHX1NKeHQ3N1V0cXZrV3FXSWQtOUgt"
    "WEliayIsInR5cCI6ImZlcnJ5LXJlY2VpcHQifQ.eyJ2IjoxLCJzZXJ2ZXIiOiJmaWxlcy5leGFtcGxlLm9yZzo3NDQzIi"
    "wiaWQiOiJ1LTdmM2EiLCJ0byI6eyJsaW5rIjoiM2ZhOWMyZDEifSwic2VudF9uYW1lIjoicmVwb3J0LnBkZiIsIm5hbWUi"
    "OiJyZXBvcnQgKDEpLnBkZiIsInNpemUiOjEyMywic2hhMjU2IjoiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYW"
    "JhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYiIsInZlcmlmaWVkIjoic2VuZGVyIiwicmVjZWl2ZWRfYXQiOiIy"
    "MDI2LTEyLTA3VDAyOjE0OjU3WiJ9.V9CQRFuojBoq7Qz4T4vo5gUKtEOLdNx6ZCl3hT08_PKnV-iXAJFb2nv6Gq19_bS4"
    "Y7YB56VIDV_SLCAFeFAUAQ"
)
RECEIPT = {
    "v": 1, "server": "files.example.org:7443", "id": "u-7f3a", "to": {"link": "3fa9c2d1"},
    "sent_name": "report.pdf", "name": "report (1).pdf", "size": 123, "sha256": "ab" * 32,
    "verified": "sender", "received_at": "2026-12-07T02:14:57Z",
}
write("receipt_verify", "jws", RECEIPT_JWS + "\n")
write("receipt_verify", "wrapper", json.dumps({"receipt": RECEIPT, "jws": RECEIPT_JWS}, separators=(",", ":")))
write("receipt_verify", "jwk", '{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",'
      '"kid":"ed25519:If4x36FUomFia_hUBG_SJxt77UtqvkWqWId-9H-XIbk"}')


# ---- http_path_decode: a request target (path, then ?query) ----
targets = {
    "root": "/",
    "file": "/f/docs/a%20b/%C3%A7.txt",
    "drop_trailing": "/d/TOKEN/",
    "drop_name": "/d/TOKEN/report%20(1).pdf",
    "tus": "/d/TOKEN/tus/AbCdEf0123456789_-xy",
    "query": "/api/ls?path=%2Fdocs&cursor=a+b%2Bc&sort=mtime",
    "dotdot_encoded": "/f/%2e%2e/%2E%2e%2fetc/passwd",
    "slash_encoded": "/f/a%2fb/..%5c..%5cx",
    "backslash": "/f/..\\..\\x",
    "nul": "/f/a%00b",
    "overlong": "/f/%c0%af%c0%ae%c0%ae/%e0%80%af",
    "surrogate": "/f/%ed%a0%80",
    "bad_escape": "/f/%zz/%4",
    "empty_segment": "/f//a",
    "bidi_c1": "/f/%e2%80%ae%c2%85",
}
for name, target in targets.items():
    write("http_path_decode", name, target)

# ---- digest_header_parse: a Content-Digest / Repr-Digest / Want-* value ----
d64 = base64.b64encode(hashlib.sha256(b"hello\n").digest()).decode()
digests = {
    "sha256": f"sha-256=:{d64}:",
    "two": f"sha-512=:{base64.b64encode(hashlib.sha512(b'hello').digest()).decode()}:, sha-256=:{d64}:",
    "unpadded_params": f"  sha-256=:{d64.rstrip('=')}:;a=1;b, x=?1\t, y ",
    "every_type": f'a=1, b=-1.5, c="s\\"q", d=tok/x:y, e=?0, f=(1 "x" :AA==:);p=2, sha-256=:{d64}:',
    "last_wins": f"sha-256=:AAAA:, sha-256=:{d64}:",
    "short": "sha-256=:AAAA:",
    "want": "sha-512=3, sha-256=10",
    "bad": "sha-256=:AB==:, SHA=1,",
}
for name, value in digests.items():
    write("digest_header_parse", name, value)

# ---- tus_headers: an Upload-Checksum, Upload-Metadata or Upload-Offset value ----
tus = {
    "checksum": f"sha256 {d64}",
    "checksum_sha1": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
    "metadata": "filename cmVwb3J0LnBkZg==,filetype YXBwbGljYXRpb24vcGRm,is_confidential",
    "metadata_spaces": f"filename w6cuYmlu , sha256 {d64}",
    "metadata_dup": "a YQ==,a Yg==",
    "offset": "1073741824",
    "offset_max": "18446744073709551615",
    "offset_overflow": "18446744073709551616",
    "offset_plus": "+12",
}
for name, value in tus.items():
    write("tus_headers", name, value)

# ---- cookie_parse: [name length] name, then the Cookie header ----
cname = b"__Host-ferry"
cookies = {
    "one": b"__Host-ferry=AbCdEf0123456789_-xyzw",
    "many": b"theme=dark; __Host-ferry=abc_-123;other=1;  __Host-ferry=second",
    "quoted": b'__Host-ferry="abc"; x=y',
    "bad_chars": b"__Host-ferry=a+b/c=; __Host-ferry=ok",
    "prefix": b"x__Host-ferry=a; __host-ferry=b",
}
for name, header in cookies.items():
    write("cookie_parse", name, bytes([len(cname)]) + cname + header)

# ---- http_headers: [8-byte size, little-endian; byte 0 even: byte 1 is the size] value ----
def sized(size):
    return struct.pack("<Q", size * 2 + 1) if size >= 128 else bytes([0, size]) + b"\0" * 6


headers = {
    "range": (sized(1000), "bytes=0-99"),
    "range_open": (sized(1000), "bytes=500-"),
    "range_suffix": (sized(1000), "bytes=-100"),
    "range_multi": (sized(1000), "bytes=0-1,5-6"),
    "range_huge": (sized(1000), "bytes=99999999999999999999999-"),
    "range_empty_file": (sized(0), "bytes=-1"),
    "range_small": (sized(10), "bytes=3-4"),
    "etag": (sized(0), '"sha256-ab"'),
    "etag_list": (sized(0), '"x,y", W/"sha256-ab", *'),
    "hostile_name": (sized(0), 'a"; filename=evil.exe\\\r\nSet-Cookie: x;%41\u00e9'),
}
for name, (size, value) in headers.items():
    write("http_headers", name, size + value.encode())
