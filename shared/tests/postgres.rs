//! End to end against a real PostgreSQL: a throwaway cluster on 127.0.0.1 runs a workload, its
//! logical decoding stream (the built-in `test_decoding` plugin) is rendered as AWS DMS writes
//! it to S3, the pipeline replicates it delivered in shuffled orders, and the Delta table read
//! back by the Python `deltalake` reader must equal the database's final rows, every column.
//!
//! What the workload holds, and why:
//! - TOAST-sized text (several KB, stored out of line) under the default replica identity, so an
//!   update that does not touch it does not log it (`unchanged-toast-datum`) and a delete carries
//!   only the key. Rendered both ways DMS can: the `CsvNoSupValue` sentinel, or NULL with the
//!   table's `unlogged_when_null`.
//! - A column added mid-stream (CSV with a header, as DMS writes it with `AddColumnName`).
//! - A full load taken while changes were already captured (DMS caches them and writes them
//!   after the load).
//! - A source TRUNCATE, which DMS replicates by removing the table's files
//!   (`truncates.follow_removals`), then the table filled again, keys from before among them.
//! - A table reload after a gap in which changes were NOT captured (the replication slot was
//!   dropped): a new snapshot under the same LOAD names, written later, then CDC again.
//!
//! No tolerance: every column of every row must match, the large values an update did not log
//! included, whatever order the files came in. The shuffled runs must expose some key to that
//! (see [`at_risk`]), or the test fails for not having tested it.
//!
//! The cluster needs Debian's `postgresql` package (scripts/test-all.sh installs it). If it
//! cannot be started the test fails with the reason; `DMS2DELTA_SKIP_POSTGRES=1` skips it.
//! `DMS2DELTA_PG_SEED` replays a run; `DMS2DELTA_PG_BIN` names the server binaries' folder.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, TimeZone, Utc};
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::operations::truncate::RemovalOutcome;
use support::Mini;

const SUPERUSER: &str = "dms2delta";

/// A throwaway PostgreSQL cluster: its own folder, a free port of 127.0.0.1, `wal_level=logical`.
/// The server dies with the thread that started it (parent-death signal), so a killed test
/// leaves no server behind; dropping it stops the server at once.
struct Pg {
    // Removed after `drop` has stopped the server.
    _dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Child,
}

/// The folder with `initdb` and `postgres`: `DMS2DELTA_PG_BIN`, else `pg_config --bindir`, else
/// the newest of Debian's `/usr/lib/postgresql/<major>/bin`.
fn pg_bin() -> Result<PathBuf, String> {
    let usable = |p: &PathBuf| p.join("initdb").is_file() && p.join("postgres").is_file();
    if let Ok(b) = std::env::var("DMS2DELTA_PG_BIN") {
        let p = PathBuf::from(b);
        return if usable(&p) {
            Ok(p)
        } else {
            Err(format!("DMS2DELTA_PG_BIN={} holds no initdb and postgres", p.display()))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&p) {
            return Ok(p);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .filter(|(_, p)| usable(p))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        "no PostgreSQL server binaries (initdb, postgres): install Debian's `postgresql` package \
         (scripts/test-all.sh does), or set DMS2DELTA_PG_BIN to their folder"
            .to_string()
    })
}

