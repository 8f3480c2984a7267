use super::source::Source;
use super::*;
use dms2delta::config::Config;
use dms2delta::pipeline::Pipeline;
use dms2delta::sim::{rows_of, simulate, SimOptions, Simulation};

struct Bench {
    dir: tempfile::TempDir,
    sim: Simulation,
    pipeline: Pipeline,
    source: Source,
}

fn small() -> SimOptions {
    SimOptions {
        seed: 3,
        tables: 1,
        keys: 8,
        changes: 16,
        max_file_changes: 5,
        formats: vec![dms2delta::sim::Format::CsvHeader],
        ..SimOptions::default()
    }
}

fn bench(opts: &SimOptions) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulate(opts);
    let p = |s: &str| dir.path().join(s).display().to_string();
    std::fs::create_dir_all(dir.path().join("source")).unwrap();
    let text = sim.config(&p("elsewhere"), &p("staged"), &p("quarantine"), &p("unused"));
    let mut config = load_config_text(&text);
    config.lake = p("lake");
    let source = attach_source(&mut config, &p("source")).unwrap();
    Bench {
        pipeline: pipeline(config).unwrap(),
        dir,
        sim,
        source,
    }
}

fn load_config_text(text: &str) -> Config {
    Config::parse(text).unwrap()
}

async fn check(b: &Bench) {
    for (name, expected) in &b.sim.expected {
        let mut p = name.splitn(3, '.');
        let (ns, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let spec = b.pipeline.config.table_by_target(ns, s, t).unwrap();
        let batches = b.pipeline.read_table(&b.pipeline.table_location(&spec)).await.unwrap();
        let actual = rows_of(&batches, &b.sim.columns[name]).unwrap();
        assert_eq!(&actual, expected, "{}", dms2delta::sim::diff(expected, &actual));
    }
}

#[test]
fn a_local_source_stands_for_every_bucket_and_s3_must_be_configured() {
    let sim = simulate(&small());
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::parse(&sim.config("/l", "/s", "/q", "/d")).unwrap();
    let s = attach_source(&mut c, &dir.path().display().to_string()).unwrap();
    assert_eq!(s.buckets, vec!["dms-sim"]);
    assert_eq!(c.storage.buckets["dms-sim"], dir.path().display().to_string());

    let mut c = Config::parse(&sim.config("/l", "/s", "/q", "/d")).unwrap();
    let s = attach_source(&mut c, "s3://dms-sim/dms/pg").unwrap();
    assert_eq!(s.prefix.as_ref().map(|p| p.as_ref()), Some("dms/pg"));
    assert!(
        !c.storage.buckets.contains_key("dms-sim"),
        "the local mapping is dropped"
    );
    assert_eq!(s.file("dms-sim", "k/x.csv"), "s3://dms-sim/k/x.csv");

    let e = attach_source(&mut c, "s3://other/x").unwrap_err();
    assert!(
        e.message
            .contains("no source in the configuration reads bucket `other`"),
        "{e}"
    );
    let e = attach_source(&mut c, "/nonexistent/dms-out").unwrap_err();
    assert_eq!(e.message, "the source folder /nonexistent/dms-out does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_applies_new_files_only_and_force_changes_nothing() {
    let b = bench(&small());
    b.sim.write_files(&b.dir.path().join("source")).unwrap();
    std::fs::write(b.dir.path().join("source/README.txt"), b"not DMS output").unwrap();
    let first = run_once(&b.pipeline, &b.source, &mut RunState::default(), false)
        .await
        .unwrap();
    assert_eq!(first.decoded, b.sim.files.len());
    assert_eq!(first.skipped.get("not under any configured source"), Some(&1));
    assert!(first.changed_rows() > 0);
    assert_eq!(first.tables.len(), 1);
    assert_eq!(first.tables[0].files, b.sim.files.len());
    check(&b).await;

    let second = run_once(&b.pipeline, &b.source, &mut RunState::default(), false)
        .await
        .unwrap();
    assert_eq!(second.decoded, 0);
    assert_eq!(second.already_applied, b.sim.files.len());
    assert_eq!(second.changed_rows(), 0);
    assert_eq!(second.tables[0].info.version, first.tables[0].info.version);

    let forced = run_once(&b.pipeline, &b.source, &mut RunState::default(), true)
        .await
        .unwrap();
    assert_eq!(forced.decoded, b.sim.files.len());
    assert_eq!(forced.changed_rows(), 0, "{:?}", forced.tables);
    assert_eq!(forced.tables[0].files, b.sim.files.len());
    check(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_applies_files_that_arrive_between_passes() {
    let b = bench(&small());
    let src = b.dir.path().join("source");
    let half = b.sim.files.len() / 2;
    let write = |files: &[dms2delta::sim::SimFile]| {
        for f in files {
            let p = src.join(&f.key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, &f.bytes).unwrap();
        }
    };
    write(&b.sim.files[..half]);
    let opts = WatchOptions {
        interval: Duration::from_millis(10),
        max_polls: Some(3),
        force: false,
    };
    let mut decoded = Vec::new();
    let mut out = Vec::new();
    let polls = watch(
        &b.pipeline,
        &b.source,
        &opts,
        Arc::new(Notify::new()),
        &mut out,
        |n, r| {
            decoded.push(r.decoded);
            if n == 1 {
                write(&b.sim.files[half..]);
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(polls, 3);
    assert_eq!(decoded, vec![half, b.sim.files.len() - half, 0]);
    check(&b).await;
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("] pass ").count(), 2, "{text}");
    assert!(text.contains("Watching"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_stops_when_told() {
    let b = bench(&small());
    let stop = Arc::new(Notify::new());
    stop.notify_one();
    let opts = WatchOptions {
        interval: Duration::from_secs(3600),
        max_polls: None,
        force: false,
    };
    let mut out = Vec::new();
    let polls = watch(&b.pipeline, &b.source, &opts, stop, &mut out, |_, _| {})
        .await
        .unwrap();
    assert_eq!(polls, 1);
    assert!(String::from_utf8(out).unwrap().contains("Stopped after 1 pass."));
}
