//! Reprocess recovers what the event-driven pipeline missed: files whose events were lost,
//! change sets whose commit never ran, and quarantined files once the configuration is fixed.
//! A dry run changes nothing, and a second run finds nothing to do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dms2delta::failpoint::Failpoints;
use dms2delta::operations::reprocess::{ReprocessBuilder, ReprocessMetrics};
use dms2delta::pipeline::Pipeline;
use dms2delta::sim::SimOptions;
use support::{Lab, On};

async fn reprocess(p: &Pipeline, dry_run: bool) -> ReprocessMetrics {
    ReprocessBuilder::new(p.config.clone(), &p.stores)
        .with_dry_run(dry_run)
        .await
        .unwrap()
}

async fn quarantine_reports(lab: &Lab) -> usize {
    let (store, root) = lab.pipeline.stores.resolve(&lab.pipeline.config.quarantine).unwrap();
    dms2delta::quarantine::list_reports(store.as_ref(), &root)
        .await
        .unwrap()
        .len()
}

async fn versions(lab: &Lab) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for name in lab.sim.expected.keys() {
        let mut p = name.splitn(3, '.');
        let (ns, schema, table) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let spec = lab.pipeline.config.table_by_target(ns, schema, table).unwrap();
        let loc = lab.pipeline.table_location(&spec);
        let (t, exists) = dms2delta::lake::open(&lab.pipeline.stores, &loc).await.unwrap();
        out.push(exists.then(|| t.version().unwrap_or(0)));
    }
    out
}

async fn lost_events_waiting_change_sets_and_fixed_quarantine_are_recovered(on: On) {
    let lab = Lab::on(on, &SimOptions::default(), None).await;
    // A limit that quarantines the bigger files, as a wrong setting would; fixed later.
    let strict = support::pipeline(&format!("{}limits:\n  max_file_bytes: 700\n", lab.config_text), None);
    let (mut lost, mut waiting) = (0, 0);
    for (i, f) in lab.sim.files.iter().enumerate() {
        match i % 5 {
            // The event never arrived.
            1 => lost += 1,
            // Decoded after the last commit: its commit notification was lost.
            2 => {}
            _ => {
                strict
                    .decode(&lab.bucket, &f.key, None, Failpoints::default())
                    .await
                    .unwrap();
            }
        }
    }
    strict.commit_all().await.unwrap();
    for (i, f) in lab.sim.files.iter().enumerate() {
        if i % 5 == 2 {
            strict
                .decode(&lab.bucket, &f.key, None, Failpoints::default())
                .await
                .unwrap();
            waiting += 1;
        }
    }
    let reports = quarantine_reports(&lab).await;
    assert!(reports > 0, "the strict limit quarantined nothing");
    assert!(lab.check().await.is_err(), "the lake should be behind the source");

    // A dry run reports and changes nothing.
    let before = versions(&lab).await;
    let dry = reprocess(&strict, true).await;
    assert_eq!(dry.files_listed, lab.sim.files.len());
    assert_eq!(dry.files_missing, lost, "{dry:?}");
    assert!(dry.files_staged > 0 && dry.files_staged <= waiting, "{dry:?}");
    assert_eq!(dry.quarantined, reports, "{dry:?}");
    assert_eq!(dry.files_requeued + dry.quarantine_recovered, 0);
    assert_eq!(versions(&lab).await, before);
    assert_eq!(quarantine_reports(&lab).await, reports);

    // A time window bounds the search for lost events, never the quarantined files.
    let later = ReprocessBuilder::new(strict.config.clone(), &strict.stores)
        .with_dry_run(true)
        .with_since(Some(chrono::Utc::now() + chrono::Duration::hours(1)))
        .await
        .unwrap();
    assert_eq!((later.files_listed, later.quarantined), (0, reports), "{later:?}");

    // With the wrong setting still in place, quarantined files stay quarantined.
    let still = reprocess(&strict, false).await;
    assert_eq!(still.files_requeued, lost, "{still:?}");
    assert_eq!(still.quarantine_recovered, 0, "{still:?}");
    assert_eq!(still.quarantine_still_bad, reports, "{still:?}");
    assert!(!still.tables_committed.is_empty(), "{still:?}");

    // Configuration fixed: everything is recovered and the lake equals the source.
    let fixed = reprocess(&lab.pipeline, false).await;
    assert!(fixed.quarantine_recovered >= reports, "{fixed:?}");
    assert_eq!(fixed.quarantine_still_bad, 0, "{fixed:?}");
    assert_eq!(quarantine_reports(&lab).await, 0);
    lab.check().await.unwrap();
    assert!(lab.pipeline.pending().await.unwrap().is_empty());

    // Nothing left: a second run changes nothing.
    let again = reprocess(&lab.pipeline, false).await;
    assert_eq!(
        (again.files_missing, again.quarantined, again.rows_changed),
        (0, 0, 0),
        "{again:?}"
    );
    assert_eq!(again.files_applied, lab.sim.files.len(), "{again:?}");
    assert!(again.tables_committed.is_empty(), "{again:?}");
    lab.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_recovers_lost_events_waiting_change_sets_and_fixed_quarantine() {
    lost_events_waiting_change_sets_and_fixed_quarantine_are_recovered(On::Folders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_recovers_on_s3_too() {
    lost_events_waiting_change_sets_and_fixed_quarantine_are_recovered(On::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_filter_limits_the_work_and_a_bad_name_is_refused() {
    let lab = Lab::new(&SimOptions::default(), None);
    let bad = ReprocessBuilder::new(lab.pipeline.config.clone(), &lab.pipeline.stores)
        .with_table(Some("just_a_table".into()))
        .await;
    assert!(matches!(bad, Err(dms2delta::error::Error::Config { .. })), "{bad:?}");
    let one = lab.sim.expected.keys().next().unwrap().clone();
    let m = ReprocessBuilder::new(lab.pipeline.config.clone(), &lab.pipeline.stores)
        .with_table(Some(one.clone()))
        .await
        .unwrap();
    assert_eq!(m.tables_committed, vec![one.clone()], "{m:?}");
    assert!(m.files_listed > 0 && m.files_listed < lab.sim.files.len(), "{m:?}");
    // Only that table was written.
    for name in lab.sim.expected.keys().filter(|n| **n != one) {
        let mut p = name.splitn(3, '.');
        let spec = lab
            .pipeline
            .config
            .table_by_target(p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
            .unwrap();
        let (_, exists) = dms2delta::lake::open(&lab.pipeline.stores, &lab.pipeline.table_location(&spec))
            .await
            .unwrap();
        assert!(!exists, "{name} was written");
    }
}