fn id_of(args: &[&str]) -> Result<u32, String> {
    let out = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `id`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`id {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("`id {}`: {e}", args.join(" ")))
}

/// initdb and postgres refuse to run as root. As root the cluster runs as the `postgres` OS
/// user (Debian's package creates it; `DMS2DELTA_PG_USER` names another): its uid and gid.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    if id_of(&["-u"])? != 0 {
        return Ok(None);
    }
    let user = std::env::var("DMS2DELTA_PG_USER").unwrap_or_else(|_| "postgres".into());
    let ids = id_of(&["-u", &user]).and_then(|u| Ok((u, id_of(&["-g", &user])?)));
    match ids {
        Ok((0, _)) => Err(format!(
            "DMS2DELTA_PG_USER={user} is root; PostgreSQL refuses to run as root"
        )),
        Ok(ids) => Ok(Some(ids)),
        Err(e) => Err(format!(
            "running as root, which initdb refuses, and there is no OS user `{user}` to run the \
             cluster as (Debian's postgresql package creates `postgres`; DMS2DELTA_PG_USER names \
             another non-root user): {e}"
        )),
    }
}

/// A command run through `setpriv`: as `ids` when given, and killed (SIGINT, a fast shutdown)
/// when the thread that started it ends.
fn setpriv(ids: Option<(u32, u32)>, program: PathBuf) -> Command {
    let mut c = Command::new("setpriv");
    if let Some((u, g)) = ids {
        c.arg(format!("--reuid={u}"))
            .arg(format!("--regid={g}"))
            .arg("--clear-groups");
    }
    c.arg("--pdeathsig=INT").arg(program);
    c
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Runs a script with psql (statements autocommit one by one unless in BEGIN/COMMIT); its
/// output.
fn run_psql(bin: &std::path::Path, port: u16, script: &str) -> Result<String, String> {
    let psql = if bin.join("psql").is_file() {
        bin.join("psql")
    } else {
        PathBuf::from("psql")
    };
    let mut child = Command::new(psql)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", SUPERUSER, "-d", "postgres", "-f", "-"])
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let text = script.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if out.status.success() {
        String::from_utf8(out.stdout).map_err(|e| e.to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Pg {
    fn start() -> Result<Pg, String> {
        let bin = pg_bin()?;
        let ids = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("dms2delta-pg")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if let Some((u, g)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(u), Some(g))
                .map_err(|e| format!("cannot give {} to uid {u}: {e}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let out = setpriv(ids, bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .map_err(|e| format!("cannot run setpriv/initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut why = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for attempt in 0..3 {
            let port = free_port()?;
            let log_path = dir.path().join(format!("postgres-{attempt}.log"));
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let mut child = setpriv(ids, bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args([
                    "-c",
                    "wal_level=logical",
                    "-c",
                    "max_replication_slots=4",
                    "-c",
                    "max_wal_senders=4",
                    "-c",
                    // Throwaway data. (Commits stay synchronous: logical decoding only reads
                    // WAL that is flushed, and each batch must be decoded whole.)
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "max_connections=20",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start postgres: {e}"))?;
            let t = Instant::now();
            loop {
                if run_psql(&bin, port, "SELECT 1").is_ok() {
                    return Ok(Pg {
                        _dir: dir,
                        bin,
                        port,
                        child,
                    });
                }
                let exited = child.try_wait().ok().flatten();
                if exited.is_some() || t.elapsed() > Duration::from_secs(30) {
                    why = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if exited.is_none() {
                        why.push_str("\n(not ready after 30 s)");
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            if !why.contains("could not bind") && !why.contains("in use") {
                break;
            }
        }
        Err(format!("postgres did not start: {why}"))
    }

    fn try_sql(&self, script: &str) -> Result<String, String> {
        run_psql(&self.bin, self.port, script)
    }

    fn sql(&self, script: &str) -> String {
        self.try_sql(script)
            .unwrap_or_else(|e| panic!("psql failed: {e}\nscript (start): {}", head(script, 400)))
    }

    /// One JSON value a query returns.
    fn json(&self, query: &str) -> serde_json::Value {
        let out = self.sql(query);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {}", head(&out, 400)))
    }

    /// Consumes what the slot decoded, as transactions of changes in commit order.
    fn changes(&self, slot: &str) -> Vec<Vec<Change>> {
        let lines = self.json(&format!(
            "SELECT coalesce(json_agg(data ORDER BY ord), '[]') FROM \
             pg_logical_slot_get_changes('{slot}', NULL, NULL, 'include-xids', '1', 'skip-empty-xacts', '1') \
             WITH ORDINALITY AS c(lsn, xid, data, ord);"
        ));
        let mut txs = Vec::new();
        let mut open: Option<Vec<Change>> = None;
        for line in lines.as_array().unwrap() {
            let line = line.as_str().unwrap();
            if line.starts_with("BEGIN") {
                assert!(open.is_none(), "nested BEGIN: {line}");
                open = Some(Vec::new());
            } else if line.starts_with("COMMIT") {
                txs.push(open.take().expect("COMMIT without BEGIN"));
            } else {
                open.as_mut()
                    .expect("change outside a transaction")
                    .push(parse_change(line));
            }
        }
        assert!(open.is_none(), "unterminated transaction");
        txs
    }

    /// The table's rows as text (`::text` of each column, NULL as None), ordered by key.
    fn rows(&self, columns: &[&str]) -> Vec<Vec<Option<String>>> {
        let list: Vec<String> = columns.iter().map(|c| format!("{c}::text")).collect();
        rows_of_json(&self.json(&format!(
            "SELECT coalesce(json_agg(json_build_array({}) ORDER BY id), '[]') FROM app.items;",
            list.join(", ")
        )))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // A fast shutdown; the folder goes with `dir` once the server has exited.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rows_of_json(v: &serde_json::Value) -> Vec<Vec<Option<String>>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .collect()
}

fn head(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A value as `test_decoding` prints it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Text(String),
    /// `unchanged-toast-datum`: an out-of-line value the update did not change, not logged.
    Unchanged,
}

#[derive(Debug, Clone)]
struct Change {
    /// DMS's Op: I, U or D.
    op: &'static str,
    cols: Vec<(String, Val)>,
}

/// `table app.items: UPDATE: id[bigint]:1 body[text]:'it''s' n[integer]:null ...`
fn parse_change(line: &str) -> Change {
    let rest = line
        .strip_prefix("table app.items: ")
        .unwrap_or_else(|| panic!("a change of another table: {}", head(line, 200)));
    let (action, mut rest) = rest.split_once(": ").unwrap_or((rest.trim_end_matches(':'), ""));
    if action == "TRUNCATE" {
        // DMS writes no row for it: it removes the table's files (see `History::truncate`).
        return Change {
            op: "T",
            cols: Vec::new(),
        };
    }
    let op = match action {
        "INSERT" => "I",
        "UPDATE" => "U",
        "DELETE" => "D",
        other => panic!("unknown action {other}"),
    };
    assert!(
        !rest.starts_with("old-key:") && !rest.starts_with("(no-tuple-data)"),
        "the workload never changes a key: {}",
        head(line, 200)
    );
    let mut cols = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        let (name, r) = rest.split_once('[').unwrap();
        let (_type, r) = r.split_once("]:").unwrap();
        let (val, r) = if let Some(q) = r.strip_prefix('\'') {
            let mut s = String::new();
            let mut it = q.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = it.next() {
                if c == '\'' {
                    if matches!(it.peek(), Some((_, '\''))) {
                        it.next();
                        s.push('\'');
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    s.push(c);
                }
            }
            (Val::Text(s), &q[end.expect("unterminated literal")..])
        } else {
            let (tok, r) = r.split_once(' ').unwrap_or((r, ""));
            let v = match tok {
                "null" => Val::Null,
                "unchanged-toast-datum" => Val::Unchanged,
                t => Val::Text(t.to_string()),
            };
            (v, r)
        };
        cols.push((name.to_string(), val));
        rest = r;
    }
    Change { op, cols }
}

/// Random statements against `app.items`, knowing which keys are live.
struct Workload {
    rng: fastrand::Rng,
    live: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
    next_id: i64,
    has_note: bool,
}

const ALPHABET: &[char] = &[
    'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w',
    'x', 'y', 'z', 'A', 'Q', 'Z', '0', '1', '5', '9', ' ', ' ', ',', '"', '\'', ';', '\n', '\t', 'é', '€', '\\',
];

fn lit(v: &Option<String>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) => format!("'{}'", s.replace('\'', "''")),
    }
}

impl Workload {
    fn text(&mut self, len: usize) -> String {
        (0..len).map(|_| ALPHABET[self.rng.usize(..ALPHABET.len())]).collect()
    }

    /// Mostly several KB of poorly compressible text (stored out of line), sometimes short.
    fn body(&mut self) -> String {
        let len = if self.rng.u8(..4) == 0 {
            self.rng.usize(1..200)
        } else {
            self.rng.usize(3000..9000)
        };
        self.text(len)
    }

    fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (self.rng.u8(..10) != 0).then(|| f(self))
    }

    fn value(&mut self, col: &str) -> Option<String> {
        match col {
            "name" => self.maybe(|w| {
                if w.rng.u8(..8) == 0 {
                    String::new()
                } else {
                    let n = w.rng.usize(1..30);
                    w.text(n)
                }
            }),
            "body" => Some(self.body()),
            "n" => self.maybe(|w| w.rng.i32(-1_000_000..1_000_000).to_string()),
            "amount" => self.maybe(|w| {
                let cents = w.rng.i64(-9_999_999..10_000_000);
                let sign = if cents < 0 { "-" } else { "" };
                format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
            }),
            "ts" => self.maybe(|w| {
                let micros = if w.rng.bool() { 0 } else { w.rng.u32(0..1_000_000) };
                format!(
                    "{}-{:02}-{:02} {:02}:{:02}:{:02}.{micros:06}",
                    w.rng.u32(2000..2031),
                    w.rng.u32(1..13),
                    w.rng.u32(1..29),
                    w.rng.u32(0..24),
                    w.rng.u32(0..60),
                    w.rng.u32(0..60)
                )
            }),
            "flag" => self.maybe(|w| w.rng.bool().to_string()),
            "note" => self.maybe(|w| {
                let n = w.rng.usize(0..40);
                w.text(n)
            }),
            other => panic!("{other}"),
        }
    }

    fn columns(&self) -> Vec<&'static str> {
        let mut c = vec!["id", "name", "body", "n", "amount", "ts", "flag"];
        if self.has_note {
            c.push("note");
        }
        c
    }

    fn insert(&mut self, id: i64) -> String {
        let cols = self.columns();
        let mut vals = vec![id.to_string()];
        for c in &cols[1..] {
            // A NULL body is possible in an insert (never in an update: with
            // `unlogged_when_null` a NULL in an update means "not logged").
            let v = if *c == "body" && self.rng.u8(..10) == 0 {
                None
            } else {
                self.value(c)
            };
            vals.push(lit(&v));
        }
        self.live.insert(id);
        self.deleted.remove(&id);
        format!(
            "INSERT INTO app.items ({}) VALUES ({});\n",
            cols.join(", "),
            vals.join(", ")
        )
    }

    fn update(&mut self, id: i64) -> String {
        let cols = self.columns();
        let mut sets = Vec::new();
        while sets.is_empty() {
            for c in &cols[1..] {
                // The large value is left alone in most updates: those do not log it.
                let p = if *c == "body" { 4 } else { 2 };
                if self.rng.u8(..10) < p {
                    let v = self.value(c);
                    sets.push(format!("{c} = {}", lit(&v)));
                }
            }
        }
        format!("UPDATE app.items SET {} WHERE id = {id};\n", sets.join(", "))
    }

    fn delete(&mut self, id: i64) -> String {
        self.live.remove(&id);
        self.deleted.insert(id);
        format!("DELETE FROM app.items WHERE id = {id};\n")
    }

    fn pick(&mut self, set: &BTreeSet<i64>) -> Option<i64> {
        let n = set.len();
        (n > 0).then(|| *set.iter().nth(self.rng.usize(..n)).unwrap())
    }

    fn new_row(&mut self) -> String {
        self.next_id += 1;
        self.insert(self.next_id)
    }

    fn statement(&mut self) -> String {
        let r = self.rng.u8(..100);
        if r < 30 || self.live.is_empty() {
            // A key deleted earlier comes back now and then.
            match self.pick(&self.deleted.clone()) {
                Some(id) if self.rng.u8(..3) == 0 => self.insert(id),
                _ => self.new_row(),
            }
        } else if r < 80 {
            let id = self.pick(&self.live.clone()).unwrap();
            self.update(id)
        } else {
            let id = self.pick(&self.live.clone()).unwrap();
            self.delete(id)
        }
    }

    /// `n` transactions of one to four statements (several may touch one key).
    fn transactions(&mut self, n: usize) -> String {
        let mut s = String::new();
        for _ in 0..n {
            s.push_str("BEGIN;\n");
            for _ in 0..self.rng.usize(1..5) {
                s += &self.statement();
            }
            s.push_str("COMMIT;\n");
        }
        s
    }
}

/// DMS's `CsvNullValue` and `CsvNoSupValue` as this task sets them.
const NULL: &str = "@NULL@";
const NOSUP: &str = "@NOSUP@";

/// How the task writes a value PostgreSQL did not log.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unlogged {
    /// `CsvNoSupValue` set: the sentinel.
    Sentinel,
    /// No `CsvNoSupValue`: NULL, and the table declares `unlogged_when_null: [body]`.
    AsNull,
}

fn field(v: Option<&str>) -> String {
    match v {
        None => NULL.to_string(),
        Some(s) if s.contains([',', '"', '\n', '\r']) => format!("\"{}\"", s.replace('"', "\"\"")),
        Some(s) => s.to_string(),
    }
}

/// One object DMS writes.
#[derive(Debug, Clone)]
struct DmsFile {
    key: String,
    /// Its LastModified.
    written: DateTime<Utc>,
    columns: Vec<&'static str>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    /// A full-load file: rows as text, no Op.
    Load(Vec<Vec<Option<String>>>),
    /// A CDC file: changes in commit order.
    Cdc(Vec<Change>),
}

impl DmsFile {
    fn bytes(&self, unlogged: Unlogged) -> Vec<u8> {
        let mut out = String::new();
        match &self.body {
            Body::Load(rows) => {
                out += &self.columns.join(",");
                out.push('\n');
                for r in rows {
                    let f: Vec<String> = r.iter().map(|v| field(v.as_deref())).collect();
                    out += &f.join(",");
                    out.push('\n');
                }
            }
            Body::Cdc(changes) => {
                out += "Op,";
                out += &self.columns.join(",");
                out.push('\n');
                for c in changes {
                    let mut f = vec![c.op.to_string()];
                    for col in &self.columns {
                        let v = c.cols.iter().find(|(n, _)| n == col).map(|(_, v)| v);
                        f.push(match v {
                            // A key-only delete: the other columns are empty of data.
                            None | Some(Val::Null) => NULL.to_string(),
                            Some(Val::Text(s)) => field(Some(s)),
                            Some(Val::Unchanged) => match unlogged {
                                Unlogged::Sentinel => NOSUP.to_string(),
                                Unlogged::AsNull => NULL.to_string(),
                            },
                        });
                    }
                    out += &f.join(",");
                    out.push('\n');
                }
            }
        }
        out.into_bytes()
    }
}

/// What DMS wrote, in the order it wrote it, with counts of what the stream held.
#[derive(Default)]
struct History {
    files: Vec<DmsFile>,
    /// What DMS did to the bucket, in order: wrote `files[i]`, or removed an object.
    ops: Vec<BucketOp>,
    unlogged_values: usize,
    key_only_deletes: usize,
    columns_added: usize,
    removals: usize,
}

#[derive(Debug, Clone)]
enum BucketOp {
    Write(usize),
    Remove { key: String, at: DateTime<Utc> },
}

impl History {
    /// A full load as two LOAD files (DMS splits a table's load by size).
    fn load(&mut self, rows: Vec<Vec<Option<String>>>, columns: Vec<&'static str>, at: DateTime<Utc>) {
        let half = rows.len() / 2;
        for (i, part) in [&rows[..half], &rows[half..]].into_iter().enumerate() {
            self.ops.push(BucketOp::Write(self.files.len()));
            self.files.push(DmsFile {
                key: format!("app/items/LOAD{:08X}.csv", i + 1),
                written: at + chrono::Duration::milliseconds(i as i64 * 700),
                columns: columns.clone(),
                body: Body::Load(part.to_vec()),
            });
        }
    }

    /// A source TRUNCATE as DMS replicates it: every file of the table removed, in the order
    /// written, a tenth of a second apart.
    fn truncate(&mut self, clock: &mut DateTime<Utc>) {
        let mut present: Vec<String> = Vec::new();
        for op in &self.ops {
            match op {
                BucketOp::Write(i) => {
                    if !present.contains(&self.files[*i].key) {
                        present.push(self.files[*i].key.clone());
                    }
                }
                BucketOp::Remove { key, .. } => present.retain(|k| k != key),
            }
        }
        *clock += chrono::Duration::seconds(30);
        for key in present {
            *clock += chrono::Duration::milliseconds(100);
            self.ops.push(BucketOp::Remove { key, at: *clock });
            self.removals += 1;
        }
    }

    /// Captured transactions as CDC files named by the time DMS wrote them, each written (its
    /// LastModified) a few seconds after that time; whole transactions per file.
    fn cdc(
        &mut self,
        txs: Vec<Vec<Change>>,
        columns: Vec<&'static str>,
        clock: &mut DateTime<Utc>,
        rng: &mut fastrand::Rng,
    ) {
        for tx in &txs {
            for c in tx {
                let names: Vec<&str> = c.cols.iter().map(|(n, _)| n.as_str()).collect();
                assert_ne!(c.op, "T", "a truncate is not a row");
                if c.op == "D" {
                    assert_eq!(
                        names,
                        ["id"],
                        "a delete under the default replica identity logs only the key"
                    );
                    self.key_only_deletes += 1;
                } else {
                    assert_eq!(names, columns, "one schema per file");
                }
                self.unlogged_values += c.cols.iter().filter(|(_, v)| *v == Val::Unchanged).count();
            }
        }
        let cut = if txs.len() >= 4 {
            rng.usize(1..txs.len())
        } else {
            txs.len()
        };
        for part in [&txs[..cut], &txs[cut..]] {
            if part.is_empty() {
                continue;
            }
            *clock += chrono::Duration::milliseconds(rng.i64(20_000..90_000));
            self.ops.push(BucketOp::Write(self.files.len()));
            self.files.push(DmsFile {
                key: format!("app/items/{}.csv", clock.format("%Y%m%d-%H%M%S%3f")),
                written: *clock + chrono::Duration::milliseconds(rng.i64(1_000..6_000)),
                columns: columns.clone(),
                body: Body::Cdc(part.iter().flatten().cloned().collect()),
            });
        }
    }
}

const COLUMNS: &str = r#"
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: body, type: CLOB }
          - { name: n, type: INT4 }
          - { name: amount, type: NUMERIC, precision: 10, scale: 2 }
          - { name: ts, type: DATETIME }
          - { name: flag, type: BOOLEAN }
          - { name: note, type: STRING }
"#;

fn sources(unlogged: Unlogged) -> String {
    let (nosup, table) = match unlogged {
        Unlogged::Sentinel => (format!(", no_sup_value: \"{NOSUP}\""), ""),
        Unlogged::AsNull => (String::new(), "\n        unlogged_when_null: [body]"),
    };
    format!(
        "  - name: pg\n    bucket: dms\n    csv: {{ header: true, null_value: \"{NULL}\"{nosup} }}\n    truncates: {{ follow_removals: true }}\n    tables:\n      - schema: app\n        table: items\n        keys: [id]{table}{COLUMNS}"
    )
}

/// Canonical text of a row, as `tests/read_delta.py` prints it.
fn canonical(row: &[Option<String>]) -> String {
    row.iter()
        .map(|v| match v {
            None => "null".to_string(),
            Some(s) => s.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n"),
        })
        .collect::<Vec<_>>()
        .join("\t")
}

/// A short form of a canonical row for failure output (long values cut).
fn short(line: &str) -> String {
    line.split('\t')
        .map(|v| {
            if v.chars().count() > 24 {
                format!("{}…({} chars)", head(v, 16), v.chars().count())
            } else {
                v.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

const READ_COLUMNS: [&str; 8] = ["id", "name", "body", "n", "amount", "ts", "flag", "note"];

/// One delivery of the history and what came of it.
struct Run {
    m: Mini,
    swept: u64,
    truncates: usize,
    steps: String,
    /// Keys whose large value an out-of-order delivery puts at stake (see [`at_risk`]).
    at_risk: BTreeSet<String>,
}

/// An S3 event waiting for delivery.
enum Event {
    Created(usize),
    Removed(String, DateTime<Utc>),
}

/// The pipeline over the history: DMS writes and removes objects in order while their events
/// are delivered late and shuffled (a few twice); an event is decoded from the object as it is
/// then (a LOAD file may have been overwritten by the reload's, or removed by the truncate),
/// and commits come at random points. `order` 0 delivers each event at once, in DMS's order,
/// and commits every third bucket operation.
async fn replicate(history: &History, unlogged: Unlogged, dv: bool, seed: u64, order: u64) -> Result<Run, String> {
    let extra = if dv { "  deletion_vectors: true\n" } else { "" };
    let m = Mini::new(&sources(unlogged), extra);
    let mut rng = fastrand::Rng::with_seed(seed ^ order.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut pending: Vec<Event> = Vec::new();
    let mut next = 0;
    let (mut swept, mut truncates) = (0, 0);
    let mut steps = Vec::new();
    // Which file's content each key holds now.
    let mut current: std::collections::HashMap<String, usize> = Default::default();
    // Contents decoded since the last commit, and the commit that first applied each.
    let mut uncommitted: Vec<usize> = Vec::new();
    let mut first_commit: std::collections::HashMap<usize, usize> = Default::default();
    let mut commits = 0;
    loop {
        let more = next < history.ops.len();
        if !more && pending.is_empty() {
            break;
        }
        if more && (order == 0 || pending.is_empty() || rng.u8(..5) < 2) {
            match &history.ops[next] {
                BucketOp::Write(i) => {
                    let f = &history.files[*i];
                    m.put(&f.key, &f.bytes(unlogged));
                    let t: SystemTime = f.written.into();
                    std::fs::File::options()
                        .write(true)
                        .open(m.dir.path().join("bucket").join(&f.key))
                        .unwrap()
                        .set_modified(t)
                        .unwrap();
                    current.insert(f.key.clone(), *i);
                    pending.push(Event::Created(*i));
                    if order != 0 && rng.u8(..6) == 0 {
                        pending.push(Event::Created(*i));
                    }
                    steps.push(format!("write {}", f.key));
                }
                BucketOp::Remove { key, at } => {
                    std::fs::remove_file(m.dir.path().join("bucket").join(key)).unwrap();
                    current.remove(key);
                    pending.push(Event::Removed(key.clone(), *at));
                    steps.push(format!("remove {key}"));
                }
            }
            next += 1;
            if order != 0 {
                continue;
            }
        }
        let event = if order == 0 {
            pending.remove(0)
        } else {
            pending.swap_remove(rng.usize(..pending.len()))
        };
        match event {
            Event::Created(i) => {
                let key = &history.files[i].key;
                let Some(&content) = current.get(key) else {
                    // The object is gone: decode would find nothing to read (the event
                    // retries, then dead-letters); nothing of it can be applied.
                    steps.push(format!("event for removed {key}"));
                    continue;
                };
                steps.push(format!("decode {key}"));
                match m.decode(key).await {
                    DecodeOutcome::Staged(_) => uncommitted.push(content),
                    other => return Err(format!("{key}: {other:?}\nsteps: {}", steps.join(", "))),
                }
            }
            Event::Removed(key, at) => {
                steps.push(format!("removal of {key}"));
                let out = m
                    .pipeline
                    .removed("dms", &key, at)
                    .await
                    .map_err(|e| format!("removal of {key}: {e}"))?;
                if matches!(out, RemovalOutcome::Truncate { .. }) {
                    truncates += 1;
                }
            }
        }
        // Commits gather what was decoded since the last: every few events in DMS's order,
        // at random points otherwise.
        let due = if order == 0 {
            pending.is_empty() && next % 3 == 0
        } else {
            rng.u8(..5) == 0
        };
        if due {
            steps.push("commit".into());
            for c in m.pipeline.commit_all().await.map_err(|e| format!("commit: {e}"))? {
                swept += c.rows_swept;
            }
            commits += 1;
            for j in uncommitted.drain(..) {
                first_commit.entry(j).or_insert(commits);
            }
        }
    }
    for c in m.pipeline.commit_all().await.map_err(|e| format!("commit: {e}"))? {
        swept += c.rows_swept;
    }
    commits += 1;
    for j in uncommitted.drain(..) {
        first_commit.entry(j).or_insert(commits);
    }
    let quarantined: Vec<_> = walk(&m.dir.path().join("quarantine"));
    if !quarantined.is_empty() {
        return Err(format!("quarantined: {quarantined:?}"));
    }
    Ok(Run {
        at_risk: at_risk(history, &first_commit),
        m,
        swept,
        truncates,
        steps: steps.join(", "),
    })
}

/// Keys whose large value only per-column ordering keeps right (issue 16 item 3): a file with an
/// update that did not log the value was first committed no later than an older file that
/// carried it, so the older change, stale as a row, must still set the value.
fn at_risk(history: &History, first_commit: &std::collections::HashMap<usize, usize>) -> BTreeSet<String> {
    let mut carried: std::collections::HashMap<String, Vec<usize>> = Default::default();
    let mut unlogged: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for &j in first_commit.keys() {
        match &history.files[j].body {
            Body::Load(rows) => {
                for r in rows {
                    carried.entry(r[0].clone().unwrap()).or_default().push(j);
                }
            }
            Body::Cdc(changes) => {
                for c in changes {
                    let id = c.cols.iter().find(|(n, _)| n == "id").map(|(_, v)| v);
                    let Some(Val::Text(id)) = id else { continue };
                    match c.cols.iter().find(|(n, _)| n == "body").map(|(_, v)| v) {
                        Some(Val::Unchanged) => unlogged.entry(id.clone()).or_default().push(j),
                        Some(_) => carried.entry(id.clone()).or_default().push(j),
                        None => {}
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for (id, bs) in &unlogged {
        let exposed = carried
            .get(id)
            .into_iter()
            .flatten()
            .any(|a| bs.iter().any(|b| b > a && first_commit[b] <= first_commit[a]));
        if exposed {
            out.insert(id.clone());
        }
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The table read back by the Python `deltalake` package, canonical lines sorted.
fn python_rows(m: &Mini) -> Result<Vec<String>, String> {
    let python = support::python().ok_or(
        "no Python with the deltalake package: run scripts/test-all.sh once or set DMS2DELTA_PYTHON \
         (DMS2DELTA_SKIP_PYTHON=1 reads with dms2delta only)",
    )?;
    let out = Command::new(&python)
        .arg(support::repo().join("tests/read_delta.py"))
        .arg(m.dir.path().join("lake/pg/app/items"))
        .arg(READ_COLUMNS.join(","))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "python reader failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    Ok(lines)
}

/// Compares the table read back with the source, key by key, every column.
fn compare(want: &[String], got: &[String]) -> Result<(), String> {
    let by_key = |lines: &[String]| -> std::collections::BTreeMap<String, Vec<String>> {
        lines
            .iter()
            .map(|l| {
                let f: Vec<String> = l.split('\t').map(str::to_string).collect();
                (f[0].clone(), f)
            })
            .collect()
    };
    let (w, g) = (by_key(want), by_key(got));
    let mut bad = Vec::new();
    for (id, wf) in &w {
        match g.get(id) {
            None => bad.push(format!("  key {id} missing: {}", short(&wf.join("\t")))),
            Some(gf) => {
                let cols: Vec<&str> = (0..READ_COLUMNS.len())
                    .filter(|i| wf[*i] != gf[*i])
                    .map(|i| READ_COLUMNS[i])
                    .collect();
                if cols.is_empty() {
                    continue;
                }
                bad.push(format!(
                    "  key {id} differs in {cols:?}:\n    source: {}\n    table:  {}",
                    short(&wf.join("\t")),
                    short(&gf.join("\t"))
                ));
            }
        }
    }
    for (id, gf) in &g {
        if !w.contains_key(id) {
            bad.push(format!("  key {id} should not be there: {}", short(&gf.join("\t"))));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} rows expected, {} read\n{}",
            want.len(),
            got.len(),
            bad.join("\n")
        ))
    }
}

/// The workload's history, rendered as DMS writes it, and the source's final rows.
fn workload(pg: &Pg, seed: u64) -> (History, Vec<String>) {
    let started = Instant::now();
    let mut wl = Workload {
        rng: fastrand::Rng::with_seed(seed),
        live: BTreeSet::new(),
        deleted: BTreeSet::new(),
        next_id: 0,
        has_note: false,
    };
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xd15);
    let mut h = History::default();
    let mut clock: DateTime<Utc> = Utc.with_ymd_and_hms(2024, 5, 28, 10, 0, 0).unwrap();

    pg.sql(
        "CREATE SCHEMA app;\n\
         CREATE TABLE app.items (id bigint PRIMARY KEY, name text, body text, n integer, \
         amount numeric(10,2), ts timestamp, flag boolean);\n",
    );
    let mut first = String::new();
    for _ in 0..30 {
        first += &wl.new_row();
    }
    pg.sql(&first);

    // DMS starts capturing, then reads the full load while changes go on; it writes the
    // changes captured meanwhile after the load.
    pg.sql("SELECT pg_create_logical_replication_slot('dms_1', 'test_decoding');");
    pg.sql(&wl.transactions(3));
    h.load(
        pg.rows(&wl.columns()),
        wl.columns(),
        clock + chrono::Duration::seconds(2),
    );
    for batch in 0..3 {
        if batch == 1 {
            // DDL mid-stream: files from here on carry the new column.
            pg.sql("ALTER TABLE app.items ADD COLUMN note text;");
            wl.has_note = true;
            h.columns_added += 1;
        }
        pg.sql(&wl.transactions(6));
        let txs = pg.changes("dms_1");
        h.cdc(txs, wl.columns(), &mut clock, &mut rng);
    }

    // A source TRUNCATE: DMS removes the table's files; the changes after it (the table filled
    // again, some keys from before it among them) follow in new CDC files.
    pg.sql("TRUNCATE app.items;");
    let txs = pg.changes("dms_1");
    assert!(
        txs.len() == 1 && txs[0].len() == 1 && txs[0][0].op == "T",
        "the slot shows the truncate alone: {txs:?}"
    );
    h.truncate(&mut clock);
    wl.deleted.extend(std::mem::take(&mut wl.live));
    let mut refill = String::from("BEGIN;\n");
    for _ in 0..24 {
        refill += &match wl.pick(&wl.deleted.clone()) {
            Some(id) if wl.rng.u8(..3) == 0 => wl.insert(id),
            _ => wl.new_row(),
        };
    }
    refill += "COMMIT;\n";
    pg.sql(&refill);
    for _ in 0..2 {
        pg.sql(&wl.transactions(6));
        let txs = pg.changes("dms_1");
        h.cdc(txs, wl.columns(), &mut clock, &mut rng);
    }

    // The task stops capturing (its slot is gone): these changes never reach S3. Rows that the
    // table holds are deleted, keys deleted earlier come back, large values change.
    pg.sql("SELECT pg_drop_replication_slot('dms_1');");
    let live_before = wl.live.clone();
    let mut gap = String::new();
    for _ in 0..2 {
        if let Some(id) = wl.pick(&wl.live.clone()) {
            gap += &wl.delete(id);
        }
    }
    if let Some(id) = wl.pick(&wl.deleted.clone()) {
        gap += &wl.insert(id);
    }
    pg.sql(&gap);
    pg.sql(&wl.transactions(8));
    let lost: Vec<i64> = live_before.difference(&wl.live).copied().collect();
    assert!(!lost.is_empty(), "no row deleted while nothing was captured");

    // The reload: capturing again, a new snapshot under the same LOAD names, written twenty
    // minutes after the last CDC file, then the changes captured since.
    pg.sql("SELECT pg_create_logical_replication_slot('dms_2', 'test_decoding');");
    pg.sql(&wl.transactions(2));
    clock += chrono::Duration::minutes(20);
    h.load(pg.rows(&wl.columns()), wl.columns(), clock);
    clock += chrono::Duration::seconds(5);
    for _ in 0..3 {
        pg.sql(&wl.transactions(6));
        let txs = pg.changes("dms_2");
        h.cdc(txs, wl.columns(), &mut clock, &mut rng);
    }

    // The source's final rows, in the reader's canonical text (timestamps as microseconds).
    let mut want: Vec<String> = rows_of_json(&pg.json(
        "SELECT coalesce(json_agg(json_build_array(id::text, name, body, n::text, amount::text, \
         (extract(epoch FROM ts) * 1000000)::bigint::text, flag::text, note) ORDER BY id), '[]') \
         FROM app.items;",
    ))
    .iter()
    .map(|r| canonical(r))
    .collect();
    want.sort();
    let cdc_files = h.files.iter().filter(|f| matches!(f.body, Body::Cdc(_))).count();
    println!(
        "workload: {} files ({cdc_files} CDC), {} unlogged TOAST values, {} key-only deletes, {} column added, \
         keys deleted while not captured {lost:?}, a truncate removing {} files, {} final rows, in {:?}",
        h.files.len(),
        h.unlogged_values,
        h.key_only_deletes,
        h.columns_added,
        h.removals,
        want.len(),
        started.elapsed()
    );
    assert!(
        h.unlogged_values > 0,
        "no update left a TOAST value unlogged: the test proves nothing"
    );
    assert!(h.key_only_deletes > 0, "no delete captured");
    assert!(cdc_files >= 8, "{cdc_files} CDC files");
    assert!(h.removals > 0);
    if let Ok(dump) = std::env::var("DMS2DELTA_PG_DUMP") {
        // The rendered files, numbered in the order DMS wrote them, for a look at a failure.
        std::fs::create_dir_all(&dump).unwrap();
        for (i, f) in h.files.iter().enumerate() {
            let p = PathBuf::from(&dump).join(format!("{i:02}-{}", f.key.replace('/', "_")));
            std::fs::write(&p, f.bytes(Unlogged::Sentinel)).unwrap();
            println!("{} written {}", p.display(), f.written);
        }
    }
    (h, want)
}

/// Starts the cluster, runs the workload, replicates it in DMS's order and in shuffled orders,
/// in both renderings of unlogged values, and compares each result with the source.
async fn run() {
    if std::env::var("DMS2DELTA_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        println!("DMS2DELTA_SKIP_POSTGRES=1: the PostgreSQL end-to-end test is skipped");
        return;
    }
    let seed: u64 = std::env::var("DMS2DELTA_PG_SEED")
        .ok()
        .map(|s| s.parse().expect("DMS2DELTA_PG_SEED: a number"))
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    println!("postgres end-to-end: seed {seed} (DMS2DELTA_PG_SEED={seed} replays it)");
    let started = Instant::now();
    let pg = Pg::start().unwrap_or_else(|e| {
        panic!("PostgreSQL could not be started: {e}\n(DMS2DELTA_SKIP_POSTGRES=1 skips this test)")
    });
    println!("postgres on 127.0.0.1:{} in {:?}", pg.port, started.elapsed());
    let (h, want) = workload(&pg, seed);
    drop(pg);

    let (mut swept_runs, mut truncated_runs, mut runs) = (0, 0, 0);
    let mut failures = Vec::new();
    let mut at_stake = 0;
    for (unlogged, dv, order) in [
        (Unlogged::Sentinel, false, 0),
        (Unlogged::AsNull, true, 0),
        (Unlogged::Sentinel, false, 1),
        (Unlogged::AsNull, true, 2),
    ] {
        let t = Instant::now();
        runs += 1;
        let ctx = format!(
            "seed {seed}, unlogged values as {unlogged:?}, deletion vectors {dv}, delivery {}",
            if order == 0 {
                "in DMS's order".to_string()
            } else {
                format!("shuffled #{order}")
            }
        );
        let run = match replicate(&h, unlogged, dv, seed, order).await {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{ctx}: {e}"));
                continue;
            }
        };
        swept_runs += usize::from(run.swept > 0);
        truncated_runs += usize::from(run.truncates > 0);
        let mut own: Vec<String> = run
            .m
            .rows("pg.app.items", &READ_COLUMNS)
            .await
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| if v == "null" { None } else { Some(v.clone()) })
                    .collect::<Vec<_>>()
            })
            .map(|r| canonical(&r))
            .collect();
        own.sort();
        at_stake += run.at_risk.len();
        if let Err(e) = compare(&want, &own) {
            failures.push(format!("{ctx}: read by dms2delta: {e}\n  deliveries: {}", run.steps));
        }
        if !support::skip_python() {
            match python_rows(&run.m).and_then(|got| compare(&want, &got)) {
                Ok(()) => {}
                Err(e) => failures.push(format!("{ctx}: read by Python deltalake: {e}")),
            }
        }
        println!(
            "{ctx}: {:?}, {} keys whose unlogged value came before an older change carrying it",
            t.elapsed(),
            run.at_risk.len()
        );
    }
    println!(
        "replicated {runs} times, {:?} in all; the reload swept rows in {swept_runs} runs, the truncate was taken in {truncated_runs}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} differences from PostgreSQL:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The rows deleted while nothing was captured only ever leave through the reload's sweep,
    // and the rows from before the truncate only through its floor.
    assert!(swept_runs > 0, "no run swept the rows the reload's snapshot lacks");
    assert_eq!(truncated_runs, runs, "a run never took the removals for a truncate");
    // The per-column order of unlogged values was put to the test (seed {seed}).
    assert!(
        at_stake > 0,
        "seed {seed}: no delivery committed an unlogged value before an older one"
    );
}

/// A real PostgreSQL workload replicates exactly, every column of every row: TOAST values left
/// unlogged by updates (in any delivery order, issue 16 item 3), key-only deletes, an added
/// column, a reload after a gap that was not captured, and a truncate; in DMS's delivery order
/// and shuffled.
#[tokio::test]
async fn a_real_postgresql_workload_replicates_through_toast_ddl_a_reload_and_a_truncate() {
    run().await;
}
