#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/ and fuzz/dict/<target>.dict: statements from the
classifier's corpus (agent/src/sql.rs), the shipped policies' test cases, the
attack classes of issues 9 and 19, lexer edge cases, wire messages of both
directions, policy files and masking samples. Run it again when those change."""
import os, re, struct, glob, hashlib, shutil, json
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = f"{ROOT}/fuzz"

def rust_strings(path, const):
    src = open(path).read()
    start = src.index(f"const {const}")
    body = src[start:src.index("];", start)]
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', body):
        s = m.group(1)
        s = s.replace('\\"', '"').replace("\\\\", "\\").replace("\\n", "\n")
        out.append(s)
    return out

sql = []
sql += rust_strings(f"{ROOT}/agent/src/sql.rs", "CORPUS: &[&str]")
for p in sorted(glob.glob(f"{ROOT}/policies/*.toml")):
    for m in re.finditer(r'^sql = "((?:[^"\\]|\\.)*)"', open(p).read(), re.M):
        sql.append(m.group(1).replace('\\"', '"'))
sql += [
    # issue 9's attack classes, as texts
    "SELECT E'\x95\\'; DELETE FROM orders; --'",
    "SET client_encoding = 'SJIS'",
    "SELECT lower(42)", "SELECT 1 #@# 2", "SELECT o.score FROM orders o",
    "ALTER TABLE orders ADD CONSTRAINT c CHECK (f(id))",
    "CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
    "ALTER ROLE gatehouse SET role = 'postgres'", "ALTER SYSTEM SET search_path = evil",
    "SET default_transaction_read_only = off", "BEGIN READ WRITE", "SELECT set_config('role', 'postgres', false)",
    "SELECT * FROM pg_stats WHERE tablename = 'salaries'", "SELECT * FROM \"PUBLIC\".orders",
    "DELETE FROM orders WHERE 'true'", "DELETE FROM orders WHERE 1 = 1.0", "UPDATE t SET a = 1 WHERE (SELECT true)",
    "DELETE FROM t WHERE EXISTS (SELECT 1)", "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
    "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2", "ALTER TABLE t DROP COLUMN c",
    "PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'", "PREPARE p AS DELETE FROM t", "EXECUTE p",
    "SELECT current_schema()", "DISCARD ALL", "RESET ALL", "SET search_path = public",
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','') AND n.nspname <> 'pg_catalog' ORDER BY 1,2",
    # lexer edges: quotes, escapes, continuation, dollar quotes, comments
    "SELECT 'a''b', E'c\\'d', $$e$$, $t$f $$ g$t$, \"h\"\"i\", B'0101', X'1F', U&'\\0041' UESCAPE '!', N'j'",
    "SELECT 'a'\n'b' -- c\n'd'", "SELECT E'a'\n'\\'; DROP TABLE t; --'",
    "SELECT 'a\\'; DROP TABLE t; --'", "SELECT '\\' '; DELETE FROM t; --'",
    "SELECT 1 /* a /* nested */ ; DROP TABLE t */", "SELECT 1 -- ; DROP TABLE t\n",
    "SELECT $1, $2::int, a$$b, 0x1F, 1_000, .5, 1.5e-3, 1..2, a[1:2]",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
    "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); DELETE FROM v)",
    # the budget's hostile shapes, small
    "SELECT " + ",".join(["a"] * 300), "SELECT " + ",".join(["f()"] * 200), "VALUES " + ",".join(["(1)"] * 300),
    "SELECT 1;" * 20, "SELECT * FROM t WHERE id IN (" + ",".join(str(i) for i in range(400)) + ")",
    "SELECT '" + "x" * 3000 + "'",
]
# dedupe, keep order
seen = set(); sql = [s for s in sql if not (s in seen or seen.add(s))]

def write_seeds(target, items):
    d = f"{FUZZ}/seeds/{target}"
    if os.path.isdir(d): shutil.rmtree(d)
    os.makedirs(d)
    for it in items:
        b = it if isinstance(it, bytes) else it.encode()
        open(f"{d}/{hashlib.sha1(b).hexdigest()[:16]}", "wb").write(b)
    return len(items)

def msg(tag, body): return tag + struct.pack(">i", len(body) + 4) + body
def cstr(s): return (s if isinstance(s, bytes) else s.encode()) + b"\0"
def query(s): return msg(b"Q", cstr(s))
def parse(name, s, types=()): return msg(b"P", cstr(name) + cstr(s) + struct.pack(">h", len(types)) + b"".join(struct.pack(">i", t) for t in types))
def bind(portal, stmt, params=()):
    body = cstr(portal) + cstr(stmt) + struct.pack(">h", 0) + struct.pack(">h", len(params))
    for p in params: body += struct.pack(">i", len(p)) + p
    return msg(b"B", body + struct.pack(">h", 0))
def execute(portal, n=0): return msg(b"E", cstr(portal) + struct.pack(">i", n))
SYNC = msg(b"S", b""); TERM = msg(b"X", b"")
def describe(kind, name): return msg(b"D", kind + cstr(name))
def close(kind, name): return msg(b"C", kind + cstr(name))

n = {}
n["sql_classify"] = write_seeds("sql_classify", sql)
n["sql_shape"] = write_seeds("sql_shape", sql)

stmts = []
for i, s in enumerate(sql):
    sel = bytes([i % 3 | (0x80 if i % 7 == 0 else 0)])
    if i % 2 == 0:
        stmts.append(sel + query(s))
    else:
        stmts.append(sel + parse("s%d" % i, s, (23,)) + bind("", "s%d" % i, [b"1"]) + describe(b"P", "") + execute("") + SYNC)
n["pg_statement"] = write_seeds("pg_statement", stmts)

def startup(params):
    body = struct.pack(">i", 196608) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack(">i", len(body) + 4) + body
def errresp(fields): return msg(b"E", b"".join(bytes([ord(k)]) + cstr(v) for k, v in fields) + b"\0")
rowdesc = msg(b"T", struct.pack(">h", 2) + cstr("id") + struct.pack(">ihihih", 16384, 1, 23, 4, -1, 0) + cstr("email") + struct.pack(">ihihih", 16384, 2, 25, -1, -1, 0))
datarow = msg(b"D", struct.pack(">h", 2) + struct.pack(">i", 1) + b"7" + struct.pack(">i", 15) + b"ana@example.com")
nullrow = msg(b"D", struct.pack(">h", 2) + struct.pack(">i", -1) + struct.pack(">i", 0))
wire = [
    startup([("user", "ana"), ("database", "appdb"), ("application_name", "psql"), ("client_encoding", "UTF8")]),
    startup([("user", "x"), ("options", "-c search_path=public")]),
    struct.pack(">ii", 8, 80877103), struct.pack(">iiii", 16, 80877102, 1234, 5678),
    query("SELECT 1") + TERM, parse("", "SELECT $1", (23,)) + bind("", "", [b"42"]) + execute("") + SYNC,
    parse("p1", "INSERT INTO t VALUES ($1)") + describe(b"S", "p1") + close(b"S", "p1") + SYNC,
    msg(b"R", struct.pack(">i", 0)), msg(b"R", struct.pack(">i", 10) + cstr("SCRAM-SHA-256") + b"\0"),
    msg(b"R", struct.pack(">i", 11) + b"r=abc,s=c2FsdA==,i=4096"), msg(b"R", struct.pack(">i", 5) + b"salt"),
    msg(b"S", cstr("standard_conforming_strings") + cstr("off")), msg(b"S", cstr("client_encoding") + cstr("UTF8")),
    msg(b"K", struct.pack(">ii", 1234, 5678)), msg(b"Z", b"I"), msg(b"Z", b"T"), msg(b"Z", b"E"),
    rowdesc + datarow + nullrow + msg(b"C", cstr("SELECT 2")) + msg(b"Z", b"I"),
    errresp([("S", "ERROR"), ("V", "ERROR"), ("C", "42601"), ("M", "syntax error at or near \"gatehouse_refused_abc\""), ("P", "1")]),
    errresp([("S", "NOTICE"), ("C", "00000"), ("M", "hello ana@example.com")]),
    msg(b"C", cstr("DELETE 5")), msg(b"C", cstr("INSERT 0 3")), msg(b"G", b"\0" + struct.pack(">h", 0)),
    msg(b"d", b"1\tana@example.com\n") + msg(b"c", b""), msg(b"f", cstr("client gave up")), msg(b"H", b""),
    msg(b"F", struct.pack(">i", 1234) + struct.pack(">h", 0) + struct.pack(">h", 0) + struct.pack(">h", 0)),
    msg(b"Q", b"SELECT 1"), msg(b"Q", b""), b"Q\0\0\0\x03", b"Q\x7f\xff\xff\xff",
]
n["pg_wire"] = write_seeds("pg_wire", wire)

pol = [open(p, "rb").read() for p in sorted(glob.glob(f"{ROOT}/policies/*.toml"))]
pol.append(b'''[[backend]]
name = "db"
protocol = "postgres"
address = "127.10.0.1:5432"
credentials = { user = "gh" }

[[rule]]
name = "analysts read"
who = { groups = ["analyst"] }
backend = "db"
statements = ["select"]
query_limits = { bytes = "64KiB", tokens = 5000, statements = 10 }

[[test]]
who = { user = "ana", groups = ["analyst"] }
backend = "db"
sql = "SELECT 1; SELECT 2"
expect = "allow"
''')
pol.append(b'[[rule]]\nname = "x"\nwho = { users = ["*"] }\nbackend = "nope"\nquery_limits = { bites = 1 }\n')
n["policy_load"] = write_seeds("policy_load", pol)

secrets = [
    "ALTER ROLE app PASSWORD 'hunter2'", "CREATE ROLE x LOGIN ENCRYPTED PASSWORD 'md5abc' VALID UNTIL 'infinity'",
    "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'u', password 'p4ss')",
    "ALTER SERVER s OPTIONS (SET password 'x', sslkey '/k')", "SELECT pgp_sym_encrypt('data', 'key')",
    "SELECT * FROM users WHERE email = 'ana@example.com' AND ssn = '123-45-6789'",
    "COPY t FROM STDIN", "SELECT $1, $2", "SET password_encryption = 'scram-sha-256'",
]
redact = sql + secrets
redact += [query("ALTER ROLE app PASSWORD 'hunter2'") + parse("", "INSERT INTO t VALUES ($1)") + bind("", "", [b"secret"]) + execute("") + SYNC,
           query("COPY t FROM STDIN") + msg(b"d", b"1\tana@example.com\n") + msg(b"c", b""),
           bytes.fromhex("308201")]
n["sql_redact"] = write_seeds("sql_redact", redact)

mask = [
    "ana@example.com", "card 4111 1111 1111 1111 exp 12/30", "4111111111111111", "IBAN DE89 3704 0044 0532 0130 00",
    "call +1 (555) 123-4567", "ssn 123-45-6789", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc_DEF-123",
    "AKIAIOSFODNN7EXAMPLE", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "xoxb-1234-5678-abcdefghijkl", "EMP-123456",
    "id\tname\temail\n7\tAna\tana@example.com\n8\tBob\tbob@example.org\n", "plain text with nothing to mask",
    "{\"email\": \"a@b.co\", \"card\": \"5500-0000-0000-0004\"}", "é ü 中文 ana@例え.jp",
]
n["mask_scan"] = write_seeds("mask_scan", mask)

# dictionaries
def dq(s):
    b = s if isinstance(s, bytes) else s.encode()
    out = ""
    for c in b:
        ch = chr(c)
        if ch in '"\\' or c < 0x20 or c > 0x7e: out += "\\x%02X" % c
        else: out += ch
    return '"' + out + '"'
kw = """SELECT FROM WHERE INSERT INTO VALUES UPDATE SET DELETE MERGE USING ON WHEN MATCHED THEN COPY TO FROM STDIN STDOUT PROGRAM
CREATE ALTER DROP TRUNCATE GRANT REVOKE TABLE VIEW FUNCTION PROCEDURE TRIGGER RULE INDEX SCHEMA ROLE SYSTEM RESET ALL DISCARD
WITH RECURSIVE AS RETURNING DO CALL EXECUTE PREPARE DEALLOCATE BEGIN COMMIT ROLLBACK SAVEPOINT TRANSACTION EXPLAIN ANALYZE
LISTEN NOTIFY LOCK VACUUM LOAD COMMENT SHOW SESSION AUTHORIZATION LOCAL ATOMIC END CASE ELSE AND OR NOT NULL TRUE FALSE
EXISTS IN IS DISTINCT BETWEEN LIKE ESCAPE SIMILAR UNION INTERSECT EXCEPT ORDER BY GROUP HAVING LIMIT OFFSET JOIN LEFT LATERAL
FOR SHARE NOWAIT UESCAPE CONFLICT NOTHING DEFAULT CHECK CONSTRAINT REFERENCES CAST ARRAY ROW JSON_TABLE XMLTABLE""".split()
ops = ["'", "''", "E'", "B'", "X'", "N'", "U&'", "U&\"", "\"", "\"\"", "$$", "$a$", "$1", "\\", "\\'", "--", "/*", "*/",
       ";", "(", ")", ",", ".", "..", "::", ":=", "=>", "<>", "!=", "<=", ">=", "||", "->>", "#>>", "@>", "*", "=", "\n", "\r\n", "\t",
       "0x1F", "1_000", "1.5e-3", ".5", "\u00e9", "public.", "pg_catalog.", "salaries", "orders", "set_config(", "lower(", "f()",
       "current_schema()", "pg_sleep(", "standard_conforming_strings", "client_encoding", "SJIS", "search_path", "\x95"]
sql_dict = [dq(k) for k in kw] + [dq(o) for o in ops]
def write_dict(target, entries):
    os.makedirs(f"{FUZZ}/dict", exist_ok=True)
    open(f"{FUZZ}/dict/{target}.dict", "w").write(f"# libFuzzer dictionary for {target} (cargo xtask fuzz)\n" + "\n".join(entries) + "\n")
write_dict("sql_classify", sql_dict)
write_dict("sql_shape", sql_dict)
write_dict("sql_redact", sql_dict + [dq(x) for x in ["PASSWORD", "ENCRYPTED", "OPTIONS", "password", "sslkey", "USER MAPPING",
            "pgp_sym_encrypt(", "VALID UNTIL", "\\N"]] + [dq(b"\x30\x82"), dq(b"\x06\x03\x55\x1d\x11"), dq(b"\x17\x0d")])
write_dict("pg_statement", sql_dict + [dq(b"Q\x00\x00"), dq(b"P\x00\x00"), dq(b"\x00\x00\x00"), dq(b"\x00\x01\x00\x00\x00\x17"), dq(b"S\x00\x00\x00\x04"), dq(b"\x80"), dq(b"\x01"), dq(b"\x02")])
wire_dict = [dq(b"\x00\x03\x00\x00"), dq(b"\x04\xd2\x16\x2f"), dq(b"\x04\xd2\x16\x2e"), dq("user\0"), dq("database\0"), dq("options\0"),
             dq("-c role="), dq("replication\0"), dq("SCRAM-SHA-256\0"), dq("client_encoding\0UTF8\0"), dq("standard_conforming_strings\0"),
             dq("SERROR\0"), dq("VERROR\0"), dq("C42501\0"), dq("M"), dq("gatehouse_refused_"), dq("SELECT 1\0"), dq("DELETE 5\0"),
             dq(b"\xff\xff\xff\xff"), dq(b"\x00\x00\x00\x00"), dq(b"\x00\x00\x00\x04"), dq(b"\x7f\xff\xff\xff")] + \
            [dq(t) for t in "QPBEDSCXHFdcfRKZTIGWAN"]
write_dict("pg_wire", wire_dict)
pol_dict = [dq(x) for x in ["[[backend]]", "[[rule]]", "[[mask]]", "[[approvers]]", "[[test]]", "[agent]", "name = ", "protocol = ",
            "\"postgres\"", "\"tcp\"", "address = ", "\"127.10.0.1:5432\"", "host = ", "credentials = ", "user = ", "password_file = ",
            "roles = ", "who = ", "users = ", "groups = ", "uids = ", "backend = ", "backends = ", "action = ", "\"deny\"", "as_role = ",
            "statements = ", "deny_statements = ", "tables = ", "deny_tables = ", "when = ", "days = ", "hours = ", "tz = ", "until = ",
            "mask = ", "approval = ", "for = ", "by = ", "timeout = ", "max_session = ", "query_limits = ", "bytes = ", "tokens = ",
            "statements = ", "\"256KiB\"", "\"1MiB\"", "sql = ", "kind = ", "expect = ", "\"allow\"", "rule = ", "columns = ",
            "detectors = ", "regex = ", "style = ", "\"redact\"", "\"partial\"", "\"hash\"", "{", "}", "[", "]", "\"*\"", "\"select\"",
            "\"drop\"", "\"function_call\"", "\"public.*\"", "\"*.salaries\"", "\"mon-fri\"", "\"08:00-18:00\"", "\"Europe/Paris\"", "\n"]]
write_dict("policy_load", pol_dict)
mask_dict = [dq(x) for x in ["@", ".com", "example", "4111", "1111", "5500", "-", " ", "DE89", "GB82", "+1", "(555)", "123-45-",
             "eyJ", ".", "AKIA", "ghp_", "xoxb-", "EMP-", "\t", "\n", "\\N", "\u00e9", "\xc3", "0000"]]
write_dict("mask_scan", mask_dict)
print(json.dumps(n))
